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

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;

pub mod gateway;

pub use gateway::Scopes;

/// How a rule's path matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathType {
    Prefix,
    Exact,
    /// A regex anchored at the start of the path, case-insensitive (ingress-nginx's
    /// `use-regex`).
    Regex,
}

/// Index of a backend in [`RouteTable::backends`].
pub type BackendId = usize;

/// A set of endpoints that requests are balanced over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Stable name (`namespace/service:port` for Kubernetes, the route name for static routes);
    /// per-worker balancer state is keyed by it so it survives table swaps.
    pub name: Box<str>,
    pub endpoints: Vec<SocketAddr>,
    /// TLS to the endpoints (`backend-protocol: HTTPS`); `None`: plain HTTP.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// The endpoints speak HTTP/2 (gRPC: `backend-protocol: GRPC|GRPCS`, `upstream_protocol =
    /// "grpc"|"grpcs"`), reached only from HTTP/2 clients; `false`: HTTP/1.1.
    pub h2: bool,
}

pub use crate::policy::Policy;

/// Where a rule sends a request, and what it does on the way.
#[derive(Debug, Clone)]
struct Target {
    backend: BackendId,
    policy: Arc<Policy>,
    /// A canary Ingress's share of this rule's traffic.
    canary: Option<Arc<Canary>>,
}

/// ingress-nginx canary: a second backend for a rule, chosen per request by header, cookie
/// or weight (in that order).
#[derive(Debug, Clone)]
pub struct Canary {
    pub backend: BackendId,
    /// `canary-by-header` (lower case) and `canary-by-header-value`: with a value, that value
    /// selects the canary; without, `always` / `never`.
    pub header: Option<(Box<str>, Option<Box<str>>)>,
    /// `canary-by-header-pattern`: a header value matching it (whole) selects the canary (when
    /// no `canary-by-header-value` is given).
    pub pattern: Option<regex::Regex>,
    /// `canary-by-cookie`: `always` / `never`.
    pub cookie: Option<Box<str>>,
    /// `canary-weight` out of `canary-weight-total`.
    pub weight: u32,
    pub total: u32,
}

/// One rule as the admin view shows it: host, path, type, backend, policy, canary backend.
pub type RuleView = (String, String, PathType, BackendId, Arc<Policy>, Option<BackendId>);

/// What a request is routed to.
pub struct Route<'t> {
    pub backend: &'t Backend,
    pub policy: &'t Policy,
    pub canary: Option<(&'t Canary, &'t Backend)>,
}

/// Path rules of one host.
#[derive(Debug, Clone, Default)]
struct HostRules {
    exact: HashMap<Box<str>, Target>,
    /// Regex rules (ingress-nginx's `use-regex`), anchored at the start of the path and
    /// case-insensitive; longest pattern first once built. Tried before the prefix rules, as
    /// nginx tries regex locations before settling for the longest prefix.
    regex: Vec<(regex::Regex, Target)>,
    /// Prefix rules without trailing slash (except the root `/`), longest first once built.
    prefix: Vec<(Box<str>, Target)>,
}

impl HostRules {
    fn find(&self, path: &str) -> Option<&Target> {
        // An exact match covers the whole path, so it is at least as long as any prefix match
        // and wins ties: look it up first.
        if let Some(t) = self.exact.get(path) {
            return Some(t);
        }
        if let Some((_, t)) = self.regex.iter().find(|(re, _)| re.is_match(path)) {
            return Some(t);
        }
        self.prefix
            .iter()
            .find(|(p, _)| prefix_matches(p, path))
            .map(|(_, t)| t)
    }

    /// Adds a rule; the builder has already refused duplicates.
    fn add(&mut self, path: &str, path_type: PathType, target: Target) {
        match path_type {
            PathType::Exact => {
                self.exact.insert(path.into(), target);
            }
            PathType::Prefix => {
                self.prefix.push((normalize_prefix(path).into(), target));
            }
            // Callers checked that it compiles; one that does not routes nothing.
            PathType::Regex => {
                if let Ok(re) = regex_path(path) {
                    self.regex.push((re, target));
                }
            }
        }
    }
}

/// A regex path as ingress-nginx writes its location: `~* "^PATH"` (case-insensitive, anchored
/// at the start only).
pub fn regex_path(path: &str) -> Result<regex::Regex, String> {
    build_regex(path, false, true)
}

/// kedge's one regex builder (RE2 syntax, 1 MiB compiled at most), for Ingress and Gateway
/// paths and headers: anchored at the start, and at the end too when `whole`; `ignore_case` as
/// it says. The error says what kedge does not support.
pub fn build_regex(pattern: &str, whole: bool, ignore_case: bool) -> Result<regex::Regex, String> {
    let end = if whole { "$" } else { "" };
    regex::RegexBuilder::new(&format!("^(?:{pattern}){end}"))
        .case_insensitive(ignore_case)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| match e {
            regex::Error::Syntax(s) => format!(
                "not a regex kedge supports (RE2 syntax, no look-around or backreferences): {}",
                s.lines().last().unwrap_or("")
            ),
            e => e.to_string(),
        })
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
    /// Hosts and paths: shared with the next table when only endpoints change.
    rules: Arc<Rules>,
    pub backends: Backends,
    /// Backend ids by name, for endpoint-only updates.
    ids: Arc<FxHashMap<Box<str>, BackendId>>,
}

/// The host → path → backend id part of a table. Each host's rules sit behind their own `Arc`
/// (keys too), so that a table built from the previous one ([`TableBuilder::update`]) shares
/// every host it does not rebuild: cloning the maps costs a pointer copy per host.
#[derive(Debug, Default)]
struct Rules {
    exact: HashMap<Arc<str>, Arc<HostRules>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Arc<str>, Arc<HostRules>>,
    any: Option<Arc<HostRules>>,
    default_backend: Option<Target>,
    /// Gateway API routes by local address and port; empty when no Gateway attaches a route.
    scopes: Scopes,
    /// The hosts both a Gateway route and an Ingress or static rule claim, as
    /// [`TableBuilder::gateway_overlaps`] found them (`None`: not asked), for the next update.
    overlaps: Option<Overlaps>,
}

/// Hosts both a Gateway route and an Ingress or static rule claim: (host, route, other owner).
type Overlaps = Arc<[(String, String, String)]>;

/// The policy of rules that set none: shared, so that rules without one cost a pointer.
fn no_policy() -> Arc<Policy> {
    static DEFAULT: std::sync::OnceLock<Arc<Policy>> = std::sync::OnceLock::new();
    Arc::clone(DEFAULT.get_or_init(|| Arc::new(Policy::default())))
}

/// Longest host kedge will look up (DNS names are at most 253 bytes).
pub const MAX_HOST: usize = 253;

impl RouteTable {
    /// Finds the backend for a request. `host` is the Host header value as received (any case,
    /// maybe with a port); `path` is the request target's path (no query).
    pub fn route(&self, host: &[u8], path: &str) -> Option<&Backend> {
        self.lookup(host, path).map(|(b, _)| b)
    }

    /// [`RouteTable::route`] with the matching rule's policy.
    pub fn lookup(&self, host: &[u8], path: &str) -> Option<(&Backend, &Policy)> {
        self.lookup_route(host, path).map(|r| (r.backend, r.policy))
    }

    /// [`RouteTable::lookup`] with the rule's canary.
    pub fn lookup_route(&self, host: &[u8], path: &str) -> Option<Route<'_>> {
        let mut buf = [0u8; MAX_HOST];
        self.lookup_key(normalize_host(host, &mut buf), path)
    }

    /// [`RouteTable::lookup_route`] for a host already normalised ([`normalize_host`]) (a request that may
    /// also look up Gateway rules normalises its host once).
    pub fn lookup_key(&self, host: Option<&str>, path: &str) -> Option<Route<'_>> {
        let rules = match host {
            Some(h) => self.rules.host_rules(h),
            None => self.rules.any.as_deref(),
        };
        let t = match rules {
            Some(r) => r.find(path).or(self.rules.default_backend.as_ref()),
            None => self.rules.default_backend.as_ref(),
        }?;
        Some(Route {
            backend: self.backends.get(t.backend)?,
            policy: &t.policy,
            canary: t
                .canary
                .as_deref()
                .and_then(|c| Some((c, self.backends.get(c.backend)?))),
        })
    }

    /// The Gateway API rules of a connection that arrived on `local`, for a request to `host`
    /// (as received). Callers ask only when [`RouteTable::has_scopes`]: a table without Gateway
    /// routes costs the request path that one branch and nothing else.
    pub fn gateway_lookup(&self, local: SocketAddr, host: &[u8], req: &gateway::Request<'_>) -> gateway::Lookup<'_> {
        let mut buf = [0u8; MAX_HOST];
        self.gateway_lookup_key(local, normalize_host(host, &mut buf), req)
    }

    /// [`RouteTable::gateway_lookup`] for a host already normalised ([`normalize_host`]).
    pub fn gateway_lookup_key(
        &self,
        local: SocketAddr,
        host: Option<&str>,
        req: &gateway::Request<'_>,
    ) -> gateway::Lookup<'_> {
        match host {
            Some(h) => self.rules.scopes.lookup(local, h, req),
            None => gateway::Lookup::NotGateway,
        }
    }

    /// Whether any Gateway route is in the table.
    #[inline]
    pub fn has_scopes(&self) -> bool {
        !self.rules.scopes.is_empty()
    }

    /// The Gateway rules for the admin view: scope, host, path, backend ids (`None`: answered 500).
    pub fn gateway_rules(&self) -> Vec<(String, String, String, Vec<Option<BackendId>>)> {
        self.rules.scopes.describe()
    }

    /// Every rule, for the admin view: host (`*` for any), path, type, backend id, policy and
    /// canary backend id. Not on the request path.
    pub fn rules(&self) -> Vec<RuleView> {
        let mut out = Vec::new();
        let host_rules = |host: String, r: &HostRules, out: &mut Vec<RuleView>| {
            for (p, t) in &r.exact {
                out.push((
                    host.clone(),
                    p.to_string(),
                    PathType::Exact,
                    t.backend,
                    Arc::clone(&t.policy),
                    t.canary.as_ref().map(|c| c.backend),
                ));
            }
            for (re, t) in &r.regex {
                let pattern = re.as_str();
                let path = pattern
                    .strip_prefix("^(?:")
                    .and_then(|p| p.strip_suffix(')'))
                    .unwrap_or(pattern);
                out.push((
                    host.clone(),
                    path.to_owned(),
                    PathType::Regex,
                    t.backend,
                    Arc::clone(&t.policy),
                    t.canary.as_ref().map(|c| c.backend),
                ));
            }
            for (p, t) in &r.prefix {
                out.push((
                    host.clone(),
                    p.to_string(),
                    PathType::Prefix,
                    t.backend,
                    Arc::clone(&t.policy),
                    t.canary.as_ref().map(|c| c.backend),
                ));
            }
        };
        for (h, r) in &self.rules.exact {
            host_rules(h.to_string(), r, &mut out);
        }
        for (h, r) in &self.rules.wildcard {
            host_rules(format!("*.{h}"), r, &mut out);
        }
        if let Some(r) = self.rules.any.as_deref() {
            host_rules("*".into(), r, &mut out);
        }
        if let Some(t) = &self.rules.default_backend {
            out.push((
                "(default)".into(),
                "/".into(),
                PathType::Prefix,
                t.backend,
                Arc::clone(&t.policy),
                None,
            ));
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Number of host entries (exact, wildcard, and the any-host one).
    pub fn host_count(&self) -> usize {
        let r = &self.rules;
        r.exact.len() + r.wildcard.len() + usize::from(r.any.is_some())
    }

    /// Whether this table holds the very rules `other` holds for exact host `host` (the same
    /// allocation: an update shared them). For tests and benchmarks.
    pub fn shares_host_rules(&self, other: &RouteTable, host: &str) -> bool {
        match (self.rules.exact.get(host), other.rules.exact.get(host)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The id of the backend called `name`.
    pub fn backend_id(&self, name: &str) -> Option<BackendId> {
        self.ids.get(name).copied()
    }

    /// A table with the same hosts, paths and backends as this one, but new endpoints for some
    /// backends: what an EndpointSlice change needs, at the cost of copying the backend list
    /// instead of rebuilding every rule.
    pub fn with_endpoints(&self, updates: impl IntoIterator<Item = (BackendId, Vec<SocketAddr>)>) -> RouteTable {
        RouteTable {
            rules: Arc::clone(&self.rules),
            backends: self.backends.with_endpoints(updates),
            ids: Arc::clone(&self.ids),
        }
    }
}

/// A table's backends, by [`BackendId`], in chunks of [`Backends::CHUNK`] shared between
/// tables: an endpoint update copies the chunks it changes and shares the others with the
/// table it replaces (and dropping the old table frees only those). A lookup costs one more
/// pointer than a flat list.
#[derive(Debug, Default, Clone)]
pub struct Backends {
    chunks: Vec<Arc<[Backend]>>,
    len: usize,
}

impl Backends {
    /// Backends per chunk (a power of two).
    pub const CHUNK: usize = 64;

    /// The backend `id`.
    #[inline]
    pub fn get(&self, id: BackendId) -> Option<&Backend> {
        self.chunks.get(id / Self::CHUNK)?.get(id % Self::CHUNK)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every backend, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// These backends with new endpoints for some of them: the chunks of the updated ones are
    /// copied, the others shared.
    fn with_endpoints(&self, updates: impl IntoIterator<Item = (BackendId, Vec<SocketAddr>)>) -> Backends {
        let mut chunks = self.chunks.clone();
        let mut copied: Vec<Vec<Backend>> = Vec::new();
        let mut copied_at: Vec<usize> = Vec::new();
        for (id, endpoints) in updates {
            let at = id / Self::CHUNK;
            let Some(chunk) = chunks.get(at) else { continue };
            let k = match copied_at.iter().position(|&c| c == at) {
                Some(k) => k,
                None => {
                    copied_at.push(at);
                    copied.push(chunk.to_vec());
                    copied.len() - 1
                }
            };
            if let Some(b) = copied[k].get_mut(id % Self::CHUNK) {
                b.endpoints = endpoints;
            }
        }
        for (at, chunk) in copied_at.into_iter().zip(copied) {
            chunks[at] = chunk.into();
        }
        Backends { chunks, len: self.len }
    }
}

impl From<Vec<Backend>> for Backends {
    fn from(list: Vec<Backend>) -> Backends {
        let len = list.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(Self::CHUNK));
        let mut list = list.into_iter();
        loop {
            let chunk: Arc<[Backend]> = list.by_ref().take(Self::CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        Backends { chunks, len }
    }
}

/// A builder's backends: an update's are the previous table's chunks, shared, with a copy of
/// each one it changes and the ones it adds; a build from nothing's are all added.
#[derive(Default)]
struct BuilderBackends {
    kept: Backends,
    changed: FxHashMap<BackendId, Backend>,
    added: Vec<Backend>,
}

impl BuilderBackends {
    fn len(&self) -> usize {
        self.kept.len() + self.added.len()
    }

    fn push(&mut self, backend: Backend) {
        self.added.push(backend);
    }

    /// The table's backends: the kept chunks shared but those with a changed backend (copied),
    /// then the added ones.
    fn finish(self) -> Backends {
        const CHUNK: usize = Backends::CHUNK;
        if self.kept.is_empty() {
            return self.added.into();
        }
        let mut chunks = self.kept.chunks;
        let mut copied: FxHashMap<usize, Vec<Backend>> = FxHashMap::default();
        for (id, b) in self.changed {
            let at = id / CHUNK;
            copied.entry(at).or_insert_with(|| chunks[at].to_vec())[id % CHUNK] = b;
        }
        for (at, chunk) in copied {
            chunks[at] = chunk.into();
        }
        let len = self.kept.len + self.added.len();
        let mut added = self.added.into_iter();
        // Every chunk but the last is full: the kept last one takes added backends first.
        if let Some(last) = chunks.pop_if(|c| c.len() < CHUNK) {
            let mut last = last.to_vec();
            last.extend(added.by_ref().take(CHUNK - last.len()));
            chunks.push(last.into());
        }
        loop {
            let chunk: Arc<[Backend]> = added.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        Backends { chunks, len }
    }
}

impl std::ops::Index<BackendId> for BuilderBackends {
    type Output = Backend;

    fn index(&self, id: BackendId) -> &Backend {
        match id.checked_sub(self.kept.len()) {
            Some(i) => &self.added[i],
            None => self.changed.get(&id).unwrap_or(&self.kept[id]),
        }
    }
}

impl std::ops::IndexMut<BackendId> for BuilderBackends {
    fn index_mut(&mut self, id: BackendId) -> &mut Backend {
        match id.checked_sub(self.kept.len()) {
            Some(i) => &mut self.added[i],
            None => self.changed.entry(id).or_insert_with(|| self.kept[id].clone()),
        }
    }
}

impl std::ops::Index<BackendId> for Backends {
    type Output = Backend;

    fn index(&self, id: BackendId) -> &Backend {
        &self.chunks[id / Self::CHUNK][id % Self::CHUNK]
    }
}

impl Rules {
    fn host_rules(&self, host: &str) -> Option<&HostRules> {
        if let Some(r) = self.exact.get(host) {
            return Some(&**r);
        }
        // `*.foo.com` matches exactly one extra label: strip the first label and look up the rest.
        if let Some((first, rest)) = host.split_once('.')
            && !first.is_empty()
            && !rest.is_empty()
            && let Some(r) = self.wildcard.get(rest)
        {
            return Some(&**r);
        }
        self.any.as_deref()
    }
}

/// `host` without its port or a trailing dot, lower-cased (into `buf` when it has an uppercase
/// letter; as sent otherwise). `None` when it is empty, too long, or not printable ASCII (such a
/// host can match no rule but the any-host ones). The key the table looks a host up by: a
/// request makes it once for the Gateway and the Ingress lookups.
pub fn normalize_host<'b>(host: &'b [u8], buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
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
    // One pass, without branches, over bytes that are all there: whether any is not printable
    // ASCII (`!`..=`~`), and whether any is uppercase.
    let (junk, upper) = host.iter().fold((0u8, 0u8), |(junk, upper), &b| {
        (
            junk | u8::from(b.wrapping_sub(b'!') > b'~' - b'!'),
            upper | u8::from(b.wrapping_sub(b'A') < 26),
        )
    });
    if junk != 0 {
        return None;
    }
    // Clients send lowercase names: those are used as they are, without a copy.
    let lower: &'b [u8] = if upper != 0 {
        let out = &mut buf[..host.len()];
        out.copy_from_slice(host);
        out.make_ascii_lowercase();
        out
    } else {
        host
    };
    // SAFETY: every byte is ASCII (checked above), and ASCII is UTF-8.
    #[allow(unsafe_code)]
    Some(unsafe { std::str::from_utf8_unchecked(lower) })
}

/// Whether Ingress host `ingress` and Gateway host pattern `gateway` (exact names or
/// `*.suffix`) share a name, as [`TableBuilder::gateway_overlaps`] decides it: a Gateway
/// `*.suffix` covers any number of labels, an Ingress `*.suffix` one.
fn host_overlap(ingress: &str, gateway: &str) -> bool {
    let under = |name: &str, suffix: &str| {
        name.strip_suffix(suffix)
            .is_some_and(|head| head.is_empty() || head.ends_with('.'))
    };
    match (ingress.strip_prefix("*."), gateway.strip_prefix("*.")) {
        (None, None) => ingress == gateway,
        (None, Some(t)) => ingress.split_once('.').is_some_and(|(_, rest)| under(rest, t)),
        (Some(s), Some(t)) => under(s, t),
        (Some(s), None) => gateway.split_once('.').is_some_and(|(_, parent)| parent == s),
    }
}

/// Who put a rule into the table: shown when a later rule loses to it.
pub type Owner = str;

/// Builds a [`RouteTable`] rule by rule. The first rule for a host + path + type wins; a later
/// one is refused with the owner of the rule it lost to. Callers add rules oldest first (static
/// routes in file order, Ingresses by creation time then name), so "first wins" is "oldest wins".
#[derive(Default)]
pub struct TableBuilder {
    rules: Rules,
    backends: BuilderBackends,
    /// Owner of each rule, by (host, path type, normalised path); the any-host rules use "".
    /// Keys come from the cluster's objects and the file, not from clients: a fast hash is safe.
    owners: FxHashMap<(Box<str>, PathType, Box<str>), Box<str>>,
    default_owner: Option<Box<str>>,
    /// Shared with the previous table by [`TableBuilder::update`] until a backend is added.
    backend_ids: Arc<FxHashMap<Box<str>, BackendId>>,
    /// Who decided each backend's upstream protocol (the first Ingress using it).
    tls_owners: FxHashMap<BackendId, Box<str>>,
    /// Owner of each rule's canary, keyed as `owners`.
    canary_owners: FxHashMap<(Box<str>, PathType, Box<str>), Box<str>>,
    /// The first Gateway route to claim each host pattern (exact or `*.suffix`).
    gateway_owners: FxHashMap<Box<str>, Box<str>>,
    /// Set by [`TableBuilder::update`]: the backends below this id are the previous table's.
    kept_backends: BackendId,
    /// Made by [`TableBuilder::update`]: the previous table's overlaps (`None`: unknown) and
    /// its dirty Ingress hosts (exact or `*.suffix`).
    updating: Option<(Option<Overlaps>, Vec<Box<str>>)>,
    /// The host patterns of the Gateway rules an update dropped ([`TableBuilder::gateway_remove`]).
    removed_claims: Vec<String>,
    /// An update met what only a build from nothing decides exactly (see
    /// [`TableBuilder::needs_full`]).
    needs_full: bool,
}

/// A rule that lost to an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owner of the rule that stays.
    pub winner: String,
}

impl TableBuilder {
    /// Adds a backend, or returns the existing one of the same name (several rules may point at
    /// one Service port).
    pub fn backend(&mut self, backend: Backend) -> BackendId {
        if let Some(&id) = self.backend_ids.get(&backend.name) {
            // An update's backend from the previous table: the endpoints resolved now are the
            // current ones (its protocol is checked by `backend_tls`).
            if id < self.kept_backends && self.backends[id].endpoints != backend.endpoints {
                self.backends[id].endpoints = backend.endpoints;
            }
            return id;
        }
        let id = self.backends.len();
        Arc::make_mut(&mut self.backend_ids).insert(backend.name.clone(), id);
        self.backends.push(backend);
        id
    }

    /// A builder for the next table after `prev`: every host but `dirty` (exact names,
    /// `*.suffix`, `None` for the any-host rules) keeps `prev`'s rules, shared, not copied; the
    /// backends keep their ids (a backend no rule uses any more stays until the next build from
    /// nothing); the default backend stays. The caller adds again every rule of the dirty hosts
    /// (and only those). The Gateway API scopes are kept the same way, each (scope, listener,
    /// route hostname)'s rules shared: the caller drops those it builds again
    /// ([`TableBuilder::gateway_remove`]) before adding them.
    pub fn update<'h>(prev: &RouteTable, dirty: impl IntoIterator<Item = Option<&'h str>>) -> TableBuilder {
        let p = &prev.rules;
        let mut rules = Rules {
            exact: p.exact.clone(),
            wildcard: p.wildcard.clone(),
            any: p.any.clone(),
            default_backend: p.default_backend.clone(),
            scopes: p.scopes.clone(),
            overlaps: None,
        };
        let mut dirty_hosts = Vec::new();
        for host in dirty {
            if let Some(h) = host {
                dirty_hosts.push(h.into());
            }
            match host {
                None => rules.any = None,
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => rules.wildcard.remove(suffix),
                    None => rules.exact.remove(h),
                }
                .map_or((), drop),
            }
        }
        TableBuilder {
            rules,
            backends: BuilderBackends {
                kept: prev.backends.clone(),
                ..BuilderBackends::default()
            },
            default_owner: p.default_backend.as_ref().map(|_| "(previous table)".into()),
            backend_ids: Arc::clone(&prev.ids),
            kept_backends: prev.backends.len(),
            updating: Some((p.overlaps.clone(), dirty_hosts)),
            ..TableBuilder::default()
        }
    }

    /// Whether this builder, made by [`TableBuilder::update`], met something only a build from
    /// nothing decides exactly: an upstream protocol for a kept backend other than the one it
    /// has (which Ingress decides it is the oldest user's business, over every host), or a rule
    /// for a host it was not told was dirty. Its table must not be published then.
    pub fn needs_full(&self) -> bool {
        self.needs_full
    }

    /// Sets the upstream protocol of `backend`: its TLS (`None`: plain) and whether it speaks
    /// HTTP/2 (`h2`, gRPC), unless an earlier owner already decided it differently: the first
    /// Ingress to use a Service port decides.
    pub fn backend_tls(
        &mut self,
        backend: BackendId,
        tls: Option<Arc<crate::tls::UpstreamTls>>,
        h2: bool,
        owner: &Owner,
    ) -> Result<(), Conflict> {
        if let Some(winner) = self.tls_owners.get(&backend) {
            if self.backends[backend].tls == tls && self.backends[backend].h2 == h2 {
                return Ok(());
            }
            self.needs_full |= backend < self.kept_backends;
            return Err(Conflict {
                winner: winner.to_string(),
            });
        }
        if backend < self.kept_backends && (self.backends[backend].tls != tls || self.backends[backend].h2 != h2) {
            // Decided by an older user, maybe in a host this update keeps.
            self.needs_full = true;
        }
        self.tls_owners.insert(backend, owner.into());
        // A kept backend is copied only when it changes.
        if self.backends[backend].tls != tls || self.backends[backend].h2 != h2 {
            self.backends[backend].tls = tls;
            self.backends[backend].h2 = h2;
        }
        Ok(())
    }

    /// Routes `host` (lower-case exact name, `*.suffix`, or `None` for any host) and `path` to
    /// `backend`, unless an earlier rule already routes the same host, path and type.
    pub fn rule(
        &mut self,
        host: Option<&str>,
        path: &str,
        path_type: PathType,
        backend: BackendId,
        owner: &Owner,
    ) -> Result<(), Conflict> {
        self.rule_with(host, path, path_type, backend, no_policy(), owner)
    }

    /// [`TableBuilder::rule`] with options.
    pub fn rule_with(
        &mut self,
        host: Option<&str>,
        path: &str,
        path_type: PathType,
        backend: BackendId,
        policy: Arc<Policy>,
        owner: &Owner,
    ) -> Result<(), Conflict> {
        let norm = match path_type {
            PathType::Exact | PathType::Regex => path,
            PathType::Prefix => normalize_prefix(path),
        };
        let key = (host.unwrap_or("").into(), path_type, norm.into());
        if let Some(winner) = self.owners.get(&key) {
            return Err(Conflict {
                winner: winner.to_string(),
            });
        }
        let rules = match host {
            None => self.rules.any.get_or_insert_with(Arc::default),
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self.rules.wildcard.entry(suffix.into()).or_default(),
                None => self.rules.exact.entry(h.into()).or_default(),
            },
        };
        // A host's rules are new in this builder (unique), unless an update was not told the
        // host is dirty: those are the previous table's, never changed.
        let Some(rules) = Arc::get_mut(rules) else {
            self.needs_full = true;
            return Ok(());
        };
        rules.add(
            path,
            path_type,
            Target {
                backend,
                policy,
                canary: None,
            },
        );
        self.owners.insert(key, owner.into());
        Ok(())
    }

    /// Gives the rule for `host` + `path` + `path_type` a canary, unless it has one. `Err`: there
    /// is no such rule (`None`) or it has a canary from `Some(owner)`.
    pub fn canary(
        &mut self,
        host: Option<&str>,
        path: &str,
        path_type: PathType,
        canary: Canary,
        owner: &Owner,
    ) -> Result<(), Option<String>> {
        let norm = match path_type {
            PathType::Exact | PathType::Regex => path,
            PathType::Prefix => normalize_prefix(path),
        };
        let key = (host.unwrap_or("").into(), path_type, norm.into());
        if let Some(winner) = self.canary_owners.get(&key) {
            return Err(Some(winner.to_string()));
        }
        let rules = match host {
            None => self.rules.any.as_mut(),
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => self.rules.wildcard.get_mut(suffix),
                None => self.rules.exact.get_mut(h),
            },
        }
        .ok_or(None)?;
        let Some(rules) = Arc::get_mut(rules) else {
            self.needs_full = true;
            return Err(None);
        };
        let target = match path_type {
            PathType::Exact => rules.exact.get_mut(path),
            PathType::Prefix => rules.prefix.iter_mut().find(|(p, _)| &**p == norm).map(|(_, t)| t),
            PathType::Regex => {
                let pattern = format!("^(?:{path})");
                rules
                    .regex
                    .iter_mut()
                    .find(|(re, _)| re.as_str() == pattern)
                    .map(|(_, t)| t)
            }
        }
        .ok_or(None)?;
        target.canary = Some(Arc::new(canary));
        self.canary_owners.insert(key, owner.into());
        Ok(())
    }

    /// Sets the backend for requests no rule matches, unless an earlier owner set one.
    pub fn default_backend(&mut self, backend: BackendId, owner: &Owner) -> Result<(), Conflict> {
        if let Some(winner) = &self.default_owner {
            // An update keeps the previous default; which Ingress sets it is decided over all.
            self.needs_full |= self.kept_backends > 0;
            return Err(Conflict {
                winner: winner.to_string(),
            });
        }
        self.rules.default_backend = Some(Target {
            backend,
            policy: no_policy(),
            canary: None,
        });
        self.default_owner = Some(owner.into());
        Ok(())
    }

    /// Adds one match of a Gateway API rule to the scope of `addresses` (empty: every local
    /// address) and `port`, under the listener's hostname and the route's (lower case exact,
    /// `*.suffix`, or `None` for any). Rules of one host are ordered by the Gateway API's
    /// precedence when the table is built; at equal precedence the first added wins, so callers
    /// add the oldest route first.
    #[allow(clippy::too_many_arguments)]
    pub fn gateway_rule(
        &mut self,
        addresses: &[std::net::IpAddr],
        port: u16,
        listener_host: Option<&str>,
        route_host: Option<&str>,
        m: gateway::Match,
        action: Arc<gateway::Action>,
        owner: &Owner,
    ) {
        // What the rule claims: the route hostname, else the listener's (a rule of a listener
        // without hostname and a route without hostnames claims every host: not recorded).
        if let Some(h) = route_host.or(listener_host).filter(|h| !h.is_empty()) {
            self.gateway_owners.entry(h.into()).or_insert_with(|| owner.into());
        }
        // A host with the previous table's rules: an update not told it is dirty.
        self.needs_full |= self
            .rules
            .scopes
            .add(addresses, port, listener_host, route_host, m, action);
    }

    /// In an update: drops the previous table's rules of one scope (`addresses`, `port`),
    /// listener hostname and route hostname, whose rules the caller adds again (every rule of
    /// every route attached there, as a build from nothing would).
    pub fn gateway_remove(
        &mut self,
        addresses: &[std::net::IpAddr],
        port: u16,
        listener_host: Option<&str>,
        route_host: Option<&str>,
    ) {
        if let Some(claim) = self.rules.scopes.remove(addresses, port, listener_host, route_host) {
            self.removed_claims.push(claim);
        }
    }

    /// Adds a programmed Gateway listener to the scope of `addresses` and `port`, whether routes
    /// attach to it or not: a request whose host selects it gets its routes or a 404.
    pub fn gateway_listener(&mut self, addresses: &[std::net::IpAddr], port: u16, listener_host: Option<&str>) {
        self.rules.scopes.add_listener(addresses, port, listener_host);
    }

    /// The hosts that both a Gateway route and an Ingress or static rule claim, exact names or
    /// wildcards (a Gateway `*.suffix` covers any number of labels, an Ingress `*.suffix` one),
    /// with the owner of each side: (host, Gateway route, other owner), sorted, one per host.
    /// The host is the narrower of the two patterns. Not on the request path: one hash lookup
    /// per label of each Ingress host. Recorded in the table for the next update: an update
    /// hands on the previous table's overlaps when none of its dirty Ingress hosts and none of
    /// the Gateway host patterns it dropped or added overlaps anything (then they are the
    /// same), and otherwise needs a build from nothing ([`TableBuilder::needs_full`]).
    pub fn gateway_overlaps(&mut self) -> Vec<(String, String, String)> {
        let out = match self.updating.take() {
            None => self.overlaps_from_nothing(),
            Some((prev, dirty)) => {
                if prev.is_none() || self.overlaps_changed(&dirty) {
                    self.needs_full = true;
                }
                prev.as_deref().unwrap_or_default().to_vec()
            }
        };
        self.rules.overlaps = Some(out.clone().into());
        out
    }

    /// In an update: whether a dirty Ingress host (`dirty`) overlaps a Gateway host pattern,
    /// or a Gateway host pattern dropped or added overlaps an Ingress or static host.
    fn overlaps_changed(&self, dirty: &[Box<str>]) -> bool {
        let added = self.gateway_owners.keys().map(|k| &**k);
        let gateway_dirty: Vec<&str> = self.removed_claims.iter().map(String::as_str).chain(added).collect();
        if !gateway_dirty.is_empty() {
            let wildcards: Vec<String> = self.rules.wildcard.keys().map(|s| format!("*.{s}")).collect();
            let ingress = self
                .rules
                .exact
                .keys()
                .map(|h| &**h)
                .chain(wildcards.iter().map(String::as_str))
                .chain(dirty.iter().map(|h| &**h));
            for i in ingress {
                if gateway_dirty.iter().any(|g| host_overlap(i, g)) {
                    return true;
                }
            }
        }
        if !dirty.is_empty() {
            let claims: Vec<String> = self.rules.scopes.claims().collect();
            let all = claims.iter().map(String::as_str).chain(gateway_dirty.iter().copied());
            for g in all {
                if dirty.iter().any(|i| host_overlap(i, g)) {
                    return true;
                }
            }
        }
        false
    }
    fn overlaps_from_nothing(&self) -> Vec<(String, String, String)> {
        if self.gateway_owners.is_empty() {
            return Vec::new();
        }
        // The Gateway's exact names by their parent domain, for Ingress wildcards.
        let mut exact_under: FxHashMap<&str, Vec<(&str, &str)>> = FxHashMap::default();
        for (h, o) in self.gateway_owners.iter().filter(|(h, _)| !h.starts_with('*')) {
            if let Some((_, parent)) = h.split_once('.') {
                exact_under.entry(parent).or_default().push((h, o));
            }
        }
        // A Gateway wildcard whose suffix `rest` (after a `.`) ends: `*.rest` and every shorter
        // suffix of it.
        let wildcards_over = |rest: &str| -> Option<(&str, &str)> {
            std::iter::once(rest)
                .chain(rest.match_indices('.').map(|(i, _)| &rest[i + 1..]))
                .find_map(|suffix| {
                    let (k, o) = self.gateway_owners.get_key_value(format!("*.{suffix}").as_str())?;
                    Some((&**k, &**o))
                })
        };
        let mut out: Vec<(String, String, String)> = Vec::new();
        for ((h, _, _), other) in &self.owners {
            if h.is_empty() {
                continue;
            }
            let mut found = |host: &str, gw: &str| out.push((host.to_string(), gw.to_string(), other.to_string()));
            match h.strip_prefix("*.") {
                None => {
                    if let Some(gw) = self.gateway_owners.get(h) {
                        found(h, gw);
                    } else if let Some((_, gw)) = h.split_once('.').and_then(|(_, rest)| wildcards_over(rest)) {
                        found(h, gw);
                    }
                }
                Some(suffix) => {
                    // The same or a wider Gateway wildcard covers every host of the Ingress's.
                    if let Some((_, gw)) = wildcards_over(suffix) {
                        found(h, gw);
                    } else if let Some(names) = exact_under.get(suffix) {
                        // Gateway names one label under the suffix.
                        for (name, gw) in names {
                            found(name, gw);
                        }
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Finishes the table: prefix rules are ordered longest first, once.
    pub fn build(mut self) -> RouteTable {
        self.rules.scopes.finish();
        let r = &mut self.rules;
        // The hosts this builder made; those an update kept are sorted already.
        for rules in r
            .exact
            .values_mut()
            .chain(r.wildcard.values_mut())
            .chain(r.any.iter_mut())
            .filter_map(Arc::get_mut)
        {
            rules.prefix.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
            rules.regex.sort_by_key(|r| std::cmp::Reverse(r.0.as_str().len()));
        }
        RouteTable {
            rules: Arc::new(self.rules),
            backends: self.backends.finish(),
            ids: self.backend_ids,
        }
    }
}

#[cfg(test)]
mod tests;
