//! The stable message-id hash behind `round_robin` and `weighted` routing.
//!
//! A retry of the same message must follow the same path, on any Lambda instance and after any
//! deploy, so the hash is fixed here rather than borrowed from `std` (whose `DefaultHasher` is
//! randomly seeded per process and unspecified across releases).
//!
//! The id's bytes are folded with FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`); each draw `k` then runs `seed + (k + 1) · 0x9e3779b97f4a7c15` through the
//! SplitMix64 finaliser. FNV-1a alone mixes its high bits poorly for short, similar ids
//! (`msg-1`, `msg-2`, …); the finaliser spreads every input bit over the whole word, which the
//! multiply-shift range reduction in [`MessageHash::below`] relies on.

/// The draws of one message id: a deterministic sequence of well-mixed 64-bit words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageHash {
    seed: u64,
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl MessageHash {
    /// The draws of `message_id` (hashed as its UTF-8 bytes).
    pub(crate) fn new(message_id: &str) -> Self {
        let seed = message_id.bytes().fold(FNV_OFFSET_BASIS, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        });
        Self { seed }
    }

    /// Draw number `k` as a uniform 64-bit word.
    pub(crate) fn word(self, k: u64) -> u64 {
        splitmix64_finish(
            self.seed
                .wrapping_add(k.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)),
        )
    }

    /// Draw number `k` reduced to `0..n` (0 when `n == 0`).
    ///
    /// Multiply-shift (`word · n / 2⁶⁴`) instead of `%`: no division, and the bias is at most
    /// `n / 2⁶⁴`, far below anything observable.
    pub(crate) fn below(self, k: u64, n: u64) -> u64 {
        let wide = u128::from(self.word(k)) * u128::from(n);
        // The high half of a 64×64 product always fits in 64 bits.
        u64::try_from(wide >> 64).unwrap_or(0)
    }
}

fn splitmix64_finish(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_seed_matches_the_published_function() {
        // FNV-1a 64 of "" is the offset basis and of "a" is 0xaf63dc4c8601ec8c
        // (reference values of the FNV specification).
        assert_eq!(MessageHash::new("").seed, FNV_OFFSET_BASIS);
        assert_eq!(MessageHash::new("a").seed, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn draws_are_stable_across_calls_and_differ_between_rounds() {
        let h = MessageHash::new("inv-2026-11-28-000123");
        assert_eq!(h.word(0), MessageHash::new("inv-2026-11-28-000123").word(0));
        assert_ne!(h.word(0), h.word(1));
        assert_ne!(h.word(0), MessageHash::new("inv-2026-11-28-000124").word(0));
    }

    #[test]
    fn below_stays_in_range() {
        for i in 0..1000 {
            let h = MessageHash::new(&format!("m{i}"));
            for n in [1, 2, 3, 7, 20] {
                assert!(h.below(0, n) < n);
            }
            assert_eq!(h.below(0, 0), 0);
        }
    }
}
