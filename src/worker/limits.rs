//! Per-client limits of a rule (`limit-rps`/`limit-rpm`, `limit-connections`), per worker: a
//! token bucket and a count of requests in progress per (rule, client address). Worker-local
//! maps, swept of idle entries; a rule is identified by its `limit_id` (its owner, host and
//! path), so its buckets survive table rebuilds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::policy::Rate;

/// A rule and a client (SipHash: client addresses are outside input).
type Key = (u64, IpAddr);

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct Limiter {
    buckets: HashMap<Key, Bucket>,
    active: HashMap<Key, u32>,
}

impl Limiter {
    /// Takes a token for a request; `false` when the client is over its rate.
    pub fn admit(&mut self, key: Key, rate: Rate, now: Instant) -> bool {
        let b = self.buckets.entry(key).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_sec).min(rate.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts a request in progress; `false` (and nothing counted) when `max` are already.
    pub fn begin(&mut self, key: Key, max: u32) -> bool {
        let n = self.active.entry(key).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn end(&mut self, key: Key) {
        if let Some(n) = self.active.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.active.remove(&key);
            }
        }
    }

    /// Drops buckets untouched for a minute (full again by then for any rate of 1/min or more).
    pub fn sweep(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at) < Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_the_burst_then_the_rate() {
        let mut l = Limiter::default();
        let key = (1, IpAddr::from([192, 0, 2, 1]));
        let rate = Rate {
            per_sec: 2.0,
            burst: 4.0,
        };
        let t0 = Instant::now();
        assert_eq!((0..6).filter(|_| l.admit(key, rate, t0)).count(), 4);
        // Half a second refills one token.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.admit(key, rate, t1));
        assert!(!l.admit(key, rate, t1));
        // Another client has its own bucket.
        assert!(l.admit((1, IpAddr::from([192, 0, 2, 2])), rate, t1));
    }

    #[test]
    fn requests_in_progress_are_counted_per_client() {
        let mut l = Limiter::default();
        let key = (1, IpAddr::from([192, 0, 2, 1]));
        assert!(l.begin(key, 2) && l.begin(key, 2));
        assert!(!l.begin(key, 2));
        l.end(key);
        assert!(l.begin(key, 2));
        l.end(key);
        l.end(key);
        assert!(l.active.is_empty());
    }
}
