//! Token buckets: per device (appends), per IP address (handshakes), and per node (failed
//! pairing joins).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use crate::sync::lock;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_second: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate: rate_per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Puts back a token taken for something that turned out not to count (capped at the
    /// burst).
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    fn is_full(&self, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate
            >= self.burst
    }
}

/// One bucket per key (such as an IP address), forgetting keys whose bucket is full again.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

/// Above this many keys, full buckets are swept out on the next check.
const SWEEP_ABOVE: usize = 10_000;

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter allowing `rate_per_second` per key with bursts of `burst`.
    pub fn new(rate_per_second: f64, burst: f64) -> Self {
        Self {
            rate: rate_per_second,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`.
    pub fn try_take(&self, key: &K, now: Instant) -> bool {
        let mut buckets = lock(&self.buckets);
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .try_take(now)
    }
}

/// One bucket for the whole node, shared by every connection.
#[derive(Debug)]
pub struct NodeLimiter {
    bucket: Mutex<TokenBucket>,
}

impl NodeLimiter {
    /// A limiter allowing `rate_per_second` with bursts of `burst`, starting full.
    pub fn new(rate_per_second: f64, burst: f64) -> Self {
        Self {
            bucket: Mutex::new(TokenBucket::new(
                rate_per_second,
                burst.max(1.0),
                Instant::now(),
            )),
        }
    }

    /// Takes a token if there is one.
    pub fn try_take(&self, now: Instant) -> bool {
        lock(&self.bucket).try_take(now)
    }

    /// Puts a token back.
    pub fn give_back(&self) {
        lock(&self.bucket).give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert!(bucket.try_take(start + Duration::from_millis(100)));
        assert!(!bucket.try_take(start + Duration::from_millis(100)));
    }

    #[test]
    fn a_node_bucket_is_shared_and_takes_tokens_back() {
        let limiter = NodeLimiter::new(1.0, 2.0);
        let now = Instant::now();
        assert!(limiter.try_take(now));
        assert!(limiter.try_take(now));
        assert!(!limiter.try_take(now));
        limiter.give_back();
        assert!(limiter.try_take(now));
        assert!(!limiter.try_take(now));
        // Never above the burst, however many come back.
        for _ in 0..5 {
            limiter.give_back();
        }
        assert!(limiter.try_take(now) && limiter.try_take(now));
        assert!(!limiter.try_take(now));
        assert!(limiter.try_take(now + Duration::from_secs(1)));
    }

    #[test]
    fn keys_are_independent_and_swept() {
        let limiter = KeyedLimiter::new(1.0, 1.0);
        let now = Instant::now();
        assert!(limiter.try_take(&1, now));
        assert!(!limiter.try_take(&1, now));
        assert!(limiter.try_take(&2, now));
        for key in 0..(SWEEP_ABOVE as u32 + 10) {
            limiter.try_take(&key, now);
        }
        let later = now + Duration::from_secs(5);
        assert!(limiter.try_take(&1, later));
        assert!(limiter.buckets.lock().unwrap().len() < SWEEP_ABOVE);
    }
}
