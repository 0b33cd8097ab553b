//! The pure part of a batch's decisions (no I/O), shared by [`super::Pipeline`] and the
//! `decision` benchmark: which gateways a batch may use and which state items to read for
//! them, the router's view of those gateways built from the items read (and, for limits, from
//! what the process's leases last saw), and the limit plans the limiter decides with.
//!
//! What depends only on the config and the UTC hour (every item key, the hour's counter
//! attribute) is made once per hour per process ([`KeyBook`]) rather than formatted for every
//! batch, and each message is ranked once: the gateways to read are found with the router's
//! state-independent filters ([`Router::mark_reachable`]), not by routing on an empty state.

use std::borrow::Borrow;
use std::sync::{Arc, Mutex, PoisonError};

use crate::breaker;
use crate::clock::{EpochMillis, utc_hour};
use crate::config::Config;
use crate::health::{self, HealthRecord};
use crate::levers::{self, Levers};
use crate::limiter::{self, HourKeys, Leases, LimitPlan};
use crate::router::{BreakerView, GatewayState, RouteRequest, Router, StaticRoute};
use crate::state::{Item, Key};

/// The keys a batch reads (one `get_many`) and where each gateway's items are among them, so
/// the items read are found by position: no key is hashed per lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadList {
    keys: Vec<Key>,
    /// Per gateway (indexed like `config.gateways`; unread gateways have no slots).
    slots: Vec<Slots>,
    /// The pause-all lever's item (read whenever any gateway is).
    all_levers: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slots {
    breaker: Option<usize>,
    health: Option<usize>,
    levers: Option<usize>,
}

impl ReadList {
    /// The keys to read, in the order the items are expected.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Where the pause-all lever's item is among [`ReadList::keys`]: always the last key, so a
    /// caller holding a recent copy can read the keys before it and put its copy there.
    pub fn all_levers_slot(&self) -> Option<usize> {
        self.all_levers
    }

    /// The items read (`items` aligned with [`ReadList::keys`]), by gateway.
    pub fn read<'a, I: Borrow<Item>>(&'a self, items: &'a [Option<I>]) -> Read<'a, I> {
        Read { list: self, items }
    }
}

/// The items of one read, by gateway.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a, I> {
    list: &'a ReadList,
    items: &'a [Option<I>],
}

impl<'a, I: Borrow<Item>> Read<'a, I> {
    fn at(&self, slot: Option<usize>) -> Option<&'a Item> {
        self.items.get(slot?)?.as_ref().map(Borrow::borrow)
    }

    fn slots(&self, g: usize) -> Slots {
        self.list.slots.get(g).copied().unwrap_or_default()
    }

    /// Whether gateway `g`'s items were read (it is reachable by some message of the batch).
    pub fn has(&self, g: usize) -> bool {
        self.slots(g).breaker.is_some()
    }

    /// Gateway `g`'s breaker item.
    pub fn breaker(&self, g: usize) -> Option<&'a Item> {
        self.at(self.slots(g).breaker)
    }

    /// Gateway `g`'s health record item.
    pub fn health(&self, g: usize) -> Option<&'a Item> {
        self.at(self.slots(g).health)
    }

    /// The operator levers of all sending and of gateway `g`.
    pub fn levers(&self, g: usize) -> (Levers, Levers) {
        (self.all_levers(), self.gateway_levers(g))
    }

    /// The operator levers of all sending.
    pub fn all_levers(&self) -> Levers {
        Levers::from_item(self.at(self.list.all_levers))
    }

    /// The operator levers of gateway `g`.
    pub fn gateway_levers(&self, g: usize) -> Levers {
        Levers::from_item(self.at(self.slots(g).levers))
    }
}

/// Key lists remembered per book (one per distinct set of reachable gateways): most batches
/// reach the same few sets, so the list is made once an hour rather than cloned per batch.
const REMEMBERED_READS: usize = 16;

/// The router with the keys of the current hour. Cheap to share; `Clone` keeps the keys made.
#[derive(Debug)]
pub struct Decider {
    router: Router,
    /// The config as bulk messages see it ([`crate::config::SystemLimits::bulk_config`]).
    bulk: Arc<Config>,
    book: Mutex<Option<Arc<KeyBook>>>,
}

impl Clone for Decider {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            bulk: Arc::clone(&self.bulk),
            book: Mutex::new(self.current()),
        }
    }
}

/// The state keys of every configured gateway for one UTC hour (indexed like
/// `config.gateways`).
#[derive(Debug)]
pub struct KeyBook {
    hour: i64,
    gateways: Vec<GatewayKeys>,
    /// Key lists made by [`Decider::keys_to_read`], by reachable set, most recent last.
    reads: Mutex<Vec<(Vec<bool>, Arc<ReadList>)>>,
}

#[derive(Debug, Clone, PartialEq)]
struct GatewayKeys {
    breaker: Key,
    levers: Key,
    /// Only for gateways whose `health_check` is on: the router ignores health otherwise.
    health: Option<Key>,
    limits: HourKeys,
}

impl KeyBook {
    /// The keys of `config`'s gateways for the UTC hour of `now` (made by [`Decider::keys`],
    /// so a book always belongs to its decider's config).
    fn new(config: &Config, now: EpochMillis) -> Self {
        Self {
            hour: utc_hour(now),
            gateways: config
                .gateways
                .iter()
                .map(|g| GatewayKeys {
                    breaker: breaker::key(&g.id),
                    levers: levers::key(&levers::Target::Gateway(g.id.clone())),
                    health: g.health_check.enabled.then(|| health::key(&g.id)),
                    limits: limiter::hour_keys(config, g, now),
                })
                .collect(),
            reads: Mutex::new(Vec::new()),
        }
    }

    /// Whether the keys hold at `now`.
    pub fn covers(&self, now: EpochMillis) -> bool {
        utc_hour(now) == self.hour
    }
}

impl Decider {
    /// A decider over `config`.
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            bulk: Arc::new(crate::config::SystemLimits::bulk_config(&config)),
            router: Router::new(config),
            book: Mutex::new(None),
        }
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The effective config.
    pub fn config(&self) -> &Arc<Config> {
        self.router.config()
    }

    /// The config as bulk messages see it: every day and hour limit less the transactional
    /// reserve.
    pub fn bulk_config(&self) -> &Arc<Config> {
        &self.bulk
    }

    fn current(&self) -> Option<Arc<KeyBook>> {
        self.book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The keys for `now`: made once per UTC hour (or when the clock moves back across an
    /// hour), then shared.
    pub fn keys(&self, now: EpochMillis) -> Arc<KeyBook> {
        let mut slot = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(book) if book.covers(now) => Arc::clone(book),
            _ => {
                let book = Arc::new(KeyBook::new(self.config(), now));
                *slot = Some(Arc::clone(&book));
                book
            }
        }
    }

    /// Which gateways (indexed like `config.gateways`) any of `requests` may be routed to on
    /// any state (see [`Router::mark_reachable`]), and each request's
    /// [`Router::static_route`] (in order), for ranking it later without matching its sender
    /// again.
    pub fn reach<'m>(
        &self,
        requests: impl IntoIterator<Item = RouteRequest<'m>>,
    ) -> (Vec<bool>, Vec<Option<StaticRoute>>) {
        let mut marks = vec![false; self.config().gateways.len()];
        let fixed = requests
            .into_iter()
            .map(|r| {
                let fixed = self.router.static_route(&r);
                match &fixed {
                    Some(f) => f.mark(&mut marks),
                    None => self.router.mark_reachable(&r, &mut marks),
                }
                fixed
            })
            .collect();
        (marks, fixed)
    }

    /// The breaker, health and lever keys of the `reachable` gateways, each once (the
    /// pause-all lever is shared by every gateway; limit items are not read: the limiter
    /// writes them conditionally and learns them from its answers), for one `get_many`. Made once per reachable set
    /// and hour, then shared.
    pub fn keys_to_read(&self, book: &KeyBook, reachable: &[bool]) -> Arc<ReadList> {
        let mut reads = book.reads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = reads.iter().position(|(set, _)| set == reachable) {
            let entry = reads.remove(i);
            let list = Arc::clone(&entry.1);
            reads.push(entry);
            return list;
        }
        let mut keys = Vec::new();
        let mut slots = vec![Slots::default(); book.gateways.len()];
        let add = |keys: &mut Vec<Key>, key: &Key| {
            keys.push(key.clone());
            Some(keys.len() - 1)
        };
        for ((keyed, read), slot) in book.gateways.iter().zip(reachable).zip(&mut slots) {
            if !read {
                continue;
            }
            slot.breaker = add(&mut keys, &keyed.breaker);
            slot.health = keyed.health.as_ref().and_then(|k| add(&mut keys, k));
            slot.levers = add(&mut keys, &keyed.levers);
        }
        let all_levers = (!keys.is_empty()).then(|| {
            keys.push(levers::ALL_KEY.to_owned());
            keys.len() - 1
        });
        let list = Arc::new(ReadList {
            keys,
            slots,
            all_levers,
        });
        if reads.len() == REMEMBERED_READS {
            reads.remove(0);
        }
        reads.push((reachable.to_vec(), Arc::clone(&list)));
        list
    }

    /// The day items of the earlier limiter layout that `leases` still need for the
    /// `reachable` gateways (see [`Leases::legacy_unseen`]): read with the batch's state, once
    /// per process and UTC day.
    pub fn legacy_keys(&self, book: &KeyBook, reachable: &[bool], leases: &Leases) -> Vec<Key> {
        leases.legacy_unseen(
            book.gateways
                .iter()
                .zip(reachable)
                .filter(|(_, r)| **r)
                .filter_map(|(k, _)| k.limits.legacy_key()),
        )
    }

    /// The limit plan of gateway `g` at `now`, from `book` when it covers `now` (no key
    /// formatted) and planned afresh otherwise.
    ///
    /// # Panics
    /// When `g` is not an index of `config.gateways` (every router candidate is one).
    pub fn limit_plan<'a>(
        &'a self,
        book: &'a KeyBook,
        g: usize,
        now: EpochMillis,
    ) -> LimitPlan<'a> {
        let gateway = &self.config().gateways[g];
        book.gateways
            .get(g)
            .and_then(|k| k.limits.plan(gateway, now))
            .unwrap_or_else(|| limiter::plan(self.config(), gateway, now))
    }

    /// The router's view of every gateway from the items `read` (made from `book`): breaker,
    /// health verdict, and the tightest limit level as this process last saw it through its
    /// own limit writes (`leases`; unknown until it first writes one, and left unknown when no
    /// strategy of the config ranks by it: only `least_loaded` does). Gateways whose items
    /// were not read get the default view; no message of the batch can be routed to them.
    pub fn view<I: Borrow<Item>>(
        &self,
        book: &KeyBook,
        read: &Read<'_, I>,
        leases: &Leases,
        now: EpochMillis,
    ) -> Vec<GatewayState> {
        let config = self.config();
        let all = read.all_levers();
        let ranks_by_remaining = self.router.ranks_by_remaining();
        (0..config.gateways.len())
            .map(|g| {
                if !read.has(g) {
                    return GatewayState::default();
                }
                let gateway = &config.gateways[g];
                let own = read.gateway_levers(g);
                let remaining = ranks_by_remaining.then(|| {
                    let overridden = own.limits_at(now).map(|o| o.applied_to(gateway));
                    let plan = match &overridden {
                        Some(gateway) => limiter::plan(config, gateway, now),
                        None => self.limit_plan(book, g, now),
                    };
                    limiter::remaining_seen(&plan, leases)
                });
                let record = HealthRecord::from_item(read.health(g));
                GatewayState {
                    health: health::routing_health(record.as_ref(), &gateway.health_check, now),
                    // A breaker forced closed is routed to whatever is stored.
                    breaker: if own.forced_closed(now) {
                        BreakerView::Closed
                    } else {
                        breaker::view(read.breaker(g), now)
                    },
                    remaining: remaining.flatten(),
                    held: levers::held(&all, &own, now),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::clock::HOUR_MS;
    use crate::config::load_config;

    /// 2026-11-28T12:30:00Z.
    const NOW: EpochMillis = 1_795_869_000_000;

    fn config() -> Arc<Config> {
        config_ranking_by("least_loaded")
    }

    fn config_ranking_by(strategy: &str) -> Arc<Config> {
        let doc = serde_json::json!({
            "routing": {"strategy": strategy},
            "gateways": [
                {"id": "a", "type": "simulated", "priority": 1, "simulated": {},
                 "routing": {"can_route": ["*@clinic.example"]},
                 "rate_limits": {"workspace_daily": 100, "per_hour": 10, "burst_limit": 5,
                                 "burst_refill_per_second": 1},
                 "health_check": {"enabled": true, "interval": "60s"}},
                {"id": "b", "type": "simulated", "priority": 2, "simulated": {},
                 "routing": {"can_route": ["*"], "exclude_patterns": ["*@internal.example"]},
                 "rate_limits": {"workspace_daily": 100},
                 "health_check": {"enabled": false}},
                {"id": "c", "type": "simulated", "priority": 3, "simulated": {},
                 "routing": {"can_route": ["*@internal.example"]}}
            ]
        })
        .to_string();
        let env = |name: &str| (name == "QUEUE_DAILY_RATE_LIMIT").then(|| "1000".to_owned());
        Arc::new(load_config(Some(&doc), None, &env).expect("valid").config)
    }

    fn req<'a>(id: &'a str, sender: &'a str) -> RouteRequest<'a> {
        RouteRequest {
            message_id: id,
            sender,
            pinned: None,
        }
    }

    #[test]
    fn keys_are_those_of_the_reachable_gateways_each_once() {
        let d = Decider::new(config());
        let book = d.keys(NOW);
        let (reachable, _) = d.reach([req("m1", "ann@clinic.example")]);
        assert_eq!(reachable, [true, true, false]);
        let list = d.keys_to_read(&book, &reachable);
        let keys = list.keys();
        let unique: BTreeSet<&Key> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "duplicate key in {keys:?}");
        let expected = [
            breaker::key("a"),
            breaker::key("b"),
            health::key("a"),
            "ctl#gw#a".to_owned(),
            "ctl#gw#b".to_owned(),
            levers::ALL_KEY.to_owned(),
        ];
        // No limit item: the limiter learns them from its own conditional writes.
        let expected: BTreeSet<&Key> = expected.iter().collect();
        assert_eq!(unique, expected);
        // The gateway without health checks has no health key read.
        assert!(!keys.contains(&health::key("b")));
        // The same set gets the same list; another set its own.
        assert!(Arc::ptr_eq(&list, &d.keys_to_read(&book, &reachable)));
        let other = d.keys_to_read(&book, &[true, false, false]);
        assert!(!other.keys().contains(&breaker::key("b")));
    }

    #[test]
    fn plans_from_the_book_equal_fresh_plans_and_the_book_follows_the_hour() {
        let d = Decider::new(config());
        let book = d.keys(NOW);
        assert!(
            Arc::ptr_eq(&book, &d.keys(NOW + 60_000)),
            "same hour, same book"
        );
        for (g, gateway) in d.config().gateways.iter().enumerate() {
            let from_book = d.limit_plan(&book, g, NOW);
            let fresh = limiter::plan(d.config(), gateway, NOW);
            assert_eq!(from_book.keys(), fresh.keys());
            // Outside the book's hour the plan is made afresh, with the next hour's windows.
            let later = NOW + HOUR_MS;
            let planned = d.limit_plan(&book, g, later);
            assert_eq!(planned.now(), later);
            assert_eq!(
                planned.keys(),
                limiter::plan(d.config(), gateway, later).keys()
            );
        }
        let next = d.keys(NOW + HOUR_MS);
        assert!(!Arc::ptr_eq(&book, &next));
        assert!(next.covers(NOW + HOUR_MS) && !next.covers(NOW));
    }

    #[tokio::test]
    async fn the_view_reads_breaker_and_health_and_takes_limits_from_what_the_process_saw() {
        let d = Decider::new(config());
        let book = d.keys(NOW);
        let config = d.config();
        let plan = limiter::plan(config, &config.gateways[0], NOW);
        let store = crate::state::memory::MemoryStore::new();
        let leases = Leases::exact();
        let reachable = [true, false, false];
        let list = d.keys_to_read(&book, &reachable);
        // Limit items are not read: the limiter learns them from its own writes.
        for key in plan.keys() {
            assert!(!list.keys().contains(key), "{key} read");
        }
        let mut items: std::collections::HashMap<Key, Item> = std::collections::HashMap::new();
        let open = breaker::BreakerState {
            phase: breaker::Phase::Open,
            generation: 1,
            opened_at: NOW - 30_000,
            until: NOW + 30_000,
            ..breaker::BreakerState::missing()
        };
        items.insert(breaker::key("a"), open.to_item());
        let read_items: Vec<Option<&Item>> = list.keys().iter().map(|k| items.get(k)).collect();
        let read = list.read(&read_items);
        let view = d.view(&book, &read, &leases, NOW);
        assert_eq!(
            view[0].breaker,
            breaker::BreakerView::Open {
                until: NOW + 30_000
            }
        );
        assert_eq!(view[0].remaining, None, "nothing written yet: unknown");
        assert_eq!(view[1], GatewayState::default());
        assert_eq!(view[2], GatewayState::default());
        // Gateway a takes 4 of its bucket's 5 (and 4 of 10 this hour).
        let verdicts = limiter::acquire_leased(
            &store,
            &leases,
            &plan,
            &[limiter::Request {
                sender: "ann@clinic.example",
                recipients: 4,
            }],
        )
        .await
        .expect("store");
        assert!(verdicts[0].is_admitted());
        let view = d.view(&book, &read, &leases, NOW);
        let remaining = view[0].remaining.expect("seen");
        assert!((remaining - 0.2).abs() < 1e-9, "remaining {remaining}");
        // A config that never ranks by it leaves it unknown (no book lookups per gateway).
        let failover = Decider::new(config_ranking_by("failover"));
        let view = failover.view(&failover.keys(NOW), &read, &leases, NOW);
        assert_eq!(view[0].remaining, None);
        assert_eq!(
            view[0].breaker,
            breaker::BreakerView::Open {
                until: NOW + 30_000
            }
        );
    }
}
