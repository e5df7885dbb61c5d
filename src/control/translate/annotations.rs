//! ingress-nginx annotations → a rule [`Policy`], typed: each value is parsed once per build;
//! a bad one is one warning naming the annotation and the reason, and the rest of the Ingress
//! is served without it. Snippets are refused (never executed), and annotations kedge does not
//! implement are reported, so nothing is silently ignored.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Warnings, warn};
use crate::policy::{Affinity, Balance, Cidr, HashBy, Policy, Redirect};

/// ingress-nginx's annotation prefix.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Annotations read elsewhere in `translate` (TLS, classes, upstream protocol) or here.
const KNOWN: &[&str] = &[
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "proxy-ssl-verify",
    "proxy-ssl-secret",
    "proxy-ssl-name",
    "proxy-ssl-server-name",
    "use-regex",
    "rewrite-target",
    "app-root",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "whitelist-source-range",
    "allowlist-source-range",
    "denylist-source-range",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "temporal-redirect-code",
    "load-balance",
    "upstream-hash-by",
    "affinity",
    "affinity-mode",
    "session-cookie-name",
    "session-cookie-path",
    "session-cookie-max-age",
    "session-cookie-expires",
    "session-cookie-secure",
    "session-cookie-samesite",
    "session-cookie-change-on-failure",
    "proxy-next-upstream",
    "proxy-next-upstream-tries",
    "canary",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "proxy-next-upstream-timeout",
    "canary-by-cookie",
    "canary-weight",
    "canary-weight-total",
    "limit-rps",
    "limit-rpm",
    "limit-burst-multiplier",
    "limit-connections",
    "limit-whitelist",
    "limit-allowlist",
    "auth-type",
    "auth-secret",
    "auth-secret-type",
    "auth-realm",
];

/// Annotations that carry nginx configuration text: never executed.
const SNIPPETS: &[&str] = &[
    "configuration-snippet",
    "server-snippet",
    "auth-snippet",
    "stream-snippet",
    "modsecurity-snippet",
];

/// What an Ingress's annotations ask of its rules.
pub struct IngressPolicy {
    /// Everything but the per-rule parts (`ssl_redirect`, `rewrite`).
    pub base: Policy,
    /// `use-regex: "true"`, or implied by `rewrite-target`: Prefix and ImplementationSpecific
    /// paths are regexes.
    pub regex: bool,
    /// `rewrite-target`, with `$1`.. for the path regex's captures.
    pub rewrite_target: Option<String>,
}

/// Reads the annotations of one Ingress (`owner` names it in warnings).
pub fn read(m: &ObjectMeta, owner: &str, w: &mut Warnings) -> IngressPolicy {
    let mut p = IngressPolicy {
        base: Policy::default(),
        regex: false,
        rewrite_target: None,
    };
    let Some(annotations) = &m.annotations else {
        return p;
    };
    let mut bad = |key: &str, value: &str, why: String| {
        warn(w, owner, format!("{PREFIX}{key}: {value:?} {why}; ignored"));
    };
    let get = |key: &str| annotations.get(&format!("{PREFIX}{key}")).map(String::as_str);

    p.regex = match get("use-regex") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            bad("use-regex", v, "is not \"true\" or \"false\"".into());
            false
        }
    };
    if let Some(t) = get("rewrite-target") {
        if t.is_empty() || t.bytes().any(|b| b <= b' ' || b == 0x7f) {
            bad("rewrite-target", t, "is not a path".into());
        } else {
            p.rewrite_target = Some(t.to_owned());
            p.regex = true; // as ingress-nginx: rewrite-target implies use-regex
        }
    }
    if let Some(v) = get("app-root") {
        if v.starts_with('/') && !v.bytes().any(|b| b <= b' ' || b == 0x7f) {
            p.base.app_root = Some(v.into());
        } else {
            bad("app-root", v, "is not a path starting with /".into());
        }
    }
    if let Some(v) = get("proxy-body-size") {
        match size(v) {
            Some(n) => p.base.max_body = Some(n),
            None => bad(
                "proxy-body-size",
                v,
                "is not a size like 8m, 512k or 0 (unlimited)".into(),
            ),
        }
    }
    for (key, slot) in [
        ("proxy-connect-timeout", &mut p.base.connect_timeout),
        ("proxy-read-timeout", &mut p.base.read_timeout),
        ("proxy-send-timeout", &mut p.base.send_timeout),
    ] {
        if let Some(v) = get(key) {
            match seconds(v) {
                Some(d) => *slot = Some(d),
                None => bad(key, v, "is not a number of seconds (1 to 86400)".into()),
            }
        }
    }
    // whitelist- is the old name of allowlist-; either (or both: merged) works.
    for key in ["whitelist-source-range", "allowlist-source-range"] {
        if let Some(v) = get(key) {
            match Cidr::parse_list(v) {
                Ok(list) if !list.is_empty() => p.base.allow.extend(list),
                Ok(_) => bad(key, v, "lists no address".into()),
                Err(e) => bad(key, v, format!("is not a list of CIDR ranges ({e})")),
            }
        }
    }
    if let Some(v) = get("denylist-source-range") {
        match Cidr::parse_list(v) {
            Ok(list) => p.base.deny = list,
            Err(e) => bad(
                "denylist-source-range",
                v,
                format!("is not a list of CIDR ranges ({e})"),
            ),
        }
    }
    // As ingress-nginx: a temporal redirect wins over a permanent one.
    for (key, code_key, default, codes) in [
        (
            "temporal-redirect",
            "temporal-redirect-code",
            302,
            &[302u16, 303, 307][..],
        ),
        ("permanent-redirect", "permanent-redirect-code", 301, &[301, 308][..]),
    ] {
        let Some(v) = get(key) else { continue };
        if p.base.redirect.is_some() {
            bad(key, v, "is overridden by temporal-redirect".into());
            continue;
        }
        if v.is_empty() || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
            bad(key, v, "is not a URL".into());
            continue;
        }
        let status = match get(code_key) {
            None => default,
            Some(c) => match c.parse::<u16>() {
                Ok(n) if codes.contains(&n) => n,
                _ => {
                    bad(code_key, c, format!("is not one of {codes:?}; using {default}"));
                    default
                }
            },
        };
        p.base.redirect = Some(Redirect {
            status,
            location: v.into(),
        });
    }
    match get("load-balance") {
        None | Some("round_robin") => {}
        // ingress-nginx's ewma weighs latency; kedge's nearest is least-request.
        Some("ewma" | "least_request" | "least_conn") => p.base.balance = Balance::LeastRequest,
        Some(v) => bad(
            "load-balance",
            v,
            "is not one of \"round_robin\", \"ewma\", \"least_request\"".into(),
        ),
    }
    if let Some(v) = get("upstream-hash-by") {
        match HashBy::parse(v) {
            Ok(hb) => p.base.balance = Balance::Hash(hb),
            Err(e) => bad("upstream-hash-by", v, e),
        }
    }
    match get("affinity") {
        None => {}
        Some("cookie") => {
            let mut a = Affinity {
                cookie: "INGRESSCOOKIE".into(),
                path: "".into(), // the rule's path, filled in per rule
                max_age: None,
                expires: None,
                secure: false,
                samesite: None,
                change_on_failure: false,
            };
            if let Some(v) = get("session-cookie-name") {
                if !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    a.cookie = v.into();
                } else {
                    bad("session-cookie-name", v, "is not a cookie name".into());
                }
            }
            if let Some(v) = get("session-cookie-path") {
                if v.starts_with('/') && !v.bytes().any(|b| b <= b' ' || b == b';' || b == 0x7f) {
                    a.path = v.into();
                } else {
                    bad("session-cookie-path", v, "is not a path".into());
                }
            }
            for (key, slot) in [
                ("session-cookie-max-age", &mut a.max_age),
                ("session-cookie-expires", &mut a.expires),
            ] {
                if let Some(v) = get(key) {
                    match v.parse::<u64>() {
                        Ok(n) => *slot = Some(n),
                        Err(_) => bad(key, v, "is not a number of seconds".into()),
                    }
                }
            }
            for (key, slot) in [
                ("session-cookie-secure", &mut a.secure),
                ("session-cookie-change-on-failure", &mut a.change_on_failure),
            ] {
                match get(key) {
                    None => {}
                    Some("true") => *slot = true,
                    Some("false") => *slot = false,
                    Some(v) => bad(key, v, "is not \"true\" or \"false\"".into()),
                }
            }
            match get("session-cookie-samesite") {
                None => {}
                Some(v @ ("None" | "Lax" | "Strict")) => a.samesite = Some(v.into()),
                Some(v) => bad("session-cookie-samesite", v, "is not one of None, Lax, Strict".into()),
            }
            match get("affinity-mode") {
                // Both keep a client on its endpoint while it exists; new clients are balanced.
                None | Some("balanced" | "persistent") => {}
                Some(v) => bad("affinity-mode", v, "is not \"balanced\" or \"persistent\"".into()),
            }
            p.base.affinity = Some(a);
        }
        Some(v) => bad("affinity", v, "is not \"cookie\" (the only affinity there is)".into()),
    }
    let count = |key: &str, bad: &mut dyn FnMut(&str, &str, String)| -> Option<u32> {
        let v = get(key)?;
        match v.parse::<u32>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                bad(key, v, "is not a positive whole number".into());
                None
            }
        }
    };
    let rps = count("limit-rps", &mut bad);
    let rpm = count("limit-rpm", &mut bad);
    let multiplier = count("limit-burst-multiplier", &mut bad).unwrap_or(5);
    // As ingress-nginx: limit-rps wins over limit-rpm; the burst is the limit times the
    // multiplier, in requests.
    p.base.rate = match (rps, rpm) {
        (Some(r), _) => Some((f64::from(r), r)),
        (None, Some(m)) => Some((f64::from(m) / 60.0, m)),
        (None, None) => None,
    }
    .map(|(per_sec, limit)| crate::policy::Rate {
        per_sec,
        burst: f64::from(limit.saturating_mul(multiplier)),
    });
    p.base.max_conns = count("limit-connections", &mut bad);
    for key in ["limit-whitelist", "limit-allowlist"] {
        if let Some(v) = get(key) {
            match Cidr::parse_list(v) {
                Ok(list) => p.base.limit_exempt.extend(list),
                Err(e) => bad(key, v, format!("is not a list of CIDR ranges ({e})")),
            }
        }
    }
    if let Some(v) = get("proxy-next-upstream") {
        for token in v.split_whitespace() {
            match token {
                "off" => p.base.tries = Some(1),
                // What kedge always does (connect errors; resets and timeouts before a response
                // for idempotent requests), and nginx's non_idempotent, which kedge never does.
                "error" | "timeout" | "invalid_header" => {}
                t if t.starts_with("http_") => match t[5..].parse::<u16>() {
                    Ok(code @ (500 | 502 | 503 | 504 | 403 | 404 | 429)) => p.base.retry_on.push(code),
                    _ => bad("proxy-next-upstream", t, "is not a status nginx retries on".into()),
                },
                t => bad(
                    "proxy-next-upstream",
                    t,
                    "is not supported (error, timeout, http_5xx, off are)".into(),
                ),
            }
        }
    }
    if let Some(v) = get("proxy-next-upstream-timeout") {
        match seconds(v) {
            Some(d) => p.base.retry_timeout = Some(d),
            None => bad(
                "proxy-next-upstream-timeout",
                v,
                "is not a number of seconds (1 to 86400)".into(),
            ),
        }
    }
    if let Some(v) = get("proxy-next-upstream-tries") {
        match v.parse::<usize>() {
            // 0 means unlimited in nginx: kedge's most.
            Ok(0) => p.base.tries = Some(crate::policy::MAX_TRIES),
            Ok(n) if n <= crate::policy::MAX_TRIES => p.base.tries = Some(n),
            _ => bad(
                "proxy-next-upstream-tries",
                v,
                format!("is not a number from 0 to {}", crate::policy::MAX_TRIES),
            ),
        }
    }
    for (full, value) in annotations {
        let Some(key) = full.strip_prefix(PREFIX) else { continue };
        if SNIPPETS.contains(&key) {
            warn(
                w,
                owner,
                format!("{full}: nginx configuration snippets are never executed by kedge; ignored"),
            );
        } else if !KNOWN.contains(&key) {
            let _ = value;
            warn(
                w,
                owner,
                format!("{full} is not supported by this version of kedge; ignored"),
            );
        }
    }
    p
}

/// An nginx size: bytes, or with a k/m/g suffix (any case). 0 means unlimited.
fn size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// ingress-nginx timeouts are whole seconds ("60"); a trailing "s" is accepted too.
fn seconds(v: &str) -> Option<Duration> {
    let v = v.trim();
    let n: u64 = v.strip_suffix('s').unwrap_or(v).parse().ok()?;
    (1..=86_400).contains(&n).then(|| Duration::from_secs(n))
}

/// The selectors of a canary Ingress (`canary: "true"`); its backend is filled in per path.
/// `None` when they cannot select anything (reported).
pub fn canary(m: &ObjectMeta, owner: &str, w: &mut Warnings) -> Option<crate::routes::Canary> {
    let get = |key: &str| {
        m.annotations
            .as_ref()?
            .get(&format!("{PREFIX}{key}"))
            .map(String::as_str)
    };
    let mut c = crate::routes::Canary {
        backend: 0,
        header: None,
        pattern: None,
        cookie: None,
        weight: 0,
        total: 100,
    };
    let mut bad = |key: &str, value: &str, why: &str| {
        warn(w, owner, format!("{PREFIX}{key}: {value:?} {why}; ignored"));
    };
    if let Some(h) = get("canary-by-header") {
        if !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            c.header = Some((
                h.to_ascii_lowercase().into(),
                get("canary-by-header-value").map(Into::into),
            ));
        } else {
            bad("canary-by-header", h, "is not a header name");
        }
        if let Some(p) = get("canary-by-header-pattern")
            && get("canary-by-header-value").is_none()
        {
            match regex::RegexBuilder::new(&format!("^(?:{p})$"))
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => c.pattern = Some(re),
                Err(_) => bad(
                    "canary-by-header-pattern",
                    p,
                    "is not a regex kedge supports (RE2 syntax)",
                ),
            }
        }
    }
    if let Some(v) = get("canary-by-cookie") {
        if !v.is_empty() && !v.bytes().any(|b| b <= b' ' || b == b';' || b == b'=' || b == 0x7f) {
            c.cookie = Some(v.into());
        } else {
            bad("canary-by-cookie", v, "is not a cookie name");
        }
    }
    if let Some(v) = get("canary-weight-total") {
        match v.parse::<u32>() {
            Ok(n) if n > 0 => c.total = n,
            _ => bad("canary-weight-total", v, "is not a positive number"),
        }
    }
    if let Some(v) = get("canary-weight") {
        match v.parse::<u32>() {
            Ok(n) if n <= c.total => c.weight = n,
            _ => bad("canary-weight", v, &format!("is not a number from 0 to {}", c.total)),
        }
    }
    Some(c)
}

/// `auth-type: basic` with the htpasswd of `auth-secret` (`auth-file`: key `auth`; `auth-map`:
/// a key per user). A missing or unusable Secret is a warning and an empty user list: every
/// request is refused (401), never let through.
pub fn basic_auth(
    m: &ObjectMeta,
    secrets: &rustc_hash::FxHashMap<(&str, &str), &std::sync::Arc<k8s_openapi::api::core::v1::Secret>>,
    owner: &str,
    w: &mut Warnings,
) -> Option<std::sync::Arc<crate::auth::BasicAuth>> {
    let get = |key: &str| {
        m.annotations
            .as_ref()?
            .get(&format!("{PREFIX}{key}"))
            .map(String::as_str)
    };
    match get("auth-type") {
        None => return None,
        Some("basic") => {}
        Some(v) => {
            warn(
                w,
                owner,
                format!("{PREFIX}auth-type: {v:?} is not supported (basic is); every request is refused"),
            );
            return Some(std::sync::Arc::default());
        }
    }
    let realm = get("auth-realm").unwrap_or("Authentication Required");
    let ns = m.namespace.as_deref().unwrap_or("");
    let Some(reference) = get("auth-secret") else {
        warn(
            w,
            owner,
            format!("{PREFIX}auth-type: basic without auth-secret; every request is refused"),
        );
        return Some(std::sync::Arc::default());
    };
    let (sns, sname) = reference.split_once('/').unwrap_or((ns, reference));
    let data = secrets.get(&(sns, sname)).and_then(|s| s.data.as_ref());
    let Some(data) = data else {
        warn(
            w,
            owner,
            format!(
                "{PREFIX}auth-secret: Secret {sns}/{sname} not found (kedge reads Opaque and kubernetes.io/tls Secrets); every request is refused"
            ),
        );
        return Some(std::sync::Arc::default());
    };
    let (mut auth, problems) = match get("auth-secret-type").unwrap_or("auth-file") {
        "auth-map" => {
            let mut a = crate::auth::BasicAuth::parse(realm, "").0;
            let mut problems = Vec::new();
            for (user, hash) in data {
                if !a.insert(user, String::from_utf8_lossy(&hash.0).trim()) {
                    problems.push(format!("key {user:?}: not a supported hash"));
                }
            }
            (a, problems)
        }
        "auth-file" => match data.get("auth") {
            Some(file) => crate::auth::BasicAuth::parse(realm, &String::from_utf8_lossy(&file.0)),
            None => (crate::auth::BasicAuth::default(), vec!["no key \"auth\"".to_owned()]),
        },
        other => (
            crate::auth::BasicAuth::default(),
            vec![format!("auth-secret-type {other:?} is not auth-file or auth-map")],
        ),
    };
    auth.realm = realm.into();
    auth.seal();
    for p in problems {
        warn(w, owner, format!("{PREFIX}auth-secret: Secret {sns}/{sname}: {p}"));
    }
    if auth.is_empty() {
        warn(
            w,
            owner,
            format!("{PREFIX}auth-secret: Secret {sns}/{sname} has no usable user; every request is refused"),
        );
    }
    Some(std::sync::Arc::new(auth))
}
