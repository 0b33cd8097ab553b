//! Quota leases: what one process holds of the shared limits, and the pure rules that decide
//! what to take from the store and what a batch may spend.
//!
//! Every unit an instance holds was counted in the store by a successful conditional write, so
//! the shared counters always bound what every instance together can admit: a lease never lets
//! a window admit more than its limit. An instance spends what it holds without a store request
//! and takes more (the shortfall plus a prefetch) only when a batch needs more than it holds.
//! See docs/STATE.md, "Limiter: quota leases", for the reasoning and the bounds.
//!
//! # Targets
//! | target | item | held as |
//! |---|---|---|
//! | system day | `lim#sys#d#{day}` (`n`) | recipients, per limit |
//! | gateway day and hour | `lim#gw#{gateway}#d#{day}` (`n`, `hHH`) | recipients of that hour, per (day, hour) limits |
//! | burst bucket | `lim#gw#{gateway}#b#{C}#{T}` (`tat_us`) | tokens, each with its theoretical arrival time θ |
//! | sender day | `lim#gw#{gateway}#d#{day}#u#{sender}` (`n`) | recipients, per limit; prefetched only for a sender that is hot in this instance |
//!
//! A holding is tied to the terms it was taken under (the window and the limits): a request
//! decided under other terms (a bulk message under the transactional reserve, an operator's
//! limit override, the next hour) never spends it. What is held when its window ends lapses.
//!
//! # Bucket tokens
//! A token taken from the bucket has the theoretical arrival time θ its write gave it
//! (GCRA: the stored `tat_us` moves by one interval `T` per token). A leased token may be
//! spent from the moment it is taken until `θ + σ`, where σ is the bucket's slack
//! ([`super::BucketQuota::slack_us`]), and every write on the bucket keeps
//! `tat ≤ now + C·T − σ`. Then the tokens spent in any span `[a, b]` have distinct θ in
//! `[a − σ, b + C·T − σ]`, so at most `C + (b − a)/T + 1` are spent: the bound of the exact
//! bucket. σ is 0 for buckets under 100 tokens (exactly today's bucket); for larger ones it is
//! a tenth of the bucket's span, at most 1 s, and a single write can take at most `C − σ/T`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::clock::EpochMillis;
use crate::state::{Item, Key, get_n};

/// How much an instance takes ahead of its need. The defaults amortise the gateway and system
/// writes over several batches; [`LeasePolicy::EXACT`] takes exactly what each decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// A gateway-level or system lease covers this many times the current batch's need.
    pub batches_ahead: u64,
    /// A lease covers this many milliseconds of the instance's recent rate on its target.
    pub horizon_ms: u64,
    /// A prefetch never exceeds `1/share` of what is left of a limit after the need, so the
    /// last units of a limit are always taken exactly (a daily limit of 5 admits 5, across any
    /// number of instances).
    pub share: u64,
    /// A sender's counter is prefetched only when the sender takes at least this many
    /// recipients per second in this instance; below it, each batch writes what it needs.
    pub hot_sender_per_s: u64,
}

impl LeasePolicy {
    /// Takes exactly what each decision needs and keeps nothing: every decision is written.
    pub const EXACT: Self = Self {
        batches_ahead: 0,
        horizon_ms: 0,
        share: u64::MAX,
        hot_sender_per_s: u64::MAX,
    };

    /// Whether this policy never holds anything between decisions.
    pub fn is_exact(&self) -> bool {
        self.batches_ahead == 0 && self.horizon_ms == 0
    }
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            batches_ahead: 10,
            horizon_ms: 1_000,
            share: 32,
            hot_sender_per_s: 10,
        }
    }
}

/// The terms a counter holding was taken under: the window (the UTC hour for the gateway day
/// item, 0 for items whose key is the window) and the limits of the item's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Terms {
    pub(super) window: i64,
    pub(super) limits: [Option<u64>; 2],
    /// Units the sender used under the earlier layout that day (the day item's `u#{sender}`),
    /// added to every condition.
    pub(super) legacy: i64,
}

/// Demand per second on one target, for the prefetch: whole-second counts, and a smoothed
/// rate from the gaps between decisions (which knows the rate from the second decision on).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rate {
    second: i64,
    current: u64,
    previous: u64,
    /// When demand was last recorded, and the smoothed units per second at that time.
    last: Option<EpochMillis>,
    smoothed: u64,
}

/// A gap longer than this resets the smoothed rate: the instance was idle.
const RATE_MEMORY_MS: i64 = 2_000;

impl Rate {
    /// Records `units` demanded at `now`.
    pub(super) fn record(&mut self, now: EpochMillis, units: u64) {
        match self.last {
            Some(last) if now - last < RATE_MEMORY_MS => {
                // Decisions in the same millisecond count as a millisecond apart.
                let gap = u64::try_from((now - last).max(1)).unwrap_or(1);
                let instant = units.saturating_mul(1_000) / gap;
                self.smoothed = self.smoothed / 2 + instant / 2;
            }
            _ => self.smoothed = 0,
        }
        self.last = Some(now);
        let second = now.div_euclid(1_000);
        if second != self.second {
            self.previous = if second == self.second + 1 {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.second = second;
        }
        self.current = self.current.saturating_add(units);
    }

    /// Units demanded in the last whole second (0 when there was none).
    pub(super) fn last_second(&self) -> u64 {
        self.previous
    }

    /// Units per second: the largest of the last whole second, the current one and the
    /// smoothed rate.
    pub(super) fn per_second(&self) -> u64 {
        self.previous.max(self.current).max(self.smoothed)
    }
}

/// One counter item as this process knows it.
#[derive(Debug, Clone, Default)]
pub(super) struct CounterEntry {
    /// Units held, by the terms they were taken under (usually one entry).
    pub(super) holdings: Vec<(Terms, u64)>,
    /// The item's counters when last seen (`n`, and the hour's for the gateway day item), with
    /// the window they belong to; `None` before the first answer.
    pub(super) seen: Option<(i64, [i64; 2])>,
    /// When it was seen.
    pub(super) seen_at: EpochMillis,
    pub(super) rate: Rate,
    pub(super) touched: EpochMillis,
}

impl CounterEntry {
    pub(super) fn held(&self, terms: &Terms) -> u64 {
        self.holdings
            .iter()
            .find(|(t, _)| t == terms)
            .map_or(0, |(_, n)| *n)
    }

    pub(super) fn add(&mut self, terms: Terms, units: u64) {
        // Holdings of another window can never be spent again.
        self.holdings
            .retain(|(t, n)| *n > 0 && t.window == terms.window);
        match self.holdings.iter_mut().find(|(t, _)| *t == terms) {
            Some((_, n)) => *n = n.saturating_add(units),
            None => self.holdings.push((terms, units)),
        }
    }

    /// Spends `units` of the holding under `terms`; false (nothing spent) when it is short.
    pub(super) fn spend(&mut self, terms: &Terms, units: u64) -> bool {
        match self.holdings.iter_mut().find(|(t, _)| t == terms) {
            Some((_, n)) if *n >= units => {
                *n -= units;
                true
            }
            _ => units == 0,
        }
    }

    /// Takes every unit held under `terms` (to give them back).
    pub(super) fn take_all(&mut self, terms: &Terms) -> u64 {
        self.holdings
            .iter_mut()
            .find(|(t, _)| t == terms)
            .map_or(0, |(_, n)| std::mem::take(n))
    }

    pub(super) fn see(&mut self, window: i64, counts: [i64; 2]) {
        self.seen = Some((window, counts));
    }

    /// The stored counts last seen for `window` (0 for a window not seen).
    pub(super) fn seen_in(&self, window: i64) -> Option<[i64; 2]> {
        self.seen.filter(|(w, _)| *w == window).map(|(_, c)| c)
    }
}

/// Tokens with consecutive θ: `first`, `first + T`, … (`count` of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TokenRun {
    pub(super) first_us: i64,
    pub(super) count: u64,
}

/// One bucket item as this process knows it.
#[derive(Debug, Clone, Default)]
pub(super) struct BucketEntry {
    /// Tokens held, earliest θ first.
    pub(super) runs: Vec<TokenRun>,
    /// The stored `tat_us` when last seen.
    pub(super) seen_tat: Option<i64>,
    /// When it was seen (µs).
    pub(super) seen_at_us: i64,
    /// Whether another process was seen writing the bucket (its `tat` moved between two of
    /// this process's answers): then this process's view of it ages fast.
    pub(super) shared: bool,
    pub(super) rate: Rate,
    pub(super) touched: EpochMillis,
}

impl BucketEntry {
    /// Drops the tokens that can no longer be spent at `now_us` (θ + σ < now).
    pub(super) fn expire(&mut self, now_us: i64, interval_us: i64, slack_us: i64) {
        for run in &mut self.runs {
            let deadline = run.first_us.saturating_add(slack_us);
            if deadline < now_us && run.count > 0 {
                let late = now_us - deadline;
                let step = interval_us.max(1);
                let skip = u64::try_from((late + step - 1) / step).unwrap_or(u64::MAX);
                let skip = skip.min(run.count);
                run.count -= skip;
                run.first_us = run
                    .first_us
                    .saturating_add(i64::try_from(skip).unwrap_or(i64::MAX) * interval_us);
            }
        }
        self.runs.retain(|r| r.count > 0);
    }

    /// Tokens held (call [`BucketEntry::expire`] first).
    pub(super) fn held(&self) -> u64 {
        self.runs.iter().map(|r| r.count).sum()
    }

    /// Spends `units` tokens, earliest θ first; false (nothing spent) when short.
    pub(super) fn spend(&mut self, units: u64, interval_us: i64) -> bool {
        if self.held() < units {
            return false;
        }
        let mut left = units;
        for run in &mut self.runs {
            let n = left.min(run.count);
            run.count -= n;
            run.first_us = run
                .first_us
                .saturating_add(i64::try_from(n).unwrap_or(i64::MAX) * interval_us);
            left -= n;
            if left == 0 {
                break;
            }
        }
        self.runs.retain(|r| r.count > 0);
        true
    }

    /// Adds the `count` tokens a write took, the last of which has θ = `tat_after`.
    pub(super) fn add(&mut self, tat_after: i64, count: u64, interval_us: i64) {
        if count == 0 {
            return;
        }
        let span = i64::try_from(count - 1).unwrap_or(i64::MAX) * interval_us;
        self.runs.push(TokenRun {
            first_us: tat_after.saturating_sub(span),
            count,
        });
        self.runs.sort_by_key(|r| r.first_us);
    }
}

/// What one process holds of the shared limits, and what it last saw of them. Shared by the
/// clones of a pipeline; lives as long as the process (a Lambda instance), across batches.
#[derive(Debug, Default)]
pub struct Leases {
    policy: LeasePolicy,
    book: Mutex<Book>,
}

/// Maps keyed by item key. Hashed with foldhash: a process looks up a few keys per message,
/// and SipHash over 40-byte keys was a sixth of the decision's time. Its seed is random per
/// map, and the keys come from the process's own queue, not from the network.
type KeyMap<V> = HashMap<Key, V, foldhash::fast::RandomState>;

/// The entries, by item key.
#[derive(Debug, Default)]
pub(super) struct Book {
    pub(super) counters: Entries<CounterEntry>,
    pub(super) buckets: Entries<BucketEntry>,
    /// The day item as last read or written, when it still holds counters of the earlier
    /// layout (`u#{sender}`), by key.
    pub(super) legacy: KeyMap<Option<std::sync::Arc<Item>>>,
    /// The second entries were last pruned in.
    pruned: i64,
}

/// Entries (counters or buckets) by item key, in slots: a decision resolves each of its keys
/// once ([`Entries::entry`]) and reaches the entry again through its [`Handle`] without hashing
/// or comparing the key. A slot freed by pruning is reused under a new generation, so a stale
/// handle finds nothing (its holder looks the key up again).
#[derive(Debug)]
pub(super) struct Entries<E> {
    index: KeyMap<usize>,
    slots: Vec<EntrySlot<E>>,
    free: Vec<usize>,
}

impl<E> Default for Entries<E> {
    fn default() -> Self {
        Self {
            index: KeyMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct EntrySlot<E> {
    generation: u64,
    /// `None` when free.
    entry: Option<(Key, E)>,
}

/// Where an entry is (see [`Entries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handle {
    slot: usize,
    generation: u64,
}

impl<E: Default> Entries<E> {
    /// The entry of `key`, if there is one.
    pub(super) fn get(&self, key: &str) -> Option<&E> {
        self.find(None, key)
    }

    /// The entry of `key` and its handle, made empty on first use (the key is copied, for
    /// the slot and the index, only then).
    pub(super) fn entry(&mut self, key: &Key) -> (Handle, &mut E) {
        let slot = match self.index.get(key.as_str()) {
            Some(&slot) => slot,
            None => {
                let made = Some((key.clone(), E::default()));
                let slot = match self.free.pop() {
                    Some(slot) => {
                        let s = &mut self.slots[slot];
                        s.generation += 1;
                        s.entry = made;
                        slot
                    }
                    None => {
                        self.slots.push(EntrySlot {
                            generation: 0,
                            entry: made,
                        });
                        self.slots.len() - 1
                    }
                };
                self.index.insert(key.clone(), slot);
                slot
            }
        };
        let s = &mut self.slots[slot];
        let handle = Handle {
            slot,
            generation: s.generation,
        };
        match &mut s.entry {
            Some((_, e)) => (handle, e),
            None => unreachable!("an indexed slot holds its entry"),
        }
    }

    /// The slot `handle` was given for, unless its entry has been forgotten since.
    fn live(&self, handle: Handle) -> Option<usize> {
        let s = self.slots.get(handle.slot)?;
        (s.generation == handle.generation && s.entry.is_some()).then_some(handle.slot)
    }

    /// The entry of `key`: through `handle` (from [`Entries::entry`]) while it holds, without
    /// hashing the key; by the key when there is none or it went stale.
    pub(super) fn find(&self, handle: Option<Handle>, key: &str) -> Option<&E> {
        let slot = match handle.and_then(|h| self.live(h)) {
            Some(slot) => slot,
            None => *self.index.get(key)?,
        };
        self.slots.get(slot)?.entry.as_ref().map(|(_, e)| e)
    }

    /// [`Entries::find`], mutable.
    pub(super) fn find_mut(&mut self, handle: Option<Handle>, key: &str) -> Option<&mut E> {
        let slot = match handle.and_then(|h| self.live(h)) {
            Some(slot) => slot,
            None => *self.index.get(key)?,
        };
        self.slots.get_mut(slot)?.entry.as_mut().map(|(_, e)| e)
    }

    /// [`Entries::find_mut`], making the entry when there is none (it was forgotten).
    pub(super) fn find_or_make(&mut self, handle: Option<Handle>, key: &Key) -> &mut E {
        let slot = match handle.and_then(|h| self.live(h)) {
            Some(slot) => slot,
            None => self.entry(key).0.slot,
        };
        match &mut self.slots[slot].entry {
            Some((_, e)) => e,
            None => unreachable!("a live or just made slot holds its entry"),
        }
    }

    /// Forgets the entries for which `keep` is false.
    fn retain(&mut self, mut keep: impl FnMut(&E) -> bool) {
        for (slot, s) in self.slots.iter_mut().enumerate() {
            if let Some((key, e)) = &s.entry
                && !keep(e)
            {
                self.index.remove(key.as_str());
                s.entry = None;
                self.free.push(slot);
            }
        }
    }

    /// Every entry with its key.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Key, &E)> {
        self.slots
            .iter()
            .filter_map(|s| s.entry.as_ref().map(|(k, e)| (k, e)))
    }
}

/// Entries untouched for this long with nothing held are forgotten.
const FORGET_MS: i64 = 5_000;

impl Book {
    /// Forgets idle entries (at most once per second): a process sees many senders once.
    pub(super) fn prune(&mut self, now: EpochMillis) {
        let second = now.div_euclid(1_000);
        if second == self.pruned {
            return;
        }
        self.pruned = second;
        let cutoff = now - FORGET_MS;
        self.counters
            .retain(|e| e.touched >= cutoff || e.holdings.iter().any(|(_, n)| *n > 0));
        self.buckets
            .retain(|e| e.touched >= cutoff || !e.runs.is_empty());
    }

    /// What the earlier layout counted for `sender_lc` (lower case) in the day item `day_key`
    /// (its `u#{sender}` attribute), if that item was seen with counters of that layout.
    pub(super) fn legacy_count(&self, day_key: &str, sender_lc: &str) -> i64 {
        self.legacy
            .get(day_key)
            .and_then(Option::as_ref)
            .and_then(|item| get_n(item, &format!("u#{sender_lc}")))
            .unwrap_or(0)
    }
}

impl Leases {
    /// Leases taken by `policy`.
    pub fn new(policy: LeasePolicy) -> Self {
        Self {
            policy,
            book: Mutex::default(),
        }
    }

    /// Leases that hold nothing between decisions.
    pub fn exact() -> Self {
        Self::new(LeasePolicy::EXACT)
    }

    /// The policy.
    pub fn policy(&self) -> LeasePolicy {
        self.policy
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Book> {
        // Every update leaves the book whole (counts move in single steps).
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the day item `key` as read (its per-sender counters of the earlier layout, if it
    /// has any) for the rest of the process's UTC day.
    pub fn record_legacy(&self, key: Key, item: Option<Item>) {
        let legacy = item
            .filter(|i| i.keys().any(|a| a.starts_with("u#")))
            .map(std::sync::Arc::new);
        let mut book = self.lock();
        // One gateway-day item per key; other days' entries are of no more use.
        let day = key.rsplit('#').next().unwrap_or_default().to_owned();
        book.legacy.retain(|k, _| k.ends_with(day.as_str()));
        book.legacy.insert(key, legacy);
    }

    /// Those of `keys` (gateway day items of the earlier layout) this process has not read
    /// yet: a caller that reads state anyway reads them with it and hands each to
    /// [`Leases::record_legacy`], so the limit decision needs no read of its own.
    pub fn legacy_unseen<'k>(&self, keys: impl IntoIterator<Item = &'k Key>) -> Vec<Key> {
        let book = self.lock();
        keys.into_iter()
            .filter(|k| !book.legacy.contains_key(*k))
            .cloned()
            .collect()
    }

    /// Recipients this process holds for later messages, per item key (for tests and the
    /// load model).
    pub fn held(&self) -> Vec<(Key, u64)> {
        let book = self.lock();
        let mut out: Vec<(Key, u64)> = book
            .counters
            .iter()
            .map(|(k, e)| (k.clone(), e.holdings.iter().map(|(_, n)| n).sum::<u64>()))
            .chain(book.buckets.iter().map(|(k, e)| (k.clone(), e.held())))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }
}

/// The prefetch for a target: `want` capped by `1/share` of what is left after the need (when
/// the limit is known) and by `cap` (time left in the window at the current rate).
pub(super) fn prefetch(want: u64, room_after_need: Option<u64>, share: u64, cap: u64) -> u64 {
    let by_share = room_after_need.map_or(u64::MAX, |room| room / share.max(1));
    want.min(by_share).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_the_larger_of_the_last_second_and_this_one() {
        let mut r = Rate::default();
        r.record(10_100, 5);
        r.record(10_900, 5);
        assert_eq!(r.per_second(), 10);
        r.record(11_000, 1);
        assert_eq!(r.per_second(), 10);
        r.record(13_000, 2);
        assert_eq!(r.per_second(), 2, "a gap of a second forgets the old rate");
        // Ten every 40 ms: 250 a second, known from the gaps before a second has passed.
        let mut r = Rate::default();
        for i in 0..6 {
            r.record(20_000 + i * 40, 10);
        }
        assert!((200..=250).contains(&r.per_second()), "{}", r.per_second());
    }

    #[test]
    fn bucket_tokens_expire_at_their_theoretical_time_plus_the_slack() {
        let mut b = BucketEntry::default();
        // Five tokens with θ = 1_000, 1_100, …, 1_400 µs.
        b.add(1_400, 5, 100);
        b.expire(1_000, 100, 0);
        assert_eq!(b.held(), 5);
        b.expire(1_150, 100, 0);
        assert_eq!(b.held(), 3, "θ 1_000 and 1_100 are gone");
        b.expire(1_150, 100, 1_000);
        assert_eq!(b.held(), 3);
        assert!(b.spend(2, 100));
        assert_eq!(
            b.runs,
            vec![TokenRun {
                first_us: 1_400,
                count: 1
            }]
        );
        assert!(!b.spend(2, 100));
        b.expire(2_401, 100, 1_000);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn a_holding_is_spent_only_under_its_own_terms() {
        let t = Terms {
            window: 7,
            limits: [Some(100), None],
            legacy: 0,
        };
        let bulk = Terms {
            limits: [Some(90), None],
            ..t
        };
        let mut e = CounterEntry::default();
        e.add(t, 10);
        assert!(!e.spend(&bulk, 1));
        assert!(e.spend(&t, 10));
        assert!(!e.spend(&t, 1));
        e.add(t, 3);
        e.add(Terms { window: 8, ..t }, 2);
        assert_eq!(e.held(&t), 0, "the hour before lapsed");
    }

    #[test]
    fn a_handle_finds_its_entry_until_the_entry_is_forgotten() {
        let mut c = Entries::<CounterEntry>::default();
        let (a, b) = ("lim#a".to_owned(), "lim#b".to_owned());
        let (ha, e) = c.entry(&a);
        e.touched = 1;
        assert_eq!(c.entry(&a).0, ha, "one entry per key");
        assert_eq!(c.find(Some(ha), &a).map(|e| e.touched), Some(1));
        c.retain(|e| e.touched != 1);
        assert!(c.live(ha).is_none() && c.get(&a).is_none());
        // b takes a's slot: a's handle must not reach it, whichever key comes with it.
        let (hb, e) = c.entry(&b);
        e.touched = 2;
        assert_eq!(hb.slot, ha.slot);
        assert!(c.live(ha).is_none());
        assert!(c.find(Some(ha), &a).is_none() && c.find_mut(Some(ha), &a).is_none());
        assert_eq!(c.find(Some(hb), &b).map(|e| e.touched), Some(2));
        assert_eq!(c.find_mut(None, &b).map(|e| e.touched), Some(2));
        // A stale handle with its key makes the entry afresh, in another slot.
        c.find_or_make(Some(ha), &a).touched = 3;
        assert_eq!(c.get(&a).map(|e| e.touched), Some(3));
        assert_eq!(c.get(&b).map(|e| e.touched), Some(2));
        let mut keys: Vec<&str> = c.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["lim#a", "lim#b"]);
    }

    #[test]
    fn the_prefetch_never_takes_more_than_its_share_of_what_is_left() {
        assert_eq!(prefetch(40, Some(5), 32, u64::MAX), 0);
        assert_eq!(prefetch(40, Some(800), 8, u64::MAX), 40);
        assert_eq!(prefetch(40, Some(160), 8, u64::MAX), 20);
        assert_eq!(prefetch(40, None, 8, 12), 12);
    }
}
