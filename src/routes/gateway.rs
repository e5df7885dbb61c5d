//! Gateway API routes in the table: **scopes**, each the local addresses and port one or more
//! Gateway listeners take connections on, holding that scope's hosts and rules. A request is
//! looked up in a scope only when its connection's local address and port fall in one; kedge's
//! Ingress and static rules are not consulted for a host the scope has (see [`Scopes::lookup`]).
//!
//! Within a scope, the request's host selects the listener (exact listener hostname, then the
//! longest wildcard, then a listener without hostname), routes attached or not, then the route
//! hostname inside it (exact, longest wildcard, none; none matching is a 404 for a listener with
//! a hostname, while a listener without hostname passes such a host on to the Ingress and
//! static rules); then the rules of that host are tried in the precedence of
//! the Gateway API (`httproute_types.go`): an Exact path, then a RegularExpression path (kedge's
//! choice: longest pattern first), then the longest PathPrefix in characters; at equal path, a
//! rule with a method, then the most header matches, then the most query parameter matches;
//! then the order the rules were added in (the translator adds the oldest route first, then by
//! namespace/name, rule order and match order). The first rule whose every predicate holds wins;
//! none → 404, never a less specific host.
//!
//! Nothing here knows Kubernetes: the translator turns HTTPRoutes into these values.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::{BackendId, Policy, normalize_prefix, prefix_matches};

/// How a rule's path matches (Gateway API semantics).
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The whole path, case-sensitive.
    Exact(Box<str>),
    /// Whole path elements: `/abc` matches `/abc`, `/abc/` and `/abc/def`, never `/abcd`; a
    /// trailing slash in the prefix is ignored.
    Prefix(Box<str>),
    /// RE2 syntax, anchored at both ends (the whole path must match), case-sensitive.
    Regex(regex::Regex),
    /// A gRPC method of any service: the path is `/{service}/{this}`. Ranked after every
    /// service prefix longer than `/`, before `/` (GRPCRoute: service characters first, then
    /// method characters).
    GrpcMethod(Box<str>),
}

/// How a header or query parameter value matches.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(Box<str>),
    /// RE2 syntax, anchored: the whole value must match.
    Regex(regex::Regex),
}

impl ValueMatch {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(want) => want.as_bytes() == v,
            ValueMatch::Regex(re) => std::str::from_utf8(v).is_ok_and(|v| re.is_match(v)),
        }
    }
}

/// Compiles a Gateway API regular expression (path, header or query value): RE2 syntax,
/// anchored at both ends.
pub fn anchored_regex(pattern: &str) -> Result<regex::Regex, String> {
    super::build_regex(pattern, true, false)
}

/// One HTTPRoute match: every predicate must hold.
#[derive(Debug, Clone)]
pub struct Match {
    pub path: PathMatch,
    /// The method, exactly (`GET`).
    pub method: Option<Box<str>>,
    /// Header names lower case (matched case-insensitively); a repeated header is compared as
    /// its values joined with `", "`.
    pub headers: Vec<(Box<str>, ValueMatch)>,
    /// Query parameter names case-sensitive, compared as sent (no percent-decoding); the first
    /// occurrence is compared (the Gateway API's recommendation).
    pub query: Vec<(Box<str>, ValueMatch)>,
}

impl Match {
    fn path_matches(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Exact(p) => **p == *path,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(re) => re.is_match(path),
            PathMatch::GrpcMethod(m) => path
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .is_some_and(|(svc, method)| !svc.is_empty() && method == &**m),
        }
    }

    fn matches(&self, r: &Request<'_>) -> bool {
        self.path_matches(r.path)
            && self.method.as_deref().is_none_or(|m| m.as_bytes() == r.method)
            && self
                .headers
                .iter()
                .all(|(name, want)| header_matches(r.headers, name.as_bytes(), want))
            && self
                .query
                .iter()
                .all(|(name, want)| query_param(r.query, name.as_bytes()).is_some_and(|v| want.matches(v)))
    }

    /// Precedence key, smaller first: path kind and length, method, headers, query.
    fn rank(
        &self,
    ) -> (
        u8,
        std::cmp::Reverse<usize>,
        bool,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
    ) {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Regex(re) => (1, re.as_str().len()),
            // Twice the length, so that a gRPC method-only match (3) falls between the service
            // prefixes (at least `/x`: 4) and `/` (2).
            PathMatch::Prefix(p) => (2, 2 * p.len()),
            PathMatch::GrpcMethod(_) => (2, 3),
        };
        (
            kind,
            std::cmp::Reverse(len),
            self.method.is_none(),
            std::cmp::Reverse(self.headers.len()),
            std::cmp::Reverse(self.query.len()),
        )
    }
}

/// Whether header `name` (lower case) of `headers` matches `want`. A header sent more than once
/// is matched as its values joined with `", "` in the order received, as the Gateway API asks
/// (RFC 7230 §3.2.2): only then is the joined value allocated.
fn header_matches(headers: &[(&[u8], &[u8])], name: &[u8], want: &ValueMatch) -> bool {
    let mut of_name = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
    let Some((_, first)) = of_name.next() else {
        return false;
    };
    let Some((_, second)) = of_name.next() else {
        return want.matches(first);
    };
    let mut joined = Vec::with_capacity(first.len() + 2 + second.len());
    joined.extend_from_slice(first);
    for v in std::iter::once(*second).chain(of_name.map(|(_, v)| *v)) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(v);
    }
    want.matches(&joined)
}

/// The first value of query parameter `name` in `query` (what follows `?`). A parameter sent
/// more than once is matched by its first value, as the Gateway API recommends.
fn query_param<'q>(query: Option<&'q [u8]>, name: &[u8]) -> Option<&'q [u8]> {
    query?.split(|&b| b == b'&').find_map(|kv| {
        let eq = kv.iter().position(|&b| b == b'=').unwrap_or(kv.len());
        (&kv[..eq] == name).then(|| kv.get(eq + 1..).unwrap_or_default())
    })
}

/// Header changes (RequestHeaderModifier, ResponseHeaderModifier): `set` replaces every field of
/// the name, `add` appends one, `remove` drops every field of the name. Names are kept as
/// written for the fields kedge writes and compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMod {
    pub set: Vec<(Box<str>, Box<str>)>,
    pub add: Vec<(Box<str>, Box<str>)>,
    pub remove: Vec<Box<str>>,
}

impl HeaderMod {
    /// Whether a received field called `name` is dropped (removed, or replaced by `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove.iter().any(|r| r.as_bytes().eq_ignore_ascii_case(name))
            || self.set.iter().any(|(s, _)| s.as_bytes().eq_ignore_ascii_case(name))
    }

    /// The fields this adds (the `set` ones, then the `add` ones).
    pub fn added(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set.iter().chain(&self.add).map(|(n, v)| (&**n, &**v))
    }
}

/// How a redirect or a rewrite changes the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// ReplaceFullPath.
    Full(Box<str>),
    /// ReplacePrefixMatch (only with a PathPrefix match; the translator refuses it otherwise).
    Prefix(Box<str>),
}

/// RequestRedirect: what is not set keeps the request's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<Box<str>>,
    pub hostname: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: Option<PathChange>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// URLRewrite: the Host sent upstream and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<Box<str>>,
    pub path: Option<PathChange>,
}

/// The CORS filter: which origins may read the responses, and what a preflight allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// `*`, exact origins (`https://www.example.com`), or with a wildcard host label
    /// (`https://*.example.com`: any host under `example.com`).
    pub allow_origins: Vec<Box<str>>,
    /// Methods a preflight allows (`*`: any).
    pub allow_methods: Vec<Box<str>>,
    /// Request headers a preflight allows (`*`: any).
    pub allow_headers: Vec<Box<str>>,
    /// Response headers the page may read.
    pub expose_headers: Vec<Box<str>>,
    pub allow_credentials: bool,
    /// Seconds a preflight's answer may be cached.
    pub max_age: u32,
}

impl Cors {
    /// Whether `origin` (the request's Origin) is allowed.
    pub fn allows(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        self.allow_origins.iter().any(|o| {
            if &**o == "*" || o.eq_ignore_ascii_case(origin) {
                return true;
            }
            // `scheme://*.suffix[:port]`: the origin's host ends with `.suffix`.
            match o.split_once("://*") {
                Some((scheme, rest)) => origin.split_once("://").is_some_and(|(s, host)| {
                    s.eq_ignore_ascii_case(scheme)
                        && host.len() > rest.len()
                        && host.to_ascii_lowercase().ends_with(&rest.to_ascii_lowercase())
                }),
                None => false,
            }
        })
    }

    /// Whether any method (`*`) is allowed.
    pub fn any_method(&self) -> bool {
        self.allow_methods.iter().any(|m| &**m == "*")
    }

    /// Whether any header (`*`) is allowed.
    pub fn any_header(&self) -> bool {
        self.allow_headers.iter().any(|h| &**h == "*")
    }

    /// Whether any origin (`*`) is allowed.
    pub fn any_origin(&self) -> bool {
        self.allow_origins.iter().any(|o| &**o == "*")
    }
}

/// One backendRef of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weighted {
    pub weight: u32,
    /// `None`: the reference cannot be used (missing, not permitted, unknown kind): its share of
    /// the traffic is answered 500.
    pub backend: Option<BackendId>,
    /// The backendRef's own RequestHeaderModifier, applied after the rule's.
    pub headers: Option<Box<HeaderMod>>,
}

/// What a rule does: its filters, then its weighted backends. The filters most rules lack are
/// boxed, so that a rule without them costs a pointer each (a table holds one action per rule).
#[derive(Debug, Clone)]
pub struct Action {
    pub request_headers: Option<Box<HeaderMod>>,
    pub response_headers: Option<Box<HeaderMod>>,
    /// A redirect answers without any backend.
    pub redirect: Option<Box<Redirect>>,
    /// CORS: preflights are answered by kedge, responses get the CORS fields.
    pub cors: Option<Box<Cors>>,
    /// RequestMirror: backends that get a copy of each (bodiless) request, with the percentage
    /// of requests mirrored; their answers are discarded.
    pub mirrors: Vec<(BackendId, u32)>,
    pub rewrite: Option<Box<Rewrite>>,
    /// Empty (no backendRefs) or all of weight 0: the rule answers 500.
    pub backends: Vec<Weighted>,
    /// `timeouts.request`: the whole request, from its start to the response head (504).
    pub request_timeout: Option<Duration>,
    /// `timeouts.backendRequest`: each try on an upstream, to its response head (504).
    pub backend_timeout: Option<Duration>,
    /// The route's name for metrics (`host` is the route's `namespace/name`) and the default
    /// policy otherwise.
    pub policy: Arc<Policy>,
}

/// Equal actions behave the same: every field equal, the policy the same one (by pointer: the
/// translator shares one per route), so that rules of a route that do the same can share one
/// action.
impl PartialEq for Action {
    fn eq(&self, other: &Action) -> bool {
        let Action {
            request_headers,
            response_headers,
            redirect,
            cors,
            mirrors,
            rewrite,
            backends,
            request_timeout,
            backend_timeout,
            policy,
        } = self;
        *request_headers == other.request_headers
            && *response_headers == other.response_headers
            && *redirect == other.redirect
            && *cors == other.cors
            && *mirrors == other.mirrors
            && *rewrite == other.rewrite
            && *backends == other.backends
            && *request_timeout == other.request_timeout
            && *backend_timeout == other.backend_timeout
            && Arc::ptr_eq(policy, &other.policy)
    }
}

impl Action {
    /// The backendRef for a request, from a uniform random `draw`: each gets its weight's share;
    /// `None` when the rule has none of positive weight.
    pub fn pick(&self, draw: u64) -> Option<&Weighted> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut at = draw % total;
        for b in &self.backends {
            let w = u64::from(b.weight);
            if at < w {
                return Some(b);
            }
            at -= w;
        }
        None
    }
}

/// One match of one rule, with the rule's action.
#[derive(Debug, Clone)]
pub struct GwRule {
    pub m: Match,
    pub action: Arc<Action>,
}

/// What of a request the Gateway rules read.
#[derive(Debug, Clone, Copy)]
pub struct Request<'r> {
    pub method: &'r [u8],
    /// The path without query (`/` when the target names none).
    pub path: &'r str,
    pub query: Option<&'r [u8]>,
    pub headers: &'r [(&'r [u8], &'r [u8])],
}

/// The rule a request matched.
#[derive(Debug, Clone, Copy)]
pub struct GwRoute<'t> {
    pub action: &'t Action,
    /// The matched PathPrefix (normalised), for ReplacePrefixMatch.
    pub prefix: Option<&'t str>,
}

/// A hostname pattern: exact, `*.suffix` (any number of labels before the suffix, as the
/// Gateway API's wildcards), or any host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum HostPattern {
    Exact(Box<str>),
    /// The suffix with its leading dot (`.example.com`).
    Wildcard(Box<str>),
    Any,
}

/// Addresses as scopes keep them: canonical (IPv4-mapped IPv6 as IPv4), sorted, unique.
fn canonical(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = addresses.iter().map(|a| a.to_canonical()).collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

impl HostPattern {
    /// The pattern as the table's owners name hosts: the exact name or `*.suffix`; `None` for
    /// any host.
    fn claim(&self) -> Option<String> {
        match self {
            HostPattern::Exact(h) => Some(h.to_string()),
            HostPattern::Wildcard(s) => Some(format!("*{s}")),
            HostPattern::Any => None,
        }
    }

    fn parse(h: Option<&str>) -> HostPattern {
        match h {
            None | Some("") => HostPattern::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostPattern::Wildcard(suffix.to_ascii_lowercase().into()),
                None => HostPattern::Exact(h.to_ascii_lowercase().into()),
            },
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => **h == *host,
            HostPattern::Wildcard(s) => host.len() > s.len() && host.ends_with(&**s),
            HostPattern::Any => true,
        }
    }

    /// More specific first: exact, longest wildcard, any.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            HostPattern::Exact(_) => (0, std::cmp::Reverse(0)),
            HostPattern::Wildcard(s) => (1, std::cmp::Reverse(s.len())),
            HostPattern::Any => (2, std::cmp::Reverse(0)),
        }
    }
}

/// The route hostnames of one listener and their rules. Each host's rules sit behind their own
/// `Arc`, so that a table updated from this one shares every host it does not rebuild.
#[derive(Debug, Default, Clone)]
struct RouteHosts {
    exact: FxHashMap<Arc<str>, Arc<[GwRule]>>,
    /// By suffix with its leading dot (`*.example.com` under `.example.com`).
    wildcard: FxHashMap<Arc<str>, Arc<[GwRule]>>,
    any: Option<Arc<[GwRule]>>,
}

impl RouteHosts {
    /// The rules of `host`: its exact name, else the longest wildcard suffix (looked up label by
    /// label, longest first: as many hash lookups as the host has dots), else any host.
    fn find(&self, host: &str) -> Option<&[GwRule]> {
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        if !self.wildcard.is_empty() {
            let dots = host.bytes().enumerate().filter(|&(i, b)| b == b'.' && i > 0);
            if let Some(r) = dots.into_iter().find_map(|(i, _)| self.wildcard.get(&host[i..])) {
                return Some(r);
            }
        }
        self.any.as_deref()
    }

    /// Whether `host` has rules here.
    fn has(&self, host: &HostPattern) -> bool {
        match host {
            HostPattern::Exact(h) => self.exact.contains_key(&**h),
            HostPattern::Wildcard(s) => self.wildcard.contains_key(&**s),
            HostPattern::Any => self.any.is_some(),
        }
    }

    /// Sets the rules of `host` (or drops them: `None`).
    fn set(&mut self, host: HostPattern, rules: Option<Arc<[GwRule]>>) {
        match (host, rules) {
            (HostPattern::Exact(h), Some(r)) => {
                self.exact.insert(h.into(), r);
            }
            (HostPattern::Exact(h), None) => {
                self.exact.remove(&*h);
            }
            (HostPattern::Wildcard(s), Some(r)) => {
                self.wildcard.insert(s.into(), r);
            }
            (HostPattern::Wildcard(s), None) => {
                self.wildcard.remove(&*s);
            }
            (HostPattern::Any, r) => self.any = r,
        }
    }

    /// Every host pattern with rules.
    fn patterns(&self) -> impl Iterator<Item = HostPattern> + '_ {
        self.exact
            .keys()
            .map(|h| HostPattern::Exact(Box::from(&**h)))
            .chain(self.wildcard.keys().map(|s| HostPattern::Wildcard(Box::from(&**s))))
            .chain(self.any.iter().map(|_| HostPattern::Any))
    }
}

/// One scope: where its connections arrive, and its listeners' hosts and rules.
#[derive(Debug, Clone)]
struct Scope {
    /// Empty: every local address on `port`.
    addresses: Vec<IpAddr>,
    port: u16,
    /// By listener hostname, most specific first once built.
    listeners: Vec<(HostPattern, RouteHosts)>,
}

impl Scope {
    fn serves(&self, local: SocketAddr) -> bool {
        self.port == local.port() && (self.addresses.is_empty() || self.addresses.contains(&local.ip().to_canonical()))
    }
}

/// Every Gateway scope of a table. Empty for tables without Gateway routes: the request path
/// then pays one `is_empty` branch.
#[derive(Debug, Default, Clone)]
pub struct Scopes {
    /// Scopes with addresses before those without, so that a Gateway bound to an address wins
    /// over one serving every address of the port; then by addresses and port.
    scopes: Vec<Scope>,
    /// While building: the rules added to each (scope, listener, route hostname), in the order
    /// added; moved into the scopes, ordered, by [`Scopes::finish`]. Empty in a built table.
    staged: FxHashMap<(usize, usize, HostPattern), Vec<GwRule>>,
}

/// What the Gateway rules say about a request.
#[derive(Debug)]
pub enum Lookup<'t> {
    /// No scope serves the connection, or none has a listener hostname for the host (or only a
    /// listener without hostname and no route hostname for it): the Ingress and static rules
    /// decide.
    NotGateway,
    /// A scope's listener was selected, but no route hostname or rule of it matched: 404.
    NoRule,
    Routed(GwRoute<'t>),
}

impl Scopes {
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Looks `req` up for a connection that arrived on `local`, for `host` (lower case, no
    /// port). See the module documentation for the order.
    pub fn lookup<'t>(&'t self, local: SocketAddr, host: &str, req: &Request<'_>) -> Lookup<'t> {
        for scope in self.scopes.iter().filter(|s| s.serves(local)) {
            // The most specific listener whose hostname matches selects the request: its
            // routes or a 404. A listener without hostname selects only the hosts its routes
            // name (any other host goes on to the Ingress and static rules).
            let Some((listener, hosts)) = scope.listeners.iter().find(|(l, _)| l.matches(host)) else {
                continue;
            };
            let Some(rules) = hosts.find(host) else {
                if *listener == HostPattern::Any {
                    continue;
                }
                return Lookup::NoRule;
            };
            return match rules.iter().find(|r| r.m.matches(req)) {
                Some(r) => Lookup::Routed(GwRoute {
                    action: &r.action,
                    prefix: match &r.m.path {
                        PathMatch::Prefix(p) => Some(p),
                        _ => None,
                    },
                }),
                None => Lookup::NoRule,
            };
        }
        Lookup::NotGateway
    }

    /// Adds one rule match under a scope, listener hostname and route hostname (`None`: any).
    /// `true`: the host already had rules when this builder started (an update that was not
    /// told the host is dirty: only a build from nothing is exact).
    pub(super) fn add(
        &mut self,
        addresses: &[IpAddr],
        port: u16,
        listener_host: Option<&str>,
        route_host: Option<&str>,
        mut m: Match,
        action: Arc<Action>,
    ) -> bool {
        if let PathMatch::Prefix(p) = &m.path {
            m.path = PathMatch::Prefix(normalize_prefix(p).into());
        }
        let (si, li) = self.listener(addresses, port, listener_host);
        let host = HostPattern::parse(route_host);
        // Rules of the previous table (an update not told the host is dirty): never changed.
        let kept = self.scopes[si].listeners[li].1.has(&host);
        self.staged
            .entry((si, li, host))
            .or_default()
            .push(GwRule { m, action });
        kept
    }

    /// Drops the rules of one (scope, listener hostname, route hostname) an update builds
    /// again, and returns the host pattern those rules claimed (the route hostname, else the
    /// listener's; `None`: every host).
    pub(super) fn remove(
        &mut self,
        addresses: &[IpAddr],
        port: u16,
        listener_host: Option<&str>,
        route_host: Option<&str>,
    ) -> Option<String> {
        let addresses = canonical(addresses);
        let lh = HostPattern::parse(listener_host);
        let host = HostPattern::parse(route_host);
        let claim = host.claim().or_else(|| lh.claim());
        if let Some(scope) = self
            .scopes
            .iter_mut()
            .find(|s| s.port == port && s.addresses == addresses)
            && let Some((_, hosts)) = scope.listeners.iter_mut().find(|(l, _)| *l == lh)
        {
            hosts.set(host, None);
        }
        claim
    }

    /// The host pattern every (listener, route hostname) with rules claims (exact or
    /// `*.suffix`), as [`Scopes::remove`] says; those claiming every host are left out.
    pub(super) fn claims(&self) -> impl Iterator<Item = String> + '_ {
        self.scopes.iter().flat_map(|s| {
            s.listeners
                .iter()
                .flat_map(|(l, hosts)| hosts.patterns().filter_map(move |h| h.claim().or_else(|| l.claim())))
        })
    }

    /// Adds a programmed listener (its hostname, `None`: any) to the scope of `addresses` and
    /// `port`, routes or not: a listener with a hostname selects its hosts even without routes
    /// (404 for them), so they cannot fall through to a wildcard listener or to Ingress.
    pub(super) fn add_listener(&mut self, addresses: &[IpAddr], port: u16, listener_host: Option<&str>) {
        self.listener(addresses, port, listener_host);
    }

    /// The (scope, listener) indices of a listener in the scope of `addresses` and `port`, added
    /// empty if new.
    fn listener(&mut self, addresses: &[IpAddr], port: u16, listener_host: Option<&str>) -> (usize, usize) {
        let addresses = canonical(addresses);
        let i = match self
            .scopes
            .iter()
            .position(|s| s.port == port && s.addresses == addresses)
        {
            Some(i) => i,
            None => {
                self.scopes.push(Scope {
                    addresses,
                    port,
                    listeners: Vec::new(),
                });
                self.scopes.len() - 1
            }
        };
        let scope = &mut self.scopes[i];
        let lh = HostPattern::parse(listener_host);
        let j = match scope.listeners.iter().position(|(l, _)| *l == lh) {
            Some(j) => j,
            None => {
                scope.listeners.push((lh, RouteHosts::default()));
                scope.listeners.len() - 1
            }
        };
        (i, j)
    }

    /// Orders everything for lookup, once: the rules added (by precedence, stable: ties keep
    /// the order added) into their hosts, scopes with addresses first (then by addresses and
    /// port, so that the order does not depend on the order routes were added in), listeners
    /// most specific first. Rules kept from a previous table are in order already.
    pub(super) fn finish(&mut self) {
        for ((si, li, host), mut rules) in std::mem::take(&mut self.staged) {
            rules.sort_by_key(|r| r.m.rank());
            self.scopes[si].listeners[li].1.set(host, Some(rules.into()));
        }
        self.staged.shrink_to_fit();
        self.scopes.sort_by(|a, b| {
            (a.addresses.is_empty(), &a.addresses, a.port).cmp(&(b.addresses.is_empty(), &b.addresses, b.port))
        });
        for s in &mut self.scopes {
            s.listeners.sort_by_key(|l| l.0.rank());
            for (_, hosts) in &mut s.listeners {
                hosts.exact.shrink_to_fit();
                hosts.wildcard.shrink_to_fit();
            }
        }
    }

    /// Every rule for the admin view: scope, host, path and the action's backends.
    pub fn describe(&self) -> Vec<(String, String, String, Vec<Option<BackendId>>)> {
        let mut out = Vec::new();
        for s in &self.scopes {
            let scope = match s.addresses.as_slice() {
                [] => format!("*:{}", s.port),
                a => {
                    let a: Vec<String> = a.iter().map(|a| SocketAddr::new(*a, s.port).to_string()).collect();
                    a.join(",")
                }
            };
            for (_, hosts) in &s.listeners {
                let named = hosts
                    .exact
                    .iter()
                    .map(|(h, r)| (h.to_string(), r))
                    .chain(hosts.wildcard.iter().map(|(w, r)| (format!("*{w}"), r)))
                    .chain(hosts.any.iter().map(|r| ("*".to_owned(), r)));
                for (host, rules) in named {
                    for r in rules.iter() {
                        let path = match &r.m.path {
                            PathMatch::Exact(p) => format!("= {p}"),
                            PathMatch::Prefix(p) => p.to_string(),
                            PathMatch::Regex(re) => format!("~ {}", re.as_str()),
                            PathMatch::GrpcMethod(m) => format!("/*/{m}"),
                        };
                        let backends = r.action.backends.iter().map(|b| b.backend).collect();
                        out.push((scope.clone(), host.clone(), path, backends));
                    }
                }
            }
        }
        out
    }
}

/// The path ReplacePrefixMatch makes of `path`, which matched `prefix` (normalised), as the
/// part from the replacement and the rest of the request path: `head` then `tail`. The spec's
/// slash handling: the replacement's trailing slash is dropped and the rest (empty or starting
/// with `/`) follows it; an empty result is `/`.
pub fn replace_prefix<'a, 'b>(path: &'a str, prefix: &str, replacement: &'b str) -> (&'b str, &'a str) {
    let rest = if prefix == "/" {
        path
    } else {
        path.get(prefix.len()..).unwrap_or("")
    };
    let head = replacement.trim_end_matches('/');
    if head.is_empty() && rest.is_empty() {
        return ("/", "");
    }
    if head.is_empty() && !rest.starts_with('/') {
        return ("/", rest);
    }
    (head, rest)
}

#[cfg(test)]
mod tests;
