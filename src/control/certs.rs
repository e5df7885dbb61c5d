//! Certificates for the TLS listeners: PEM files from `[tls]` and `kubernetes.io/tls` Secrets
//! named by Ingresses and Gateway listeners become [`CertStore`]s per build, and rustls
//! configurations that the snapshot carries to the workers: one for every TLS connection (the
//! files' and the Ingresses' certificates), and one per Gateway scope with HTTPS listeners
//! (the first one's, then its Gateways' certificates for the names it lacks), chosen by the
//! connection's local address and port, so that two Gateways on different addresses can serve different
//! certificates for one name. A new configuration is made only when some host's certificate
//! changed; new handshakes use it, connections already up keep theirs.
//!
//! Parsing is cached: files by size, modification time and inode (checked every
//! [`FILE_CHECK`]), Secrets by uid and resourceVersion. A file that fails to parse after having
//! parsed keeps its last good certificate (a rotation caught half-written is not an outage);
//! a Secret that fails to parse, or a certificate that is expired or does not name the host,
//! leaves that host on the default certificate. Either way a warning says why.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;

use super::translate::TlsBinding;
use crate::config::{CertFiles, TlsConfig, UnknownSni};
use crate::shared::ScopedTls;
use crate::tls::{self, Cert, CertStore, Sessions};

/// How often certificate files are checked for changes (and certificates for expiry).
pub const FILE_CHECK: Duration = Duration::from_secs(2);

/// What identifies a version of a file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

fn stamp(p: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ino: m.ino(),
    })
}

struct FileEntry {
    stamps: Option<(Stamp, Stamp)>,
    /// The last certificate that parsed.
    good: Option<Cert>,
    /// Why the current files do not parse (then `good`, if any, is still served).
    error: Option<String>,
    used: bool,
}

struct SecretEntry {
    version: (String, String),
    parsed: Result<Cert, String>,
    used: bool,
}

/// The control thread's certificate state.
pub struct Certs {
    sessions: Sessions,
    files: HashMap<CertFiles, FileEntry>,
    secrets: HashMap<(String, String, String), SecretEntry>,
    current: Option<(CertStore, Arc<rustls::ServerConfig>)>,
    /// The same per Gateway scope (addresses, port).
    current_scoped: Vec<(Vec<IpAddr>, u16, CertStore, Arc<rustls::ServerConfig>)>,
    /// The earliest `not_after` among the certificates being served: a rebuild is due then.
    next_expiry: Option<i64>,
}

/// What a build produced.
pub struct BuiltTls {
    pub config: Arc<rustls::ServerConfig>,
    /// Per Gateway scope with certificates, scopes bound to addresses first.
    pub scoped: Vec<ScopedTls>,
    pub warnings: Vec<String>,
    /// Host names with a certificate of their own.
    pub hosts: usize,
}

impl Certs {
    pub fn new() -> Result<Certs, String> {
        Ok(Certs {
            sessions: Sessions::new()?,
            files: HashMap::new(),
            secrets: HashMap::new(),
            current: None,
            current_scoped: Vec::new(),
            next_expiry: None,
        })
    }

    /// Whether a rebuild is due: a certificate file changed on disk, or a served certificate
    /// expired.
    pub fn stale(&self, now: i64) -> bool {
        if self.next_expiry.is_some_and(|t| now > t) {
            return true;
        }
        self.files
            .iter()
            .any(|(f, e)| e.stamps != stamp(&f.cert).zip(stamp(&f.key)))
    }

    /// Builds the certificate store for `cfg` and the Ingresses' and Gateway listeners'
    /// `bindings` (cluster name, binding; in precedence order) and the rustls configurations
    /// serving it (ALPN `h2` too when `h2`): one for every TLS connection, and one per Gateway
    /// scope with certificates.
    pub fn build(
        &mut self,
        cfg: &TlsConfig,
        bindings: &[(&str, &TlsBinding)],
        h2: bool,
        now: i64,
    ) -> Result<BuiltTls, String> {
        for e in self.files.values_mut() {
            e.used = false;
        }
        for e in self.secrets.values_mut() {
            e.used = false;
        }
        let mut warnings = Vec::new();
        let mut store = CertStore::default();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut next_expiry: Option<i64> = None;

        if let Some(f) = &cfg.default_cert
            && cfg.unknown_sni == UnknownSni::Default
            && let Some(cert) = self.file(f, "tls.default_cert", &mut warnings)
        {
            // An expired default certificate is still better than refusing: served, with a warning.
            if now > cert.not_after {
                warnings.push(format!(
                    "tls.default_cert {}: the certificate expired at {}",
                    f.cert.display(),
                    crate::time::format_time(cert.not_after)
                ));
            } else {
                expiry_at(&mut next_expiry, cert.not_after);
            }
            store.set_default(Some(Arc::clone(&cert.key)));
        }
        for (i, hc) in cfg.certificates.iter().enumerate() {
            let at = format!("tls.certificate[{i}]");
            let Some(cert) = self.file(&hc.files, &at, &mut warnings) else {
                continue;
            };
            for host in &hc.hosts {
                add(&mut store, &mut owners, &mut warnings, host, &cert, &at, now);
            }
            expiry_at(&mut next_expiry, cert.not_after);
        }
        for (cluster, b) in bindings.iter().filter(|(_, b)| b.scope.is_none()) {
            if let Some(not_after) = self.bind(&mut store, &mut owners, &mut warnings, cluster, b, now) {
                expiry_at(&mut next_expiry, not_after);
            }
        }
        // Gateway listeners' certificates: one store per scope: the certificates of the
        // scope's own Gateways, then those of Gateways on every address of its port, then the
        // store above for the names they do not cover (on a Gateway's addresses its routes
        // decide, so its certificates do too). A Gateway's certificate is never served on
        // another Gateway's addresses.
        let mut scopes: Vec<(Vec<IpAddr>, u16)> = bindings.iter().filter_map(|(_, b)| b.scope.clone()).collect();
        scopes.sort();
        scopes.dedup();
        scopes.sort_by_key(|(addresses, _)| addresses.is_empty());
        let mut scoped_stores = Vec::new();
        let mut hosts = store.len();
        for (addresses, port) in scopes {
            let mut serving: Vec<&(&str, &TlsBinding)> = bindings
                .iter()
                .filter(|(_, b)| {
                    b.scope
                        .as_ref()
                        .is_some_and(|(a, p)| *p == port && (*a == addresses || a.is_empty()))
                })
                .collect();
            serving.sort_by_key(|(_, b)| b.scope.as_ref().is_some_and(|(a, _)| *a != addresses));
            let mut scoped = CertStore::default();
            let mut scoped_owners = HashMap::new();
            for (cluster, b) in serving {
                if let Some(not_after) = self.bind(&mut scoped, &mut scoped_owners, &mut warnings, cluster, b, now) {
                    expiry_at(&mut next_expiry, not_after);
                }
            }
            let left_out = scoped.fill_from(&store);
            // The scope's own names that the store above lacks.
            hosts += scoped.len() + left_out - store.len();
            scoped_stores.push((addresses, port, scoped));
        }
        // A certificate of a Gateway on every address is looked at in each scope of its port:
        // its problems are said once.
        let mut seen = std::collections::HashSet::new();
        warnings.retain(|w| seen.insert(w.clone()));
        self.files.retain(|_, e| e.used);
        self.secrets.retain(|_, e| e.used);
        self.next_expiry = next_expiry;

        let config = match &self.current {
            Some((old, config)) if old.same_as(&store) && alpn_h2(config) == h2 => Arc::clone(config),
            _ => {
                let shared = Arc::new(store);
                let config = self.sessions.server_config(Arc::clone(&shared), h2)?;
                // A copy (of handles) is kept to compare the next build with.
                self.current = Some((CertStore::clone(&shared), Arc::clone(&config)));
                config
            }
        };
        let mut scoped = Vec::with_capacity(scoped_stores.len());
        let mut current_scoped = Vec::with_capacity(scoped_stores.len());
        for (addresses, port, store) in scoped_stores {
            let reused = self
                .current_scoped
                .iter()
                .find(|(a, p, old, c)| *a == addresses && *p == port && old.same_as(&store) && alpn_h2(c) == h2);
            let config = match reused {
                Some((_, _, _, c)) => Arc::clone(c),
                None => self.sessions.server_config(Arc::new(store.clone()), h2)?,
            };
            scoped.push(ScopedTls {
                addresses: addresses.clone(),
                port,
                config: Arc::clone(&config),
            });
            current_scoped.push((addresses, port, store, config));
        }
        self.current_scoped = current_scoped;
        Ok(BuiltTls {
            config,
            scoped,
            warnings,
            hosts,
        })
    }

    /// Adds the certificate of `b` (a binding of `cluster`) to `store`; returns its expiry when
    /// it was added for some host.
    fn bind(
        &mut self,
        store: &mut CertStore,
        owners: &mut HashMap<String, String>,
        warnings: &mut Vec<String>,
        cluster: &str,
        b: &TlsBinding,
        now: i64,
    ) -> Option<i64> {
        let owner = format!("cluster {cluster}: {}", b.owner);
        let cert = match self.secret(cluster, &b.secret) {
            Ok(c) => c,
            Err(e) => {
                let (ns, name) = ns_name(&b.secret);
                warnings.push(format!(
                    "{owner}: tls: Secret {ns}/{name}: {e}; {} gets the default certificate",
                    b.host
                ));
                return None;
            }
        };
        // A binding without host (a Gateway listener without hostname): the names the
        // certificate carries.
        let hosts = if b.host.is_empty() {
            cert.dns_names()
        } else {
            vec![b.host.clone()]
        };
        if hosts.is_empty() {
            warnings.push(format!("{owner}: tls: the certificate carries no DNS name; not served"));
        }
        let mut added = false;
        for host in &hosts {
            added |= add(store, owners, warnings, host, &cert, &owner, now);
        }
        added.then_some(cert.not_after)
    }

    /// The certificate in `files`, re-read when the files changed.
    fn file(&mut self, files: &CertFiles, at: &str, warnings: &mut Vec<String>) -> Option<Cert> {
        let now_stamps = stamp(&files.cert).zip(stamp(&files.key));
        let e = self.files.entry(files.clone()).or_insert(FileEntry {
            stamps: None,
            good: None,
            error: None,
            used: false,
        });
        e.used = true;
        if e.stamps != now_stamps || (e.good.is_none() && e.error.is_none()) {
            e.stamps = now_stamps;
            let read = |p: &Path| std::fs::read(p).map_err(|err| format!("cannot read {}: {err}", p.display()));
            match read(&files.cert).and_then(|c| Ok((c, read(&files.key)?))) {
                Ok((c, k)) => match tls::parse(&c, &k) {
                    Ok(cert) => {
                        e.good = Some(cert);
                        e.error = None;
                    }
                    Err(err) => e.error = Some(err),
                },
                Err(err) => e.error = Some(err),
            }
        }
        if let Some(err) = &e.error {
            let keeps = if e.good.is_some() {
                "the previous certificate is still served"
            } else {
                "not served"
            };
            warnings.push(format!("{at} {}: {err}; {keeps}", files.cert.display()));
        }
        e.good.clone()
    }

    /// The certificate in a Secret, parsed once per version.
    fn secret(&mut self, cluster: &str, s: &Secret) -> Result<Cert, String> {
        let (ns, name) = ns_name(s);
        let version = (
            s.metadata.uid.clone().unwrap_or_default(),
            s.metadata.resource_version.clone().unwrap_or_default(),
        );
        let key = (cluster.to_owned(), ns.to_owned(), name.to_owned());
        if let Some(e) = self.secrets.get_mut(&key)
            && e.version == version
        {
            e.used = true;
            return e.parsed.clone();
        }
        let data = |k: &str| s.data.as_ref().and_then(|d| d.get(k)).map(|b| b.0.as_slice());
        let parsed = match (data("tls.crt"), data("tls.key")) {
            (Some(c), Some(k)) => tls::parse(c, k),
            _ => Err("no tls.crt or tls.key".into()),
        };
        self.secrets.insert(
            key,
            SecretEntry {
                version,
                parsed: parsed.clone(),
                used: true,
            },
        );
        parsed
    }
}

/// Keeps the earliest expiry.
fn expiry_at(next: &mut Option<i64>, not_after: i64) {
    *next = Some(next.map_or(not_after, |t| t.min(not_after)));
}

fn alpn_h2(config: &rustls::ServerConfig) -> bool {
    config.alpn_protocols.first().is_some_and(|p| p == b"h2")
}

/// Adds `cert` for `host` unless it cannot serve it (then a warning says so and the host gets
/// the default certificate) or an earlier source has the host. Returns whether it was added.
fn add(
    store: &mut CertStore,
    owners: &mut HashMap<String, String>,
    warnings: &mut Vec<String>,
    host: &str,
    cert: &Cert,
    owner: &str,
    now: i64,
) -> bool {
    if let Some(why) = cert.unusable_for(host, now) {
        warnings.push(format!("{owner}: tls: {host}: {why}; it gets the default certificate"));
        return false;
    }
    if store.insert(host, Arc::clone(&cert.key)) {
        owners.insert(host.to_owned(), owner.to_owned());
        return true;
    }
    if let Some(winner) = owners.get(host)
        && winner != owner
    {
        warnings.push(format!(
            "{owner}: tls: {host} already has a certificate from {winner}; ignored"
        ));
    }
    false
}

fn ns_name(s: &Secret) -> (&str, &str) {
    (
        s.metadata.namespace.as_deref().unwrap_or(""),
        s.metadata.name.as_deref().unwrap_or(""),
    )
}
