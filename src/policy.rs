//! What a rule does to a request besides choosing its backend: redirects, rewrites, limits,
//! timeouts, client address filters. Values only (built by the control thread from a
//! `[[route]]` or an Ingress's annotations, immutable once in a table); the worker asks them
//! questions (`allows`, `rewrite`) on the request path without allocating unless a rewrite
//! happens.

use std::net::IpAddr;
use std::time::Duration;

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
