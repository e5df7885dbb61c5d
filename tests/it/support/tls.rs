//! Certificates for TLS tests: a test CA (rcgen) that signs leaf certificates, the files kedge
//! reads them from, and rustls client configurations that trust the CA.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::ClientConfig;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::pki_types::CertificateDer;

use super::TempDir;

/// The key exchange groups of a classic client, in rustls' order.
pub const CLASSIC_GROUPS: &[&dyn SupportedKxGroup] = &[kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];

/// A certificate authority for one test.
pub struct TestCa {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate (PEM chain: leaf, then the CA) and its key (PKCS#8 PEM).
#[derive(Clone)]
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    /// The leaf's DER, to tell which certificate a handshake got.
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, "kedge test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
        TestCa { ca }
    }

    /// A leaf for `names`, valid from 2020 to 2090, ECDSA P-256.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_valid(names, (2020, 2090))
    }

    /// A leaf for `names`, valid from January 1st of `years.0` to January 1st of `years.1`.
    pub fn leaf_valid(&self, names: &[&str], years: (i32, i32)) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client configuration trusting this CA: TLS 1.2 and 1.3, ALPN http/1.1, resumption on
    /// (sessions are kept per configuration).
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client_with(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    /// A client configuration trusting this CA (TLS 1.2 and 1.3) that offers `alpn`, in this
    /// order (none at all when empty).
    pub fn client_alpn(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut cfg = Arc::unwrap_or_clone(self.client());
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A classic client (no post-quantum key exchange, like OpenSSL 3.0 and curl built on it)
    /// offering `versions`.
    pub fn client_with(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
        self.client_kx(versions, CLASSIC_GROUPS)
    }

    /// A client trusting this CA that offers `versions` and exactly the key exchange `groups`
    /// (a key share for the first).
    pub fn client_kx(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        groups: &[&'static dyn SupportedKxGroup],
    ) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add CA");
        let provider = rustls::crypto::CryptoProvider {
            kx_groups: groups.to_vec(),
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl Leaf {
    /// A rustls server configuration serving this certificate (for upstreams).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key");
        let mut cfg =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// The CA's certificate (PEM), for a verifying client of this leaf.
    pub fn ca_pem(&self) -> &str {
        let end = "-----END CERTIFICATE-----";
        let first_end = self.chain_pem.find(end).expect("leaf") + end.len();
        self.chain_pem[first_end..].trim_start()
    }

    /// Writes `NAME.crt` and `NAME.key` into `dir` (each atomically) and returns their paths.
    pub fn write(&self, dir: &TempDir, name: &str) -> (PathBuf, PathBuf) {
        (
            dir.write(&format!("{name}.crt"), &self.chain_pem),
            dir.write(&format!("{name}.key"), &self.key_pem),
        )
    }

    /// The data of a `kubernetes.io/tls` Secret holding this certificate.
    pub fn secret(&self, namespace: &str, name: &str) -> serde_json::Value {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": b64(&self.chain_pem), "tls.key": b64(&self.key_pem)}})
    }
}
