//! The checks of a decision that need worker state (`decide::Checks`), run the same way by
//! every front end: the per-client limits (a mutable per-worker limiter) and the basic-auth
//! password check (a per-worker cache of slow bcrypt results).

use std::time::Instant;

use super::Worker;
use super::decide::{Decision, LimitCheck};
use super::request::RequestView;

/// Runs `decision`'s checks for `view` and applies their outcome. The returned guard holds the
/// request's place among its client's requests in progress until it drops.
pub(super) fn run<'s, 'r, 'w>(
    worker: &'w Worker,
    decision: &mut Decision<'s, 'r>,
    view: &RequestView<'_>,
    start: Instant,
) -> Option<InProgress<'w>> {
    let checks = decision.checks();
    let (refused, in_progress) = match admit(worker, checks.limit, start) {
        Ok(held) => (None, held),
        Err(why) => (Some(why), None),
    };
    let authenticated = refused.is_none()
        && checks
            .auth
            .is_some_and(|auth| authenticated(worker, auth, view.header(b"authorization")));
    decision.after_checks(refused, authenticated);
    in_progress
}

/// Admits a request under its client's limits (a token per request, then a place among the
/// client's requests in progress, held until the returned guard drops); `Err`: why not.
fn admit<'w>(
    worker: &'w Worker,
    check: Option<LimitCheck>,
    now: Instant,
) -> Result<Option<InProgress<'w>>, &'static str> {
    let Some(c) = check else { return Ok(None) };
    if let Some(rate) = c.rate
        && !worker.limits.borrow_mut().admit(c.key, rate, now)
    {
        return Err("request rate limit exceeded");
    }
    let Some(max) = c.max_conns else { return Ok(None) };
    if !worker.limits.borrow_mut().begin(c.key, max) {
        return Err("too many requests in progress from this client");
    }
    Ok(Some(InProgress { worker, key: c.key }))
}

/// A request counted against its client's `limit-connections` until dropped.
pub(super) struct InProgress<'w> {
    worker: &'w Worker,
    key: (u64, std::net::IpAddr),
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.worker.limits.borrow_mut().end(self.key);
    }
}

/// Whether the `Authorization: Basic` credentials `header` are in `auth`'s list. Good ones are
/// remembered per worker: bcrypt is slow on purpose.
fn authenticated(worker: &Worker, auth: &crate::auth::BasicAuth, header: Option<&[u8]>) -> bool {
    let Some(value) = header else { return false };
    let mut k = crate::hash::Fnv::default();
    k.write(value);
    let key = crate::hash::mix(k.0 ^ auth.id);
    if worker.auth_ok.borrow().contains(&key) {
        return true;
    }
    let Some((user, password)) = crate::auth::credentials(value) else {
        return false;
    };
    let ok = auth
        .hash_of(&user)
        .is_some_and(|hash| crate::auth::verify(&password, hash));
    if ok {
        let mut cache = worker.auth_ok.borrow_mut();
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(key);
    }
    ok
}
