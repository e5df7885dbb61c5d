//! The TOML configuration: a serde file schema (`deny_unknown_fields`, spans kept) turned once into
//! typed, validated values. `kedge check`, `kedge run` and the SIGHUP reload all go through
//! [`load`], so a file that passes `check` is exactly a file that `run` accepts.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::Cidr;
use crate::routes::PathType;

/// A configuration error that points at the place in the file: `file:line:column: key: message`.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    path: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    at: Option<(usize, usize)>,
    key: Option<String>,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// How the workers drive their sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll (logged once).
    Auto,
    IoUring,
    Epoll,
}

/// Settings fixed for the life of the process (a change needs a restart).
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Worker threads; already resolved from 0 to the number of usable cores.
    pub workers: usize,
    pub driver: Driver,
    pub shutdown_grace: Duration,
    pub listeners: Vec<ListenerSpec>,
    pub log: LogConfig,
    /// Where each cluster's last known good objects are persisted (`[proxy] state_dir`).
    pub state_dir: PathBuf,
    /// The admin listener (`[admin] address`); `None` when `[admin] enabled = false`.
    pub admin: Option<SocketAddr>,
}

/// A `[[listener]]`: where to listen, and the stages a connection accepted there goes through
/// before HTTP (`worker/accept.rs`: accept → PROXY → TLS → protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub address: SocketAddr,
    /// Terminates TLS (HTTPS); certificates come from `[tls]` and the Ingresses' Secrets.
    pub tls: bool,
    /// `proxy_protocol = true`: every connection starts with a PROXY protocol header (v1 or v2),
    /// accepted only from these sources (`proxy_protocol_from`, never empty); `None`: off.
    pub proxy_protocol: Option<Arc<[Cidr]>>,
}

/// A certificate chain and key in PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A `[[tls.certificate]]`: certificate files for some host names (static routes' hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCert {
    /// Lower-case DNS names or `*.suffix` wildcards.
    pub hosts: Vec<String>,
    pub files: CertFiles,
}

/// What a TLS handshake without a certificate of its own gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSni {
    /// The default certificate (refused when there is none).
    Default,
    /// Refuse the handshake (rustls sends an `access_denied` alert).
    Refuse,
}

/// The `[tls]` section; reloadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate for names nothing else covers (and handshakes without SNI).
    pub default_cert: Option<CertFiles>,
    pub certificates: Vec<HostCert>,
    pub unknown_sni: UnknownSni,
    pub handshake_timeout: Duration,
    /// The Strict-Transport-Security value added to HTTPS responses; empty = none.
    pub hsts: String,
    /// The port plain-HTTP requests are redirected to; `None`: the first TLS listener's.
    pub redirect_port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
    pub access_log: bool,
}

/// Downstream limits and timeouts; reloadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_timeout: Duration,
    pub max_request_line: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Largest request body; 0 means unlimited.
    pub max_body: u64,
    /// Peers (after PROXY protocol) whose X-Forwarded-For names the client, and whose
    /// X-Forwarded-Proto/-Port are passed on (`trusted_proxies`; empty: none, the default).
    pub trusted_proxies: Vec<Cidr>,
    /// Open connections one client address may hold on each worker (0: no limit, the default).
    pub max_connections_per_client: u32,
}

/// HTTP/2 to clients (`[http2]`); reloadable (new connections see the change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Settings {
    /// TLS listeners offer ALPN `h2`; plain listeners accept the connection preface.
    pub enabled: bool,
    pub max_concurrent_streams: u32,
    /// Streams per connection, then GOAWAY.
    pub max_requests: u32,
    /// The per-stream receive window (request bodies).
    pub initial_window_size: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            enabled: true,
            max_concurrent_streams: 128,
            max_requests: 1000,
            initial_window_size: 64 * 1024,
        }
    }
}

/// Upstream timeouts and pooling; reloadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub connect_attempts: usize,
    /// Consecutive failures that eject an endpoint (per worker); 0: never.
    pub max_failures: u32,
    /// How long a first ejection lasts (the n-th: n times as long, at most 10 times).
    pub ejection_time: Duration,
    /// At most this share of a backend's endpoints is ejected at once (at least one).
    pub max_ejection_percent: u8,
    /// How far (bytes) a RequestMirror copy may fall behind the request before it is abandoned.
    pub mirror_buffer: usize,
}

/// A `[[route]]` from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    pub name: String,
    /// Lower-cased host; `None` matches any host.
    pub host: Option<String>,
    pub path: String,
    pub path_type: PathType,
    pub upstreams: Vec<SocketAddr>,
    pub max_body: Option<u64>,
    /// Redirect plain HTTP to HTTPS (308); `None`: when a `[[tls.certificate]]` names the host.
    pub ssl_redirect: Option<bool>,
    /// TLS to the upstreams (`upstream_protocol = "https"` or `"grpcs"`); `None`: plain.
    pub upstream_tls: Option<crate::tls::UpstreamTlsSettings>,
    /// The upstreams speak HTTP/2 (`upstream_protocol = "grpc"` or `"grpcs"`).
    pub upstream_h2: bool,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub process: ProcessConfig,
    pub client: ClientSettings,
    pub upstream: UpstreamSettings,
    pub http2: Http2Settings,
    pub tls: TlsConfig,
    pub routes: Vec<StaticRoute>,
    pub clusters: Vec<ClusterConfig>,
}

/// Where a cluster's traffic goes: straight to pod IPs, or to NodeIP:NodePort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamMode {
    Pods,
    Nodeports,
}

/// A `[[cluster]]`: a Kubernetes API server kedge follows through a kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    /// `None`: `$KUBECONFIG`, then `~/.kube/config`, as kubectl does.
    pub kubeconfig: Option<PathBuf>,
    /// `None`: the kubeconfig's current context.
    pub context: Option<String>,
    /// The class name kedge answers to (IngressClass name, legacy annotation value).
    pub ingress_class: String,
    /// `spec.controller` of the IngressClasses that are kedge's.
    pub controller: String,
    /// `spec.controllerName` of the GatewayClasses that are kedge's (default
    /// `kedge.dev/gateway-controller`): their Gateways are kedge's, and the routes that name
    /// those Gateways attach to them (`control/translate/gateway.rs`); kedge writes the status
    /// of all of these (with `publish_addresses`, by the status Lease holder).
    pub gateway_controller: String,
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
    pub upstream: UpstreamMode,
    /// Node address type used in NodePort mode (`InternalIP`, `ExternalIP`, `Hostname`).
    pub node_address_type: String,
    /// Addresses written into `status.loadBalancer` of the Ingresses kedge serves and
    /// `status.addresses` of kedge's Gateways without `spec.addresses`; those of them that are IP
    /// addresses of this host select the connections such Gateways serve.
    pub publish_addresses: Vec<String>,
    /// The `coordination.k8s.io/v1` Lease that elects the one kedge writing that status (and
    /// the Gateway API status), among every kedge following the cluster (taken only with
    /// `publish_addresses`, or once the cluster has one of kedge's GatewayClasses).
    pub status_lease: LeaseName,
    /// How long start-up waits for the first full sync of an API server that answers (one that
    /// cannot be reached at all lets a persisted state serve at once).
    pub sync_timeout: Duration,
    /// The longest wait between two attempts of a failing watch (jittered, from 0.5 s up).
    pub watch_retry_max: Duration,
    /// How long after the first update (or endpoint change) since the last build from nothing
    /// kedge makes one anyway: updates are exact, this bounds what a bug in them could leave
    /// behind. The shortest of the clusters' counts.
    pub resync: Duration,
    /// The most status writes (Ingress and Gateway API together) kedge makes per second to the
    /// cluster's API server, with a burst of as many (`control/status.rs`, `Pace`).
    pub status_writes_per_second: u32,
}

/// A Lease's namespace and name (`status_lease = "namespace/name"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for LeaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `namespace/name`: the namespace a DNS label, the name a DNS subdomain (lower case).
fn lease_name(v: &str) -> Result<LeaseName, String> {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    match v.split_once('/') {
        Some((ns, name)) if label(ns) && name.len() <= 253 && name.split('.').all(label) => Ok(LeaseName {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        }),
        _ => Err(format!(
            "{v:?} is not \"namespace/name\" (lower-case letters, digits, '-'; '.' in the name)"
        )),
    }
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        at: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and validates `text` as if read from `path` (the path only labels errors).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let cx = Cx { path, text };
    let file: File = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().to_owned();
        cx.error(e.span(), None, message)
    })?;
    cx.validate(file)
}

struct Cx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Cx<'_> {
    fn error(&self, span: Option<Range<usize>>, key: Option<&str>, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            at: span.map(|s| line_col(self.text, s.start)),
            key: key.map(str::to_owned),
            message,
        }
    }

    fn duration(&self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref()).map_err(|m| self.error(Some(s.span()), Some(key), m)),
        }
    }

    /// [`Self::duration`] within `range` (said as `what` when it is not).
    fn bounded_duration(
        &self,
        v: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        (range, what): (std::ops::RangeInclusive<Duration>, &str),
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(v, key, default)?;
        if range.contains(&d) {
            Ok(d)
        } else {
            Err(self.error(v.as_ref().map(Spanned::span), Some(key), format!("must be {what}")))
        }
    }

    fn size(&self, v: &Option<Spanned<Size>>, key: &str, default: u64) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => s
                .get_ref()
                .bytes()
                .map_err(|m| self.error(Some(s.span()), Some(key), m)),
        }
    }

    fn bounded(
        &self,
        v: &Option<Spanned<u64>>,
        key: &str,
        default: u64,
        range: Range<u64>,
    ) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if range.contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(self.error(
                Some(s.span()),
                Some(key),
                format!("must be between {} and {}", range.start, range.end - 1),
            )),
        }
    }

    /// A list of addresses and CIDR ranges.
    fn cidrs(&self, v: &[Spanned<String>], key: &str) -> Result<Vec<Cidr>, ConfigError> {
        v.iter()
            .map(|s| Cidr::parse(s.get_ref()).map_err(|m| self.error(Some(s.span()), Some(key), m)))
            .collect()
    }

    fn addr(&self, s: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        s.get_ref().parse().map_err(|_| {
            self.error(
                Some(s.span()),
                Some(key),
                format!("{:?} is not an IP:port address (for IPv6 use [addr]:port)", s.get_ref()),
            )
        })
    }

    fn validate(&self, file: File) -> Result<Config, ConfigError> {
        let p = file.proxy.unwrap_or_default();
        let workers = match p.workers.as_ref().map(|w| *w.get_ref()) {
            None | Some(0) => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) if n <= 1024 => n as usize,
            Some(_) => {
                let span = p.workers.as_ref().map(Spanned::span);
                return Err(self.error(span, Some("proxy.workers"), "at most 1024".into()));
            }
        };
        let driver = match p.driver.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
            None | Some(("auto", _)) => Driver::Auto,
            Some(("io_uring", _)) => Driver::IoUring,
            Some(("epoll", _)) => Driver::Epoll,
            Some((other, span)) => {
                return Err(self.error(
                    Some(span),
                    Some("proxy.driver"),
                    format!("{other:?} is not one of \"auto\", \"io_uring\", \"epoll\""),
                ));
            }
        };
        let shutdown_grace = self.duration(&p.shutdown_grace, "proxy.shutdown_grace", Duration::from_secs(30))?;
        // systemd's `StateDirectory=kedge`. Absolute, so that it does not depend on the cwd.
        let state_dir = match &p.state_dir {
            None => PathBuf::from("/var/lib/kedge"),
            Some(s) if Path::new(s.get_ref()).is_absolute() && !s.get_ref().contains('\0') => {
                PathBuf::from(s.get_ref())
            }
            Some(s) => {
                return Err(self.error(
                    Some(s.span()),
                    Some("proxy.state_dir"),
                    format!("{:?} is not an absolute directory path", s.get_ref()),
                ));
            }
        };

        let c = file.client.unwrap_or_default();
        let client = ClientSettings {
            header_timeout: self.duration(&c.header_timeout, "client.header_timeout", Duration::from_secs(15))?,
            keepalive_timeout: self.duration(
                &c.keepalive_timeout,
                "client.keepalive_timeout",
                Duration::from_secs(60),
            )?,
            body_timeout: self.duration(&c.body_timeout, "client.body_timeout", Duration::from_secs(60))?,
            max_request_line: self.bounded(&c.max_request_line, "client.max_request_line", 8192, 64..1_048_577)?
                as usize,
            max_header_bytes: self.bounded(&c.max_header_bytes, "client.max_header_bytes", 32768, 256..1_048_577)?
                as usize,
            max_headers: self.bounded(&c.max_headers, "client.max_headers", 100, 1..257)? as usize,
            max_body: self.size(&c.max_body, "client.max_body", 1 << 20)?,
            trusted_proxies: self.cidrs(&c.trusted_proxies, "client.trusted_proxies")?,
            max_connections_per_client: self.bounded(
                &c.max_connections_per_client,
                "client.max_connections_per_client",
                0,
                0..1_000_001,
            )? as u32,
        };
        if client.max_request_line > client.max_header_bytes {
            let span = c.max_request_line.as_ref().map(Spanned::span);
            return Err(self.error(
                span,
                Some("client.max_request_line"),
                "must not exceed client.max_header_bytes".into(),
            ));
        }

        let u = file.upstream.unwrap_or_default();
        let h = file.http2.unwrap_or_default();
        let d = Http2Settings::default();
        let http2 = Http2Settings {
            enabled: h.enabled.unwrap_or(d.enabled),
            max_concurrent_streams: self.bounded(
                &h.max_concurrent_streams,
                "http2.max_concurrent_streams",
                d.max_concurrent_streams.into(),
                1..65_537,
            )? as u32,
            max_requests: self.bounded(
                &h.max_requests,
                "http2.max_requests",
                d.max_requests.into(),
                1..1_000_001,
            )? as u32,
            initial_window_size: match self.size(
                &h.initial_window_size,
                "http2.initial_window_size",
                d.initial_window_size.into(),
            )? {
                // RFC 9113 §6.9.2: at most 2^31-1; below 1k a body would crawl.
                n @ 1024..=0x7fff_ffff => n as u32,
                _ => {
                    let span = h.initial_window_size.as_ref().map(Spanned::span);
                    return Err(self.error(
                        span,
                        Some("http2.initial_window_size"),
                        "must be between 1k and 2147483647 bytes".into(),
                    ));
                }
            },
        };
        let upstream = UpstreamSettings {
            connect_timeout: self.duration(&u.connect_timeout, "upstream.connect_timeout", Duration::from_secs(5))?,
            read_timeout: self.duration(&u.read_timeout, "upstream.read_timeout", Duration::from_secs(60))?,
            send_timeout: self.duration(&u.send_timeout, "upstream.send_timeout", Duration::from_secs(60))?,
            idle_timeout: self.duration(&u.idle_timeout, "upstream.idle_timeout", Duration::from_secs(60))?,
            max_idle_per_endpoint: self.bounded(
                &u.max_idle_per_endpoint,
                "upstream.max_idle_per_endpoint",
                128,
                0..65_536,
            )? as usize,
            connect_attempts: self.bounded(&u.connect_attempts, "upstream.connect_attempts", 3, 1..17)? as usize,
            max_failures: self.bounded(&u.max_failures, "upstream.max_failures", 5, 0..1001)? as u32,
            ejection_time: self.duration(&u.ejection_time, "upstream.ejection_time", Duration::from_secs(30))?,
            max_ejection_percent: self.bounded(&u.max_ejection_percent, "upstream.max_ejection_percent", 50, 0..101)?
                as u8,
            mirror_buffer: match self.size(&u.mirror_buffer, "upstream.mirror_buffer", 4 << 20)? {
                n @ 16_384..=0x400_0000 => n as usize,
                _ => {
                    let span = u.mirror_buffer.as_ref().map(Spanned::span);
                    return Err(self.error(
                        span,
                        Some("upstream.mirror_buffer"),
                        "must be between 16k and 64m".into(),
                    ));
                }
            },
        };

        let l = file.log.unwrap_or_default();
        let json = match l.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("text", _)) => false,
            Some(("json", _)) => true,
            Some((other, span)) => {
                return Err(self.error(
                    Some(span),
                    Some("log.format"),
                    format!("{other:?} is not one of \"text\", \"json\""),
                ));
            }
        };
        let log = LogConfig {
            json,
            level: l.level.unwrap_or_else(|| "info".into()),
            access_log: l.access_log.unwrap_or(true),
        };

        let mut listeners = Vec::new();
        for (i, l) in file.listener.iter().enumerate() {
            let key = format!("listener[{i}].address");
            let addr = self.addr(&l.address, &key)?;
            // Port 0 (the kernel's choice) may be listed more than once.
            if addr.port() != 0 && listeners.iter().any(|o: &ListenerSpec| o.address == addr) {
                return Err(self.error(Some(l.address.span()), Some(&key), format!("{addr} is listed twice")));
            }
            let from = self.cidrs(&l.proxy_protocol_from, &format!("listener[{i}].proxy_protocol_from"))?;
            let proxy_protocol = match (
                l.proxy_protocol.as_ref().map(|p| (*p.get_ref(), p.span())),
                from.is_empty(),
            ) {
                (Some((true, _)), false) => Some(Arc::from(from)),
                (Some((true, span)), true) => {
                    return Err(self.error(
                        Some(span),
                        Some(&format!("listener[{i}].proxy_protocol")),
                        "needs proxy_protocol_from, the addresses of the load balancers that send the header \
                         (\"0.0.0.0/0\" trusts anyone to name the client)"
                            .into(),
                    ));
                }
                (_, true) => None,
                (_, false) => {
                    let span = l.proxy_protocol_from.first().map(Spanned::span);
                    return Err(self.error(
                        span,
                        Some(&format!("listener[{i}].proxy_protocol_from")),
                        "has no effect without proxy_protocol = true".into(),
                    ));
                }
            };
            listeners.push(ListenerSpec {
                address: addr,
                tls: l.tls.unwrap_or(false),
                proxy_protocol,
            });
        }
        if listeners.is_empty() {
            return Err(self.error(None, Some("listener"), "at least one [[listener]] is needed".into()));
        }

        let a = file.admin.unwrap_or_default();
        let admin_addr = match &a.address {
            None => SocketAddr::from(([127, 0, 0, 1], 9180)),
            Some(s) => self.addr(s, "admin.address")?,
        };
        let admin = a.enabled.unwrap_or(true).then_some(admin_addr);
        if let Some(addr) = admin
            && addr.port() != 0
            && listeners.iter().any(|l| l.address == addr)
        {
            return Err(self.error(
                a.address.as_ref().map(Spanned::span),
                Some("admin.address"),
                format!("{addr} is also a [[listener]] address; give [admin] another one"),
            ));
        }

        let tls = self.tls(file.tls.unwrap_or_default())?;

        let mut routes: Vec<StaticRoute> = Vec::new();
        for (i, r) in file.route.into_iter().enumerate() {
            // Names given in the file must be unique (a default name is unique unless the rule
            // itself is a duplicate, which the table reports).
            if let Some(name) = &r.name
                && routes.iter().any(|o| &o.name == name)
            {
                return Err(self.error(
                    None,
                    Some(&format!("route[{i}].name")),
                    format!("{name:?} is used by an earlier route; names must be unique"),
                ));
            }
            routes.push(self.route(i, r)?);
        }
        let mut clusters: Vec<ClusterConfig> = Vec::new();
        for (i, c) in file.cluster.into_iter().enumerate() {
            let c = self.cluster(i, c)?;
            if clusters.iter().any(|o| o.name == c.name) {
                return Err(self.error(
                    None,
                    Some(&format!("cluster[{i}].name")),
                    format!("{:?} is used twice", c.name),
                ));
            }
            clusters.push(c);
        }

        Ok(Config {
            path: self.path.to_owned(),
            process: ProcessConfig {
                workers,
                driver,
                shutdown_grace,
                listeners,
                log,
                state_dir,
                admin,
            },
            client,
            upstream,
            http2,
            tls,
            routes,
            clusters,
        })
    }

    fn tls(&self, t: FileTls) -> Result<TlsConfig, ConfigError> {
        let files = |cert: &Spanned<String>, key: &Spanned<String>, at: &str| -> Result<CertFiles, ConfigError> {
            // Read once here so that `kedge check` and a reload catch a missing or broken
            // file; a file that breaks later keeps the previous certificate, with a warning.
            let paths = CertFiles {
                cert: absolute(self.path, cert.get_ref()),
                key: absolute(self.path, key.get_ref()),
            };
            let loaded = (|| {
                let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
                crate::tls::parse(&read(&paths.cert)?, &read(&paths.key)?)
            })();
            loaded.map_err(|m| self.error(Some(cert.span()), Some(at), m))?;
            Ok(paths)
        };
        let default_cert = match (&t.default_cert, &t.default_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some(files(c, k, "tls.default_cert")?),
            (Some(c), None) => {
                return Err(self.error(
                    Some(c.span()),
                    Some("tls.default_key"),
                    "needed with default_cert".into(),
                ));
            }
            (None, Some(k)) => {
                return Err(self.error(
                    Some(k.span()),
                    Some("tls.default_cert"),
                    "needed with default_key".into(),
                ));
            }
        };
        let mut certificates = Vec::new();
        for (i, c) in t.certificate.iter().enumerate() {
            let at = format!("tls.certificate[{i}]");
            let mut hosts = Vec::new();
            for h in &c.hosts {
                let v = h.get_ref().to_ascii_lowercase();
                check_host(&v).map_err(|m| self.error(Some(h.span()), Some(&format!("{at}.hosts")), m))?;
                hosts.push(v);
            }
            if hosts.is_empty() {
                return Err(self.error(
                    Some(c.cert.span()),
                    Some(&format!("{at}.hosts")),
                    "name at least one host".into(),
                ));
            }
            certificates.push(HostCert {
                hosts,
                files: files(&c.cert, &c.key, &format!("{at}.cert"))?,
            });
        }
        let unknown_sni = match t.unknown_sni.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
            None | Some(("default", _)) => UnknownSni::Default,
            Some(("refuse", _)) => UnknownSni::Refuse,
            Some((other, span)) => {
                return Err(self.error(
                    Some(span),
                    Some("tls.unknown_sni"),
                    format!("{other:?} is not one of \"default\", \"refuse\""),
                ));
            }
        };
        let hsts = match &t.hsts {
            None => "max-age=31536000; includeSubDomains".to_owned(),
            Some(v) if v.get_ref().bytes().all(|b| (b' '..0x7f).contains(&b)) => v.get_ref().trim().to_owned(),
            Some(v) => {
                return Err(self.error(Some(v.span()), Some("tls.hsts"), "must be printable ASCII".into()));
            }
        };
        let redirect_port = match &t.redirect_port {
            None => None,
            Some(p) if (1..65_536).contains(p.get_ref()) => Some(*p.get_ref() as u16),
            Some(p) => {
                return Err(self.error(
                    Some(p.span()),
                    Some("tls.redirect_port"),
                    "must be between 1 and 65535".into(),
                ));
            }
        };
        Ok(TlsConfig {
            default_cert,
            certificates,
            unknown_sni,
            handshake_timeout: self.duration(&t.handshake_timeout, "tls.handshake_timeout", Duration::from_secs(10))?,
            hsts,
            redirect_port,
        })
    }

    fn cluster(&self, i: usize, c: FileCluster) -> Result<ClusterConfig, ConfigError> {
        let key = |k: &str| format!("cluster[{i}].{k}");
        let name = c.name.get_ref();
        if name.is_empty()
            || name.len() > 63
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(self.error(
                Some(c.name.span()),
                Some(&key("name")),
                format!("{name:?} must be 1-63 lower-case letters, digits or '-'"),
            ));
        }
        let kubeconfig = match &c.kubeconfig {
            None => None,
            Some(p) => {
                let path = PathBuf::from(p.get_ref());
                // Read and parsed here so that `kedge check` catches a broken kubeconfig or a
                // context it does not have; credentials are only tried when kedge connects.
                let parsed = kube::config::Kubeconfig::read_from(&path).map_err(|e| {
                    self.error(
                        Some(p.span()),
                        Some(&key("kubeconfig")),
                        format!("cannot use {}: {e}", path.display()),
                    )
                })?;
                if let Some(ctx) = &c.context
                    && !parsed.contexts.iter().any(|n| &n.name == ctx)
                {
                    return Err(self.error(
                        Some(p.span()),
                        Some(&key("context")),
                        format!("{} has no context {ctx:?}", path.display()),
                    ));
                }
                Some(path)
            }
        };
        let node_address_type = match &c.node_address_type {
            None => "InternalIP".to_owned(),
            Some(t) if ["InternalIP", "ExternalIP", "Hostname"].contains(&t.get_ref().as_str()) => t.get_ref().clone(),
            Some(t) => {
                return Err(self.error(
                    Some(t.span()),
                    Some(&key("node_address_type")),
                    format!(
                        "{:?} is not one of \"InternalIP\", \"ExternalIP\", \"Hostname\"",
                        t.get_ref()
                    ),
                ));
            }
        };
        let mut publish_addresses = Vec::new();
        for (j, a) in c.publish_addresses.iter().enumerate() {
            let v = a.get_ref();
            if v.parse::<std::net::IpAddr>().is_err() && check_host(v).is_err() || v.starts_with("*.") {
                return Err(self.error(
                    Some(a.span()),
                    Some(&format!("cluster[{i}].publish_addresses[{j}]")),
                    format!("{v:?} is neither an IP address nor a host name"),
                ));
            }
            publish_addresses.push(v.clone());
        }
        let ingress_class = c.ingress_class.unwrap_or_else(|| "kedge".into());
        let status_lease = match &c.status_lease {
            Some(v) => {
                lease_name(v.get_ref()).map_err(|m| self.error(Some(v.span()), Some(&key("status_lease")), m))?
            }
            None => LeaseName {
                namespace: "default".into(),
                name: format!("kedge-{ingress_class}"),
            },
        };
        Ok(ClusterConfig {
            name: name.clone(),
            kubeconfig,
            context: c.context,
            ingress_class,
            controller: c.controller.unwrap_or_else(|| "kedge.dev/ingress-controller".into()),
            gateway_controller: c
                .gateway_controller
                .unwrap_or_else(|| "kedge.dev/gateway-controller".into()),
            namespaces: c.namespaces,
            upstream: c.upstream.unwrap_or(UpstreamMode::Pods),
            node_address_type,
            publish_addresses,
            status_lease,
            sync_timeout: self.duration(&c.sync_timeout, &key("sync_timeout"), Duration::from_secs(30))?,
            watch_retry_max: self.bounded_duration(
                &c.watch_retry_max,
                &key("watch_retry_max"),
                Duration::from_secs(5),
                (
                    Duration::from_millis(500)..=Duration::from_secs(300),
                    "from 500ms to 5m",
                ),
            )?,
            resync: self.bounded_duration(
                &c.resync,
                &key("resync"),
                Duration::from_secs(600),
                (Duration::from_secs(1)..=Duration::from_secs(86_400), "from 1s to 24h"),
            )?,
            status_writes_per_second: u32::try_from(self.bounded(
                &c.status_writes_per_second,
                &key("status_writes_per_second"),
                200,
                1..100_001,
            )?)
            .expect("bounded"),
        })
    }

    fn route(&self, i: usize, r: FileRoute) -> Result<StaticRoute, ConfigError> {
        let key = |k: &str| format!("route[{i}].{k}");
        let host = match &r.host {
            None => None,
            Some(h) => {
                let v = h.get_ref().to_ascii_lowercase();
                if v.is_empty() || v == "*" {
                    None
                } else {
                    check_host(&v).map_err(|m| self.error(Some(h.span()), Some(&key("host")), m))?;
                    Some(v)
                }
            }
        };
        let path = match &r.path {
            None => "/".to_owned(),
            Some(p) if r.path_type == Some(PathType::Regex) => {
                crate::routes::regex_path(p.get_ref())
                    .map_err(|m| self.error(Some(p.span()), Some(&key("path")), m))?;
                p.get_ref().clone()
            }
            Some(p) => {
                let v = p.get_ref();
                if !v.starts_with('/') || v.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#') {
                    return Err(self.error(
                        Some(p.span()),
                        Some(&key("path")),
                        format!("{v:?} must start with / and hold no spaces, controls, ? or #"),
                    ));
                }
                v.clone()
            }
        };
        if r.upstreams.get_ref().is_empty() {
            return Err(self.error(
                Some(r.upstreams.span()),
                Some(&key("upstreams")),
                "needs at least one IP:port".into(),
            ));
        }
        let mut upstreams = Vec::new();
        for (j, u) in r.upstreams.get_ref().iter().enumerate() {
            upstreams.push(self.addr(u, &format!("route[{i}].upstreams[{j}]"))?);
        }
        let max_body = match &r.max_body {
            None => None,
            Some(s) => Some(
                s.get_ref()
                    .bytes()
                    .map_err(|m| self.error(Some(s.span()), Some(&key("max_body")), m))?,
            ),
        };
        // Backends are keyed by name (balancer state survives reloads by it), so a default name
        // carries everything that makes the rule distinct.
        let upstream_tls = self.upstream_tls(i, &r, host.as_deref())?;
        let path_type = r.path_type.unwrap_or(PathType::Prefix);
        let name = r.name.unwrap_or_else(|| {
            let exact = if path_type == PathType::Exact { " (exact)" } else { "" };
            format!("static/{}{}{exact}", host.as_deref().unwrap_or("*"), path)
        });
        Ok(StaticRoute {
            name,
            host,
            path,
            path_type,
            upstreams,
            max_body,
            ssl_redirect: r.ssl_redirect,
            upstream_tls,
            upstream_h2: r
                .upstream_protocol
                .as_ref()
                .is_some_and(|p| matches!(p.get_ref().as_str(), "grpc" | "grpcs")),
        })
    }
}

/// A path from the file; a relative one is relative to the config file's directory.
fn absolute(config: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        return p;
    }
    let dir = config.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir.join(&p)).unwrap_or(p)
}

impl Cx<'_> {
    /// A route's `upstream_protocol`, `upstream_verify`, `upstream_server_name`, `upstream_ca`.
    fn upstream_tls(
        &self,
        i: usize,
        r: &FileRoute,
        host: Option<&str>,
    ) -> Result<Option<crate::tls::UpstreamTlsSettings>, ConfigError> {
        use crate::tls::{UpstreamTlsSettings, Verify};
        let key = |k: &str| format!("route[{i}].{k}");
        match r.upstream_protocol.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("http" | "grpc", _)) => {
                if let Some(v) = r
                    .upstream_verify
                    .as_ref()
                    .map(Spanned::span)
                    .or(r.upstream_ca.as_ref().map(Spanned::span))
                {
                    return Err(self.error(
                        Some(v),
                        Some(&key("upstream_protocol")),
                        "upstream TLS settings need upstream_protocol = \"https\" or \"grpcs\"".into(),
                    ));
                }
                return Ok(None);
            }
            Some(("https" | "grpcs", _)) => {}
            Some((other, span)) => {
                return Err(self.error(
                    Some(span),
                    Some(&key("upstream_protocol")),
                    format!("{other:?} is not one of \"http\", \"https\", \"grpc\", \"grpcs\""),
                ));
            }
        }
        let verify_on = r.upstream_verify.as_ref().is_some_and(|v| *v.get_ref()) || r.upstream_ca.is_some();
        let verify = match &r.upstream_ca {
            Some(ca) => {
                let path = absolute(self.path, ca.get_ref());
                let pem = std::fs::read(&path).map_err(|e| {
                    self.error(
                        Some(ca.span()),
                        Some(&key("upstream_ca")),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Verify::Ca(pem)
            }
            None if verify_on => Verify::System,
            None => Verify::Off,
        };
        let (name, sni) = match (&r.upstream_server_name, host) {
            (Some(n), _) => (n.get_ref().clone(), true),
            (None, Some(h)) if !h.starts_with("*.") => (h.to_owned(), false),
            (None, _) if verify_on => {
                return Err(self.error(
                    r.upstream_verify.as_ref().map(Spanned::span),
                    Some(&key("upstream_server_name")),
                    "needed to verify upstream certificates on a route without an exact host".into(),
                ));
            }
            (None, _) => ("upstream.invalid".to_owned(), false),
        };
        let h2 = r.upstream_protocol.as_ref().is_some_and(|p| p.get_ref() == "grpcs");
        let settings = UpstreamTlsSettings { verify, name, sni, h2 };
        // Made (and cached) now, so that a bad CA file or name is a config error.
        crate::tls::upstream_tls(&settings).map_err(|m| {
            let span = r
                .upstream_ca
                .as_ref()
                .or(r.upstream_server_name.as_ref())
                .or(r.upstream_protocol.as_ref());
            self.error(span.map(Spanned::span), Some(&key("upstream_protocol")), m)
        })?;
        Ok(Some(settings))
    }
}

/// A host must be a DNS name, optionally with a leading `*.` wildcard label.
fn check_host(h: &str) -> Result<(), String> {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let ok = rest.len() <= 253
        && !rest.is_empty()
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{h:?} is not a host name (exact, or *.suffix for one label)"))
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// Parses "500ms", "15s", "2m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"500ms\", \"15s\", \"2m\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?} is not a duration like \"500ms\", \"15s\", \"2m\"")),
    };
    if d.is_zero() {
        return Err("a duration of zero would fire at once; give a positive duration".into());
    }
    Ok(d)
}

/// A size in bytes: an integer, or a string with a k/m/g suffix (powers of 1024).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(s) => {
                let t = s.trim().to_ascii_lowercase();
                let (num, mult) = match t.as_bytes().last() {
                    Some(b'k') => (&t[..t.len() - 1], 1u64 << 10),
                    Some(b'm') => (&t[..t.len() - 1], 1 << 20),
                    Some(b'g') => (&t[..t.len() - 1], 1 << 30),
                    _ => (&t[..], 1),
                };
                num.parse::<u64>()
                    .ok()
                    .and_then(|n| n.checked_mul(mult))
                    .ok_or_else(|| format!("{s:?} is not a size like 1048576, \"16k\", \"1m\""))
            }
        }
    }
}

// ---- the file schema -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    proxy: Option<FileProxy>,
    client: Option<FileClient>,
    upstream: Option<FileUpstream>,
    http2: Option<FileHttp2>,
    log: Option<FileLog>,
    admin: Option<FileAdmin>,
    tls: Option<FileTls>,
    #[serde(default)]
    listener: Vec<FileListener>,
    #[serde(default)]
    route: Vec<FileRoute>,
    #[serde(default)]
    cluster: Vec<FileCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    name: Spanned<String>,
    kubeconfig: Option<Spanned<String>>,
    context: Option<String>,
    ingress_class: Option<String>,
    controller: Option<String>,
    gateway_controller: Option<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    upstream: Option<UpstreamMode>,
    node_address_type: Option<Spanned<String>>,
    #[serde(default)]
    publish_addresses: Vec<Spanned<String>>,
    status_lease: Option<Spanned<String>>,
    sync_timeout: Option<Spanned<String>>,
    watch_retry_max: Option<Spanned<String>>,
    resync: Option<Spanned<String>>,
    status_writes_per_second: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileProxy {
    workers: Option<Spanned<u64>>,
    driver: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileClient {
    header_timeout: Option<Spanned<String>>,
    keepalive_timeout: Option<Spanned<String>>,
    body_timeout: Option<Spanned<String>>,
    max_request_line: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<u64>>,
    max_headers: Option<Spanned<u64>>,
    max_body: Option<Spanned<Size>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    max_connections_per_client: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileHttp2 {
    enabled: Option<bool>,
    max_concurrent_streams: Option<Spanned<u64>>,
    max_requests: Option<Spanned<u64>>,
    initial_window_size: Option<Spanned<Size>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    connect_timeout: Option<Spanned<String>>,
    read_timeout: Option<Spanned<String>>,
    send_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_idle_per_endpoint: Option<Spanned<u64>>,
    connect_attempts: Option<Spanned<u64>>,
    max_failures: Option<Spanned<u64>>,
    ejection_time: Option<Spanned<String>>,
    max_ejection_percent: Option<Spanned<u64>>,
    mirror_buffer: Option<Spanned<Size>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLog {
    format: Option<Spanned<String>>,
    level: Option<String>,
    access_log: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    address: Option<Spanned<String>>,
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    address: Spanned<String>,
    tls: Option<bool>,
    proxy_protocol: Option<Spanned<bool>>,
    #[serde(default)]
    proxy_protocol_from: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileTls {
    default_cert: Option<Spanned<String>>,
    default_key: Option<Spanned<String>>,
    #[serde(default)]
    certificate: Vec<FileHostCert>,
    unknown_sni: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<String>>,
    hsts: Option<Spanned<String>>,
    redirect_port: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHostCert {
    hosts: Vec<Spanned<String>>,
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: Option<String>,
    host: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    path_type: Option<PathType>,
    upstreams: Spanned<Vec<Spanned<String>>>,
    max_body: Option<Spanned<Size>>,
    ssl_redirect: Option<bool>,
    upstream_protocol: Option<Spanned<String>>,
    upstream_verify: Option<Spanned<bool>>,
    upstream_server_name: Option<Spanned<String>>,
    upstream_ca: Option<Spanned<String>>,
}

#[cfg(test)]
mod tests;
