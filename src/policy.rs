//! What a rule does to a request besides choosing its backend: redirects, rewrites, limits,
//! timeouts, client address filters. Values only (built by the control thread from a
//! `[[route]]` or an Ingress's annotations, immutable once in a table); the worker asks them
//! questions (`allows`, `rewrite`) on the request path without allocating unless a rewrite
//! happens.

use std::net::IpAddr;
use std::time::Duration;

use crate::hash::{Fnv, mix};

/// A rule's policy. `Default` is "proxy as is".
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Plain-HTTP requests get a 308 to the same URL over HTTPS.
    pub ssl_redirect: bool,
    /// Answer every request with this redirect instead of proxying (`permanent-redirect`,
    /// `temporal-redirect`).
    pub redirect: Option<Redirect>,
    /// A request for `/` is redirected (302) here (`app-root`).
    pub app_root: Option<Box<str>>,
    /// The path sent upstream (`rewrite-target`).
    pub rewrite: Option<Rewrite>,
    /// Request body limit; `None`: the `[client]` default (`proxy-body-size`, `max_body`).
    pub max_body: Option<u64>,
    /// Upstream timeouts; `None`: the `[upstream]` defaults.
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    /// Client addresses allowed (`allowlist-source-range`); empty: all.
    pub allow: Vec<Cidr>,
    /// Client addresses refused (`denylist-source-range`); checked first.
    pub deny: Vec<Cidr>,
    /// How an endpoint is chosen (`load-balance`, `upstream-hash-by`).
    pub balance: Balance,
    /// Cookie affinity (`affinity: cookie`): a client keeps its endpoint while it exists.
    pub affinity: Option<Affinity>,
    /// Endpoints tried for one request: connect failures, and for idempotent requests without a
    /// body, resets and timeouts before a response (`proxy-next-upstream-tries`); `None`: the
    /// `[upstream] connect_attempts` default.
    pub tries: Option<usize>,
    /// Requests per second per client address, with a burst (`limit-rps`, `limit-rpm`,
    /// `limit-burst-multiplier`); per worker.
    pub rate: Option<Rate>,
    /// Requests in progress at once per client address (`limit-connections`); per worker.
    pub max_conns: Option<u32>,
    /// Client addresses the limits do not apply to (`limit-allowlist`).
    pub limit_exempt: Vec<Cidr>,
    /// Which rule the limits count for: a hash of its owner, host and path, the same in every
    /// table build (so a rebuild does not reset a client's budget).
    pub limit_id: u64,
    /// No new try once this long has passed since the first (`proxy-next-upstream-timeout`).
    pub retry_timeout: Option<Duration>,
    /// Response statuses that send an idempotent request without a body to another endpoint
    /// (`proxy-next-upstream: http_502 ...`).
    pub retry_on: Vec<u16>,
    /// The rule's host as the metrics label it (`*` for any host): from the table, never from
    /// the request, so the label set stays bounded.
    pub host: Box<str>,
    /// HTTP basic authentication (`auth-type: basic`).
    pub auth: Option<std::sync::Arc<crate::auth::BasicAuth>>,
}

/// A token bucket's refill rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

/// How a request's endpoint is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Balance {
    /// In turn (per worker).
    #[default]
    RoundRobin,
    /// The less busy of two endpoints drawn at random (per worker: requests in flight).
    LeastRequest,
    /// Consistent hashing (rendezvous) of a key made from the request: every worker and every
    /// edge host picks the same endpoint for the same key, and a change of endpoints moves only
    /// the keys of the endpoints that came or went.
    Hash(HashBy),
}

/// A hash key template: ingress-nginx's `upstream-hash-by`, nginx variables and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashBy(pub Vec<HashPart>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPart {
    Text(Box<str>),
    /// `$remote_addr`, `$binary_remote_addr`.
    ClientIp,
    /// `$host`, `$http_host`.
    Host,
    /// `$request_uri`: path and query as received.
    RequestUri,
    /// `$uri`: the path.
    Path,
    /// `$http_NAME` (lower case, `-` for `_`).
    Header(Box<str>),
    /// `$cookie_NAME`.
    Cookie(Box<str>),
    /// `$arg_NAME`: a query parameter.
    Arg(Box<str>),
}

impl HashBy {
    pub fn parse(template: &str) -> Result<HashBy, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let Some(i) = rest.find('$') else {
                parts.push(HashPart::Text(rest.into()));
                break;
            };
            if i > 0 {
                parts.push(HashPart::Text(rest[..i].into()));
            }
            let after = &rest[i + 1..];
            let (name, tail) = match after.strip_prefix('{') {
                Some(b) => {
                    let end = b.find('}').ok_or("an unclosed ${")?;
                    (&b[..end], &b[end + 1..])
                }
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            let part = match name {
                "remote_addr" | "binary_remote_addr" => HashPart::ClientIp,
                "host" | "http_host" => HashPart::Host,
                "request_uri" => HashPart::RequestUri,
                "uri" | "document_uri" => HashPart::Path,
                n if n.starts_with("http_") && n.len() > 5 => HashPart::Header(n[5..].replace('_', "-").into()),
                n if n.starts_with("cookie_") && n.len() > 7 => HashPart::Cookie(n[7..].into()),
                n if n.starts_with("arg_") && n.len() > 4 => HashPart::Arg(n[4..].into()),
                "" => return Err("a $ without a variable name".into()),
                n => {
                    return Err(format!(
                        "${n} is not a variable kedge knows (remote_addr, host, request_uri, uri, http_*, cookie_*, arg_*)"
                    ));
                }
            };
            parts.push(part);
            rest = tail;
        }
        if !parts.iter().any(|p| !matches!(p, HashPart::Text(_))) {
            return Err("names no variable: every request would go to one endpoint".into());
        }
        Ok(HashBy(parts))
    }
}

/// Cookie affinity, compatible with ingress-nginx's `affinity: cookie`: the cookie names the
/// endpoint (a hash of its address, the same on every worker and every edge host), so a client
/// keeps it for as long as it exists, whatever worker or host its connections land on, and
/// across scaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    pub cookie: Box<str>,
    pub path: Box<str>,
    pub max_age: Option<u64>,
    pub expires: Option<u64>,
    pub secure: bool,
    /// `None`, `Lax` or `Strict`.
    pub samesite: Option<Box<str>>,
    /// When the cookie's endpoint fails (connect error), pick another and re-set the cookie;
    /// otherwise the request fails as it would without a second endpoint.
    pub change_on_failure: bool,
}

impl Affinity {
    /// `Set-Cookie: NAME=VALUE; Path=..; ...\r\n` for endpoint key `value`; `now` in Unix seconds
    /// (for Expires).
    pub fn set_cookie_line(&self, value: u64, now: i64, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let _ = write!(out, "Set-Cookie: {}={value:016x}; Path={}", self.cookie, self.path);
        if let Some(age) = self.max_age {
            let _ = write!(out, "; Max-Age={age}");
        }
        if let Some(secs) = self.expires {
            let _ = write!(out, "; Expires={}", http_date(now + secs as i64));
        }
        if self.secure {
            out.extend_from_slice(b"; Secure");
        }
        if let Some(s) = &self.samesite {
            let _ = write!(out, "; SameSite={s}");
        }
        out.extend_from_slice(b"; HttpOnly\r\n");
    }
}

/// Most endpoints one request tries (`proxy-next-upstream-tries` at most, and its `0`).
pub const MAX_TRIES: usize = 16;

/// The affinity cookie value of an endpoint: a hash of its address, the same in every process.
pub fn endpoint_key(addr: std::net::SocketAddr) -> u64 {
    let mut h = Fnv::default();
    match addr.ip().to_canonical() {
        IpAddr::V4(a) => h.write(&a.octets()),
        IpAddr::V6(a) => h.write(&a.octets()),
    }
    h.write(&addr.port().to_be_bytes());
    mix(h.0)
}

/// Rendezvous weight of `endpoint` for `key`: the endpoint with the highest weight wins.
pub fn rendezvous(key: u64, endpoint: u64) -> u64 {
    mix(key ^ endpoint.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15)
}

/// An IMF-fixdate (RFC 9110 §5.6.7) for Unix seconds.
pub fn http_date(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // "YYYY-MM-DDTHH:MM:SSZ"
    let iso = crate::time::format_time(t);
    let day = DAYS[t.div_euclid(86_400).rem_euclid(7) as usize];
    let month = iso[5..7].parse::<usize>().map_or("Jan", |m| MONTHS[(m + 11) % 12]);
    format!("{day}, {} {month} {} {} GMT", &iso[8..10], &iso[0..4], &iso[11..19])
}

/// A fixed redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 307 or 308.
    pub status: u16,
    pub location: Box<str>,
}

/// `rewrite-target`: the rule's path is a regex; the path sent upstream is `target` with
/// `$1`..`$9` replaced by its captures (the query string is kept).
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub pattern: regex::Regex,
    pub target: Box<str>,
}

impl Policy {
    /// Whether a client at `ip` may use this rule.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }

    /// The path to send upstream instead of `path`, written into `out` (cleared first);
    /// `false` when this policy does not rewrite (or the pattern does not match).
    pub fn rewrite_into(&self, path: &str, out: &mut String) -> bool {
        let Some(rw) = &self.rewrite else { return false };
        let Some(caps) = rw.pattern.captures(path) else {
            return false;
        };
        out.clear();
        let mut rest = &*rw.target;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            match after.as_bytes().first() {
                Some(d @ b'0'..=b'9') => {
                    if let Some(m) = caps.get(usize::from(d - b'0')) {
                        out.push_str(m.as_str());
                    }
                    rest = &after[1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        true
    }
}

/// An address range: `192.0.2.0/24`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Parses a comma-separated list (`"192.0.2.0/24, 198.51.100.7"`).
    pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
        s.split(',').filter(|p| !p.trim().is_empty()).map(Cidr::parse).collect()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 { 0 } else { bits >> (width - prefix) }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32) == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
