//! What to do with a request, decided without I/O: answer it (404, 403, a redirect, an auth
//! challenge, 413) or forward it (which backend, with what rewrite, limits, balancing key,
//! timeouts and tries). A pure function of the route table, the settings and the request
//! view, table-tested in `decide/tests.rs` without sockets.
//!
//! Two checks need worker state and stay outside: the per-client limits (a mutable per-worker
//! limiter) and the basic-auth password check (a per-worker cache of slow bcrypt results).
//! [`decide`] names them in [`Checks`]; the caller runs them and applies the outcome with
//! [`Decision::after_checks`], which gives the same answer as if they had run in their place
//! (limits after the address filter, auth after the limits, both before any redirect).

use std::net::IpAddr;
use std::time::Duration;

use super::balance::PickInput;
use super::request::{Body, Header, RequestView};
use crate::auth::BasicAuth;
use crate::config::{ClientSettings, UpstreamSettings};
use crate::http;
use crate::policy::MAX_TRIES;
use crate::policy::{Balance, HashBy, HashPart, Policy, Rate};
use crate::routes::gateway::{self, GwRoute, HeaderMod, Lookup, PathChange};
use crate::routes::{self, Backend, Canary, RouteTable};

/// ACME HTTP-01 challenges are answered over plain HTTP, never redirected (as ingress-nginx).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// What a decision reads besides the request.
#[derive(Clone, Copy)]
pub(crate) struct Settings<'s> {
    pub table: &'s RouteTable,
    pub client: &'s ClientSettings,
    pub upstream: &'s UpstreamSettings,
    /// Where `ssl-redirect` sends plain-HTTP requests; `None`: nowhere (no redirects).
    pub redirect_port: Option<u16>,
}

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Decision<'s, 'r> {
    /// kedge answers itself; the request body (if any) is not read.
    Answer(Answer<'s, 'r>),
    /// The request goes to a backend.
    Forward(Forward<'s>),
}

/// The rule a request matched and the backend it chose (main or canary).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routed<'s> {
    pub backend: &'s Backend,
    pub policy: &'s Policy,
}

/// An answer kedge gives instead of proxying.
#[derive(Debug)]
pub(crate) struct Answer<'s, 'r> {
    pub status: u16,
    /// The one-line body of an error or challenge (redirects have an empty body).
    pub reason: &'static str,
    pub header: AnswerHeader<'s, 'r>,
    /// `None`: no rule matched.
    pub routed: Option<Routed<'s>>,
    pub checks: Checks<'s>,
}

/// The header line that makes an answer what it is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AnswerHeader<'s, 'r> {
    None,
    /// A redirect to this location.
    Location(&'s str),
    /// A 308 to the same URL over HTTPS: `https://host[:port]path[?query]` (an empty path is `/`).
    Https {
        host: &'r [u8],
        port: u16,
        path: &'r [u8],
        query: Option<&'r [u8]>,
    },
    /// `WWW-Authenticate: Basic` for this realm.
    Challenge(&'s str),
    /// A Gateway API CORS preflight's answer: the allowed origin (`None`: not allowed, no CORS
    /// fields), the method and headers the preflight asks for.
    Preflight {
        cors: &'s gateway::Cors,
        origin: Option<&'r [u8]>,
        method: &'r [u8],
        headers: &'r [u8],
    },
    /// A Gateway API RequestRedirect: `scheme://host[:port]{path_head}{path_tail}[?query]`.
    Redirect {
        scheme: &'s str,
        /// The request's host (its port dropped), unless the filter names one.
        host: &'r [u8],
        hostname: Option<&'s str>,
        /// `None`: the scheme's default port, left out.
        port: Option<u16>,
        path_head: &'s str,
        path_tail: &'r str,
        query: Option<&'r [u8]>,
    },
}

/// Where and how a request is forwarded.
#[derive(Debug)]
pub(crate) struct Forward<'s> {
    pub routed: Routed<'s>,
    /// The rule rewrote the target: the path and query to send are in the caller's buffer.
    pub rewritten: bool,
    /// The request body limit (`u64::MAX`: none).
    pub max_body: u64,
    /// The balancer's inputs (the caller adds the random seed per try).
    pub pick: PickInput,
    pub timeouts: Timeouts,
    /// Most endpoints to try.
    pub tries: usize,
    pub checks: Checks<'s>,
    /// What a Gateway API rule adds (header changes, timeouts); `None` for Ingress rules.
    pub gw: Option<GwForward<'s>>,
}

/// The Gateway API rule of a forwarded request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GwForward<'s> {
    pub action: &'s gateway::Action,
    /// The chosen backendRef's own RequestHeaderModifier.
    pub backend_headers: Option<&'s HeaderMod>,
}

impl<'s> GwForward<'s> {
    /// The header changes of the request sent upstream, rule's first.
    pub(crate) fn request_mods(&self) -> impl Iterator<Item = &'s HeaderMod> {
        self.action
            .request_headers
            .as_deref()
            .into_iter()
            .chain(self.backend_headers)
    }

    /// The Host sent upstream instead of the client's (URLRewrite hostname).
    pub(crate) fn host(&self) -> Option<&'s str> {
        self.action.rewrite.as_ref()?.hostname.as_deref()
    }

    /// The header pairs to send upstream: the request's `headers` changed by the rule's, then
    /// the backendRef's, RequestHeaderModifier, into `out` (a reused buffer). A rewritten host
    /// is the writer's (`Forwarded::upstream_host`).
    pub(crate) fn request_headers<'x>(&self, headers: &[Header<'x>], out: &mut Vec<Header<'x>>)
    where
        's: 'x,
    {
        out.extend(headers);
        for m in self.request_mods() {
            out.retain(|(n, _)| !m.drops(n));
            out.extend(m.added().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        }
    }
}

/// The upstream timeouts of one request (the rule's, else `[upstream]`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub send: Duration,
}

/// Checks that need worker state, to run (in this order) before acting on a decision.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Checks<'s> {
    /// Per-client limits to admit the request under (refused: 503).
    pub limit: Option<LimitCheck>,
    /// Credentials to check (refused: 401 with the realm).
    pub auth: Option<&'s BasicAuth>,
}

/// One client's limits on one rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LimitCheck {
    /// The rule's `limit_id` and the client's address.
    pub key: (u64, IpAddr),
    pub rate: Option<Rate>,
    pub max_conns: Option<u32>,
}

impl<'s, 'r> Decision<'s, 'r> {
    /// The checks to run before acting.
    pub(crate) fn checks(&self) -> Checks<'s> {
        match self {
            Decision::Answer(a) => a.checks,
            Decision::Forward(f) => f.checks,
        }
    }

    /// The rule and backend, when one matched.
    pub(crate) fn routed(&self) -> Option<Routed<'s>> {
        match self {
            Decision::Answer(a) => a.routed,
            Decision::Forward(f) => Some(f.routed),
        }
    }

    /// The decision once the [`Checks`] ran, changed in place (it is a few hundred bytes, and
    /// most requests pass): `refused` is why the limits refused the request (then the auth
    /// check does not matter), `authenticated` whether the credentials were good (ignored
    /// without an auth check).
    pub(crate) fn after_checks(&mut self, refused: Option<&'static str>, authenticated: bool) {
        let checks = self.checks();
        let routed = self.routed();
        if let Some(why) = refused {
            *self = Decision::Answer(Answer::error(503, why, routed));
            return;
        }
        if let Some(auth) = checks.auth
            && !authenticated
        {
            *self = Decision::Answer(Answer {
                status: 401,
                reason: "authentication required",
                header: AnswerHeader::Challenge(&auth.realm),
                routed,
                checks: Checks::default(),
            });
        }
    }
}

impl<'s> Answer<'s, '_> {
    fn error(status: u16, reason: &'static str, routed: Option<Routed<'s>>) -> Self {
        Answer {
            status,
            reason,
            header: AnswerHeader::None,
            routed,
            checks: Checks::default(),
        }
    }
}

/// Decides what to do with `req`. `canary_draw` is a random number for the canary weight;
/// `rewritten` receives the target to send when the rule rewrites it (then with the client's
/// query joined), and is otherwise left as it was.
///
/// The steps, in order (the first that answers wins): path checks (400), route (404), canary,
/// address filter (403), [limits, auth: see [`Checks`]], HTTPS redirect (308), fixed redirect,
/// app-root (302), rewrite, body limit (413 on a declared length), balancing key.
pub(crate) fn decide<'s, 'r>(
    s: &Settings<'s>,
    req: &RequestView<'r>,
    canary_draw: u64,
    rewritten: &mut String,
) -> Decision<'s, 'r> {
    let path = match req.path.map(std::str::from_utf8) {
        None => "/",
        Some(Ok(p)) => p,
        Some(Err(_)) => return Decision::Answer(Answer::error(400, "request target is not valid UTF-8", None)),
    };
    // The host as the table looks it up, made once for both lookups.
    let mut host_buf = [0u8; routes::MAX_HOST];
    let host = routes::normalize_host(req.authority, &mut host_buf);
    // Gateway API rules first, for connections in a Gateway scope. A table without any pays
    // this one branch.
    if s.table.has_scopes() {
        let gw_req = gateway::Request {
            method: req.method,
            path,
            query: req.query,
            headers: req.headers,
        };
        match s.table.gateway_lookup_key(req.local, host, &gw_req) {
            Lookup::NotGateway => {}
            Lookup::NoRule => return Decision::Answer(Answer::error(404, "no route for this host and path", None)),
            Lookup::Routed(r) => return decide_gateway(s, req, path, r, canary_draw, rewritten),
        }
    }
    let Some(route) = s.table.lookup_key(host, path) else {
        return Decision::Answer(Answer::error(404, "no route for this host and path", None));
    };
    let policy = route.policy;
    let routed = match route.canary {
        Some((c, canary)) if canary_selected(c, req, canary_draw) => Routed {
            backend: canary,
            policy,
        },
        _ => Routed {
            backend: route.backend,
            policy,
        },
    };
    let ip = req.peer.ip();
    if !policy.allows(ip) {
        return Decision::Answer(Answer::error(403, "client address not allowed", Some(routed)));
    }
    let limited = (policy.rate.is_some() || policy.max_conns.is_some())
        && !policy.limit_exempt.iter().any(|c| c.contains(ip.to_canonical()));
    let checks = Checks {
        limit: limited.then_some(LimitCheck {
            key: (policy.limit_id, ip),
            rate: policy.rate,
            max_conns: policy.max_conns,
        }),
        auth: policy.auth.as_deref(),
    };
    let answer = |status, header| {
        Decision::Answer(Answer {
            status,
            reason: "",
            header,
            routed: Some(routed),
            checks,
        })
    };
    if policy.ssl_redirect
        && req.scheme == "http"
        && let Some(port) = s.redirect_port
        && !path.starts_with(ACME_CHALLENGE)
    {
        let https = AnswerHeader::Https {
            host: http::host_without_port(req.authority),
            port,
            path: req.path.unwrap_or_default(),
            query: req.query,
        };
        return answer(308, https);
    }
    if let Some(r) = &policy.redirect {
        return answer(r.status, AnswerHeader::Location(&r.location));
    }
    if let Some(root) = &policy.app_root
        && path == "/"
    {
        return answer(302, AnswerHeader::Location(root));
    }
    let rewrite = policy.rewrite_into(path, rewritten);
    if rewrite && let Some(query) = req.query {
        rewritten.push(if rewritten.contains('?') { '&' } else { '?' });
        rewritten.push_str(std::str::from_utf8(query).unwrap_or_default());
    }
    let max_body = match policy.max_body.unwrap_or(s.client.max_body) {
        0 => u64::MAX,
        n => n,
    };
    if let Body::Length(n) = req.body
        && n > max_body
    {
        let mut a = Answer::error(413, "request body larger than allowed", Some(routed));
        a.checks = checks;
        return Decision::Answer(a);
    }
    let pick = PickInput {
        key: match &policy.balance {
            Balance::Hash(hb) => Some(hash_key(hb, req)),
            _ => None,
        },
        sticky: policy.affinity.as_ref().and_then(|a| {
            let v = req.cookie(a.cookie.as_bytes())?;
            u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
        }),
        seed: 0,
    };
    let up = s.upstream;
    Decision::Forward(Forward {
        routed,
        rewritten: rewrite,
        max_body,
        pick,
        timeouts: Timeouts {
            connect: policy.connect_timeout.unwrap_or(up.connect_timeout),
            read: policy.read_timeout.unwrap_or(up.read_timeout),
            send: policy.send_timeout.unwrap_or(up.send_timeout),
        },
        tries: policy.tries.unwrap_or(up.connect_attempts).clamp(1, MAX_TRIES),
        checks,
        gw: None,
    })
}

/// The decision for a request a Gateway API rule matched: its redirect, else the weighted
/// backend (a share without a usable backend, or a rule without backends: 500), the URLRewrite
/// path into `rewritten`, and the rest for the forward phase.
fn decide_gateway<'s, 'r>(
    s: &Settings<'s>,
    req: &RequestView<'r>,
    path: &'r str,
    r: GwRoute<'s>,
    draw: u64,
    rewritten: &mut String,
) -> Decision<'s, 'r> {
    let a = r.action;
    let prefix = r.prefix.unwrap_or("/");
    if let Some(cors) = a.cors.as_deref()
        && req.method == b"OPTIONS"
        && let Some(origin) = req.header(b"origin")
        && let Some(method) = req.header(b"access-control-request-method")
    {
        return Decision::Answer(Answer {
            status: 200,
            reason: "",
            header: AnswerHeader::Preflight {
                cors,
                origin: cors.allows(origin).then_some(origin),
                method,
                headers: req.header(b"access-control-request-headers").unwrap_or_default(),
            },
            routed: None,
            checks: Checks::default(),
        });
    }
    if let Some(rd) = a.redirect.as_deref() {
        let scheme = rd.scheme.as_deref().unwrap_or(req.scheme);
        // No port given: the new scheme's well-known one when the scheme changes, else the
        // listener's; a scheme's default port is left out of the Location.
        let port = rd
            .port
            .or_else(|| match (&rd.scheme, scheme) {
                (None, _) => Some(req.local.port()),
                (Some(_), "http") => Some(80),
                (Some(_), "https") => Some(443),
                (Some(_), _) => Some(req.local.port()),
            })
            .filter(|&p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
        let (path_head, path_tail) = match &rd.path {
            None => ("", path),
            Some(PathChange::Full(p)) => (&**p, ""),
            Some(PathChange::Prefix(p)) => gateway::replace_prefix(path, prefix, p),
        };
        return Decision::Answer(Answer {
            status: rd.status,
            reason: "",
            header: AnswerHeader::Redirect {
                scheme,
                host: http::host_without_port(req.authority),
                hostname: rd.hostname.as_deref(),
                port,
                path_head,
                path_tail,
                query: req.query,
            },
            routed: None,
            checks: Checks::default(),
        });
    }
    let Some(chosen) = a.pick(draw) else {
        return Decision::Answer(Answer::error(500, "route has no backend", None));
    };
    let Some(backend) = chosen.backend.and_then(|id| s.table.backends.get(id)) else {
        return Decision::Answer(Answer::error(500, "route backend is not usable", None));
    };
    let routed = Routed {
        backend,
        policy: &a.policy,
    };
    let rewrite = match a.rewrite.as_ref().and_then(|rw| rw.path.as_ref()) {
        None => false,
        Some(change) => {
            rewritten.clear();
            match change {
                PathChange::Full(p) => rewritten.push_str(p),
                PathChange::Prefix(p) => {
                    let (head, tail) = gateway::replace_prefix(path, prefix, p);
                    rewritten.push_str(head);
                    rewritten.push_str(tail);
                }
            }
            if let Some(query) = req.query {
                rewritten.push('?');
                rewritten.push_str(std::str::from_utf8(query).unwrap_or_default());
            }
            true
        }
    };
    let max_body = match s.client.max_body {
        0 => u64::MAX,
        n => n,
    };
    if let Body::Length(n) = req.body
        && n > max_body
    {
        return Decision::Answer(Answer::error(413, "request body larger than allowed", Some(routed)));
    }
    let up = s.upstream;
    Decision::Forward(Forward {
        routed,
        rewritten: rewrite,
        max_body,
        pick: PickInput {
            key: None,
            sticky: None,
            seed: 0,
        },
        timeouts: Timeouts {
            connect: up.connect_timeout,
            read: up.read_timeout,
            send: up.send_timeout,
        },
        tries: up.connect_attempts.clamp(1, MAX_TRIES),
        checks: Checks::default(),
        gw: Some(GwForward {
            action: a,
            backend_headers: chosen.headers.as_deref(),
        }),
    })
}

/// Whether this request goes to the rule's canary: by header, then cookie, then weight (as
/// ingress-nginx).
fn canary_selected(c: &Canary, req: &RequestView<'_>, draw: u64) -> bool {
    if let Some((name, value)) = &c.header
        && let Some(v) = req.header(name.as_bytes())
    {
        match value {
            Some(want) if v == want.as_bytes() => return true,
            Some(_) => {}
            None if v == b"always" => return true,
            None if v == b"never" => return false,
            None => {
                if let Some(re) = &c.pattern
                    && std::str::from_utf8(v).is_ok_and(|v| re.is_match(v))
                {
                    return true;
                }
            }
        }
    }
    if let Some(name) = &c.cookie
        && let Some(v) = req.cookie(name.as_bytes())
    {
        match v {
            b"always" => return true,
            b"never" => return false,
            _ => {}
        }
    }
    c.weight > 0 && (draw % u64::from(c.total)) < u64::from(c.weight)
}

/// The hash of the request's `upstream-hash-by` key (a missing header or cookie hashes as
/// empty, as an unset nginx variable).
fn hash_key(hb: &HashBy, req: &RequestView<'_>) -> u64 {
    let mut h = crate::hash::Fnv::default();
    for part in &hb.0 {
        match part {
            HashPart::Text(t) => h.write(t.as_bytes()),
            HashPart::ClientIp => h.write(req.client_ip),
            HashPart::Host => h.write(http::host_without_port(req.authority)),
            HashPart::RequestUri => h.write(req.target),
            HashPart::Path => h.write(req.path.unwrap_or(b"/")),
            HashPart::Header(name) => {
                if let Some(v) = req.header(name.as_bytes()) {
                    h.write(v);
                }
            }
            HashPart::Cookie(name) => {
                if let Some(v) = req.cookie(name.as_bytes()) {
                    h.write(v);
                }
            }
            HashPart::Arg(name) => {
                let target = req.target;
                let query = target
                    .iter()
                    .position(|&b| b == b'?')
                    .map_or(&b""[..], |i| &target[i + 1..]);
                if let Some(v) = query.split(|&b| b == b'&').find_map(|kv| {
                    let (k, v) = kv.split_at(kv.iter().position(|&b| b == b'=').unwrap_or(kv.len()));
                    (k == name.as_bytes()).then(|| v.get(1..).unwrap_or_default())
                }) {
                    h.write(v);
                }
            }
        }
    }
    crate::hash::mix(h.0)
}

#[cfg(test)]
mod tests;
