use super::*;
use crate::time::{days_from_civil, format_time};

fn self_signed(names: &[&str], alg: &'static rcgen::SignatureAlgorithm, years: (i32, i32)) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

fn valid(names: &[&str]) -> Cert {
    let (c, k) = self_signed(names, &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2090));
    parse(c.as_bytes(), k.as_bytes()).expect("parse")
}

#[test]
fn parses_ecdsa_and_ed25519_pkcs8() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let (c, k) = self_signed(&["a.example.com"], alg, (2020, 2090));
        let cert = parse(c.as_bytes(), k.as_bytes()).expect("parse");
        assert_eq!(cert.not_before, days_from_civil(2020, 1, 1) * 86_400);
        assert_eq!(cert.not_after, days_from_civil(2090, 1, 1) * 86_400);
        assert_eq!(cert.key.cert.len(), 1);
    }
}

#[test]
fn keeps_the_whole_chain() {
    let (c1, k1) = self_signed(&["a.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2090));
    let (c2, _) = self_signed(&["ca.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2090));
    let chain = format!("{c1}{c2}");
    let cert = parse(chain.as_bytes(), k1.as_bytes()).expect("parse");
    assert_eq!(cert.key.cert.len(), 2);
}

#[test]
fn refuses_bad_input_with_a_reason() {
    let (c1, _) = self_signed(&["a.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2090));
    let (_, k2) = self_signed(&["b.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2090));
    let e = parse(c1.as_bytes(), k2.as_bytes()).unwrap_err();
    assert!(e.contains("does not belong"), "{e}");
    let e = parse(b"", k2.as_bytes()).unwrap_err();
    assert!(e.contains("no CERTIFICATE"), "{e}");
    let e = parse(c1.as_bytes(), b"garbage").unwrap_err();
    assert!(e.contains("no PRIVATE KEY"), "{e}");
    let bad_der = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    let e = parse(bad_der.as_bytes(), k2.as_bytes()).unwrap_err();
    assert!(e.contains("not valid X.509"), "{e}");
}

#[test]
fn expiry_and_names_are_checked() {
    let now = days_from_civil(2026, 6, 1) * 86_400;
    let (c, k) = self_signed(&["old.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2021));
    let old = parse(c.as_bytes(), k.as_bytes()).unwrap();
    let why = old.unusable_for("old.example.com", now).unwrap();
    assert_eq!(why, "the certificate expired at 2021-01-01T00:00:00Z");
    let (c, k) = self_signed(&["new.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256, (2030, 2031));
    let future = parse(c.as_bytes(), k.as_bytes()).unwrap();
    assert!(
        future
            .unusable_for("new.example.com", now)
            .unwrap()
            .contains("not valid before")
    );

    let cert = valid(&["foo.bar.com", "*.wild.example.com"]);
    assert_eq!(cert.unusable_for("foo.bar.com", now), None);
    assert_eq!(cert.unusable_for("x.wild.example.com", now), None);
    assert_eq!(cert.unusable_for("*.wild.example.com", now), None);
    assert_eq!(
        cert.unusable_for("other.bar.com", now).as_deref(),
        Some("the certificate does not name other.bar.com")
    );
    assert!(cert.unusable_for("a.b.wild.example.com", now).is_some());
    // A certificate naming one host does not cover the wildcard host.
    assert!(valid(&["a.example.com"]).unusable_for("*.example.com", now).is_some());
}

#[test]
fn sni_picks_exact_then_wildcard_then_default() {
    let exact = valid(&["a.example.com"]).key;
    let wild = valid(&["*.example.com"]).key;
    let default = valid(&["default.example.com"]).key;
    let mut store = CertStore::default();
    assert!(store.insert("a.example.com", Arc::clone(&exact)));
    assert!(store.insert("*.example.com", Arc::clone(&wild)));
    assert!(!store.insert("a.example.com", Arc::clone(&wild)), "first wins");
    assert!(store.lookup(Some("b.example.com")).is_some());
    assert!(store.lookup(None).is_none(), "no default: refused");
    store.set_default(Some(Arc::clone(&default)));
    let pick = |s: Option<&str>| store.lookup(s).map(|k| k.cert[0].clone());
    assert_eq!(pick(Some("a.example.com")), Some(exact.cert[0].clone()));
    assert_eq!(pick(Some("A.Example.COM.")), Some(exact.cert[0].clone()));
    assert_eq!(pick(Some("b.example.com")), Some(wild.cert[0].clone()));
    assert_eq!(pick(Some("x.b.example.com")), Some(default.cert[0].clone()));
    assert_eq!(pick(Some("example.com")), Some(default.cert[0].clone()));
    assert_eq!(pick(None), Some(default.cert[0].clone()));
}

/// A Gateway scope's store filled from the common one: its own names (and those its
/// wildcards cover) keep its certificates; the rest and the default come from the other.
#[test]
fn fill_from_keeps_own_and_covered_names() {
    let own_wild = valid(&["*.example.com"]).key;
    let own_exact = valid(&["b.example.net"]).key;
    let other_a = valid(&["a.example.com"]).key;
    let other_b = valid(&["b.example.net"]).key;
    let other_c = valid(&["c.example.org"]).key;
    let other_wild = valid(&["*.example.com"]).key;
    let default = valid(&["default.example.com"]).key;
    let mut own = CertStore::default();
    own.insert("*.example.com", Arc::clone(&own_wild));
    own.insert("b.example.net", Arc::clone(&own_exact));
    let mut other = CertStore::default();
    other.insert("a.example.com", Arc::clone(&other_a));
    other.insert("b.example.net", Arc::clone(&other_b));
    other.insert("c.example.org", Arc::clone(&other_c));
    other.insert("*.example.com", Arc::clone(&other_wild));
    other.set_default(Some(Arc::clone(&default)));
    // a.example.com (under own wildcard), b.example.net and *.example.com (own names) left out.
    assert_eq!(own.fill_from(&other), 3);
    assert_eq!(own.len(), 3);
    let pick = |s: &str| own.lookup(Some(s)).map(|k| k.cert[0].clone());
    assert_eq!(pick("a.example.com"), Some(own_wild.cert[0].clone()));
    assert_eq!(pick("b.example.net"), Some(own_exact.cert[0].clone()));
    assert_eq!(pick("c.example.org"), Some(other_c.cert[0].clone()));
    assert_eq!(pick("elsewhere.example"), Some(default.cert[0].clone()));
}

#[test]
fn stores_compare_by_certificate_identity() {
    let a = valid(&["a.example.com"]).key;
    let mut s1 = CertStore::default();
    let mut s2 = CertStore::default();
    s1.insert("a.example.com", Arc::clone(&a));
    s2.insert("a.example.com", Arc::clone(&a));
    assert!(s1.same_as(&s2));
    s2.set_default(Some(Arc::clone(&a)));
    assert!(!s1.same_as(&s2));
    let mut s3 = CertStore::default();
    s3.insert("a.example.com", valid(&["a.example.com"]).key);
    assert!(!s1.same_as(&s3));
}

#[test]
fn times_round_trip() {
    for (t, s) in [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (4_102_444_799, "2099-12-31T23:59:59Z"),
    ] {
        assert_eq!(format_time(t), s);
    }
    assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
    assert_eq!(der_time(0x17, b"500101000000Z"), Some(-631_152_000));
    assert_eq!(der_time(0x18, b"20000229000000Z"), Some(951_782_400));
    assert_eq!(der_time(0x18, b"20001329000000Z"), None);
    assert_eq!(der_time(0x17, b"0001010000Z"), None);
}

#[test]
fn server_config_is_tls12_and_13_with_http11_alpn() {
    let sessions = Sessions::new().unwrap();
    let cfg = sessions.server_config(Arc::new(CertStore::default()), false).unwrap();
    assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let cfg = sessions.server_config(Arc::new(CertStore::default()), true).unwrap();
    assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(cfg.max_early_data_size, 0);
    assert!(cfg.ticketer.enabled());
    let suites: Vec<String> = cfg
        .crypto_provider()
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    assert_eq!(suites[0], "TLS13_AES_128_GCM_SHA256", "{suites:?}");
    assert_eq!(suites[3], "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "{suites:?}");
    assert_eq!(suites.len(), 9);
    let groups: Vec<String> = cfg
        .crypto_provider()
        .kx_groups
        .iter()
        .map(|g| format!("{:?}", g.name()))
        .collect();
    assert_eq!(groups, ["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"]);
}

#[test]
fn dns_names_are_the_leafs_subject_alternative_names() {
    let cert = valid(&["B.example.com", "*.example.org", "a.example.com"]);
    assert_eq!(cert.dns_names(), ["*.example.org", "a.example.com", "b.example.com"]);
}

#[test]
fn pem_shape_wants_a_certificate_and_a_key_block() {
    let (c, k) = self_signed(&["a.example.com"], &rcgen::PKCS_ECDSA_P256_SHA256, (2020, 2090));
    assert_eq!(pem_shape(c.as_bytes(), k.as_bytes()), Ok(()));
    assert!(
        pem_shape(b"garbage", k.as_bytes())
            .unwrap_err()
            .contains("no CERTIFICATE")
    );
    assert!(pem_shape(c.as_bytes(), b"garbage").is_err());
    assert!(pem_shape(k.as_bytes(), k.as_bytes()).is_err());
}
