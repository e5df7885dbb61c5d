//! The upstream of `benches/bodies.sh`: an HTTP/1.1 keep-alive server (std threads, one per
//! connection, blocking I/O) that serves and swallows large bodies at memory speed, so the bench
//! measures the proxies, not the backend.
//!
//! - `GET /64k`, `/1m`, `/100m` (any `/<digits>[k|m]`): `200` with a Content-Length body of that
//!   many bytes (`x`), written from one static 1 MiB buffer in writes of up to 1 MiB;
//! - any request with a Content-Length body (the bench's `POST /upload`): the body is read in
//!   256 KiB reads and dropped, then `200` with `ok\n`;
//! - anything else: `200` with `hello from backend\n` (the readiness check of the bench scripts).
//!
//! ```text
//! body_upstream --addr 127.0.0.1:26010
//! ```
//!
//! Prints `listening ADDR` on stdout once bound; runs until killed.

use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// The body bytes every download is cut from.
static BODY: [u8; 1 << 20] = [b'x'; 1 << 20];
/// Bytes per read (request heads and upload bodies).
const READ: usize = 256 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:26010".parse().expect("default address");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                let v = args.next().unwrap_or_default();
                addr = v.parse().unwrap_or_else(|e| {
                    eprintln!("--addr {v}: {e}");
                    std::process::exit(2)
                });
            }
            // `cargo bench` passes `--bench` to harness-less targets.
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other}; usage: body_upstream [--addr IP:PORT]");
                std::process::exit(2)
            }
        }
    }
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1)
    });
    println!("listening {addr}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = serve(conn);
        });
    }
}

/// Serves one keep-alive connection until the client closes it or sends something unparseable.
fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; READ];
    let mut have = 0;
    loop {
        // One request head.
        let (head_len, body_len, download) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut fields);
            match req.parse(&buf[..have]) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    break (n, len, req.path.and_then(size_of_path));
                }
                Ok(httparse::Status::Partial) if have < buf.len() => {}
                _ => return Ok(()),
            }
            let n = s.read(&mut buf[have..])?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        };
        // The request body, dropped.
        buf.copy_within(head_len..have, 0);
        have -= head_len;
        let mut left = body_len;
        loop {
            let k = left.min(have as u64) as usize;
            buf.copy_within(k..have, 0);
            have -= k;
            left -= k as u64;
            if left == 0 {
                break;
            }
            let n = s.read(&mut buf[have..])?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        }
        // The answer.
        match download {
            Some(size) if body_len == 0 => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
                );
                send(&mut s, head.as_bytes(), size)?;
            }
            _ if body_len > 0 => s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")?,
            _ => s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nhello from backend\n")?,
        }
    }
}

/// `/64k` → 65536, `/1m` → 1048576, `/100m`, `/123`; anything else is not a download.
fn size_of_path(path: &str) -> Option<u64> {
    let p = path.strip_prefix('/')?;
    let (num, mult) = match p.as_bytes().last()? {
        b'k' => (&p[..p.len() - 1], 1u64 << 10),
        b'm' => (&p[..p.len() - 1], 1 << 20),
        _ => (p, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Writes `head` and `size` body bytes, the head together with the first body bytes.
fn send(s: &mut TcpStream, head: &[u8], size: u64) -> std::io::Result<()> {
    let mut head = head;
    let mut left = size;
    while !head.is_empty() || left > 0 {
        let part = &BODY[..left.min(BODY.len() as u64) as usize];
        let n = s.write_vectored(&[IoSlice::new(head), IoSlice::new(part)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        left -= (n - from_head) as u64;
    }
    Ok(())
}
