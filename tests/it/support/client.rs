//! A raw HTTP/1 client on a blocking std socket: it writes exactly the bytes a test gives and
//! parses one response at a time (Content-Length, chunked or until close), keeping whatever
//! follows for the next read, so keep-alive and pipelining can be checked byte for byte.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// How long a read or write may block before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection under a [`Client`]: plain, or TLS (a rustls client).
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(t)
    }
    fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.tcp().shutdown(how)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One client connection.
pub struct Client {
    stream: Stream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    /// Names as received, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// Whether the comma-separated header `name` lists `token` (case-insensitively).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-upstream` header that the test upstreams set to their name.
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream")
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to kedge at {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        Client::over(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?)
    }

    /// A client on a connection the test opened (and maybe wrote to) itself.
    pub fn over(stream: TcpStream) -> io::Result<Client> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: Stream::Plain(stream),
            buf: Vec::new(),
        })
    }

    /// Connects over TLS with `config`, sending `sni` (an IP address sends no SNI), and
    /// completes the handshake, so that its failure is this call's error.
    pub fn try_connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>, sni: &str) -> io::Result<Client> {
        Client::tls_over(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?, config, sni)
    }

    /// TLS (handshake done) on a connection the test opened (and maybe wrote to) itself.
    pub fn tls_over(mut tcp: TcpStream, config: Arc<rustls::ClientConfig>, sni: &str) -> io::Result<Client> {
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned())
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
        let mut conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(Client {
            stream: Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))),
            buf: Vec::new(),
        })
    }

    pub fn connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>, sni: &str) -> Client {
        Client::try_connect_tls(addr, config, sni)
            .unwrap_or_else(|e| panic!("TLS connect to kedge at {addr} ({sni}): {e}"))
    }

    /// The TLS session, for a TLS client.
    pub fn tls(&self) -> &rustls::ClientConnection {
        match &self.stream {
            Stream::Tls(s) => &s.conn,
            Stream::Plain(_) => panic!("not a TLS client"),
        }
    }

    /// The leaf certificate the server presented.
    pub fn peer_leaf(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.tls().peer_certificates().expect("peer certificates")[0]
            .clone()
            .into_owned()
    }

    /// Whether the handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.tls().handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).unwrap_or_else(|e| panic!("send to kedge: {e}"));
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `GET path HTTP/1.1` with this Host and reads the response.
    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        self.read_response()
    }

    /// Reads one response (to a request other than HEAD).
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|e| panic!("read response from kedge: {e}"))
    }

    /// Reads one response to a HEAD request (no body whatever the headers say).
    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .unwrap_or_else(|e| panic!("read HEAD response from kedge: {e}"))
    }

    pub fn try_read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.read_more()? == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "closed before a complete response head",
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("status line {status_line:?}")))?;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("header line {line:?}")))?;
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut resp = Response {
            version,
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };

        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp.header_has_token("transfer-encoding", "chunked") {
            self.read_chunked(&mut resp)?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().map_err(|_| bad(format!("content-length {len:?}")))?;
            resp.body = Vec::with_capacity(len);
            self.read_into(&mut resp.body, len)?;
        } else {
            resp.body = std::mem::take(&mut self.buf);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut chunk)? {
                    0 => break,
                    n => resp.body.extend_from_slice(&chunk[..n]),
                }
            }
        }
        Ok(resp)
    }

    fn read_chunked(&mut self, resp: &mut Response) -> io::Result<()> {
        loop {
            let line = self.read_line()?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad(format!("chunk size line {line:?}")))?;
            if size == 0 {
                loop {
                    let line = self.read_line()?;
                    if line.is_empty() {
                        return Ok(());
                    }
                    let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("trailer {line:?}")))?;
                    resp.trailers.push((name.to_owned(), value.trim().to_owned()));
                }
            }
            self.read_into(&mut resp.body, size)?;
            let end = self.read_line()?;
            if !end.is_empty() {
                return Err(bad(format!("chunk not followed by CRLF but {end:?}")));
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.read_more()? == 0 {
                return Err(io::Error::new(ErrorKind::UnexpectedEof, "closed inside a chunked body"));
            }
        }
    }

    /// Appends exactly `n` body bytes to `out`.
    fn read_into(&mut self, out: &mut Vec<u8>, mut n: usize) -> io::Result<()> {
        let take = n.min(self.buf.len());
        out.extend_from_slice(&self.buf[..take]);
        self.buf.drain(..take);
        n -= take;
        let mut chunk = vec![0u8; 64 * 1024];
        while n > 0 {
            let want = n.min(chunk.len());
            match self.stream.read(&mut chunk[..want])? {
                0 => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("closed with {n} body bytes missing"),
                    ));
                }
                k => {
                    out.extend_from_slice(&chunk[..k]);
                    n -= k;
                }
            }
        }
        Ok(())
    }

    fn read_more(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads exactly `n` raw bytes (after an upgrade).
    pub fn read_exact_raw(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        self.read_into(&mut out, n)
            .unwrap_or_else(|e| panic!("read {n} raw bytes: {e}"));
        out
    }

    /// Whether kedge closes the connection (EOF or reset) within `wait`. Bytes that arrive
    /// instead are kept for the next read, and count as open.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(wait)).expect("set read timeout");
        let mut chunk = [0u8; 4096];
        let closed = match self.stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(_) => true,
        };
        let _ = self.stream.set_read_timeout(Some(IO_TIMEOUT));
        closed
    }

    /// Whether kedge closes the connection within `wait`, whatever it sends before (dropped).
    pub fn closed_after_reading(&mut self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        self.buf.clear();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.closed_within(left) {
                return true;
            }
            self.buf.clear();
        }
    }

    /// Whether kedge closes the connection within a few seconds (returns as soon as it does).
    pub fn is_closed(&mut self) -> bool {
        self.closed_within(Duration::from_secs(5))
    }

    /// Checks that the connection does what `resp` announced: closes when it said
    /// `Connection: close`, otherwise answers another request (`GET /probe` for `host`).
    pub fn assert_connection_as_announced(&mut self, resp: &Response, host: &str) {
        if resp.header_has_token("connection", "close") {
            assert!(
                self.is_closed(),
                "the {} said Connection: close but the connection stayed open",
                resp.status
            );
        } else {
            self.send(format!("GET /probe HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
            let next = self.try_read_response(false);
            assert!(
                next.is_ok(),
                "the {} kept the connection, but the next request got no answer: {next:?}",
                resp.status
            );
        }
    }

    /// Closes the sending half (the request is complete; EOF for an upgraded stream).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("invalid response: {what}"))
}
