//! Acceptance evidence: what the providers' webhooks prove about whether they took a message,
//! kept against our message id for the sender.
//!
//! # Why
//! A provider call that times out after the request went out (ARCHITECTURE §3.2, `Ambiguous`)
//! leaves the sender not knowing whether the provider took the message. Sending it again risks a
//! duplicate; not sending it risks a lost message. The providers settle the question later, in
//! their webhooks: the webhook edge ([`crate::webhooks::edge`]) records here every event that
//! proves a provider had one of our messages, and the sender, before re-sending a message whose
//! earlier attempt may have gone through, looks the message up ([`lookup_many`]) and does not
//! send it again when evidence exists.
//!
//! # What counts as evidence
//! An authenticated provider event that carries our message id and shows the provider had the
//! message:
//! - the acceptance events, which have no delivery meaning of their own: Mailgun `accepted`,
//!   SendGrid `processed`, SES `Send`;
//! - the delivery outcomes, which can only follow an acceptance: delivered, deferred, bounced
//!   (permanent or temporary), dropped or rejected by the provider, complained.
//!
//! Opens, clicks and unsubscribes also follow an acceptance, but always come after one of the
//! events above and are not worth a write. The events per provider, the field carrying our id
//! and how soon each arrives are in docs/RELIABILITY.md, "Acceptance evidence".
//!
//! # Stored form and cost
//! Key `acc#{message_id}` ([`key`]); attributes `provider`, `event`, `at` (epoch ms, the
//! provider's time), `recorded_at` (epoch ms, ours), and when known `gateway` and `provider_id`.
//! [`TTL_ATTRIBUTE`] is [`RETENTION_MS`] after the write, in seconds, like the ledger's: the
//! evidence outlives every redelivery of the message.
//!
//! The first evidence wins ([`record`]: a put conditional on the item not existing), so the item
//! says when the provider first reported the message. Each recorded event costs one conditional
//! put of 1 WCU, also when the evidence was already there (a failed condition is billed): the
//! items stay under 1 KB (an id of at most 128 characters, a gateway id of at most 64, a
//! provider message id the normalisers keep to at most 255 bytes). Looking messages up costs one
//! `BatchGetItem` per 100 ids, strongly consistent, 1 RCU per id, found or not.

use std::collections::HashMap;

use crate::clock::EpochMillis;
use crate::ledger::RETENTION_MS;
use crate::state::{
    Condition, Item, Key, MAX_BATCH_GET, StateStore, StoreError, TTL_ATTRIBUTE, Value, Write,
    WriteOp, get_n, get_s,
};

const PROVIDER: &str = "provider";
const EVENT: &str = "event";
const AT: &str = "at";
const RECORDED_AT: &str = "recorded_at";
const GATEWAY: &str = "gateway";
const PROVIDER_ID: &str = "provider_id";

/// The store key of a message's acceptance evidence: `acc#{message_id}`.
pub fn key(message_id: &str) -> Key {
    format!("acc#{message_id}")
}

/// A provider's word that it had one of our messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The gateway whose webhook reported it, when the verifying key/topic names one gateway.
    pub gateway: Option<String>,
    /// "mailgun" | "sendgrid" | "amazon_ses"
    pub provider: String,
    /// The provider's id of the message, in the form its send API returns it (Mailgun's with
    /// angle brackets, SendGrid's `X-Message-Id`, SES's `MessageId`), when the event names it.
    pub provider_message_id: Option<String>,
    /// The provider's event name ("accepted", "processed", "Send", "delivered", ...).
    pub event: String,
    /// When the provider says it happened (epoch ms).
    pub at: EpochMillis,
}

impl Evidence {
    /// The stored item, written at `now` (epoch ms): it expires [`RETENTION_MS`] later.
    pub fn to_item(&self, now: EpochMillis) -> Item {
        let mut item = Item::from([
            (PROVIDER.to_owned(), Value::from(self.provider.as_str())),
            (EVENT.to_owned(), Value::from(self.event.as_str())),
            (AT.to_owned(), Value::N(self.at)),
            (RECORDED_AT.to_owned(), Value::N(now)),
            (
                TTL_ATTRIBUTE.to_owned(),
                Value::N(now.saturating_add(RETENTION_MS) / 1_000),
            ),
        ]);
        if let Some(gateway) = &self.gateway {
            item.insert(GATEWAY.to_owned(), Value::from(gateway.as_str()));
        }
        if let Some(id) = &self.provider_message_id {
            item.insert(PROVIDER_ID.to_owned(), Value::from(id.as_str()));
        }
        item
    }

    /// Reads a stored item; `None` when it lacks `provider`, `event` or `at` (not evidence this
    /// module wrote).
    pub fn from_item(item: &Item) -> Option<Self> {
        Some(Self {
            gateway: get_s(item, GATEWAY).map(str::to_owned),
            provider: get_s(item, PROVIDER)?.to_owned(),
            provider_message_id: get_s(item, PROVIDER_ID).map(str::to_owned),
            event: get_s(item, EVENT)?.to_owned(),
            at: get_n(item, AT)?,
        })
    }
}

/// First evidence wins: conditional put on the item not existing; a failed condition (evidence
/// already there, including our own write whose answer was lost and was retried) is `Ok(())`.
/// `now` (epoch ms) sets `recorded_at` and the expiry.
pub async fn record<S: StateStore + ?Sized>(
    store: &S,
    message_id: &str,
    evidence: &Evidence,
    now: EpochMillis,
) -> Result<(), StoreError> {
    // Either outcome leaves evidence of the message stored, which is all the sender asks.
    store
        .write(Write {
            key: key(message_id),
            op: WriteOp::Put(evidence.to_item(now)),
            condition: Condition::ItemNotExists,
        })
        .await
        .map(|_| ())
}

/// One `BatchGetItem` per 100 ids, strongly consistent; answers in order, `None` where there is
/// no evidence.
///
/// The chunks are read together, as [`crate::state::get_all`] reads them (it takes a
/// `&dyn StateStore`, which a `?Sized` generic store cannot be turned into, so the chunks are
/// read here). An id named twice is read once (DynamoDB refuses a `BatchGetItem` naming a key
/// twice) and answered at each place.
pub async fn lookup_many<S: StateStore + ?Sized>(
    store: &S,
    message_ids: &[&str],
) -> Result<Vec<Option<Evidence>>, StoreError> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(message_ids.len());
    let mut keys: Vec<Key> = Vec::with_capacity(message_ids.len());
    let places: Vec<usize> = message_ids
        .iter()
        .map(|id| {
            *index.entry(id).or_insert_with(|| {
                keys.push(key(id));
                keys.len() - 1
            })
        })
        .collect();
    let reads = keys
        .chunks(MAX_BATCH_GET)
        .map(|chunk| store.get_many(chunk));
    let mut found: Vec<Option<Evidence>> = Vec::with_capacity(keys.len());
    for read in futures::future::join_all(reads).await {
        found.extend(
            read?
                .into_iter()
                .map(|item| item.as_ref().and_then(Evidence::from_item)),
        );
    }
    Ok(places
        .into_iter()
        .map(|i| found.get(i).cloned().flatten())
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::state::counting::{item_size, write_units};
    use crate::state::memory::{LostAnswers, MemoryStore};

    const NOW: EpochMillis = 1_700_000_000_000;

    fn accepted(gateway: Option<&str>, at: EpochMillis) -> Evidence {
        Evidence {
            gateway: gateway.map(str::to_owned),
            provider: "mailgun".to_owned(),
            provider_message_id: Some("<20240101.1@mg.example.org>".to_owned()),
            event: "accepted".to_owned(),
            at,
        }
    }

    #[test]
    fn an_item_reads_back_as_the_evidence_with_the_ledger_retention_in_seconds() {
        let cases = [
            accepted(Some("mailgun-primary"), NOW - 5_000),
            Evidence {
                gateway: None,
                provider: "amazon_ses".to_owned(),
                provider_message_id: None,
                event: "Send".to_owned(),
                at: NOW,
            },
        ];
        for evidence in cases {
            let item = evidence.to_item(NOW);
            assert_eq!(Evidence::from_item(&item), Some(evidence.clone()));
            assert_eq!(
                get_n(&item, TTL_ATTRIBUTE),
                Some((NOW + RETENTION_MS) / 1_000)
            );
            assert_eq!(get_n(&item, RECORDED_AT), Some(NOW));
        }
        assert_eq!(key("inv-1"), "acc#inv-1");
        let mut partial = accepted(None, NOW).to_item(NOW);
        partial.remove(EVENT);
        assert_eq!(
            Evidence::from_item(&partial),
            None,
            "no event: not evidence"
        );
    }

    /// The largest item the edge can write (ids at their bounds) is under 1 KB: 1 WCU.
    #[test]
    fn the_largest_evidence_item_costs_one_write_unit() {
        let evidence = Evidence {
            gateway: Some("g".repeat(64)),
            provider: "amazon_ses".to_owned(),
            provider_message_id: Some("p".repeat(255)),
            event: "Rendering Failure".to_owned(),
            at: i64::MAX,
        };
        let id = "m".repeat(crate::message::MAX_ID_LEN);
        let size = item_size(&key(&id), &evidence.to_item(i64::MAX / 2));
        assert!(size < 1024, "{size} bytes");
        assert_eq!(write_units(size), 1);
    }

    #[tokio::test]
    async fn first_evidence_wins() {
        let store = MemoryStore::new();
        let first = accepted(Some("mailgun-primary"), NOW - 60_000);
        record(&store, "m-1", &first, NOW - 59_000).await.unwrap();
        let later = Evidence {
            event: "delivered".to_owned(),
            at: NOW,
            ..first.clone()
        };
        record(&store, "m-1", &later, NOW).await.unwrap();
        assert_eq!(
            lookup_many(&store, &["m-1"]).await.unwrap(),
            [Some(first.clone())]
        );
        let stored = store.snapshot()[&key("m-1")].clone();
        assert_eq!(
            get_n(&stored, RECORDED_AT),
            Some(NOW - 59_000),
            "the later write changed nothing"
        );
        assert_eq!(store.request_counts().writes, 2, "one conditional put each");
    }

    /// The store applies the put and the answer is lost; the retry finds the item and fails
    /// its condition: still recorded, and `Ok`.
    #[tokio::test]
    async fn a_write_applied_but_whose_answer_was_lost_is_ok() {
        let store = LostAnswers::default();
        let evidence = accepted(None, NOW);
        assert!(record(&store, "m-1", &evidence, NOW).await.is_ok());
        assert_eq!(
            store.0.request_counts().writes,
            2,
            "the write and its retry"
        );
        assert_eq!(
            lookup_many(&store, &["m-1"]).await.unwrap(),
            [Some(evidence)]
        );
    }

    #[tokio::test]
    async fn lookups_answer_in_order_with_one_read_per_hundred_ids() {
        let store = MemoryStore::new();
        let ids: Vec<String> = (0..250).map(|i| format!("m-{i}")).collect();
        for id in ids.iter().filter(|id| id.ends_with('7')) {
            record(&store, id, &accepted(None, NOW), NOW).await.unwrap();
        }
        let mut asked: Vec<&str> = ids.iter().map(String::as_str).collect();
        asked.push("m-7");
        asked.push("never-sent");
        let before = store.request_counts().reads;
        let found = lookup_many(&store, &asked).await.unwrap();
        assert_eq!(store.request_counts().reads - before, 3, "250 distinct ids");
        assert_eq!(found.len(), asked.len());
        for (id, evidence) in asked.iter().zip(&found) {
            assert_eq!(evidence.is_some(), id.ends_with('7'), "{id}");
        }
        assert_eq!(lookup_many(&store, &[]).await.unwrap(), []);
        assert_eq!(store.request_counts().reads - before, 3, "no ids, no read");
    }

    /// A [`MemoryStore`] refusing a read that names a key twice, as DynamoDB does.
    #[derive(Debug, Default)]
    struct DistinctReads(MemoryStore);

    #[async_trait::async_trait]
    impl StateStore for DistinctReads {
        async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Item>>, StoreError> {
            let distinct: std::collections::BTreeSet<&Key> = keys.iter().collect();
            if distinct.len() != keys.len() {
                return Err(StoreError::Invalid("duplicate keys".into()));
            }
            self.0.get_many(keys).await
        }

        async fn write(&self, write: Write) -> Result<crate::state::WriteOutcome, StoreError> {
            self.0.write(write).await
        }

        async fn transact(
            &self,
            writes: Vec<Write>,
        ) -> Result<crate::state::TransactOutcome, StoreError> {
            self.0.transact(writes).await
        }

        async fn put_many(&self, items: Vec<(Key, Item)>) -> Result<(), StoreError> {
            self.0.put_many(items).await
        }
    }

    /// A duplicated id would make DynamoDB refuse the whole `BatchGetItem`.
    #[tokio::test]
    async fn an_id_asked_twice_is_read_once() {
        let store = DistinctReads::default();
        record(&store, "m-1", &accepted(None, NOW), NOW)
            .await
            .unwrap();
        let found = lookup_many(&store, &["m-1", "m-2", "m-1"]).await.unwrap();
        assert_eq!(
            found.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true]
        );
    }
}
