//! A raw upstream that records every byte it receives, per connection and in accept order, so a
//! test can prove that not one byte of a refused request reached it. It answers each complete
//! request (Content-Length or chunked, as kedge rebuilds them) with a 200 and `Connection: close`
//! and then keeps recording until the peer closes: kedge never pools its connections, so every
//! request kedge forwards arrives on a connection of its own.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::upstream::Server;

/// The answer to every complete request.
const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\nX-Upstream: recorder\r\n\r\nok\n";

/// What arrived on one upstream connection.
#[derive(Debug, Clone, Default)]
pub struct ConnLog {
    /// Every byte received, in order.
    pub bytes: Vec<u8>,
    /// The complete requests decoded from `bytes` (at most one is answered).
    pub requests: Vec<Recorded>,
    /// Whether the peer closed (EOF or reset).
    pub closed: bool,
}

impl ConnLog {
    /// `bytes` as text (lossy), for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// One complete request as the recorder decoded it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The head without its final CRLFCRLF.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The trailer lines of a chunked body, each with its CRLF.
    pub trailers: String,
}

impl Recorded {
    /// The request line.
    pub fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// The recorder on 127.0.0.1:0. Stops when dropped.
pub struct RecordingUpstream {
    server: Server,
    conns: Arc<Mutex<Vec<ConnLog>>>,
}

impl RecordingUpstream {
    pub fn start() -> RecordingUpstream {
        let conns: Arc<Mutex<Vec<ConnLog>>> = Arc::default();
        let log = Arc::clone(&conns);
        let server = Server::start(move |stream| {
            // The slot is taken here, in the accept loop, so slots follow the accept order.
            let index = {
                let mut all = log.lock().expect("conns lock");
                all.push(ConnLog::default());
                all.len() - 1
            };
            record(stream, Arc::clone(&log), index)
        });
        RecordingUpstream { server, conns }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections.load(Ordering::SeqCst)
    }

    /// What every connection received so far, in accept order.
    pub fn conns(&self) -> Vec<ConnLog> {
        self.conns.lock().expect("conns lock").clone()
    }

    /// Every byte received so far on any connection.
    pub fn all_bytes(&self) -> Vec<u8> {
        self.conns().into_iter().flat_map(|c| c.bytes).collect()
    }
}

async fn record(mut stream: TcpStream, log: Arc<Mutex<Vec<ConnLog>>>, index: usize) {
    let mut pending = Vec::new();
    let mut answered = false;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        let mut complete = Vec::new();
        while let Some((req, used)) = decode_request(&pending) {
            pending.drain(..used);
            complete.push(req);
        }
        let got_request = !complete.is_empty();
        {
            let mut all = log.lock().expect("conns lock");
            all[index].bytes.extend_from_slice(&chunk[..n]);
            all[index].requests.extend(complete);
        }
        // Recorded before answered: once the client has the 200, the bytes are in the log.
        if got_request && !answered {
            answered = true;
            if stream.write_all(REPLY).await.is_err() || stream.shutdown().await.is_err() {
                break;
            }
        }
    }
    log.lock().expect("conns lock")[index].closed = true;
}

/// A complete request at the start of `buf` and its length, or `None` while it is incomplete (or
/// framed in a way the recorder does not read: it then just keeps recording).
fn decode_request(buf: &[u8]) -> Option<(Recorded, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut req = Recorded {
        head,
        body: Vec::new(),
        trailers: String::new(),
    };
    let mut at = end + 4;
    let chunked = req
        .header_all("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let line_end = at + find(&buf[at..], b"\r\n")?;
            let line = std::str::from_utf8(&buf[at..line_end]).ok()?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                let trailers_end = if buf[at..].starts_with(b"\r\n") {
                    at
                } else {
                    at + find(&buf[at..], b"\r\n\r\n")? + 2
                };
                req.trailers = String::from_utf8_lossy(&buf[at..trailers_end]).into_owned();
                return Some((req, trailers_end + 2));
            }
            let data = buf.get(at..at + size)?;
            req.body.extend_from_slice(data);
            at += size;
            if buf.get(at..at + 2)? != b"\r\n" {
                return None;
            }
            at += 2;
        }
    }
    let len = match req.header_all("content-length").first() {
        Some(v) => v.parse::<usize>().ok()?,
        None => 0,
    };
    req.body = buf.get(at..at + len)?.to_vec();
    Some((req, at + len))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
