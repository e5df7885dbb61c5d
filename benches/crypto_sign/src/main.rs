//! CPU time of one private-key operation with ring and with aws-lc-rs (the providers rustls can
//! use): RSA-2048 PSS-SHA256 and ECDSA P-256 signatures (what a full TLS handshake signs) and
//! an ephemeral X25519 key pair plus agreement (twice what the server does per handshake).
//!
//! `cargo run --release [-- N]`: N RSA signatures (default 2000), 10 N of the others.

use std::process::Command;
use std::time::Instant;

fn cpu_ns() -> u128 {
    let mut ts = Timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { clock_gettime(2, &mut ts) }; // CLOCK_PROCESS_CPUTIME_ID
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}
#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}
unsafe extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
}

fn bench(name: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let (t0, c0) = (Instant::now(), cpu_ns());
    for _ in 0..n {
        f();
    }
    let (wall, cpu) = (t0.elapsed().as_nanos(), cpu_ns() - c0);
    println!(
        "{name:40} {:>9.1} us/op CPU ({:>8.0} ops per CPU-second; wall {:.1} us/op)",
        cpu as f64 / n as f64 / 1000.0,
        n as f64 * 1e9 / cpu as f64,
        wall as f64 / n as f64 / 1000.0
    );
}

/// A new PKCS#8 DER private key: `openssl genpkey ARGS | openssl pkcs8 -topk8 -outform DER`.
fn key(args: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl genpkey {args} | openssl pkcs8 -topk8 -nocrypt -outform DER"
        ))
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "openssl genpkey {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn main() {
    let n: u32 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(2000);
    let rsa = key("-algorithm RSA -pkeyopt rsa_keygen_bits:2048");
    let ec = key("-algorithm EC -pkeyopt ec_paramgen_curve:P-256");
    let msg = [7u8; 200];
    let mut sig = vec![0u8; 256];
    {
        use ring::signature::*;
        let rng = ring::rand::SystemRandom::new();
        let k = RsaKeyPair::from_pkcs8(&rsa).unwrap();
        bench("ring RSA-2048 PSS-SHA256 sign", n, || {
            k.sign(&RSA_PSS_SHA256, &rng, &msg, &mut sig).unwrap()
        });
        let e = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &ec, &rng).unwrap();
        bench("ring ECDSA P-256 sign", n * 10, || {
            e.sign(&rng, &msg).unwrap();
        });
        bench("ring X25519 keygen+agree", n * 10, || {
            let a = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng).unwrap();
            let b = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng).unwrap();
            let pb = b.compute_public_key().unwrap();
            ring::agreement::agree_ephemeral(
                a,
                &ring::agreement::UnparsedPublicKey::new(&ring::agreement::X25519, pb.as_ref()),
                |s| s[0],
            )
            .unwrap();
        });
    }
    {
        use aws_lc_rs::signature::*;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let k = RsaKeyPair::from_pkcs8(&rsa).unwrap();
        bench("aws-lc-rs RSA-2048 PSS-SHA256 sign", n, || {
            k.sign(&RSA_PSS_SHA256, &rng, &msg, &mut sig).unwrap()
        });
        let e = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &ec).unwrap();
        bench("aws-lc-rs ECDSA P-256 sign", n * 10, || {
            e.sign(&rng, &msg).unwrap();
        });
        bench("aws-lc-rs X25519 keygen+agree", n * 10, || {
            let a = aws_lc_rs::agreement::EphemeralPrivateKey::generate(&aws_lc_rs::agreement::X25519, &rng).unwrap();
            let b = aws_lc_rs::agreement::EphemeralPrivateKey::generate(&aws_lc_rs::agreement::X25519, &rng).unwrap();
            let pb = b.compute_public_key().unwrap();
            aws_lc_rs::agreement::agree_ephemeral(
                a,
                &aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::X25519, pb.as_ref()),
                aws_lc_rs::error::Unspecified,
                |s| Ok(s[0]),
            )
            .unwrap();
        });
    }
}
