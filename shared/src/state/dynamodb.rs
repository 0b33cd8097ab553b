//! The production [`StateStore`]: one DynamoDB table shared by every Lambda instance.
//!
//! # Table
//! One table (name from [`TABLE_ENV`], default [`DEFAULT_TABLE`]) with a string partition key
//! [`KEY_ATTRIBUTE`] (`pk`), no sort key, on-demand billing and TTL on
//! [`TTL_ATTRIBUTE`]. The port's key is stored in `pk`; every other
//! attribute of an [`Item`] is stored under its own name, numbers as `N`, strings as `S`. An
//! item may therefore not carry an attribute named `pk` ([`StoreError::Invalid`]). Key
//! prefixes of each item kind are listed in `docs/STATE.md`.
//!
//! # Translation, not evaluation
//! [`Condition`]s and [`UpdateAction`]s become DynamoDB expressions with every attribute name
//! and value behind a placeholder (`#n0`, `:v0`), because the gateway's attribute names contain
//! `#`, `@` and `.`. Two translations keep DynamoDB's behaviour identical to the reference
//! semantics of [`Condition::holds`]:
//! - a comparison is guarded by `attribute_type(#a, :t)`, so a comparison naming a missing or
//!   differently typed attribute is false (and its `NOT` true) whatever the operator, `<>`
//!   included;
//! - an empty `And` and `Always` inside a compound condition become a tautology on the key
//!   attribute, an empty `Or` a contradiction (DynamoDB has no boolean literals).
//!
//! # Failures
//! Throttling (`ProvisionedThroughputExceeded`, `ThrottlingException`, `RequestLimitExceeded`,
//! a transaction conflict) and transient failures (5xx, timeouts, connection errors) are
//! retried with capped exponential backoff and full jitter ([`RetryPolicy`]) and then surfaced
//! as [`StoreError::Throttled`] / [`StoreError::Unavailable`], which callers treat as "defer the
//! message". A missing table or a refused permission is [`StoreError::Misconfigured`]; a
//! request DynamoDB rejects as malformed (`ADD` on a string, a duplicate key) is
//! [`StoreError::Invalid`].
//!
//! A retried write may have been applied by the attempt whose answer was lost. Transactions
//! carry one client request token across their retries, so DynamoDB applies them at most once.
//! A single conditional write that was applied answers its retry with a failed condition and
//! the item as it now is, and every service on the port decides again from that item. Each one
//! recognises its own applied write there (the ledger its claim, mark or release; the breaker and
//! the health checker the `write_id` token of their write; the replay cache its owner value; a
//! suppression removal its tombstone), so a retry is never counted twice nor taken for another
//! writer's; only an unconditional `ADD` could count twice, which for a limit counter errs on
//! the safe side.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

pub use crate::retry::RetryPolicy;
use crate::retry::random_below;
use async_trait::async_trait;
pub use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement,
    KeyType, KeysAndAttributes, Put, PutRequest, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, Update, WriteRequest,
};

use super::{
    CmpOp, Condition, Item, Key, MAX_BATCH_GET, MAX_BATCH_WRITE, MAX_TRANSACTION, StateStore,
    StoreError, TTL_ATTRIBUTE, TransactOutcome, UpdateAction, Value, Write, WriteOp, WriteOutcome,
};

/// Environment variable naming the state table.
pub const TABLE_ENV: &str = "GATEWAY_STATE_TABLE";
/// The table name used when [`TABLE_ENV`] is unset.
pub const DEFAULT_TABLE: &str = "gateway-state";
/// The partition key attribute (string) holding the port's [`Key`].
pub const KEY_ATTRIBUTE: &str = "pk";
/// Longest wait for a connection to DynamoDB.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for one request's answer (DynamoDB answers in milliseconds; a request this
/// slow is stuck and is retried).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

type AttrMap = HashMap<String, AttributeValue>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Indexes of a cancelled transaction's failed writes, with their current items.
type FailedWrites = Vec<(usize, Option<Item>)>;

/// The table name from [`TABLE_ENV`], or [`DEFAULT_TABLE`] when unset or empty.
pub fn table_name_from_env() -> String {
    std::env::var(TABLE_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TABLE.to_owned())
}

/// The DynamoDB adapter of the [`StateStore`] port. Cheap to clone (the SDK client is shared).
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retry: RetryPolicy,
}

impl DynamoStore {
    /// An adapter over `client` and `table`, with the default [`RetryPolicy`].
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            retry: RetryPolicy::default(),
        }
    }

    /// Replaces the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// An adapter on `table` with a client configured from the environment
    /// (`aws_config::load_from_env`: region, credentials, and `AWS_ENDPOINT_URL` /
    /// `AWS_ENDPOINT_URL_DYNAMODB` for a local emulator). The SDK's own retries are turned off:
    /// this adapter's [`RetryPolicy`] is the only one, so a throttled request is retried a
    /// known number of times.
    pub async fn from_env(table: impl Into<String>) -> Self {
        Self::new(client_from_env().await, table)
    }

    /// The table this adapter uses.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client (for table administration).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every item whose key starts with `prefix`, with its key, by a paginated `Scan` (it reads
    /// the whole table: for operator commands such as `gateway suppression list`, never for
    /// the send path).
    pub async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(Key, Item)>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<AttrMap> = None;
        loop {
            let answer = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(#k, :p)")
                .expression_attribute_names("#k", KEY_ATTRIBUTE)
                .expression_attribute_values(":p", AttributeValue::S(prefix.to_owned()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| final_error(e, &self.table))?;
            for attrs in answer.items() {
                let Some(AttributeValue::S(key)) = attrs.get(KEY_ATTRIBUTE) else {
                    continue;
                };
                out.push((key.clone(), from_attrs(attrs)?));
            }
            match answer.last_evaluated_key() {
                Some(next) if !next.is_empty() => start = Some(next.clone()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn missing_table(&self) -> StoreError {
        StoreError::Misconfigured(format!(
            "table {} does not exist (set {TABLE_ENV}, or create it with `gateway state \
             create-table --table {}`)",
            self.table, self.table
        ))
    }

    /// Runs `op` until it succeeds, fails for good, or the retry policy is spent.
    async fn with_retries<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let attempts = self.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            let failure = match op().await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            attempt += 1;
            let last = match failure {
                Failure::Final(e) => return Err(e),
                Failure::MissingTable => return Err(self.missing_table()),
                Failure::Throttled => StoreError::Throttled,
                Failure::Transient(e) => StoreError::Unavailable(e),
            };
            if attempt >= attempts {
                return Err(last);
            }
            tokio::time::sleep(self.retry.delay(attempt - 1)).await;
        }
    }
}

/// The store's DynamoDB client on `sdk`: the SDK's retries off (the store's [`RetryPolicy`] is
/// the only one, so a throttled request is retried a known number of times and never twice
/// over) and bounded waits, [`CONNECT_TIMEOUT`] to connect and [`ATTEMPT_TIMEOUT`] per request,
/// so a stalled connection becomes a retried [`StoreError::Unavailable`] instead of hanging the
/// invocation until Lambda kills it. Every entry point builds its client here.
pub fn client(sdk: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(bounded(CONNECT_TIMEOUT, ATTEMPT_TIMEOUT))
        .build();
    Client::from_conf(config)
}

/// `client` with other bounds on its waits, everything else unchanged: for measurements against
/// the emulator, which serves one request at a time, so a busy machine's queueing does not show
/// up as timed-out and re-sent requests.
pub fn with_timeouts(client: &Client, connect: Duration, attempt: Duration) -> Client {
    let config = client
        .config()
        .to_builder()
        .timeout_config(bounded(connect, attempt))
        .build();
    Client::from_conf(config)
}

fn bounded(connect: Duration, attempt: Duration) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(connect)
        .operation_attempt_timeout(attempt)
        .build()
}

/// [`client`] on the SDK configuration of the environment (the CLI's admin commands).
pub async fn client_from_env() -> Client {
    client(&aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
}

/// What became of a request, before retry decisions.
#[derive(Debug)]
enum Failure {
    Throttled,
    Transient(BoxError),
    MissingTable,
    Final(StoreError),
}

/// Classifies an SDK error by its error code and kind, never by its message.
fn classify<E, R>(err: SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if let SdkError::ServiceError(_) = &err {
        let message = err.message().unwrap_or_default().to_owned();
        return match err.code().unwrap_or_default() {
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TransactionConflictException"
            | "TransactionInProgressException" => Failure::Throttled,
            "InternalServerError" | "ServiceUnavailable" | "InternalFailure" => {
                Failure::Transient(Box::new(err))
            }
            "ResourceNotFoundException" => Failure::MissingTable,
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "MissingAuthenticationToken"
            | "InvalidSignatureException" => Failure::Final(StoreError::Misconfigured(format!(
                "access to the state table refused: {message}"
            ))),
            "ValidationException" => Failure::Final(StoreError::Invalid(message)),
            _ => Failure::Final(StoreError::Unavailable(Box::new(err))),
        };
    }
    match err {
        SdkError::ConstructionFailure(_) => Failure::Final(StoreError::Misconfigured(
            "the DynamoDB request could not be built (region or endpoint missing?)".into(),
        )),
        other => Failure::Transient(Box::new(other)),
    }
}

fn to_attr(v: &Value) -> AttributeValue {
    match v {
        Value::N(n) => AttributeValue::N(n.to_string()),
        Value::S(s) => AttributeValue::S(s.clone()),
    }
}

/// Decodes a stored item, dropping the key attribute.
fn from_attrs(attrs: &AttrMap) -> Result<Item, StoreError> {
    let mut item = Item::new();
    for (name, v) in attrs {
        if name == KEY_ATTRIBUTE {
            continue;
        }
        let value = match v {
            AttributeValue::S(s) => Value::S(s.clone()),
            AttributeValue::N(n) => Value::N(n.parse().map_err(|_| {
                StoreError::Invalid(format!("attribute {name} holds {n}, not a 64-bit integer"))
            })?),
            _ => {
                return Err(StoreError::Invalid(format!(
                    "attribute {name} has a type the gateway never writes"
                )));
            }
        };
        item.insert(name.clone(), value);
    }
    Ok(item)
}

fn key_attrs(key: &Key) -> AttrMap {
    HashMap::from([(KEY_ATTRIBUTE.to_owned(), AttributeValue::S(key.clone()))])
}

fn item_attrs(key: &Key, item: &Item) -> Result<AttrMap, StoreError> {
    if item.contains_key(KEY_ATTRIBUTE) {
        return Err(StoreError::Invalid(format!(
            "an item may not carry the key attribute {KEY_ATTRIBUTE}"
        )));
    }
    let mut attrs = key_attrs(key);
    attrs.extend(item.iter().map(|(n, v)| (n.clone(), to_attr(v))));
    Ok(attrs)
}

/// Placeholders of one request's expressions.
#[derive(Debug, Default)]
struct Placeholders {
    names: HashMap<String, String>,
    by_name: BTreeMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Placeholders {
    fn name(&mut self, attr: &str) -> String {
        if let Some(p) = self.by_name.get(attr) {
            return p.clone();
        }
        let p = format!("#n{}", self.by_name.len());
        self.by_name.insert(attr.to_owned(), p.clone());
        self.names.insert(p.clone(), attr.to_owned());
        p
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }

    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }

    fn always(&mut self) -> String {
        let pk = self.name(KEY_ATTRIBUTE);
        format!("(attribute_exists({pk}) OR attribute_not_exists({pk}))")
    }

    fn never(&mut self) -> String {
        let pk = self.name(KEY_ATTRIBUTE);
        format!("(attribute_exists({pk}) AND attribute_not_exists({pk}))")
    }

    /// The condition expression; `None` for [`Condition::Always`] at the top.
    fn condition(&mut self, c: &Condition) -> Option<String> {
        match c {
            Condition::Always => None,
            other => Some(self.expr(other)),
        }
    }

    fn expr(&mut self, c: &Condition) -> String {
        match c {
            Condition::Always => self.always(),
            Condition::ItemExists => format!("attribute_exists({})", self.name(KEY_ATTRIBUTE)),
            Condition::ItemNotExists => {
                format!("attribute_not_exists({})", self.name(KEY_ATTRIBUTE))
            }
            Condition::AttrExists(a) => format!("attribute_exists({})", self.name(a)),
            Condition::AttrNotExists(a) => format!("attribute_not_exists({})", self.name(a)),
            Condition::Cmp(a, op, v) => {
                let n = self.name(a);
                let type_code = match v {
                    Value::N(_) => "N",
                    Value::S(_) => "S",
                };
                let t = self.value(AttributeValue::S(type_code.to_owned()));
                let val = self.value(to_attr(v));
                let op = match op {
                    CmpOp::Eq => "=",
                    CmpOp::Ne => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                format!("(attribute_type({n}, {t}) AND {n} {op} {val})")
            }
            Condition::And(cs) if cs.is_empty() => self.always(),
            Condition::Or(cs) if cs.is_empty() => self.never(),
            Condition::And(cs) => self.join(cs, " AND "),
            Condition::Or(cs) => self.join(cs, " OR "),
            Condition::Not(c) => format!("(NOT {})", self.expr(c)),
        }
    }

    fn join(&mut self, cs: &[Condition], sep: &str) -> String {
        let parts: Vec<String> = cs.iter().map(|c| self.expr(c)).collect();
        format!("({})", parts.join(sep))
    }

    /// The update expression; `None` when there are no actions (the write only creates the
    /// item). One attribute may appear in one action only, as in DynamoDB.
    fn update(&mut self, actions: &[UpdateAction]) -> Result<Option<String>, StoreError> {
        let mut seen = BTreeSet::new();
        let (mut set, mut add, mut remove) = (Vec::new(), Vec::new(), Vec::new());
        for action in actions {
            let attr = match action {
                UpdateAction::Set(a, _)
                | UpdateAction::SetIfNotExists(a, _)
                | UpdateAction::Add(a, _)
                | UpdateAction::Remove(a) => a,
            };
            if attr == KEY_ATTRIBUTE {
                return Err(StoreError::Invalid(format!(
                    "an update may not touch the key attribute {KEY_ATTRIBUTE}"
                )));
            }
            if !seen.insert(attr.clone()) {
                return Err(StoreError::Invalid(format!(
                    "attribute {attr} appears in two actions of one update"
                )));
            }
            let n = self.name(attr);
            match action {
                UpdateAction::Set(_, v) => {
                    let v = self.value(to_attr(v));
                    set.push(format!("{n} = {v}"));
                }
                UpdateAction::SetIfNotExists(_, v) => {
                    let v = self.value(to_attr(v));
                    set.push(format!("{n} = if_not_exists({n}, {v})"));
                }
                UpdateAction::Add(_, delta) => {
                    let v = self.value(AttributeValue::N(delta.to_string()));
                    add.push(format!("{n} {v}"));
                }
                UpdateAction::Remove(_) => remove.push(n),
            }
        }
        let mut clauses = Vec::new();
        for (word, parts) in [("SET", set), ("ADD", add), ("REMOVE", remove)] {
            if !parts.is_empty() {
                clauses.push(format!("{word} {}", parts.join(", ")));
            }
        }
        Ok((!clauses.is_empty()).then(|| clauses.join(" ")))
    }
}

/// The current item DynamoDB returned with a failed condition (`ALL_OLD`).
fn old_item(attrs: Option<&AttrMap>) -> Result<Option<Item>, StoreError> {
    attrs.filter(|a| !a.is_empty()).map(from_attrs).transpose()
}

fn distinct_keys(writes: &[Write]) -> Result<(), StoreError> {
    let distinct: BTreeSet<&Key> = writes.iter().map(|w| &w.key).collect();
    if distinct.len() == writes.len() {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "a transaction names the same key twice".into(),
        ))
    }
}

fn client_token() -> String {
    format!(
        "{:016x}{:016x}",
        random_below(u64::MAX),
        random_below(u64::MAX)
    )
}

impl DynamoStore {
    async fn put(
        &self,
        key: &Key,
        item: &Item,
        cond: &Condition,
    ) -> Result<WriteOutcome, StoreError> {
        let attrs = item_attrs(key, item)?;
        let mut ph = Placeholders::default();
        let condition = ph.condition(cond);
        let outcome = self
            .with_retries(|| async {
                let result = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(attrs.clone()))
                    .set_condition_expression(condition.clone())
                    .set_expression_attribute_names(ph.names())
                    .set_expression_attribute_values(ph.values())
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .send()
                    .await;
                match result {
                    Ok(_) => Ok(None),
                    Err(SdkError::ServiceError(se))
                        if matches!(se.err(), PutItemError::ConditionalCheckFailedException(_)) =>
                    {
                        match se.into_err() {
                            PutItemError::ConditionalCheckFailedException(e) => {
                                Ok(Some(e.item().cloned()))
                            }
                            _ => Ok(Some(None)),
                        }
                    }
                    Err(e) => Err(classify(e)),
                }
            })
            .await?;
        match outcome {
            None => Ok(WriteOutcome::Applied(Some(item.clone()))),
            Some(old) => Ok(WriteOutcome::ConditionFailed(old_item(old.as_ref())?)),
        }
    }

    async fn update(
        &self,
        key: &Key,
        actions: &[UpdateAction],
        cond: &Condition,
    ) -> Result<WriteOutcome, StoreError> {
        let mut ph = Placeholders::default();
        let update = ph.update(actions)?;
        let condition = ph.condition(cond);
        let outcome = self
            .with_retries(|| async {
                let result = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(key)))
                    .set_update_expression(update.clone())
                    .set_condition_expression(condition.clone())
                    .set_expression_attribute_names(ph.names())
                    .set_expression_attribute_values(ph.values())
                    .return_values(ReturnValue::AllNew)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .send()
                    .await;
                match result {
                    Ok(out) => Ok(Ok(out.attributes)),
                    Err(SdkError::ServiceError(se))
                        if matches!(
                            se.err(),
                            UpdateItemError::ConditionalCheckFailedException(_)
                        ) =>
                    {
                        match se.into_err() {
                            UpdateItemError::ConditionalCheckFailedException(e) => {
                                Ok(Err(e.item().cloned()))
                            }
                            _ => Ok(Err(None)),
                        }
                    }
                    Err(e) => Err(classify(e)),
                }
            })
            .await?;
        match outcome {
            // An update always leaves an item (DynamoDB creates a missing one); with no
            // attributes besides the key it is an empty item.
            Ok(new) => Ok(WriteOutcome::Applied(Some(
                old_item(new.as_ref())?.unwrap_or_default(),
            ))),
            Err(old) => Ok(WriteOutcome::ConditionFailed(old_item(old.as_ref())?)),
        }
    }

    async fn delete(&self, key: &Key, cond: &Condition) -> Result<WriteOutcome, StoreError> {
        let mut ph = Placeholders::default();
        let condition = ph.condition(cond);
        let outcome = self
            .with_retries(|| async {
                let result = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(key)))
                    .set_condition_expression(condition.clone())
                    .set_expression_attribute_names(ph.names())
                    .set_expression_attribute_values(ph.values())
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .send()
                    .await;
                match result {
                    Ok(_) => Ok(None),
                    Err(SdkError::ServiceError(se))
                        if matches!(
                            se.err(),
                            DeleteItemError::ConditionalCheckFailedException(_)
                        ) =>
                    {
                        match se.into_err() {
                            DeleteItemError::ConditionalCheckFailedException(e) => {
                                Ok(Some(e.item().cloned()))
                            }
                            _ => Ok(Some(None)),
                        }
                    }
                    Err(e) => Err(classify(e)),
                }
            })
            .await?;
        match outcome {
            None => Ok(WriteOutcome::Applied(None)),
            Some(old) => Ok(WriteOutcome::ConditionFailed(old_item(old.as_ref())?)),
        }
    }

    fn transact_item(&self, w: &Write) -> Result<TransactWriteItem, StoreError> {
        let mut ph = Placeholders::default();
        let all_old = ReturnValuesOnConditionCheckFailure::AllOld;
        let built = match &w.op {
            WriteOp::Put(item) => {
                let attrs = item_attrs(&w.key, item)?;
                let condition = ph.condition(&w.condition);
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(attrs))
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(ph.names())
                    .set_expression_attribute_values(ph.values())
                    .return_values_on_condition_check_failure(all_old)
                    .build()
                    .map(|p| TransactWriteItem::builder().put(p).build())
            }
            WriteOp::Update(actions) => {
                let update = ph.update(actions)?;
                let condition = ph.condition(&w.condition);
                // A transaction update needs an expression; one with no actions only makes
                // sure the item exists, so remove an attribute the gateway never writes.
                let update = update.unwrap_or_else(|| {
                    let n = ph.name("@touched");
                    format!("REMOVE {n}")
                });
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(&w.key)))
                    .update_expression(update)
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(ph.names())
                    .set_expression_attribute_values(ph.values())
                    .return_values_on_condition_check_failure(all_old)
                    .build()
                    .map(|u| TransactWriteItem::builder().update(u).build())
            }
            WriteOp::Delete => {
                let condition = ph.condition(&w.condition);
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(&w.key)))
                    .set_condition_expression(condition)
                    .set_expression_attribute_names(ph.names())
                    .set_expression_attribute_values(ph.values())
                    .return_values_on_condition_check_failure(all_old)
                    .build()
                    .map(|d| TransactWriteItem::builder().delete(d).build())
            }
            WriteOp::ConditionCheck => {
                // DynamoDB requires a condition expression on a check; `Always` checks nothing.
                let condition = ph.expr(&w.condition);
                ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(&w.key)))
                    .condition_expression(condition)
                    .set_expression_attribute_names(ph.names())
                    .set_expression_attribute_values(ph.values())
                    .return_values_on_condition_check_failure(all_old)
                    .build()
                    .map(|c| TransactWriteItem::builder().condition_check(c).build())
            }
        };
        built.map_err(|e| StoreError::Invalid(format!("transaction item not built: {e}")))
    }

    async fn batch_get(&self, keys: &[Key]) -> Result<HashMap<Key, Item>, StoreError> {
        let mut found = HashMap::new();
        let mut pending: Vec<AttrMap> = keys.iter().map(key_attrs).collect();
        let attempts = self.retry.max_attempts.max(1);
        let mut round = 0;
        while !pending.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(pending.clone()))
                .consistent_read(true)
                .build()
                .map_err(|e| StoreError::Invalid(format!("read not built: {e}")))?;
            let out = self
                .with_retries(|| async {
                    self.client
                        .batch_get_item()
                        .request_items(&self.table, request.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await?;
            if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                for attrs in items {
                    if let Some(AttributeValue::S(k)) = attrs.get(KEY_ATTRIBUTE) {
                        found.insert(k.clone(), from_attrs(attrs)?);
                    }
                }
            }
            pending = out
                .unprocessed_keys()
                .and_then(|u| u.get(&self.table))
                .map(|ka| ka.keys().to_vec())
                .unwrap_or_default();
            if !pending.is_empty() {
                round += 1;
                if round >= attempts {
                    return Err(StoreError::Throttled);
                }
                tokio::time::sleep(self.retry.delay(round - 1)).await;
            }
        }
        Ok(found)
    }

    async fn batch_put(&self, chunk: Vec<WriteRequest>) -> Result<(), StoreError> {
        let attempts = self.retry.max_attempts.max(1);
        let mut pending = chunk;
        let mut round = 0;
        while !pending.is_empty() {
            let out = self
                .with_retries(|| async {
                    self.client
                        .batch_write_item()
                        .request_items(&self.table, pending.clone())
                        .send()
                        .await
                        .map_err(classify)
                })
                .await?;
            pending = out
                .unprocessed_items()
                .and_then(|u| u.get(&self.table))
                .cloned()
                .unwrap_or_default();
            if !pending.is_empty() {
                round += 1;
                if round >= attempts {
                    return Err(StoreError::Throttled);
                }
                tokio::time::sleep(self.retry.delay(round - 1)).await;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for DynamoStore {
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
        if keys.len() > MAX_BATCH_GET {
            return Err(StoreError::Invalid(format!(
                "{} keys in one read (max {MAX_BATCH_GET})",
                keys.len()
            )));
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // BatchGetItem refuses a key named twice; the port allows it.
        let distinct: Vec<Key> = keys
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .cloned()
            .collect();
        let mut found = self.batch_get(&distinct).await?;
        Ok(keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                // The last mention of a key takes the item; earlier ones clone it.
                if keys[i + 1..].contains(k) {
                    found.get(k).cloned()
                } else {
                    found.remove(k)
                }
            })
            .collect())
    }

    async fn write(&self, write: Write) -> Result<WriteOutcome, StoreError> {
        match &write.op {
            WriteOp::Put(item) => self.put(&write.key, item, &write.condition).await,
            WriteOp::Update(actions) => self.update(&write.key, actions, &write.condition).await,
            WriteOp::Delete => self.delete(&write.key, &write.condition).await,
            WriteOp::ConditionCheck => Err(StoreError::Invalid(
                "a condition check is only valid inside a transaction".into(),
            )),
        }
    }

    async fn transact(&self, writes: Vec<Write>) -> Result<TransactOutcome, StoreError> {
        if writes.is_empty() || writes.len() > MAX_TRANSACTION {
            return Err(StoreError::Invalid(format!(
                "{} writes in one transaction (1..={MAX_TRANSACTION})",
                writes.len()
            )));
        }
        distinct_keys(&writes)?;
        let items = writes
            .iter()
            .map(|w| self.transact_item(w))
            .collect::<Result<Vec<_>, _>>()?;
        // One token across retries: DynamoDB applies the transaction at most once even when an
        // earlier attempt's answer was lost.
        let token = client_token();
        let outcome = self
            .with_retries(|| async {
                let result = self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(items.clone()))
                    .client_request_token(&token)
                    .send()
                    .await;
                match result {
                    Ok(_) => Ok(None),
                    Err(SdkError::ServiceError(se))
                        if matches!(
                            se.err(),
                            TransactWriteItemsError::TransactionCanceledException(_)
                        ) =>
                    {
                        let TransactWriteItemsError::TransactionCanceledException(e) =
                            se.into_err()
                        else {
                            return Err(Failure::Throttled);
                        };
                        cancelled(e.cancellation_reasons())
                    }
                    Err(e) => Err(classify(e)),
                }
            })
            .await?;
        match outcome {
            None => Ok(TransactOutcome::Committed),
            Some(failed) => Ok(TransactOutcome::Cancelled(failed)),
        }
    }

    async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
        // BatchWriteItem refuses a key named twice in one request; the port's "later puts
        // overwrite earlier ones" is kept by sending only the last item of each key.
        let mut last: HashMap<Key, usize> = HashMap::new();
        for (i, (k, _)) in items.iter().enumerate() {
            last.insert(k.clone(), i);
        }
        let mut requests = Vec::with_capacity(last.len());
        for (i, (k, item)) in items.iter().enumerate() {
            if last.get(k) != Some(&i) {
                continue;
            }
            let put = PutRequest::builder()
                .set_item(Some(item_attrs(k, item)?))
                .build()
                .map_err(|e| StoreError::Invalid(format!("put not built: {e}")))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        // The chunks name distinct keys, so their order does not matter: they go out together
        // and the call waits for one round trip whatever the number of items. Every chunk is
        // seen through to its end before an error is returned, so none is left in flight.
        let mut requests = requests.into_iter().peekable();
        let mut chunks = Vec::new();
        while requests.peek().is_some() {
            let chunk: Vec<WriteRequest> = requests.by_ref().take(MAX_BATCH_WRITE).collect();
            chunks.push(self.batch_put(chunk));
        }
        futures::future::join_all(chunks)
            .await
            .into_iter()
            .collect::<Result<(), StoreError>>()
    }
}

/// Maps a cancelled transaction's reasons: failed conditions are a value; a conflict or
/// throttling of any item makes the whole transaction worth retrying.
fn cancelled(
    reasons: &[aws_sdk_dynamodb::types::CancellationReason],
) -> Result<Option<FailedWrites>, Failure> {
    let mut failed = Vec::new();
    let mut retry = false;
    for (i, reason) in reasons.iter().enumerate() {
        match reason.code().unwrap_or("None") {
            "None" => {}
            "ConditionalCheckFailed" => {
                let item = old_item(reason.item()).map_err(Failure::Final)?;
                failed.push((i, item));
            }
            "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded" => {
                retry = true;
            }
            "ValidationError" => {
                return Err(Failure::Final(StoreError::Invalid(
                    reason
                        .message()
                        .unwrap_or("transaction item rejected")
                        .to_owned(),
                )));
            }
            _ => retry = true,
        }
    }
    if !failed.is_empty() {
        Ok(Some(failed))
    } else if retry {
        Err(Failure::Throttled)
    } else {
        Err(Failure::Transient(
            "transaction cancelled without a reason".into(),
        ))
    }
}

/// Creates the state table: key [`KEY_ATTRIBUTE`] (S), on-demand billing, TTL on
/// [`TTL_ATTRIBUTE`]. Returns `false` when a table of that name already
/// existed (nothing is changed then).
pub async fn create_table(client: &Client, table: &str) -> Result<bool, StoreError> {
    let definition = AttributeDefinition::builder()
        .attribute_name(KEY_ATTRIBUTE)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let schema = KeySchemaElement::builder()
        .attribute_name(KEY_ATTRIBUTE)
        .key_type(KeyType::Hash)
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let created = client
        .create_table()
        .table_name(table)
        .attribute_definitions(definition)
        .key_schema(schema)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceInUseException") => return Ok(false),
        Err(e) => return Err(final_error(e, table)),
    }
    wait_active(client, table).await?;
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(ttl)
        .send()
        .await
        .map_err(|e| final_error(e, table))?;
    Ok(true)
}

/// Waits (up to about a minute) until a new table is `ACTIVE`; DynamoDB refuses TTL settings
/// before.
async fn wait_active(client: &Client, table: &str) -> Result<(), StoreError> {
    for _ in 0..120 {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| final_error(e, table))?;
        let active = out
            .table()
            .and_then(|t| t.table_status())
            .is_some_and(|s| *s == aws_sdk_dynamodb::types::TableStatus::Active);
        if active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(StoreError::Unavailable(
        format!("table {table} did not become active").into(),
    ))
}

fn final_error<E, R>(e: SdkError<E, R>, table: &str) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match classify(e) {
        Failure::Throttled => StoreError::Throttled,
        Failure::Transient(e) => StoreError::Unavailable(e),
        Failure::MissingTable => StoreError::Misconfigured(format!("table {table} does not exist")),
        Failure::Final(e) => e,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    use super::*;

    fn cmp(a: &str, op: CmpOp, v: impl Into<Value>) -> Condition {
        Condition::cmp(a.to_owned(), op, v)
    }

    #[test]
    fn attribute_names_with_reserved_characters_go_behind_placeholders() {
        let mut ph = Placeholders::default();
        let expr = ph.expr(&cmp("u#a.b@x.org", CmpOp::Le, 4));
        assert_eq!(expr, "(attribute_type(#n0, :v0) AND #n0 <= :v1)");
        assert_eq!(ph.names.get("#n0").map(String::as_str), Some("u#a.b@x.org"));
        assert_eq!(ph.values.get(":v0"), Some(&AttributeValue::S("N".into())));
        assert_eq!(ph.values.get(":v1"), Some(&AttributeValue::N("4".into())));
    }

    #[test]
    fn empty_compounds_and_nested_always_become_literals() {
        let cases = [
            (Condition::Always, None),
            (
                Condition::And(vec![]),
                Some("(attribute_exists(#n0) OR attribute_not_exists(#n0))"),
            ),
            (
                Condition::Or(vec![]),
                Some("(attribute_exists(#n0) AND attribute_not_exists(#n0))"),
            ),
            (
                Condition::Not(Box::new(Condition::Always)),
                Some("(NOT (attribute_exists(#n0) OR attribute_not_exists(#n0)))"),
            ),
        ];
        for (condition, expected) in cases {
            let mut ph = Placeholders::default();
            assert_eq!(
                ph.condition(&condition).as_deref(),
                expected,
                "{condition:?}"
            );
        }
    }

    #[test]
    fn update_actions_group_into_clauses_and_reuse_name_placeholders() {
        let mut ph = Placeholders::default();
        let expr = ph
            .update(&[
                UpdateAction::Add("n".into(), 2),
                UpdateAction::Set("s".into(), "x".into()),
                UpdateAction::SetIfNotExists("f".into(), Value::N(1)),
                UpdateAction::Remove("r".into()),
            ])
            .unwrap_or_default();
        assert_eq!(
            expr.as_deref(),
            Some("SET #n1 = :v1, #n2 = if_not_exists(#n2, :v2) ADD #n0 :v0 REMOVE #n3")
        );
        let cond = ph.condition(&cmp("n", CmpOp::Lt, 9));
        assert_eq!(
            cond.as_deref(),
            Some("(attribute_type(#n0, :v3) AND #n0 < :v4)")
        );
    }

    #[test]
    fn one_attribute_in_two_actions_is_invalid() {
        let mut ph = Placeholders::default();
        let result = ph.update(&[
            UpdateAction::Add("n".into(), 1),
            UpdateAction::Remove("n".into()),
        ]);
        assert!(matches!(result, Err(StoreError::Invalid(_))), "{result:?}");
    }

    #[test]
    fn items_decode_without_the_key_attribute() {
        let attrs = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("k".into())),
            ("n".to_owned(), AttributeValue::N("-12".into())),
            ("s".to_owned(), AttributeValue::S("v".into())),
        ]);
        let item = from_attrs(&attrs).unwrap_or_default();
        assert_eq!(
            item,
            Item::from([
                ("n".into(), Value::N(-12)),
                ("s".into(), Value::S("v".into()))
            ])
        );
    }

    /// A loopback HTTP server standing in for DynamoDB: `answer` gets each request's body and
    /// returns the status, error type (`None` for a success) and JSON payload. Each connection
    /// is served on its own thread, so requests in flight together are answered together.
    /// Lives until the test process ends.
    fn endpoint<F>(answer: F) -> String
    where
        F: Fn(&[u8]) -> (u16, Option<&'static str>, String) + Send + Sync + 'static,
    {
        use std::io::{BufRead, BufReader, Read, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let answer = Arc::clone(&answer);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let (status, error_type, payload) = answer(&body);
                        let error_header = error_type
                            .map(|t| format!("x-amzn-errortype: {t}\r\n"))
                            .unwrap_or_default();
                        let response = format!(
                            "HTTP/1.1 {status} Answer\r\ncontent-type: application/x-amz-json-1.0\r\n\
                             {error_header}content-length: {}\r\n\r\n{payload}",
                            payload.len()
                        );
                        if out.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        url
    }

    /// An [`endpoint`] that answers every request with `status` and a DynamoDB error of type
    /// `error_type`, counting requests.
    fn failing_endpoint(status: u16, error_type: &'static str) -> (String, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        let url = endpoint(move |_| {
            seen.fetch_add(1, AtomicOrdering::SeqCst);
            let payload = format!(
                "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{error_type}\",\"message\":\"test\"}}"
            );
            (status, Some(error_type), payload)
        });
        (url, count)
    }

    fn store_at(url: &str, attempts: u32) -> DynamoStore {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build();
        DynamoStore::new(Client::from_conf(config), "t").with_retry(RetryPolicy {
            max_attempts: attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        })
    }

    fn touch() -> Write {
        Write {
            key: "k".into(),
            op: WriteOp::Update(vec![UpdateAction::Add("n".into(), 1)]),
            condition: Condition::Always,
        }
    }

    #[tokio::test]
    async fn throttling_is_retried_then_surfaced_as_retryable() {
        let (url, requests) = failing_endpoint(400, "ProvisionedThroughputExceededException");
        let result = store_at(&url, 3).write(touch()).await;
        assert!(matches!(result, Err(StoreError::Throttled)), "{result:?}");
        assert!(result.is_err_and(|e| e.is_retryable()));
        assert_eq!(requests.load(AtomicOrdering::SeqCst), 3);
    }

    #[tokio::test]
    async fn server_errors_are_retried_then_surfaced_as_unavailable() {
        let (url, requests) = failing_endpoint(500, "InternalServerError");
        let result = store_at(&url, 4).get_many(&["a".into(), "b".into()]).await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        assert_eq!(requests.load(AtomicOrdering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_missing_table_is_not_retried_and_names_the_table() {
        let (url, requests) = failing_endpoint(400, "ResourceNotFoundException");
        let result = store_at(&url, 4).transact(vec![touch()]).await;
        match result {
            Err(StoreError::Misconfigured(message)) => {
                assert!(message.contains("table t does not exist"), "{message}");
            }
            other => panic!("expected Misconfigured, got {other:?}"),
        }
        assert_eq!(requests.load(AtomicOrdering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_and_retryable() {
        // Bind and drop a listener: nothing listens on that port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let result = store_at(&format!("http://127.0.0.1:{port}"), 2)
            .put_many(vec![("k".into(), Item::new())])
            .await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
    }

    /// The puts of one `BatchWriteItem` body: their keys, in order.
    fn put_keys(body: &[u8]) -> Vec<String> {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        json["RequestItems"]["t"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                w["PutRequest"]["Item"]["pk"]["S"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    fn numbered(keys: impl Iterator<Item = usize>) -> Vec<(Key, Item)> {
        keys.map(|i| {
            let item = Item::from([("i".to_owned(), Value::N(i as i64))]);
            (format!("k{i}"), item)
        })
        .collect()
    }

    #[tokio::test]
    async fn batch_puts_send_every_chunk_together() {
        use std::sync::{Condvar, Mutex};
        // 91 puts naming 90 keys: four chunks of at most 25. Each request waits (up to 5 s)
        // until all four are in flight; sent one after another, only one ever would be.
        #[derive(Default)]
        struct Seen {
            in_flight: usize,
            most_in_flight: usize,
            keys: Vec<Vec<String>>,
        }
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let server = Arc::clone(&seen);
        let url = endpoint(move |body| {
            let (lock, all_here) = &*server;
            let mut s = lock.lock().unwrap();
            s.in_flight += 1;
            s.most_in_flight = s.most_in_flight.max(s.in_flight);
            s.keys.push(put_keys(body));
            all_here.notify_all();
            let (mut s, _) = all_here
                .wait_timeout_while(s, Duration::from_secs(5), |s| s.most_in_flight < 4)
                .unwrap();
            s.in_flight -= 1;
            (200, None, r#"{"UnprocessedItems":{}}"#.to_owned())
        });
        let mut items = numbered(0..90);
        items.push(("k7".into(), Item::new()));
        store_at(&url, 1).put_many(items).await.unwrap();

        let s = seen.0.lock().unwrap();
        assert_eq!(s.most_in_flight, 4, "chunks sent: {:?}", s.keys);
        assert!(s.keys.iter().all(|k| k.len() <= MAX_BATCH_WRITE));
        let mut keys: Vec<&String> = s.keys.iter().flatten().collect();
        keys.sort();
        let mut expected: Vec<String> = (0..90).map(|i| format!("k{i}")).collect();
        expected.sort();
        assert_eq!(keys, expected.iter().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_failed_chunk_is_reported_after_the_others_have_answered() {
        // The first chunk to arrive is refused at once; the others answer 300 ms later. The
        // call must not return (leaving them in flight) before they have.
        let arrived = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Arc::clone(&arrived), Arc::clone(&answered));
        let url = endpoint(move |_| {
            if a.fetch_add(1, AtomicOrdering::SeqCst) == 0 {
                let payload = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ValidationException","message":"item too large"}"#;
                return (400, Some("ValidationException"), payload.to_owned());
            }
            std::thread::sleep(Duration::from_millis(300));
            b.fetch_add(1, AtomicOrdering::SeqCst);
            (200, None, r#"{"UnprocessedItems":{}}"#.to_owned())
        });
        let result = store_at(&url, 1).put_many(numbered(0..60)).await;
        match result {
            Err(StoreError::Invalid(message)) => {
                assert!(message.contains("too large"), "{message}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert_eq!(arrived.load(AtomicOrdering::SeqCst), 3);
        assert_eq!(answered.load(AtomicOrdering::SeqCst), 2);
    }

    #[test]
    fn backoff_stays_under_its_doubling_ceiling_and_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        for retry in 0..8 {
            let ceiling = Duration::from_millis((10 << retry).min(50));
            for _ in 0..50 {
                assert!(policy.delay(retry) <= ceiling, "retry {retry}");
            }
        }
    }
}
