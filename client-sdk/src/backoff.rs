//! Jittered exponential backoff between reconnection attempts.

use std::time::Duration;

use rand_core::RngCore;

/// Waits that double from `min` to `max`; each is drawn uniformly from its upper half, so
/// clients that lost the relay at the same moment do not all come back at the same moment.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait before the next attempt; later calls wait longer, up to `max`.
    pub fn next_delay(&mut self, rng: &mut impl RngCore) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let half = ceiling_ns / 2;
        let jitter = match half {
            0 => 0,
            half => rng.next_u64() % (half + 1),
        };
        Duration::from_nanos(ceiling_ns - half + jitter)
    }

    /// Back to the shortest wait (after a connection that worked).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..20 {
            let wait = backoff.next_delay(&mut OsRng);
            assert!(
                wait <= ceiling && wait >= ceiling / 2,
                "{wait:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(Duration::from_secs(30));
        }
        assert_eq!(ceiling, Duration::from_secs(30));
        backoff.reset();
        assert!(backoff.next_delay(&mut OsRng) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_the_waits() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(backoff.next_delay(&mut OsRng));
        }
        assert!(seen.len() > 10);
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_delay(&mut OsRng), Duration::ZERO);
    }
}
