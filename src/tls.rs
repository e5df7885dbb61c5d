//! TLS certificates: parsing and checking them (PEM from files and `kubernetes.io/tls`
//! Secrets), the per-handshake choice by SNI ([`CertStore`]), and the rustls server
//! configuration the workers terminate TLS with ([`Sessions::server_config`]).
//!
//! Everything here runs on the control thread except [`CertStore::resolve`], which rustls calls
//! on a worker during a handshake: two hash lookups on an immutable map, no lock.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;

/// A certificate chain with its private key, ready to serve, and when it is valid.
#[derive(Debug, Clone)]
pub struct Cert {
    pub key: Arc<CertifiedKey>,
    /// Validity of the leaf certificate, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// Parses a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1;
/// RSA, ECDSA or Ed25519) and checks that they belong together.
pub fn parse(chain_pem: &[u8], key_pem: &[u8]) -> Result<Cert, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("no CERTIFICATE block in the certificate PEM".into());
    };
    let (not_before, not_after) = validity(leaf).ok_or("the leaf certificate is not valid X.509 DER")?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block in the key PEM".to_owned()
        }
        e => format!("key PEM: {e}"),
    })?;
    let key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err("the private key does not belong to the certificate".into());
        }
        Err(e) => return Err(format!("the certificate cannot be used: {e}")),
    }
    Ok(Cert {
        key: Arc::new(certified),
        not_before,
        not_after,
    })
}

/// Whether a PEM certificate chain and key look like one (a CERTIFICATE block, a private key
/// block), without the cryptography [`parse`] does: a cheap check a translator can make on
/// every build.
pub fn pem_shape(chain_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    let mut certs = CertificateDer::pem_slice_iter(chain_pem);
    match certs.next() {
        Some(Ok(_)) => {}
        Some(Err(e)) => return Err(format!("certificate PEM: {e}")),
        None => return Err("no CERTIFICATE block in the certificate PEM".into()),
    }
    PrivateKeyDer::from_pem_slice(key_pem)
        .map(drop)
        .map_err(|e| format!("key PEM: {e}"))
}

impl Cert {
    /// The DNS names (and `*.suffix` wildcards) the leaf certificate carries in its subject
    /// alternative names, lower case.
    pub fn dns_names(&self) -> Vec<String> {
        let Ok(leaf) = webpki::EndEntityCert::try_from(&self.key.cert[0]) else {
            return Vec::new();
        };
        let mut names: Vec<String> = leaf.valid_dns_names().map(str::to_ascii_lowercase).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Why this certificate cannot serve `host` (lower-case DNS name or `*.suffix`) at `now`
    /// (Unix seconds), or `None` when it can.
    pub fn unusable_for(&self, host: &str, now: i64) -> Option<String> {
        if now > self.not_after {
            return Some(format!(
                "the certificate expired at {}",
                crate::time::format_time(self.not_after)
            ));
        }
        if now < self.not_before {
            return Some(format!(
                "the certificate is not valid before {}",
                crate::time::format_time(self.not_before)
            ));
        }
        if !self.covers(host) {
            return Some(format!("the certificate does not name {host}"));
        }
        None
    }

    /// Whether the leaf certificate is valid for `host`. A wildcard rule host `*.example.com`
    /// is covered when any one-label name under it is (a `*.example.com` certificate).
    pub fn covers(&self, host: &str) -> bool {
        let probe;
        let name = match host.strip_prefix("*.") {
            Some(suffix) => {
                probe = format!("kedge-wildcard-probe.{suffix}");
                probe.as_str()
            }
            None => host,
        };
        let Ok(server_name) = ServerName::try_from(name) else {
            return false;
        };
        let Ok(leaf) = webpki::EndEntityCert::try_from(&self.key.cert[0]) else {
            return false;
        };
        leaf.verify_is_valid_for_subject_name(&server_name).is_ok()
    }
}

/// The key exchange groups kedge accepts and, as a client of upstreams, offers (in this order,
/// a key share for the first): the hybrid post-quantum X25519MLKEM768 (TLS 1.3 only), then the
/// classic X25519, P-256 and P-384. As a server rustls takes the client's first group it
/// supports, so a client that prefers X25519MLKEM768 gets it and a classic one its own choice.
fn kx_groups() -> Vec<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::aws_lc_rs::kx_group::*;
    vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1]
}

/// The process's crypto provider: rustls' aws-lc-rs (about 2.3x ring's RSA-2048 signing
/// speed; BENCHMARKS.md "ring vs aws-lc-rs") with kedge's key exchange groups. `process::run`
/// installs it for the whole process (kube's client included).
pub fn default_provider() -> CryptoProvider {
    CryptoProvider {
        kx_groups: kx_groups(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// The cipher suites TLS listeners offer, most preferred first (Mozilla "intermediate").
fn server_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    })
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(default_provider()))
}

/// Chooses the certificate for a handshake: the exact SNI name, then the one-label wildcard
/// `*.rest`, then the default certificate. With no default, a handshake for an unknown name
/// (or without SNI) is refused: rustls ends the handshake with an `access_denied` alert.
#[derive(Debug, Default, Clone)]
pub struct CertStore {
    exact: FxHashMap<Box<str>, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: FxHashMap<Box<str>, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Adds `host` (lower-case exact name or `*.suffix`) unless it is already there; returns
    /// whether it was added (the first certificate for a host wins).
    pub fn insert(&mut self, host: &str, key: Arc<CertifiedKey>) -> bool {
        let (map, k) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.wildcard, suffix),
            None => (&mut self.exact, host),
        };
        if map.contains_key(k) {
            return false;
        }
        map.insert(k.into(), key);
        true
    }

    pub fn set_default(&mut self, key: Option<Arc<CertifiedKey>>) {
        self.default = key;
    }

    /// Number of host names with their own certificate.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }

    /// The certificate for a name as sent in SNI (any case, maybe with a trailing dot).
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let mut buf = [0u8; 253];
            let name = name.strip_suffix('.').unwrap_or(name);
            if name.len() <= buf.len() {
                let lower = &mut buf[..name.len()];
                lower.copy_from_slice(name.as_bytes());
                lower.make_ascii_lowercase();
                // SNI host names are ASCII (RFC 6066); rustls has checked that already.
                if let Ok(lower) = std::str::from_utf8(lower) {
                    if let Some(k) = self.exact.get(lower) {
                        return Some(k);
                    }
                    if let Some((first, rest)) = lower.split_once('.')
                        && !first.is_empty()
                        && let Some(k) = self.wildcard.get(rest)
                    {
                        return Some(k);
                    }
                }
            }
        }
        self.default.as_ref()
    }

    /// Adds the names of `other` this store does not cover (the same name, or an exact name
    /// one of this store's wildcards matches), and `other`'s default if this store has none.
    /// Returns how many of `other`'s names it left out.
    pub fn fill_from(&mut self, other: &CertStore) -> usize {
        let mut left_out = 0;
        for (name, key) in &other.exact {
            let covered = self.exact.contains_key(name)
                || name
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && self.wildcard.contains_key(rest));
            if covered {
                left_out += 1;
            } else {
                self.exact.insert(name.clone(), Arc::clone(key));
            }
        }
        for (suffix, key) in &other.wildcard {
            if self.wildcard.contains_key(suffix) {
                left_out += 1;
            } else {
                self.wildcard.insert(suffix.clone(), Arc::clone(key));
            }
        }
        if self.default.is_none() {
            self.default = other.default.clone();
        }
        left_out
    }

    /// Whether two stores hand out the same certificates for the same names (so the rustls
    /// configuration built on one can keep serving for the other).
    pub fn same_as(&self, other: &CertStore) -> bool {
        fn same(a: &FxHashMap<Box<str>, Arc<CertifiedKey>>, b: &FxHashMap<Box<str>, Arc<CertifiedKey>>) -> bool {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| Arc::ptr_eq(v, w)))
        }
        let defaults = match (&self.default, &other.default) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        defaults && same(&self.exact, &other.exact) && same(&self.wildcard, &other.wildcard)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name()).cloned()
    }
}

/// Session resumption state shared by every rustls configuration of the process, so that a
/// certificate change does not end resumption, and a client resumes on whichever worker its
/// next connection lands: stateless tickets (TLS 1.2 and 1.3; keys rotated every 6 hours, the
/// previous key still accepted) and a session-ID cache for TLS 1.2 clients without tickets.
#[derive(Debug, Clone)]
pub struct Sessions {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

/// Session-ID cache entries (about 200 bytes each), shared by all workers.
const SESSION_CACHE_ENTRIES: usize = 20_000;

impl Sessions {
    pub fn new() -> Result<Sessions, String> {
        Ok(Sessions {
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| format!("TLS ticket keys: {e}"))?,
            cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
        })
    }

    /// The configuration TLS listeners accept with: TLS 1.3 and 1.2 only, AEAD suites with
    /// forward secrecy only in Mozilla's "intermediate" order (AES-128-GCM first: as safe, and
    /// cheaper than AES-256), server preference, ALPN `h2` (when `h2`) then `http/1.1`, no
    /// 0-RTT, certificates chosen by `store`.
    pub fn server_config(&self, store: Arc<CertStore>, h2: bool) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(server_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(store);
        cfg.alpn_protocols = match h2 {
            true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            false => vec![b"http/1.1".to_vec()],
        };
        cfg.ignore_client_order = true;
        cfg.max_early_data_size = 0;
        cfg.send_tls13_tickets = 2;
        cfg.ticketer = Arc::clone(&self.ticketer);
        cfg.session_storage = Arc::clone(&self.cache);
        Ok(Arc::new(cfg))
    }
}

// ---- TLS to upstreams ----------------------------------------------------------------------

/// How an upstream's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verify {
    /// Not at all (ingress-nginx's default, `proxy-ssl-verify: off`): encrypted, not
    /// authenticated. The handshake signatures are still checked.
    Off,
    /// Against the system's trust store (`/etc/ssl/certs`).
    System,
    /// Against these CA certificates (PEM).
    Ca(Vec<u8>),
}

/// What a backend's TLS looks like: what [`upstream_tls`] makes a client configuration from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTlsSettings {
    pub verify: Verify,
    /// The name the certificate must carry (when verified) and the SNI (when `sni`).
    pub name: String,
    pub sni: bool,
    /// ALPN `h2` (gRPC over TLS, `GRPCS`) instead of `http/1.1`.
    pub h2: bool,
}

/// TLS to a backend's endpoints.
#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
    /// Distinct per settings: idle connections are reused only under the same settings.
    pub id: u64,
    pub settings: UpstreamTlsSettings,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for UpstreamTls {}

/// The client configuration for `settings`, made once per distinct settings and then shared
/// (its session cache with it), so that table rebuilds keep upstream resumption and pooling.
/// Only the control thread calls this.
pub fn upstream_tls(settings: &UpstreamTlsSettings) -> Result<Arc<UpstreamTls>, String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static MADE: Mutex<Option<HashMap<UpstreamTlsSettings, Arc<UpstreamTls>>>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let made = made.get_or_insert_with(HashMap::new);
    if let Some(t) = made.get(settings) {
        return Ok(Arc::clone(t));
    }
    let name = ServerName::try_from(settings.name.clone())
        .map_err(|_| format!("{:?} is not a DNS name or IP address", settings.name))?;
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?;
    let builder = match &settings.verify {
        Verify::Off => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified { provider, accept: true })),
        Verify::System | Verify::Ca(_) => {
            let mut roots = rustls::RootCertStore::empty();
            match &settings.verify {
                Verify::Ca(pem) => {
                    for c in CertificateDer::pem_slice_iter(pem) {
                        let c = c.map_err(|e| format!("CA PEM: {e}"))?;
                        roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
                    }
                }
                _ => {
                    for c in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(c);
                    }
                }
            }
            if roots.is_empty() {
                return Err("no CA certificate to verify the upstream with".into());
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS verifier: {e}"))?;
            builder.with_webpki_verifier(verifier)
        }
    };
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = match settings.h2 {
        true => vec![b"h2".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    config.enable_sni = settings.sni;
    let t = Arc::new(UpstreamTls {
        config: Arc::new(config),
        name,
        id: made.len() as u64 + 1,
        settings: settings.clone(),
    });
    made.insert(settings.clone(), Arc::clone(&t));
    Ok(t)
}

/// Upstream TLS for a backend whose TLS settings are unusable (a bad CA, a bad name): every
/// handshake fails, so its requests get 502 rather than going out unverified.
pub fn broken_upstream_tls() -> Arc<UpstreamTls> {
    static ONE: std::sync::OnceLock<Arc<UpstreamTls>> = std::sync::OnceLock::new();
    Arc::clone(ONE.get_or_init(|| {
        let provider = provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("rustls' default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified {
                provider,
                accept: false,
            }))
            .with_no_client_auth();
        Arc::new(UpstreamTls {
            config: Arc::new(config),
            name: ServerName::try_from("upstream.invalid").expect("a DNS name"),
            id: u64::MAX,
            settings: UpstreamTlsSettings {
                verify: Verify::Ca(Vec::new()),
                name: "upstream.invalid".into(),
                sni: false,
                h2: false,
            },
        })
    }))
}

/// `accept`: any certificate (`Verify::Off`), still checking that the handshake is signed by
/// the key of the certificate presented. Otherwise none (see [`broken_upstream_tls`]).
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
    accept: bool,
}

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.accept {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "this backend's upstream TLS settings are unusable".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

// ---- X.509 validity --------------------------------------------------------------------------

/// `notBefore` and `notAfter` of a DER certificate, in Unix seconds. Only the few DER elements
/// on the way are parsed: Certificate → TBSCertificate → [version], serial, signature, issuer,
/// validity.
fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (tag, cert, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = der_element(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2; // serialNumber, signature, issuer
    }
    let (tag, validity, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, nb, rest) = der_element(validity)?;
    let (t2, na, _) = der_element(rest)?;
    Some((der_time(t1, nb)?, der_time(t2, na)?))
}

/// One DER element: (tag, content, what follows).
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, start) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = start.checked_add(len)?;
    Some((tag, b.get(start..end)?, &b[end..]))
}

/// UTCTime (tag 0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, s: &[u8]) -> Option<i64> {
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in s.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (year, rest) = match tag {
        0x17 if s.len() == 13 => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        0x18 if s.len() == 15 => (digits(0..4)?, 4),
        _ => return None,
    };
    if s.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let hour = digits(rest + 4..rest + 6)?;
    let min = digits(rest + 6..rest + 8)?;
    let sec = digits(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(crate::time::days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

#[cfg(test)]
mod tests;
