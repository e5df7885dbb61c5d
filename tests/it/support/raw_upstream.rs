//! Upstreams written on raw tokio sockets, for response shapes and misbehaviour that hyper will
//! not produce: close-delimited bodies, silent closes of keep-alive connections, no answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::upstream::Server;

/// What a raw upstream does with each connection.
#[derive(Debug, Clone)]
pub enum RawBehavior {
    /// Reads one request head, writes these bytes, then closes.
    ReplyThenClose(Vec<u8>),
    /// Reads one request head, writes these bytes, then says nothing more and keeps the
    /// connection open until the peer closes it (a body that stalls half-way).
    ReplyThenStall(Vec<u8>),
    /// Answers the first request on each connection with a keep-alive 200 (Content-Length),
    /// then closes without a word: at once when `close_when_idle`, else after reading the next
    /// request head (as a server does when its idle timer fires while a request is in flight).
    AnswerOnce { close_when_idle: bool },
    /// Reads requests and never answers; keeps the connection until the peer closes it.
    Silent,
    /// Reads one request head, writes these bytes, reads and drops what comes until the peer
    /// half-closes, then keeps its own side open (sending nothing) for 30 s: a peer that
    /// leaves a connection half-closed.
    ReplyThenHold(Vec<u8>),
}

/// The first answer of [`RawBehavior::AnswerOnce`].
pub const ANSWER_ONCE_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Upstream: raw\r\n\r\nfirst";

/// A raw upstream on 127.0.0.1:0. Stops when dropped.
pub struct RawUpstream {
    server: Server,
    state: Arc<RawState>,
}

#[derive(Default)]
struct RawState {
    /// Request lines seen, in order.
    requests: Mutex<Vec<String>>,
    /// Connections this upstream closed.
    closed: AtomicUsize,
}

impl RawUpstream {
    pub fn start(behavior: RawBehavior) -> RawUpstream {
        let state = Arc::new(RawState::default());
        let st = Arc::clone(&state);
        let server = Server::start(move |stream| serve(stream, behavior.clone(), Arc::clone(&st)));
        RawUpstream { server, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections.load(Ordering::SeqCst)
    }

    /// Request lines seen so far (`GET /x HTTP/1.1`), in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// Connections this upstream has closed so far.
    pub fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, behavior: RawBehavior, st: Arc<RawState>) {
    let mut buf = Vec::new();
    match behavior {
        RawBehavior::ReplyThenClose(reply) => {
            if read_head(&mut stream, &mut buf, &st).await {
                let _ = stream.write_all(&reply).await;
            }
        }
        RawBehavior::ReplyThenStall(reply) => {
            if read_head(&mut stream, &mut buf, &st).await && stream.write_all(&reply).await.is_ok() {
                drain(&mut stream).await;
            }
            return;
        }
        RawBehavior::AnswerOnce { close_when_idle } => {
            if !read_head(&mut stream, &mut buf, &st).await || stream.write_all(ANSWER_ONCE_REPLY).await.is_err() {
                return;
            }
            if !close_when_idle {
                read_head(&mut stream, &mut buf, &st).await;
            }
        }
        RawBehavior::Silent => {
            read_head(&mut stream, &mut buf, &st).await;
            drain(&mut stream).await;
            return;
        }
        RawBehavior::ReplyThenHold(reply) => {
            if read_head(&mut stream, &mut buf, &st).await && stream.write_all(&reply).await.is_ok() {
                drain(&mut stream).await;
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            }
            return;
        }
    }
    let _ = stream.shutdown().await;
    drop(stream);
    st.closed.fetch_add(1, Ordering::SeqCst);
}

/// Reads and discards until the peer closes.
async fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Reads until a whole request head is buffered, records its request line and removes it from
/// `buf`. False when the peer closed first.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, st: &RawState) -> bool {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let line = head.lines().next().unwrap_or_default().to_owned();
            st.requests.lock().expect("requests lock").push(line);
            buf.drain(..end + 4);
            return true;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
