//! A frame-level HTTP/2 client on a blocking socket (prior knowledge, no TLS): it writes exactly
//! the frames a test gives, header fields that a real client refuses to send included
//! (connection-specific fields, which the `h2` crate rejects before they leave), and keeps every
//! frame that comes back, so a test can tell a RST_STREAM from an answer and count DATA frames.
//! Header blocks are encoded as HPACK literals without indexing or Huffman coding (any server
//! must read those); the server's header blocks are kept undecoded.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One frame as received.
#[derive(Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            DATA => "DATA",
            HEADERS => "HEADERS",
            RST_STREAM => "RST_STREAM",
            SETTINGS => "SETTINGS",
            PING => "PING",
            GOAWAY => "GOAWAY",
            WINDOW_UPDATE => "WINDOW_UPDATE",
            CONTINUATION => "CONTINUATION",
            _ => "OTHER",
        };
        write!(
            f,
            "{name}(stream {}, flags {:#x}, {} bytes",
            self.stream,
            self.flags,
            self.payload.len()
        )?;
        if let Some(code) = self.error_code() {
            write!(f, ", code {code:#x}")?;
        }
        write!(f, ")")
    }
}

impl Frame {
    pub fn ends_stream(&self) -> bool {
        matches!(self.kind, DATA | HEADERS) && self.flags & END_STREAM != 0
    }

    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        self.payload
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    /// The last stream id of a GOAWAY.
    pub fn last_stream_id(&self) -> Option<u32> {
        (self.kind == GOAWAY)
            .then(|| self.payload.get(..4))
            .flatten()
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) & 0x7fff_ffff)
    }
}

/// How a stream ended, as [`RawH2::finish`] saw it.
#[derive(Debug)]
pub struct StreamEnd {
    /// Every frame of this stream, in order.
    pub frames: Vec<Frame>,
    /// The RST_STREAM's error code, if the stream was reset.
    pub reset: Option<u32>,
    /// The connection ended (GOAWAY with an error, or EOF) before the stream did.
    pub connection_ended: bool,
}

impl StreamEnd {
    /// HEADERS frames (answer head and trailers) of the stream.
    pub fn headers(&self) -> usize {
        self.frames.iter().filter(|f| f.kind == HEADERS).count()
    }

    /// DATA frames of the stream.
    pub fn data_frames(&self) -> usize {
        self.frames.iter().filter(|f| f.kind == DATA).count()
    }

    /// Whether the stream ended cleanly with END_STREAM.
    pub fn ended(&self) -> bool {
        self.frames.last().is_some_and(Frame::ends_stream)
    }
}

/// One raw connection.
pub struct RawH2 {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Every frame received so far.
    pub received: Vec<Frame>,
    /// Frames received and not yet taken by [`RawH2::finish`] or [`RawH2::wait_frame`].
    unread: std::collections::VecDeque<Frame>,
    eof: bool,
}

impl RawH2 {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub fn connect(addr: SocketAddr) -> RawH2 {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = RawH2 {
            stream,
            buf: Vec::new(),
            received: Vec::new(),
            unread: Default::default(),
            eof: false,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
        c.write(&hello);
        c
    }

    /// The socket's pending error (`SO_ERROR`): a reset kedge's side answered with, say.
    pub fn take_error(&self) -> Option<std::io::Error> {
        self.stream.take_error().expect("SO_ERROR")
    }

    /// Writes `bytes` as they are (frames made with [`frame`], or anything else).
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to kedge: {e}"));
    }

    /// Waits until kedge acknowledged our SETTINGS, by which time kedge's own SETTINGS were
    /// read and acknowledged: its limits (header list size) apply to what follows.
    pub fn settled(&mut self) {
        self.wait_frame(|f| f.kind == SETTINGS && f.flags & ACK != 0)
            .unwrap_or_else(|| panic!("no SETTINGS ACK from kedge: {:?}", self.received));
    }

    /// Writes `bytes` from another thread while this one reads (a flood the server answers
    /// frame by frame, PINGs, would otherwise fill both directions and stall); write errors end
    /// the writer quietly (the server closing is what a flood test waits for). Returns at once.
    pub fn flood(&mut self, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
        let mut w = self.stream.try_clone().expect("clone the socket");
        std::thread::spawn(move || {
            for piece in bytes.chunks(64 * 1024) {
                if w.write_all(piece).is_err() {
                    return;
                }
            }
        })
    }

    /// Sends a HEADERS frame (END_HEADERS set) with `fields` in this order, pseudo-fields
    /// included, as given.
    pub fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let block = hpack_literals(fields);
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.write(&frame(HEADERS, flags, stream, &block));
    }

    /// Sends RST_STREAM with this error code.
    pub fn reset(&mut self, stream: u32, code: u32) {
        self.write(&frame(RST_STREAM, 0, stream, &code.to_be_bytes()));
    }

    /// Sends a DATA frame.
    pub fn data(&mut self, stream: u32, data: &[u8], end_stream: bool) {
        let flags = if end_stream { END_STREAM } else { 0 };
        self.write(&frame(DATA, flags, stream, data));
    }

    /// Reads one frame (answering SETTINGS with an ACK and PING with a PING ACK, as a client
    /// must); `None` at EOF or a reset.
    fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().expect("4 bytes")) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.kind == SETTINGS && f.flags & ACK == 0 {
                        self.write(&frame(SETTINGS, ACK, 0, &[]));
                    }
                    if f.kind == PING && f.flags & ACK == 0 {
                        let payload = f.payload.clone();
                        self.write(&frame(PING, ACK, 0, &payload));
                    }
                    self.received.push(f.clone());
                    return Some(f);
                }
            }
            if self.eof {
                return None;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("no frame from kedge within {IO_TIMEOUT:?}; so far: {:?}", self.received)
                }
                Err(_) => self.eof = true,
            }
        }
    }

    /// The next frame, read or already buffered.
    fn next(&mut self) -> Option<Frame> {
        self.unread.pop_front().or_else(|| self.read_frame())
    }

    /// Reads until a frame for which `pred` holds, keeping the others for later; `None` when the
    /// connection ended first.
    pub fn wait_frame(&mut self, mut pred: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        if let Some(i) = self.unread.iter().position(&mut pred) {
            return self.unread.remove(i);
        }
        while let Some(f) = self.read_frame() {
            if pred(&f) {
                return Some(f);
            }
            self.unread.push_back(f);
        }
        None
    }

    /// Reads until stream `id` ends (END_STREAM or RST_STREAM) or the connection does, and
    /// returns the stream's frames. Other streams' frames are kept for later.
    pub fn finish(&mut self, id: u32) -> StreamEnd {
        let mut end = StreamEnd {
            frames: Vec::new(),
            reset: None,
            connection_ended: false,
        };
        let mut others = std::collections::VecDeque::new();
        loop {
            let Some(f) = self.next() else {
                end.connection_ended = true;
                break;
            };
            if f.stream == id {
                let done = f.ends_stream() || f.kind == RST_STREAM;
                if f.kind == RST_STREAM {
                    end.reset = f.error_code();
                }
                end.frames.push(f);
                if done {
                    break;
                }
            } else if f.kind == GOAWAY && f.error_code() != Some(NO_ERROR) {
                end.connection_ended = true;
                others.push_back(f);
                break;
            } else {
                others.push_back(f);
            }
        }
        others.append(&mut self.unread);
        self.unread = others;
        end
    }

    /// Whether the server closes the connection within `wait` (frames read meanwhile are kept).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(wait));
        let deadline = std::time::Instant::now() + wait;
        let closed = loop {
            if self.eof {
                break true;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break false,
                Err(_) => self.eof = true,
            }
            if std::time::Instant::now() >= deadline {
                break self.eof;
            }
        };
        let _ = self.stream.set_read_timeout(Some(IO_TIMEOUT));
        closed
    }
}

/// Reads what a server answers to bytes written on a fresh connection, until it closes
/// (at most `limit` bytes): for a server that does not speak HTTP/2.
pub fn answer_to(addr: SocketAddr, bytes: &[u8], limit: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break false,
            Err(e) => return Err(e),
        }
        if out.len() >= limit {
            break false;
        }
    };
    Ok((out, closed))
}

/// A frame: 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 14, "frame larger than the default SETTINGS_MAX_FRAME_SIZE");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK header block of literal fields without indexing, new names, no Huffman coding
/// (RFC 7541 §6.2.2).
pub fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_string(&mut out, name.as_bytes());
        hpack_string(&mut out, value.as_bytes());
    }
    out
}

/// A literal field with incremental indexing (RFC 7541 §6.2.1): the decoder adds it to its
/// dynamic table, where the first entry is index 62 (an indexed field, one byte: `0xbe`).
pub fn hpack_indexed_literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    hpack_string(&mut out, name.as_bytes());
    hpack_string(&mut out, value);
    out
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the bits above it.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

#[test]
fn hpack_integers_follow_rfc_7541() {
    // C.1.1–C.1.2: 10 and 1337 with a 5-bit prefix.
    let mut out = Vec::new();
    hpack_int(&mut out, 0, 5, 10);
    assert_eq!(out, [10]);
    out.clear();
    hpack_int(&mut out, 0, 5, 1337);
    assert_eq!(out, [31, 154, 10]);
    // A 127-byte string needs a second length byte under a 7-bit prefix.
    out.clear();
    hpack_string(&mut out, &[b'a'; 127]);
    assert_eq!(&out[..2], [127, 0]);
}
