//! Choosing an endpoint, per worker: round-robin, least-request (power of two choices),
//! consistent hashing (rendezvous), cookie affinity, and passive outlier detection (consecutive
//! failures eject an endpoint for a while, never the last usable one). All of it is worker-local
//! state: no locks, no atomics; workers learn about failing endpoints independently.

use std::net::SocketAddr;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::config::UpstreamSettings;
use crate::policy::{Balance, MAX_TRIES, Policy, endpoint_key, rendezvous};
use crate::routes::Backend;

/// What one worker knows about one endpoint.
#[derive(Default)]
struct EpState {
    inflight: u32,
    /// Consecutive failures (connect errors, resets or timeouts before a response, 5xx).
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections so far: each one lasts longer (base × count, at most 10 × base).
    ejections: u32,
}

#[derive(Default)]
pub struct Balancer {
    /// The worker's index: where its round-robin positions start.
    index: usize,
    eps: FxHashMap<SocketAddr, EpState>,
    /// Per-backend round-robin positions, by backend name (survive table swaps).
    rr: FxHashMap<Box<str>, usize>,
}

/// Endpoints a request has tried, without allocating: their keys ([`endpoint_key`], 64-bit
/// hashes), 136 bytes where addresses took 520. It lives in every request's state, which a
/// connection's task is sized for, idle or not.
pub struct Tried {
    keys: [u64; MAX_TRIES],
    n: usize,
}

impl Default for Tried {
    fn default() -> Self {
        Tried {
            keys: [0; MAX_TRIES],
            n: 0,
        }
    }
}

impl Tried {
    pub fn push(&mut self, a: SocketAddr) {
        if self.n < MAX_TRIES {
            self.keys[self.n] = endpoint_key(a);
            self.n += 1;
        }
    }
    pub fn contains(&self, a: SocketAddr) -> bool {
        // Nothing tried yet (every first pick): no hashing.
        self.n > 0 && self.keys[..self.n].contains(&endpoint_key(a))
    }
    pub fn len(&self) -> usize {
        self.n
    }
}

/// What the request brings to the choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickInput {
    /// The hash of the request's `upstream-hash-by` key.
    pub key: Option<u64>,
    /// The affinity cookie's endpoint key.
    pub sticky: Option<u64>,
    /// A random number, for least-request's draw.
    pub seed: u64,
}

impl Balancer {
    pub fn new(index: usize) -> Balancer {
        Balancer {
            index,
            ..Balancer::default()
        }
    }

    fn usable(&self, a: SocketAddr, now: Instant) -> bool {
        self.eps.get(&a).and_then(|s| s.ejected_until).is_none_or(|t| now >= t)
    }

    /// The next endpoint for a request (`None`: every endpoint was tried).
    pub fn pick(
        &mut self,
        backend: &Backend,
        policy: &Policy,
        input: PickInput,
        tried: &Tried,
        now: Instant,
    ) -> Option<SocketAddr> {
        let (seed, index) = (input.seed, self.index);
        let eps = &backend.endpoints;
        let candidate = |a: &&SocketAddr| !tried.contains(**a);
        // Affinity first: the cookie's endpoint while it is there and healthy.
        if let Some(aff) = &policy.affinity
            && let Some(key) = input.sticky
            && let Some(&a) = eps.iter().find(|a| endpoint_key(**a) == key)
        {
            if !tried.contains(a) && self.usable(a, now) {
                return Some(a);
            }
            if !aff.change_on_failure && tried.len() > 0 {
                return None; // its endpoint failed: no other one for this client
            }
        }
        // Ejected endpoints only when nothing else is left: never eject the last one.
        let healthy = eps.iter().filter(candidate).any(|a| self.usable(*a, now));
        let n = eps.len();
        let start = match &policy.balance {
            Balance::RoundRobin => {
                let slot = match self.rr.get_mut(&*backend.name) {
                    Some(s) => s,
                    None => self.rr.entry(backend.name.clone()).or_insert(index),
                };
                let start = *slot % n.max(1);
                *slot = slot.wrapping_add(1);
                start
            }
            _ => 0,
        };
        let ok = |a: &SocketAddr| !tried.contains(*a) && (!healthy || self.usable(*a, now));
        match &policy.balance {
            Balance::RoundRobin => (0..n).map(|i| eps[(start + i) % n]).find(|a| ok(a)),
            Balance::LeastRequest => {
                let count = eps.iter().filter(|a| ok(a)).count();
                if count == 0 {
                    return None;
                }
                let nth = |k: usize| eps.iter().filter(|a| ok(a)).nth(k).copied();
                let a = nth((seed % count as u64) as usize)?;
                let b = nth(((seed >> 32) % count as u64) as usize)?;
                let load = |x: SocketAddr| self.eps.get(&x).map_or(0, |s| s.inflight);
                Some(if load(b) < load(a) { b } else { a })
            }
            Balance::Hash(_) => {
                let key = input.key.unwrap_or(0);
                eps.iter()
                    .filter(|a| ok(a))
                    .max_by_key(|a| rendezvous(key, endpoint_key(**a)))
                    .copied()
            }
        }
    }

    pub fn begin(&mut self, a: SocketAddr) {
        self.eps.entry(a).or_default().inflight += 1;
    }

    pub fn end(&mut self, a: SocketAddr) {
        if let Some(s) = self.eps.get_mut(&a) {
            s.inflight = s.inflight.saturating_sub(1);
        }
    }

    /// Records the outcome of a request on `a` (an endpoint of `backend`). After
    /// `settings.max_failures` consecutive failures it is ejected, unless that would leave more
    /// than the allowed share of the backend's endpoints (at least one) ejected, or none usable.
    /// `now` is read only for a failure: a success, the common case, costs no clock read.
    pub fn report(
        &mut self,
        a: SocketAddr,
        ok: bool,
        backend: &Backend,
        settings: &UpstreamSettings,
        now: impl FnOnce() -> Instant,
    ) {
        if ok {
            if let Some(s) = self.eps.get_mut(&a) {
                s.failures = 0;
            }
            return;
        }
        if settings.max_failures == 0 {
            return;
        }
        let now = now();
        let failures = {
            let s = self.eps.entry(a).or_default();
            s.failures += 1;
            s.failures
        };
        if failures < settings.max_failures || !self.usable(a, now) {
            return;
        }
        let n = backend.endpoints.len();
        let ejected = backend.endpoints.iter().filter(|e| !self.usable(**e, now)).count();
        let allowed = (n * usize::from(settings.max_ejection_percent) / 100).max(1);
        if ejected >= allowed || ejected + 1 >= n {
            return;
        }
        let s = self.eps.entry(a).or_default();
        s.ejections += 1;
        s.failures = 0;
        let factor = s.ejections.min(10);
        s.ejected_until = Some(now + settings.ejection_time * factor);
        tracing::warn!(
            upstream = %a,
            backend = %backend.name,
            for_s = (settings.ejection_time * factor).as_secs(),
            "endpoint ejected after {failures} consecutive failures (this worker)"
        );
    }

    /// Forgets endpoints with nothing to remember (called periodically).
    pub fn sweep(&mut self, now: Instant) {
        self.eps.retain(|_, s| {
            let ejected = s.ejected_until.is_some_and(|t| now < t);
            if !ejected && s.ejected_until.is_some() && s.failures == 0 {
                // Back for a while without failing: its next ejection starts short again.
                s.ejected_until = None;
                s.ejections = s.ejections.saturating_sub(1);
            }
            s.inflight > 0 || s.failures > 0 || ejected || s.ejections > 0
        });
    }
}
