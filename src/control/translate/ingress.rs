//! Ingresses → rules: class selection, hosts, paths and path types, `defaultBackend`, `tls`
//! sections, canaries, and conflicts between Ingresses (the oldest wins). The Services behind
//! each path are resolved by [`backends`](super::backends); annotations become a rule's policy
//! in [`annotations`](super::annotations).
//!
//! Choices where the API leaves room (as ingress-nginx unless said otherwise):
//! - A path whose Service, Service port or nodePort cannot be resolved still goes into the
//!   table, to a backend with no endpoints, so kedge answers 503 for it (ingress-nginx does the
//!   same). Skipping the rule instead would let the request fall through to a shorter prefix or
//!   the default backend, i.e. to another application.
//! - A path kedge cannot route at all (`backend.resource`, no port, bad path, bad host) is
//!   skipped and reported; the rest of the Ingress is served.
//! - `ImplementationSpecific` is `Prefix`; with an empty path it is the prefix `/`.
//! - An Ingress without `creationTimestamp` counts as the youngest: it cannot claim to be oldest.
//! - Backend names use the Service port *number* once resolved, so a path naming the port
//!   `http` and one naming `80` share one backend (and its balancer state).
//! - The endpoints with `serving` absent count as serving, `terminating` absent as not
//!   terminating (as the API documents), the same as `ready` absent counts as ready.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress, IngressClass};
use rustc_hash::FxHashSet as HashSet;

use super::backends::Resolver;
use super::{ClusterSpec, Objects, Outcome, TlsBinding, Warnings, age, annotation, annotations, ns_name, warn};
use crate::policy::{Policy, Rewrite};
use crate::routes::{PathType, TableBuilder};

/// Legacy class annotation, from before `spec.ingressClassName`.
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks an IngressClass as the class of Ingresses that name none.
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// `"false"` turns off the HTTP → HTTPS redirect of hosts that have TLS (on by default).
const SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
/// `"true"` redirects HTTP → HTTPS even for hosts without TLS of their own.
const FORCE_SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/force-ssl-redirect";
/// `"true"`: this Ingress is a canary of another one with the same host and path.
const CANARY_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary";
/// `HTTPS`: TLS to the endpoints (`HTTP`, the default: plain); `GRPC`: HTTP/2 in plain text
/// (h2c); `GRPCS`: HTTP/2 over TLS (ALPN `h2`).
const BACKEND_PROTOCOL_ANNOTATION: &str = "nginx.ingress.kubernetes.io/backend-protocol";
/// `"on"`: verify the endpoints' certificates (off by default, as in ingress-nginx).
const PROXY_SSL_VERIFY_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-ssl-verify";
/// `namespace/name` of a Secret whose `ca.crt` verifies the endpoints.
const PROXY_SSL_SECRET_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-ssl-secret";
/// The name the endpoints' certificates must carry (default `service.namespace.svc`).
const PROXY_SSL_NAME_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-ssl-name";
/// `"on"`: send that name as SNI.
const PROXY_SSL_SERVER_NAME_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-ssl-server-name";

/// Adds the routes of one cluster's Ingresses to `builder`, oldest Ingress first, so that on
/// a conflict the oldest wins.
pub fn translate(builder: &mut TableBuilder, spec: &ClusterSpec, objs: &Objects<'_>) -> Outcome {
    let mut warnings = Warnings::new();
    let classes = Classes::new(spec, objs.classes);
    let mut ours: Vec<&Ingress> = objs
        .ingresses
        .iter()
        .map(|i| &**i)
        .filter(|i| classes.serves(i, spec, &mut warnings))
        .collect();
    ours.sort_by(|a, b| age(&a.metadata).cmp(&age(&b.metadata)));

    let mut resolver = Resolver::new(spec, objs);
    let secrets: rustc_hash::FxHashMap<(&str, &str), &Arc<Secret>> = objs
        .secrets
        .iter()
        .filter(|s| usable_tls(s))
        .map(|s| (ns_name(&s.metadata), s))
        .collect();
    // Hosts with TLS, over all our Ingresses: as in ingress-nginx, a host has TLS (and its
    // plain-HTTP requests are redirected) when any Ingress lists it in a `tls` section.
    let mut tls_hosts = HashSet::default();
    let mut tls = Vec::new();
    for ing in &ours {
        collect_tls(ing, &secrets, &mut tls_hosts, &mut tls, &mut warnings);
    }
    let all_secrets: rustc_hash::FxHashMap<(&str, &str), &Arc<Secret>> =
        objs.secrets.iter().map(|s| (ns_name(&s.metadata), s)).collect();
    let mut served = Vec::new();
    // Canary Ingresses attach to the rules of the others, so they come after all of them.
    let (canaries, mains): (Vec<&Ingress>, Vec<&Ingress>) = ours
        .into_iter()
        .partition(|i| annotation(&i.metadata, CANARY_ANNOTATION) == Some("true"));
    for ing in mains {
        let tls = IngressTls {
            hosts: &tls_hosts,
            secrets: &all_secrets,
        };
        if add_ingress(builder, &mut resolver, &spec.name, ing, &tls, &mut warnings) {
            let (ns, name) = ns_name(&ing.metadata);
            served.push((ns.to_owned(), name.to_owned()));
        }
    }
    for ing in canaries {
        if add_canary(builder, &mut resolver, &spec.name, ing, &mut warnings) {
            let (ns, name) = ns_name(&ing.metadata);
            served.push((ns.to_owned(), name.to_owned()));
        }
    }
    served.sort();
    Outcome {
        warnings: warnings.into_iter().collect(),
        served,
        tls,
    }
}

/// Whether a Secret can serve as a certificate: type `kubernetes.io/tls` with a non-empty
/// `tls.crt` and `tls.key` (parsing the PEM is the TLS listener's business).
fn usable_tls(s: &Secret) -> bool {
    let has = |k: &str| s.data.as_ref().and_then(|d| d.get(k)).is_some_and(|v| !v.0.is_empty());
    s.type_.as_deref() == Some("kubernetes.io/tls") && has("tls.crt") && has("tls.key")
}

/// Collects an Ingress's `tls` entries: their hosts have TLS; those with a usable Secret (same
/// namespace) get its certificate, the others the default one (with a warning when the Secret
/// is missing or unusable). An entry without hosts covers the Ingress's rule hosts; one without
/// `secretName` uses the default certificate, as in ingress-nginx.
fn collect_tls(
    ing: &Ingress,
    secrets: &rustc_hash::FxHashMap<(&str, &str), &Arc<Secret>>,
    tls_hosts: &mut HashSet<String>,
    out: &mut Vec<TlsBinding>,
    w: &mut Warnings,
) {
    let Some(spec) = &ing.spec else { return };
    let (ns, name) = ns_name(&ing.metadata);
    let owner = format!("Ingress {ns}/{name}");
    for entry in spec.tls.iter().flatten() {
        let listed: Vec<&str> = entry.hosts.iter().flatten().map(String::as_str).collect();
        let hosts: Vec<&str> = if listed.is_empty() {
            spec.rules
                .iter()
                .flatten()
                .filter_map(|r| r.host.as_deref())
                .filter(|h| !h.is_empty())
                .collect()
        } else {
            listed
        };
        let secret = match entry.secret_name.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(secret) => match secrets.get(&(ns, secret)) {
                Some(s) => Some(*s),
                None => {
                    warn(
                        w,
                        &owner,
                        format!(
                            "tls: Secret {ns}/{secret} not found, or not a kubernetes.io/tls Secret with tls.crt and \
                             tls.key; its hosts get the default certificate"
                        ),
                    );
                    None
                }
            },
        };
        for h in hosts {
            let Some(host) = parse_host(h) else {
                warn(
                    w,
                    &owner,
                    format!("tls: host {h:?} is not a DNS name or *.suffix wildcard; ignored"),
                );
                continue;
            };
            if let Some(secret) = secret {
                out.push(TlsBinding {
                    host: host.clone(),
                    secret: Arc::clone(secret),
                    owner: owner.clone(),
                    scope: None,
                });
            }
            tls_hosts.insert(host);
        }
    }
}

/// The cluster's IngressClasses, as far as class selection needs them.
struct Classes<'a> {
    /// Names of the classes whose controller is ours.
    ours: HashSet<&'a str>,
    /// Names of all classes.
    all: HashSet<&'a str>,
    /// One of ours is marked default.
    default: bool,
}

impl<'a> Classes<'a> {
    fn new(spec: &ClusterSpec, classes: &'a [Arc<IngressClass>]) -> Self {
        let mut c = Classes {
            ours: HashSet::default(),
            all: HashSet::default(),
            default: false,
        };
        for class in classes {
            let Some(name) = class.metadata.name.as_deref() else {
                continue;
            };
            c.all.insert(name);
            let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
            if controller == Some(spec.controller.as_str()) {
                c.ours.insert(name);
                c.default |= annotation(&class.metadata, DEFAULT_CLASS_ANNOTATION) == Some("true");
            }
        }
        c
    }

    /// Whether `ing` is ours: its `ingressClassName` is one of our classes; or, without one,
    /// its legacy annotation names our class; or, with neither, one of our classes is default.
    /// An Ingress of another class is someone else's business and gets no warning, except one
    /// that names our class name when no IngressClass of that name exists: that is almost
    /// certainly meant for us, and the fix (create the IngressClass) is worth saying.
    fn serves(&self, ing: &Ingress, spec: &ClusterSpec, w: &mut Warnings) -> bool {
        let class_name = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
        match class_name.filter(|n| !n.is_empty()) {
            Some(n) if self.ours.contains(n) => true,
            Some(n) => {
                if n == spec.ingress_class && !self.all.contains(n) {
                    let (ns, name) = ns_name(&ing.metadata);
                    warn(
                        w,
                        &format!("Ingress {ns}/{name}"),
                        format!(
                            "ingressClassName {n:?} names no IngressClass; create one with controller {:?} \
                             for kedge to serve this Ingress",
                            spec.controller
                        ),
                    );
                }
                false
            }
            None => match annotation(&ing.metadata, LEGACY_CLASS_ANNOTATION) {
                Some(a) => a == spec.ingress_class,
                None => self.default,
            },
        }
    }
}

/// Adds one Ingress's rules and default backend. Returns whether anything went in.
/// What an Ingress's translation needs to know about TLS.
struct IngressTls<'t> {
    /// Hosts with TLS (listed in some Ingress's `tls` section).
    hosts: &'t HashSet<String>,
    /// The watched Secrets, for `proxy-ssl-secret`.
    secrets: &'t rustc_hash::FxHashMap<(&'t str, &'t str), &'t Arc<Secret>>,
}

/// The upstream TLS an Ingress asks for through ingress-nginx's annotations, for Service `svc`
/// in its namespace (`None`: plain), and whether the endpoints speak HTTP/2 (`GRPC`, `GRPCS`).
fn upstream_tls(
    ing: &Ingress,
    svc: &str,
    tls: &IngressTls<'_>,
    owner: &str,
    w: &mut Warnings,
) -> (Option<crate::tls::UpstreamTlsSettings>, bool) {
    use crate::tls::{UpstreamTlsSettings, Verify};
    let m = &ing.metadata;
    let h2 = match annotation(m, BACKEND_PROTOCOL_ANNOTATION)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("HTTP") => return (None, false),
        Some("GRPC") => return (None, true),
        Some("HTTPS") => false,
        Some("GRPCS") => true,
        Some(other) => {
            warn(
                w,
                owner,
                format!(
                    "{BACKEND_PROTOCOL_ANNOTATION}: {other:?} is not supported (HTTP, HTTPS, GRPC and GRPCS are); \
                     using HTTP"
                ),
            );
            return (None, false);
        }
    };
    let (ns, _) = ns_name(m);
    let on = |k: &str| annotation(m, k) == Some("on");
    let verify = match annotation(m, PROXY_SSL_SECRET_ANNOTATION) {
        Some(reference) => {
            let (sns, sname) = reference.split_once('/').unwrap_or((ns, reference));
            let ca = tls
                .secrets
                .get(&(sns, sname))
                .and_then(|s| s.data.as_ref()?.get("ca.crt"))
                .map(|b| b.0.clone());
            match ca {
                Some(pem) => Verify::Ca(pem),
                None => {
                    warn(
                        w,
                        owner,
                        format!(
                            "{PROXY_SSL_SECRET_ANNOTATION}: Secret {sns}/{sname} not found or without ca.crt (kedge reads \
                             kubernetes.io/tls and Opaque Secrets only); verifying against the system's CAs"
                        ),
                    );
                    Verify::System
                }
            }
        }
        None if on(PROXY_SSL_VERIFY_ANNOTATION) => Verify::System,
        None => Verify::Off,
    };
    let verify = if on(PROXY_SSL_VERIFY_ANNOTATION) || matches!(verify, Verify::Off) {
        verify
    } else {
        Verify::Off // a CA without proxy-ssl-verify: on is not used (as ingress-nginx)
    };
    let name = annotation(m, PROXY_SSL_NAME_ANNOTATION)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{svc}.{ns}.svc"));
    let settings = UpstreamTlsSettings {
        verify,
        name,
        sni: on(PROXY_SSL_SERVER_NAME_ANNOTATION),
        h2,
    };
    (Some(settings), h2)
}

fn add_ingress<'a>(
    b: &mut TableBuilder,
    r: &mut Resolver<'a>,
    cluster: &str,
    ing: &'a Ingress,
    tls: &IngressTls<'_>,
    w: &mut Warnings,
) -> bool {
    let tls_hosts = tls.hosts;
    let (ns, name) = ns_name(&ing.metadata);
    let owner = format!("Ingress {ns}/{name}");
    // In the table, rules from several clusters meet: say which cluster a winning rule is from.
    let table_owner = format!("{owner} of cluster {cluster}");
    let Some(spec) = &ing.spec else { return false };
    let mut ann = annotations::read(&ing.metadata, &owner, w);
    ann.base.auth = annotations::basic_auth(&ing.metadata, tls.secrets, &owner, w);
    let force_redirect = annotation(&ing.metadata, FORCE_SSL_REDIRECT_ANNOTATION) == Some("true");
    let tls_redirect = annotation(&ing.metadata, SSL_REDIRECT_ANNOTATION) != Some("false");
    let mut added = false;
    for rule in spec.rules.iter().flatten() {
        let Some(host) = rule_host(rule, &owner, w) else {
            continue;
        };
        // A rule without `http` only names a host (for TLS); it routes nothing.
        let Some(http) = &rule.http else { continue };
        let shown = host.as_deref().unwrap_or("*");
        let ssl_redirect = force_redirect || tls_redirect && host.as_ref().is_some_and(|h| tls_hosts.contains(h));
        // Rules without a rewrite share one policy; its limits count per Ingress and host.
        let mut id = crate::hash::Fnv::default();
        id.write(table_owner.as_bytes());
        id.write(shown.as_bytes());
        let shared = std::sync::Arc::new(Policy {
            ssl_redirect,
            limit_id: id.0,
            host: shown.into(),
            ..ann.base.clone()
        });
        for p in &http.paths {
            let Some((path, path_type)) = rule_path(p, shown, ann.regex, &owner, w) else {
                continue;
            };
            let policy = match (&ann.rewrite_target, path_type) {
                (Some(target), PathType::Regex) => match crate::routes::regex_path(path) {
                    Ok(pattern) => std::sync::Arc::new(Policy {
                        rewrite: Some(Rewrite {
                            pattern,
                            target: target.as_str().into(),
                        }),
                        ..(*shared).clone()
                    }),
                    Err(e) => {
                        warn(w, &owner, format!("host {shown}: path {path:?}: {e}; path ignored"));
                        continue;
                    }
                },
                (_, PathType::Regex) => match crate::routes::regex_path(path) {
                    Ok(_) => std::sync::Arc::clone(&shared),
                    Err(e) => {
                        warn(w, &owner, format!("host {shown}: path {path:?}: {e}; path ignored"));
                        continue;
                    }
                },
                _ => std::sync::Arc::clone(&shared),
            };
            // The affinity cookie's path defaults to the rule's (as ingress-nginx); `/` for a
            // regex path.
            let policy = match &policy.affinity {
                Some(a) if a.path.is_empty() => {
                    let mut p = (*policy).clone();
                    if let Some(a) = &mut p.affinity {
                        a.path = if path_type == PathType::Regex {
                            "/".into()
                        } else {
                            path.into()
                        };
                    }
                    std::sync::Arc::new(p)
                }
                _ => policy,
            };
            let Some(id) = r.backend(b, ns, &p.backend, &owner, w) else {
                continue;
            };
            set_backend_tls(
                b,
                id,
                ing,
                p.backend.service.as_ref().map_or("", |s| s.name.as_str()),
                tls,
                (&owner, &table_owner),
                w,
            );
            match b.rule_with(host.as_deref(), path, path_type, id, policy, &table_owner) {
                Ok(()) => added = true,
                Err(c) => warn(
                    w,
                    &owner,
                    format!(
                        "host {shown} path {path} ({path_type:?}) is already routed by {}; ignored",
                        c.winner
                    ),
                ),
            }
        }
    }
    if let Some(db) = &spec.default_backend
        && let Some(id) = r.backend(b, ns, db, &owner, w)
    {
        set_backend_tls(
            b,
            id,
            ing,
            db.service.as_ref().map_or("", |s| s.name.as_str()),
            tls,
            (&owner, &table_owner),
            w,
        );
        match b.default_backend(id, &table_owner) {
            Ok(()) => added = true,
            Err(c) => warn(
                w,
                &owner,
                format!("the default backend is already set by {}; ignored", c.winner),
            ),
        }
    }
    added
}

/// Attaches a canary Ingress's paths to the rules of the main Ingress with the same host, path
/// and type. Returns whether any was attached.
fn add_canary<'a>(
    b: &mut TableBuilder,
    r: &mut Resolver<'a>,
    cluster: &str,
    ing: &'a Ingress,
    w: &mut Warnings,
) -> bool {
    let (ns, name) = ns_name(&ing.metadata);
    let owner = format!("Ingress {ns}/{name}");
    let table_owner = format!("{owner} of cluster {cluster}");
    let Some(spec) = &ing.spec else { return false };
    let Some(selectors) = annotations::canary(&ing.metadata, &owner, w) else {
        return false;
    };
    let regex = annotation(&ing.metadata, "nginx.ingress.kubernetes.io/use-regex") == Some("true")
        || annotation(&ing.metadata, "nginx.ingress.kubernetes.io/rewrite-target").is_some();
    let mut added = false;
    for rule in spec.rules.iter().flatten() {
        let Some(host) = rule_host(rule, &owner, w) else {
            continue;
        };
        let Some(http) = &rule.http else { continue };
        let shown = host.as_deref().unwrap_or("*");
        for p in &http.paths {
            let Some((path, path_type)) = rule_path(p, shown, regex, &owner, w) else {
                continue;
            };
            let Some(id) = r.backend(b, ns, &p.backend, &owner, w) else {
                continue;
            };
            let canary = crate::routes::Canary {
                backend: id,
                ..selectors.clone()
            };
            match b.canary(host.as_deref(), path, path_type, canary, &table_owner) {
                Ok(()) => added = true,
                Err(None) => warn(
                    w,
                    &owner,
                    format!("canary: no other Ingress routes host {shown} path {path} ({path_type:?}); ignored"),
                ),
                Err(Some(winner)) => warn(
                    w,
                    &owner,
                    format!("canary: host {shown} path {path} already has a canary from {winner}; ignored"),
                ),
            }
        }
    }
    added
}

/// Gives backend `id` the upstream TLS the Ingress asks for, reporting a conflict with an
/// earlier Ingress that decided otherwise for the same Service port.
fn set_backend_tls(
    b: &mut TableBuilder,
    id: crate::routes::BackendId,
    ing: &Ingress,
    svc: &str,
    tls: &IngressTls<'_>,
    (owner, table_owner): (&str, &str),
    w: &mut Warnings,
) {
    let (settings, h2) = upstream_tls(ing, svc, tls, owner, w);
    let wanted = match settings {
        None => None,
        Some(settings) => match crate::tls::upstream_tls(&settings) {
            Ok(t) => Some(t),
            Err(e) => {
                warn(w, owner, format!("upstream TLS: {e}; its paths answer 502"));
                Some(crate::tls::broken_upstream_tls())
            }
        },
    };
    if let Err(c) = b.backend_tls(id, wanted, h2, table_owner) {
        warn(
            w,
            owner,
            format!(
                "Service {svc}: its upstream protocol is already set by {} (the first Ingress using it decides); \
                 ignored",
                c.winner
            ),
        );
    }
}

/// A rule's host: `Some(None)` for any host, `Some(Some(host))` for a valid one, `None` (with a
/// warning) for one that is neither: the rule is skipped.
fn rule_host(
    rule: &k8s_openapi::api::networking::v1::IngressRule,
    owner: &str,
    w: &mut Warnings,
) -> Option<Option<String>> {
    match rule.host.as_deref().filter(|h| !h.is_empty()) {
        None => Some(None),
        Some(h) => match parse_host(h) {
            Some(h) => Some(Some(h)),
            None => {
                warn(
                    w,
                    owner,
                    format!("host {h:?} is not a DNS name or *.suffix wildcard; rule ignored"),
                );
                None
            }
        },
    }
}

/// A path's rule, or `None` (with a warning) when it cannot be routed. With `regex` (use-regex,
/// rewrite-target), Prefix and ImplementationSpecific paths are regexes; Exact stays exact, as
/// ingress-nginx's `location =`.
fn rule_path<'p>(
    p: &'p HTTPIngressPath,
    shown: &str,
    regex: bool,
    owner: &str,
    w: &mut Warnings,
) -> Option<(&'p str, PathType)> {
    match path_rule(p) {
        Ok((path, PathType::Prefix)) if regex => Some((path, PathType::Regex)),
        Ok(r) => Some(r),
        Err(e) => {
            warn(w, owner, format!("host {shown}: {e}; path ignored"));
            None
        }
    }
}

/// A rule's host, lower-cased, when it is a DNS name or a `*.suffix` wildcard.
fn parse_host(h: &str) -> Option<String> {
    let h = h.to_ascii_lowercase();
    let name = h.strip_prefix("*.").unwrap_or(&h);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(h)
}

/// A path's table rule: its path and how it matches.
fn path_rule(p: &HTTPIngressPath) -> Result<(&str, PathType), String> {
    let path = p.path.as_deref().unwrap_or("");
    let path_type = match p.path_type.as_str() {
        "Exact" => PathType::Exact,
        "Prefix" => PathType::Prefix,
        // As ingress-nginx without use-regex; an empty path there means "/".
        "ImplementationSpecific" if path.is_empty() => return Ok(("/", PathType::Prefix)),
        "ImplementationSpecific" => PathType::Prefix,
        "" => return Err(format!("path {path:?} has no pathType")),
        other => return Err(format!("path {path:?} has unknown pathType {other:?}")),
    };
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with '/'"));
    }
    Ok((path, path_type))
}

#[cfg(test)]
pub(super) mod tests;
