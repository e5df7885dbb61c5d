//! The state of one client connection that every request phase works on: the client stream
//! ([`ClientStream`], plain or TLS), its reused buffers ([`Conn`]), what a phase reads besides
//! ([`Ctx`]) and how the connection goes on ([`Next`]), and the upstream buffers every front
//! end gives the forward phase ([`UpstreamBufs`]). The HTTP/1.1 phases are `impl` blocks on
//! [`Conn`] in `conn.rs` (the loop) and `respond.rs`; `forward.rs` is front-end neutral.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};
use monoio::net::TcpStream;

use super::error::{ErrorKind, RequestError};
use super::pump;
use super::request::HeaderBuf;
use super::tls::TlsStream;
use super::upstream::UpstreamStream;
use super::{Snapshot, Worker};
use crate::http::HeaderSpan;

/// A client connection: plain TCP or TLS. The connection loop is generic over it.
pub(super) trait ClientStream: AsyncReadRent + AsyncWriteRent + 'static {
    /// `http` or `https`: X-Forwarded-Proto, and whether redirects and HSTS apply.
    const SCHEME: &'static str;
    /// Whether [`ClientStream::wait_data`] waits without the caller's read buffer (TLS: on its
    /// own ciphertext buffer), so a connection between requests can park that buffer.
    const WAITS_WITHOUT_BUFFER: bool;
    /// Waits until the client sends something (`Ok(false)`: it closed); `bare`: holding no
    /// buffer at all (TLS: see [`TlsStream::wait_data`]). Streams that cannot wait without a
    /// buffer return at once, and the caller's read waits.
    async fn wait_data(&mut self, bare: bool) -> std::io::Result<bool>;
    /// Halves that read and write at the same time (a tunnel after 101).
    fn halves(self) -> (impl AsyncReadRent, impl AsyncWriteRent);
    /// Ends the connection politely (TLS: close_notify). Best effort, bounded.
    async fn close(&mut self);
    /// What is written from now on is the connection's last: see [`hold_for_close`].
    fn last_answer(&mut self);
    /// The socket.
    fn raw_fd(&self) -> std::os::fd::RawFd;
}

/// Holds the socket's partial segments until it closes (`TCP_CORK`), so the connection's last
/// answer leaves with the FIN in one segment instead of two and the client wakes once for both.
/// Full segments still go at once, and the kernel sends what it holds after 200 ms at most: a
/// close that came late would delay the answer's end by that much, never more. Best effort: a
/// refusal changes only how the bytes are cut into segments.
fn hold_for_close(fd: std::os::fd::RawFd) {
    with_socket(fd, |s| {
        let _ = s.set_tcp_cork(true);
    });
}

/// A second descriptor of the open socket `fd` (`dup(2)`), which keeps the socket open after
/// `fd` is closed; `None` when the process is out of descriptors.
#[allow(unsafe_code)]
pub(super) fn dup_socket(fd: std::os::fd::RawFd) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: `fd` is the caller's open socket, borrowed for this call only.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fd.try_clone_to_owned().ok()
}

/// Runs `f` on the open socket `fd` through socket2, for the options and calls monoio's
/// sockets do not offer (their descriptors are raw, not `AsFd`). The caller keeps `fd` open
/// for the call.
#[allow(unsafe_code)]
pub(super) fn with_socket(fd: std::os::fd::RawFd, f: impl FnOnce(socket2::SockRef<'_>)) {
    // SAFETY: `fd` is the caller's open socket, borrowed for this call only.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    f(socket2::SockRef::from(&fd));
}

impl ClientStream for TcpStream {
    const SCHEME: &'static str = "http";
    const WAITS_WITHOUT_BUFFER: bool = false;
    async fn wait_data(&mut self, _bare: bool) -> std::io::Result<bool> {
        Ok(true)
    }
    fn halves(self) -> (impl AsyncReadRent, impl AsyncWriteRent) {
        self.into_split()
    }
    async fn close(&mut self) {}
    fn last_answer(&mut self) {
        hold_for_close(std::os::fd::AsRawFd::as_raw_fd(self));
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

impl ClientStream for TlsStream {
    const SCHEME: &'static str = "https";
    const WAITS_WITHOUT_BUFFER: bool = true;
    async fn wait_data(&mut self, bare: bool) -> std::io::Result<bool> {
        TlsStream::wait_data(self, bare).await
    }
    fn halves(self) -> (impl AsyncReadRent, impl AsyncWriteRent) {
        self.into_split()
    }
    async fn close(&mut self) {
        TlsStream::close(self).await;
    }
    fn last_answer(&mut self) {
        // The answer, close_notify and the FIN in one segment.
        hold_for_close(self.fd());
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd()
    }
}

/// Per-connection state and buffers, reused for every request on the connection.
pub(super) struct Conn<S> {
    pub(super) client: S,
    pub(super) peer: SocketAddr,
    /// The local address the connection arrived on (Gateway scope; its port is the listener's).
    pub(super) local: SocketAddr,
    /// Bytes read from the client and not yet consumed (head, body start, pipelined requests).
    pub(super) cbuf: Vec<u8>,
    /// Bytes read from the upstream and not yet consumed, and the response head's spans.
    pub(super) up: UpstreamBufs,
    /// Bytes being assembled for a write (heads, re-framed chunks, canned answers).
    pub(super) out: Vec<u8>,
    pub(super) headers: Vec<HeaderSpan>,
    /// The request view's header pairs (empty between requests).
    pub(super) pairs: HeaderBuf,
    /// The header pairs a Gateway API rule's header changes send upstream (empty between
    /// requests).
    pub(super) gw_pairs: HeaderBuf,
    /// The request's Origin, kept past the head for a Gateway rule's CORS response fields
    /// (empty otherwise).
    pub(super) origin: Vec<u8>,
    /// Method, target, host and request id of the current request, for the access log.
    pub(super) meta: String,
    /// The client's IP address as sent in X-Forwarded-For and X-Real-IP.
    pub(super) peer_text: PeerText,
    /// The rewritten path and query of the current request (reused).
    pub(super) rewritten: String,
    /// Header lines kedge adds to the current response (reused).
    pub(super) extra: Vec<u8>,
    /// The last wait between two requests was long (or none happened yet): the next one holds
    /// no buffer at all (`conn::Conn::wait_idle`).
    pub(super) waits_long: bool,
    /// The connection is to close gently (`Conn::linger`) once the request is logged: the
    /// answer was an error, or the client may still be sending (`Conn::more_may_come`).
    pub(super) lingers: bool,
}

/// A client's IP address as text, the way X-Forwarded-For carries it (no brackets, an
/// IPv4-mapped IPv6 address as IPv4): formatted once per connection into the connection's own
/// state, so a new connection costs no allocation for it.
pub(super) struct PeerText {
    buf: [u8; PeerText::MAX],
    len: u8,
}

impl PeerText {
    /// Longer than any IP address's text (an IPv6 address: at most 39 bytes).
    const MAX: usize = 48;

    pub(super) fn new(ip: IpAddr) -> Self {
        let mut buf = [0; Self::MAX];
        let len = match ip.to_canonical() {
            // Nearly every client: written digit by digit, without the formatting machinery
            // (a tenth of its instructions, once per connection).
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    if octet >= 100 {
                        buf[n] = b'0' + octet / 100;
                        n += 1;
                    }
                    if octet >= 10 {
                        buf[n] = b'0' + octet / 10 % 10;
                        n += 1;
                    }
                    buf[n] = b'0' + octet % 10;
                    n += 1;
                }
                n
            }
            v6 => {
                let mut rest = &mut buf[..];
                // Cannot fail: the text fits.
                let _ = write!(rest, "{v6}");
                Self::MAX - rest.len()
            }
        };
        PeerText { buf, len: len as u8 }
    }
}

impl std::ops::Deref for PeerText {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Bytes read from an upstream and not yet consumed, and the header spans of the response head
/// in them. Reused from one request to the next by the front end that owns them.
#[derive(Default)]
pub(super) struct UpstreamBufs {
    pub buf: Vec<u8>,
    pub headers: Vec<HeaderSpan>,
}

impl UpstreamBufs {
    /// Whether the response head in `buf` has a field called `name` (ASCII, any case).
    pub fn has_field(&self, name: &[u8]) -> bool {
        self.headers
            .iter()
            .any(|h| self.buf[h.name.clone()].eq_ignore_ascii_case(name))
    }
}

/// How the connection goes on after a request.
pub(super) enum Next {
    KeepAlive,
    Close,
    /// The upstream switched protocols: tunnel bytes both ways until both sides close, or
    /// until no byte has passed either way for the route's upstream read timeout (this one).
    Tunnel(UpstreamStream, Duration),
}

/// What every phase of one request reads: the worker, the snapshot the request started with,
/// and when it started.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub worker: &'a Worker,
    pub snap: &'a Snapshot,
    pub start: Instant,
}

/// Writes `out` to the client under `timeout`, handing the buffer back (cleared).
pub(super) async fn write_client<S: AsyncWriteRent>(
    client: &mut S,
    out: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, RequestError> {
    match pump::write_all(client, out, timeout).await {
        Ok((Ok(_), mut b)) => {
            b.clear();
            Ok(b)
        }
        _ => Err(ErrorKind::ClientGone.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::PeerText;
    use std::net::IpAddr;

    #[test]
    fn peer_text_is_the_address_as_x_forwarded_for_carries_it() {
        let cases = [
            ("0.0.0.0", "0.0.0.0"),
            ("127.0.0.1", "127.0.0.1"),
            ("192.0.2.9", "192.0.2.9"),
            ("198.51.100.10", "198.51.100.10"),
            ("203.0.113.199", "203.0.113.199"),
            ("255.255.255.255", "255.255.255.255"),
            ("10.100.200.250", "10.100.200.250"),
            // An IPv4 client on a dual-stack listener: as IPv4.
            ("::ffff:192.0.2.33", "192.0.2.33"),
            ("2001:db8::1", "2001:db8::1"),
            (
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
            ("::1", "::1"),
        ];
        for (ip, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(std::str::from_utf8(&PeerText::new(ip)).unwrap(), want, "{ip}");
            // The same text as the formatter gives for every IPv4 address's octets.
            assert_eq!(&*PeerText::new(ip), ip.to_canonical().to_string().as_bytes(), "{ip}");
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, 0, 99, octet]);
            assert_eq!(&*PeerText::new(ip), ip.to_string().as_bytes());
        }
    }
}
