//! TLS over monoio TCP streams: a rustls `Connection` (the server side of client connections,
//! the client side of upstream connections) driven with owned buffers, so the connection loop
//! serves HTTPS with the same code as HTTP (it is generic over the stream).
//!
//! Ciphertext is read into `rbuf` and fed to rustls; plaintext leaves rustls straight into the
//! caller's buffer. Writes go into rustls, come out as records into `wbuf` and are written in
//! one piece. The rustls state sits in an `Rc<RefCell<..>>` so that a WebSocket tunnel can
//! split the stream into a read half and a write half that run at the same time; a borrow is
//! never held across an `.await`.
//!
//! monoio's owned-buffer traits hand buffers over as raw pointers: the few `unsafe` blocks
//! below turn them into slices of exactly the length the traits guarantee.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::BufResult;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// Ciphertext read size: a full TLS record (16 KiB + overhead) takes two reads at most.
const READ_SIZE: usize = 8 * 1024;

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// The client closed the connection (or reset it) before the handshake was done.
    Closed,
    /// The client spoke plain HTTP to the TLS port (it got a 400 in plain text).
    PlainHttp,
    /// The handshake failed: a malformed or unacceptable ClientHello, no common protocol
    /// version or cipher suite, no certificate for the name, a bad alert...
    Tls(rustls::Error),
    Io(io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Closed => f.write_str("client closed the connection during the handshake"),
            HandshakeError::PlainHttp => f.write_str("plain HTTP request on a TLS port"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The answer to plain HTTP on a TLS port (as nginx gives it), sent unencrypted.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 44\r\n\
Connection: close\r\n\r\nplain HTTP request sent to an HTTPS port\r\n\r\n";

/// A TLS stream over TCP: the server side of a client connection, or the client side of an
/// upstream connection.
pub struct TlsStream {
    tcp: TcpStream,
    tls: Rc<RefCell<Connection>>,
    r: ReadSide,
    w: WriteSide,
}

impl TlsStream {
    /// Runs the server handshake on `tcp`. The caller bounds it with a timeout.
    /// `early`: bytes already read from `tcp` (after a PROXY header), the start of the
    /// ClientHello; empty when none were.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        early: Vec<u8>,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = ServerConnection::new(config).map_err(HandshakeError::Tls)?;
        TlsStream::handshake(tcp, conn.into(), true, early).await
    }

    /// Runs the client handshake with an upstream on `tcp`. The caller bounds it with a timeout.
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = ClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
        TlsStream::handshake(tcp, conn.into(), false, Vec::new()).await
    }

    /// Drives the handshake to its end. `first` (server side): answer plain HTTP in plain HTTP.
    /// `early`: ciphertext already read, taken before anything is read from `tcp`.
    async fn handshake(
        tcp: TcpStream,
        conn: Connection,
        mut first: bool,
        early: Vec<u8>,
    ) -> Result<TlsStream, HandshakeError> {
        let mut pending = !early.is_empty();
        let mut s = TlsStream {
            tcp,
            tls: Rc::new(RefCell::new(conn)),
            r: ReadSide {
                rbuf: early,
                ..ReadSide::default()
            },
            w: WriteSide::default(),
        };
        loop {
            s.w.flush(&mut s.tcp, &s.tls).await.map_err(HandshakeError::Io)?;
            if !s.tls.borrow().is_handshaking() {
                return Ok(s);
            }
            if !std::mem::take(&mut pending) {
                match s.r.fill(&mut s.tcp).await {
                    Ok(0) => return Err(HandshakeError::Closed),
                    Ok(_) => {}
                    Err(e) if is_reset(&e) => return Err(HandshakeError::Closed),
                    Err(e) => return Err(HandshakeError::Io(e)),
                }
            }
            if first {
                first = false;
                // Every TLS connection starts with a handshake record (type 22). Upper-case
                // ASCII is an HTTP method: say so in HTTP instead of a TLS alert.
                if s.r.pending()[0] != 0x16 && s.r.pending()[0].is_ascii_uppercase() {
                    let _ = monoio::time::timeout(Duration::from_secs(1), s.tcp.write_all(PLAIN_HTTP_ANSWER)).await;
                    let _ = s.tcp.shutdown().await;
                    return Err(HandshakeError::PlainHttp);
                }
            }
            if let Err(e) = s.r.feed(&s.tls) {
                // rustls queued an alert saying what went wrong: send it, best effort.
                let _ = monoio::time::timeout(Duration::from_secs(1), s.w.flush(&mut s.tcp, &s.tls)).await;
                return Err(match e {
                    FeedError::Tls(e) => HandshakeError::Tls(e),
                    FeedError::Io(e) => HandshakeError::Io(e),
                });
            }
        }
    }

    /// Waits until the peer sends something: plaintext is ready, or ciphertext was read (it may
    /// not yet make a whole record). Only the ciphertext buffer is held meanwhile, so a caller
    /// waiting between requests can park its plaintext buffer; with `bare`, not even that: the
    /// ciphertext buffer is freed and the wait is for readiness (one more operation before the
    /// read, so for connections that have been waiting long). `Ok(false)`: the peer closed.
    pub async fn wait_data(&mut self, bare: bool) -> io::Result<bool> {
        if self.r.eof || self.r.rpos < self.r.rbuf.len() || has_plaintext(&mut self.tls.borrow_mut()) {
            return Ok(true);
        }
        if bare {
            self.r.rbuf = Vec::new();
            self.r.rpos = 0;
            // Relaxed: a false positive (epoll) only means the read below waits instead.
            self.tcp.readable(true).await?;
        }
        Ok(self.r.fill(&mut self.tcp).await? > 0)
    }

    /// The socket.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.tcp)
    }

    /// Whether ALPN chose HTTP/2.
    pub fn alpn_h2(&self) -> bool {
        self.tls.borrow().alpn_protocol() == Some(b"h2")
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.tls.borrow().handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Sends `close_notify` (best effort, bounded) so the client sees a clean TLS close.
    pub async fn close(&mut self) {
        self.tls.borrow_mut().send_close_notify();
        let _ = monoio::time::timeout(Duration::from_secs(1), self.w.flush(&mut self.tcp, &self.tls)).await;
    }

    /// Splits into halves that can read and write at the same time (for tunnels).
    pub fn into_split(self) -> (TlsReadHalf, TlsWriteHalf) {
        let (tr, tw) = self.tcp.into_split();
        (
            TlsReadHalf {
                tcp: tr,
                tls: Rc::clone(&self.tls),
                r: self.r,
            },
            TlsWriteHalf {
                tcp: tw,
                tls: self.tls,
                w: self.w,
            },
        )
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

enum FeedError {
    Tls(rustls::Error),
    Io(io::Error),
}

impl From<FeedError> for io::Error {
    fn from(e: FeedError) -> io::Error {
        match e {
            FeedError::Tls(e) => io::Error::new(io::ErrorKind::InvalidData, e),
            FeedError::Io(e) => e,
        }
    }
}

/// Ciphertext read from the socket and not yet taken by rustls.
#[derive(Default)]
struct ReadSide {
    rbuf: Vec<u8>,
    rpos: usize,
    /// The socket reached EOF (rustls was told).
    eof: bool,
}

impl ReadSide {
    fn pending(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Reads more ciphertext from the socket. Returns the bytes read (0 = EOF).
    async fn fill<R: AsyncReadRent>(&mut self, tcp: &mut R) -> io::Result<usize> {
        if self.rpos == self.rbuf.len() {
            self.rpos = 0;
            self.rbuf.clear();
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 2 {
            self.rbuf.reserve(READ_SIZE);
        }
        let len = self.rbuf.len();
        let (res, slice) = tcp.read(std::mem::take(&mut self.rbuf).slice_mut(len..)).await;
        self.rbuf = slice.into_inner();
        res
    }

    /// Hands pending ciphertext to rustls and processes it, until all is taken or rustls'
    /// plaintext buffer is full (the caller reads plaintext out, then feeds the rest).
    fn feed(&mut self, tls: &RefCell<Connection>) -> Result<(), FeedError> {
        let mut tls = tls.borrow_mut();
        while self.rpos < self.rbuf.len() {
            let mut rest = &self.rbuf[self.rpos..];
            match tls.read_tls(&mut rest) {
                // Nothing taken from a non-empty slice: rustls wants its plaintext read first.
                Ok(0) => break,
                Ok(n) => self.rpos += n,
                Err(e) => {
                    // "buffer full": plaintext must be read out first.
                    if has_plaintext(&mut tls) {
                        break;
                    }
                    return Err(FeedError::Io(e));
                }
            }
            tls.process_new_packets().map_err(FeedError::Tls)?;
        }
        Ok(())
    }

    /// Reads plaintext into `buf`: what rustls has, else more ciphertext first. `Ok(0)` at the
    /// end of the stream (close_notify, or EOF of the socket).
    async fn read<R: AsyncReadRent, T: IoBufMut>(
        &mut self,
        tcp: &mut R,
        tls: &RefCell<Connection>,
        mut buf: T,
    ) -> BufResult<usize, T> {
        loop {
            {
                let mut conn = tls.borrow_mut();
                let mut reader = conn.reader();
                match reader.fill_buf() {
                    Ok(chunk) if !chunk.is_empty() => {
                        let n = chunk.len().min(buf.bytes_total());
                        // SAFETY: `write_ptr` points at `bytes_total` writable bytes of `buf`,
                        // and `chunk` is rustls' own buffer: they cannot overlap.
                        unsafe {
                            std::ptr::copy_nonoverlapping(chunk.as_ptr(), buf.write_ptr(), n);
                            buf.set_init(n);
                        }
                        reader.consume(n);
                        return (Ok(n), buf);
                    }
                    // Cleanly closed (close_notify), or the socket closed without it: either
                    // way the end of the stream. HTTP framing tells a cut body from a whole one.
                    Ok(_) => return (Ok(0), buf),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (Ok(0), buf),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return (Err(e), buf),
                }
            }
            if self.rpos < self.rbuf.len() {
                let before = self.rpos;
                if let Err(e) = self.feed(tls) {
                    return (Err(e.into()), buf);
                }
                if self.rpos == before && !has_plaintext(&mut tls.borrow_mut()) {
                    // rustls took nothing and has nothing to give: never spin on it.
                    return (Err(io::Error::other("TLS input not accepted")), buf);
                }
                continue;
            }
            if self.eof {
                return (Ok(0), buf);
            }
            match self.fill(tcp).await {
                Ok(0) => {
                    self.eof = true;
                    // An empty read tells rustls the transport ended.
                    let _ = tls.borrow_mut().read_tls(&mut io::empty());
                }
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }
}

fn has_plaintext(conn: &mut Connection) -> bool {
    conn.reader().fill_buf().is_ok_and(|b| !b.is_empty())
}

/// Records produced by rustls, on their way to the socket.
#[derive(Default)]
struct WriteSide {
    wbuf: Vec<u8>,
}

impl WriteSide {
    /// Writes out every record rustls has queued.
    async fn flush<W: AsyncWriteRent>(&mut self, tcp: &mut W, tls: &RefCell<Connection>) -> io::Result<()> {
        loop {
            {
                let mut conn = tls.borrow_mut();
                if !conn.wants_write() {
                    return Ok(());
                }
                self.wbuf.clear();
                while conn.wants_write() {
                    conn.write_tls(&mut self.wbuf)?;
                }
            }
            let (res, b) = tcp.write_all(std::mem::take(&mut self.wbuf)).await;
            self.wbuf = b;
            res?;
        }
    }

    async fn write<W: AsyncWriteRent, T: IoBuf>(
        &mut self,
        tcp: &mut W,
        tls: &RefCell<Connection>,
        buf: T,
    ) -> BufResult<usize, T> {
        // SAFETY: `read_ptr` points at `bytes_init` initialised bytes that `buf` owns.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let n = match tls.borrow_mut().writer().write(data) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match self.flush(tcp, tls).await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<W: AsyncWriteRent, T: IoVecBuf>(
        &mut self,
        tcp: &mut W,
        tls: &RefCell<Connection>,
        bufs: T,
    ) -> BufResult<usize, T> {
        let mut n = 0;
        {
            let mut conn = tls.borrow_mut();
            // SAFETY: the iovecs point at memory `bufs` owns, alive for this call.
            let iovecs = unsafe { std::slice::from_raw_parts(bufs.read_iovec_ptr(), bufs.read_iovec_len()) };
            for v in iovecs {
                let data = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                match conn.writer().write(data) {
                    Ok(k) => {
                        n += k;
                        if k < data.len() {
                            break;
                        }
                    }
                    Err(e) => return (Err(e), bufs),
                }
            }
        }
        match self.flush(tcp, tls).await {
            Ok(()) => (Ok(n), bufs),
            Err(e) => (Err(e), bufs),
        }
    }

    async fn shutdown<W: AsyncWriteRent>(&mut self, tcp: &mut W, tls: &RefCell<Connection>) -> io::Result<()> {
        tls.borrow_mut().send_close_notify();
        self.flush(tcp, tls).await?;
        tcp.shutdown().await
    }
}

/// kedge never reads vectored; the trait asks for it.
fn no_readv<T>(bufs: T) -> BufResult<usize, T> {
    (
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "vectored reads are not implemented on TLS streams",
        )),
        bufs,
    )
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        let r = self.r.read(&mut self.tcp, &self.tls, buf).await;
        // Reading may have queued records to send (a key update, an alert): send them now.
        if self.tls.borrow().wants_write()
            && let Err(e) = self.w.flush(&mut self.tcp, &self.tls).await
        {
            return (Err(e), r.1);
        }
        r
    }

    async fn readv<T: IoVecBufMut>(&mut self, bufs: T) -> BufResult<usize, T> {
        no_readv(bufs)
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.w.write(&mut self.tcp, &self.tls, buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, bufs: T) -> BufResult<usize, T> {
        self.w.writev(&mut self.tcp, &self.tls, bufs).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.w.flush(&mut self.tcp, &self.tls).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.w.shutdown(&mut self.tcp, &self.tls).await
    }
}

/// The reading half of a split [`TlsStream`].
pub struct TlsReadHalf {
    tcp: OwnedReadHalf<TcpStream>,
    tls: Rc<RefCell<Connection>>,
    r: ReadSide,
}

/// The writing half of a split [`TlsStream`].
pub struct TlsWriteHalf {
    tcp: OwnedWriteHalf<TcpStream>,
    tls: Rc<RefCell<Connection>>,
    w: WriteSide,
}

impl AsyncReadRent for TlsReadHalf {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.r.read(&mut self.tcp, &self.tls, buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, bufs: T) -> BufResult<usize, T> {
        no_readv(bufs)
    }
}

impl AsyncWriteRent for TlsWriteHalf {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.w.write(&mut self.tcp, &self.tls, buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, bufs: T) -> BufResult<usize, T> {
        self.w.writev(&mut self.tcp, &self.tls, bufs).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.w.flush(&mut self.tcp, &self.tls).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.w.shutdown(&mut self.tcp, &self.tls).await
    }
}
