//! The route table: host → path rules → backend. Built whole from its sources by pure functions,
//! never patched in place, and published to the workers behind an atomic pointer.
//!
//! Matching follows Kubernetes Ingress semantics: hosts are exact or `*.suffix` (exactly one
//! extra label), case-insensitive, port ignored; paths are `Exact` or `Prefix` (element-wise by
//! `/`); the longest match wins and `Exact` beats `Prefix` at equal length. A request for a host
//! that has rules but no matching path is *not* tried against the any-host rules (as
//! ingress-nginx, whose host-less rules live in the default server); it goes to the table's
//! default backend, or 404.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;

use crate::config::{PathType, StaticRoute};

/// Index of a backend in [`RouteTable::backends`].
pub type BackendId = usize;

/// A set of endpoints that requests are balanced over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Stable name (`namespace/service:port` for Kubernetes, the route name for static routes);
    /// per-worker balancer state is keyed by it so it survives table swaps.
    pub name: Box<str>,
    pub endpoints: Vec<SocketAddr>,
    /// Request body limit for this backend; `None` = the `[client]` default.
    pub max_body: Option<u64>,
}

/// Path rules of one host.
#[derive(Debug, Clone, Default)]
struct HostRules {
    exact: HashMap<Box<str>, BackendId>,
    /// Prefix rules without trailing slash (except the root `/`), longest first.
    prefix: Vec<(Box<str>, BackendId)>,
}

impl HostRules {
    fn find(&self, path: &str) -> Option<BackendId> {
        // An exact match covers the whole path, so it is at least as long as any prefix match
        // and wins ties: look it up first.
        if let Some(&id) = self.exact.get(path) {
            return Some(id);
        }
        self.prefix
            .iter()
            .find(|(p, _)| prefix_matches(p, path))
            .map(|&(_, id)| id)
    }

    fn add(&mut self, path: &str, path_type: PathType, id: BackendId) -> bool {
        match path_type {
            PathType::Exact => match self.exact.entry(path.into()) {
                Entry::Occupied(_) => false,
                Entry::Vacant(v) => {
                    v.insert(id);
                    true
                }
            },
            PathType::Prefix => {
                let p = normalize_prefix(path);
                if self.prefix.iter().any(|(q, _)| **q == *p) {
                    return false;
                }
                self.prefix.push((p.into(), id));
                // Stable sort keeps insertion order among equal lengths (they cannot both match).
                self.prefix.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
                true
            }
        }
    }
}

/// `/aaa/` and `/aaa` are the same prefix rule; `/` stays `/`.
fn normalize_prefix(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

/// Element-wise prefix match: `/aaa` matches `/aaa`, `/aaa/`, `/aaa/b`, never `/aaab`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The immutable routing table the workers read.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<str>, HostRules>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, HostRules>,
    any: Option<HostRules>,
    default_backend: Option<BackendId>,
    pub backends: Vec<Backend>,
}

/// Longest host kedge will look up (DNS names are at most 253 bytes).
const MAX_HOST: usize = 253;

impl RouteTable {
    /// Finds the backend for a request. `host` is the Host header value as received (any case,
    /// maybe with a port); `path` is the request target's path (no query).
    pub fn route(&self, host: &[u8], path: &str) -> Option<&Backend> {
        let mut buf = [0u8; MAX_HOST];
        let rules = match normalize_host(host, &mut buf) {
            Some(h) => self.host_rules(h),
            None => self.any.as_ref(),
        };
        let id = match rules {
            Some(r) => r.find(path).or(self.default_backend),
            None => self.default_backend,
        }?;
        self.backends.get(id)
    }

    fn host_rules(&self, host: &str) -> Option<&HostRules> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        // `*.foo.com` matches exactly one extra label: strip the first label and look up the rest.
        if let Some((first, rest)) = host.split_once('.')
            && !first.is_empty()
            && !rest.is_empty()
            && let Some(r) = self.wildcard.get(rest)
        {
            return Some(r);
        }
        self.any.as_ref()
    }

    /// Number of host entries (exact, wildcard, and the any-host one).
    pub fn host_count(&self) -> usize {
        self.exact.len() + self.wildcard.len() + usize::from(self.any.is_some())
    }
}

/// Lower-cases `host` into `buf` without its port or a trailing dot. `None` when it is empty,
/// too long, or not plain ASCII (such a host can match no rule but the any-host ones).
fn normalize_host<'b>(host: &[u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let host = if let Some(rest) = host.strip_prefix(b"[") {
        // IPv6 literal: keep the brackets' content.
        &rest[..rest.iter().position(|&b| b == b']')?]
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) => &host[..i],
            None => host,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..host.len()];
    for (o, &b) in out.iter_mut().zip(host) {
        if !b.is_ascii_graphic() {
            return None;
        }
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// Builds a table from static routes. Returns the table and warnings for rules that lost to an
/// earlier identical rule (first one wins, as for Ingresses the oldest wins).
pub fn build_static(routes: &[StaticRoute]) -> (RouteTable, Vec<String>) {
    let mut table = RouteTable::default();
    let mut warnings = Vec::new();
    for r in routes {
        let id = table.backends.len();
        table.backends.push(Backend {
            name: r.name.as_str().into(),
            endpoints: r.upstreams.clone(),
            max_body: r.max_body,
        });
        let rules = match &r.host {
            None => table.any.get_or_insert_with(HostRules::default),
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => table.wildcard.entry(suffix.into()).or_default(),
                None => table.exact.entry(h.as_str().into()).or_default(),
            },
        };
        if !rules.add(&r.path, r.path_type, id) {
            warnings.push(format!(
                "route {:?}: host {} path {} ({:?}) is already routed by an earlier route; ignored",
                r.name,
                r.host.as_deref().unwrap_or("*"),
                r.path,
                r.path_type
            ));
        }
    }
    (table, warnings)
}

#[cfg(test)]
mod tests;
