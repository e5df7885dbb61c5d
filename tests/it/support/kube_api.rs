//! A fixture Kubernetes API server for the control plane's tests: HTTPS with a CA of its own and
//! a bearer token, reached by the real kube client through a generated kubeconfig. It speaks the
//! list/watch wire protocol (resourceVersion, paged lists, chunked watch events, bookmarks,
//! 410 Gone after `compact`) for the handful of kinds kedge watches (the Gateway API's only once
//! the test installs its CRDs, with the discovery endpoint that says so), takes status and Lease
//! writes (the Gateway API kinds' status subresources too), and can simulate an outage (`pause`/`resume`).
//!
//! The test drives it synchronously (`apply`, `delete`, `compact`, ...) from any thread; the
//! server runs on a thread and current-thread tokio runtime of its own.

mod select;
mod serve;
mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::sync::{oneshot, watch};

use self::store::{KINDS, Kind, Store};

/// The fixture API server on 127.0.0.1:0. Stops, dropping every connection, when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the server's tasks and the test share.
struct Shared {
    /// The token clients must send as `Authorization: Bearer ...`.
    token: String,
    store: Mutex<Store>,
    /// The latest resourceVersion, sent after every change to wake the watches up.
    changed: watch::Sender<u64>,
    /// True during a simulated outage.
    paused: watch::Sender<bool>,
    log: Mutex<Vec<String>>,
    watches: AtomicUsize,
    bookmarks: AtomicUsize,
    open_watches: Arc<AtomicUsize>,
    open_connections: Arc<AtomicUsize>,
    /// Connections closed unserved because of an outage.
    turned_away: AtomicUsize,
    /// Whether the Gateway API CRDs are installed (their kinds served, in discovery too).
    gateway_api: AtomicBool,
}

impl Shared {
    fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.store.lock().expect("store lock"))
    }

    /// Runs `f` on the store, then wakes the watches if it changed anything.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (out, rv) = {
            let mut store = self.store.lock().expect("store lock");
            let out = f(&mut store);
            (out, store.rv())
        };
        self.changed.send_if_modified(|latest| {
            let moved = *latest != rv;
            *latest = rv;
            moved
        });
        out
    }
}

/// Counts something open (a connection, a watch) for as long as it lives.
struct Gauge(Arc<AtomicUsize>);

impl Gauge {
    fn new(count: &Arc<AtomicUsize>) -> Gauge {
        count.fetch_add(1, Ordering::SeqCst);
        Gauge(Arc::clone(count))
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeApi {
    /// Starts serving HTTPS on 127.0.0.1 at a port of the kernel's choosing, with a fresh CA,
    /// server certificate (for 127.0.0.1 and localhost) and token.
    pub fn start() -> FakeApi {
        let (ca_pem, tls) = pki();
        let shared = Arc::new(Shared {
            token: random_token(),
            store: Mutex::new(Store::default()),
            changed: watch::Sender::new(0),
            paused: watch::Sender::new(false),
            log: Mutex::new(Vec::new()),
            watches: AtomicUsize::new(0),
            bookmarks: AtomicUsize::new(0),
            open_watches: Arc::new(AtomicUsize::new(0)),
            open_connections: Arc::new(AtomicUsize::new(0)),
            turned_away: AtomicUsize::new(0),
            gateway_api: AtomicBool::new(false),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake API server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("fake API server addr");
        let (stop, stopped) = oneshot::channel();
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("kube-api-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(serve::accept_loop(listener, Arc::new(tls), sh, stopped));
            })
            .expect("spawn fake API server thread");
        FakeApi {
            addr,
            ca_pem,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes a kubeconfig that reaches this server: its address, CA and token.
    pub fn write_kubeconfig(&self, path: &Path) {
        self.kubeconfig_with_token(path, &self.shared.token);
    }

    /// Writes a kubeconfig for this server with another token (to test a refused one).
    pub fn kubeconfig_with_token(&self, path: &Path, token: &str) {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {ca}\n\
             users:\n\
             - name: fake\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            addr = self.addr
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Creates or replaces an object of `resource` (a plural: `services`, `ingresses`, ...),
    /// exactly as given (status included) plus what the server owns (uid, resourceVersion,
    /// generation, creationTimestamp unless set); the namespace defaults to `default`. Returns
    /// the stored object. Replacing with an identical object changes nothing, as on a real
    /// API server.
    pub fn apply(&self, resource: &str, obj: Value) -> Value {
        let kind = kind(resource);
        self.shared.write(|s| s.apply(kind, obj))
    }

    /// Deletes an object; returns it as last stored (with the deletion's resourceVersion).
    pub fn delete(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let kind = kind(resource);
        self.shared.write(|s| s.delete(kind, namespace, name))
    }

    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let kind = kind(resource);
        self.shared.read(|s| s.get(kind, namespace, name).cloned())
    }

    /// Forgets the change history (and outstanding `continue` tokens): a watch from any older
    /// resourceVersion now gets a 410 `Expired` ERROR event, as after an etcd compaction.
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// Simulates an outage: drops every open connection (watches included) and closes new ones
    /// as soon as they are accepted, until `resume`. Returns once every connection is gone.
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
        super::wait_until(
            Duration::from_secs(5),
            "the fake API server to drop its connections",
            || self.shared.open_connections.load(Ordering::SeqCst) == 0,
        );
    }

    /// Installs the Gateway API CRDs: from now on their kinds are served, and listed by
    /// discovery (`GET /apis/gateway.networking.k8s.io/v1`); until then both answer 404, as an
    /// API server without the CRDs does. Objects `apply`'d before are there at once.
    pub fn install_gateway_api(&self) {
        self.shared.gateway_api.store(true, Ordering::SeqCst);
    }

    /// Ends an outage: serves again on the same port.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Every request so far as `METHOD /path?query`, in arrival order (refused ones included).
    pub fn request_log(&self) -> Vec<String> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Connections closed unserved during an outage so far: how often a client tried again.
    pub fn turned_away(&self) -> usize {
        self.shared.turned_away.load(Ordering::SeqCst)
    }

    /// Watch requests accepted so far.
    pub fn watch_count(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// BOOKMARK events sent so far, over all watches.
    pub fn bookmarks_sent(&self) -> usize {
        self.shared.bookmarks.load(Ordering::SeqCst)
    }

    /// Writes a client made to this Ingress's status subresource (PUT or PATCH, accepted,
    /// counted even when they changed nothing).
    pub fn status_writes(&self, namespace: &str, name: &str) -> usize {
        let kind = kind("ingresses");
        self.shared.read(|s| s.status_writes(kind, Some(namespace), name))
    }

    /// Writes a client made to the status subresource of this object of `resource` (PUT or
    /// PATCH, accepted).
    pub fn status_writes_of(&self, resource: &str, namespace: Option<&str>, name: &str) -> usize {
        let kind = kind(resource);
        self.shared.read(|s| s.status_writes(kind, namespace, name))
    }

    /// Every write a client made to this object (create, replace, patch, delete, status),
    /// accepted ones only.
    pub fn writes(&self, resource: &str, namespace: Option<&str>, name: &str) -> usize {
        let kind = kind(resource);
        self.shared.read(|s| s.writes(kind, namespace, name))
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kind(resource: &str) -> &'static Kind {
    Kind::by_plural(resource).unwrap_or_else(|| {
        let known: Vec<&str> = KINDS.iter().map(|k| k.plural).collect();
        panic!("the fake API server has no resource {resource:?}; it has {known:?}")
    })
}

/// A CA (its PEM, for the kubeconfig) and the server's TLS config with a certificate it signed
/// for 127.0.0.1 and localhost. HTTP/1.1 only, as kube speaks it.
fn pki() -> (String, rustls::ServerConfig) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kedge fixture API server CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA certificate");

    let key = KeyPair::generate().expect("server key");
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("server params");
    params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &*ca).expect("server certificate");

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca.pem(), config)
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
