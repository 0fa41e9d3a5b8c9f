//! Exponential backoff with full jitter: the delay before retry `n` is uniform in
//! `[0, min(cap, base·2ⁿ)]`, so thousands of agents that lost the bastion at the
//! same instant spread their reconnects over the whole window instead of arriving
//! in waves (the thundering herd that hurt Teleport, #6889).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, uniform in `[0, ceiling]`; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceilings = vec![];
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(1));
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_spread_not_fixed() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
            seen.insert(b.next_delay().as_millis());
        }
        assert!(
            seen.len() > 10,
            "jitter produced only {} distinct delays",
            seen.len()
        );
    }

    #[test]
    fn every_delay_stays_within_its_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(800));
        let mut below_half = 0;
        for _ in 0..400 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} is above the ceiling {ceiling:?}");
            if d < ceiling / 2 {
                below_half += 1;
            }
        }
        // Full jitter: about half of the delays fall in the lower half. A delay
        // pinned to the ceiling (no jitter) would give none.
        assert!(
            below_half > 100,
            "only {below_half} of 400 delays in the lower half"
        );
    }

    /// After a long-lived channel drops, the first retry is quick (at most the
    /// base) yet spread, so the agents of a dead replica do not return together.
    #[test]
    fn the_first_retry_after_a_reset_is_short_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(15));
            for _ in 0..5 {
                b.next_delay();
            }
            b.reset();
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(500), "{d:?}");
            seen.insert(d.as_millis());
        }
        assert!(seen.len() > 20, "only {} distinct first delays", seen.len());
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
