//! Sans-io HTTP/1.1 core: request and response head parsing, chunked body decoding and encoding, head rebuilding for
//! both directions, canned answers.
//!
//! Nothing here touches a socket, a clock or a runtime: functions take bytes and return values, so every rule is
//! tested with tables in `http/tests.rs`.
//!
//! The parser is strict on purpose. A proxy that reads a message's framing differently from the server behind it lets
//! a client smuggle a second request inside the first (RFC 9112 §6.3, §11.2), so anything ambiguous is rejected,
//! never repaired. Heads are rebuilt rather than forwarded, so the upstream always sees CRLF line endings and at most
//! one framing header.

use std::fmt;
use std::mem::MaybeUninit;
use std::ops::Range;

/// The interim response that tells a client sending `Expect: 100-continue` to go on with its body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Upper bound for [`Limits::max_headers`]: the header slots live in a stack array of this size.
pub const MAX_HEADERS_CAP: usize = 256;
/// Longest chunk-size line (size and extensions, without CRLF) the decoder accepts.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section (all trailer lines and the final CRLF) the decoder accepts.
pub const MAX_TRAILER_BYTES: usize = 8192;
/// The trailer section is delimited like a head; only its total size is limited.
const TRAILER_LIMITS: Limits = Limits {
    max_request_line: MAX_TRAILER_BYTES,
    max_header_bytes: MAX_TRAILER_BYTES,
    max_headers: MAX_HEADERS_CAP,
};
/// Empty lines tolerated before a request line (RFC 9112 §2.2); a few cover clients that send an extra CRLF after a
/// body, more is garbage.
const MAX_LEADING_EMPTY_LINES: usize = 4;

/// Size limits for a head, from the `[client]` section of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (status line for responses) in bytes, without its CRLF; longer -> 414.
    pub max_request_line: usize,
    /// Longest head in bytes, from the request line through the final CRLFCRLF; longer -> 431.
    pub max_header_bytes: usize,
    /// Most header fields in one head; more -> 431. Clamped to [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
}

impl Default for Limits {
    /// The defaults of the config file: 8 KiB line, 32 KiB head, 100 fields.
    fn default() -> Self {
        Limits {
            max_request_line: 8192,
            max_header_bytes: 32768,
            max_headers: 100,
        }
    }
}

/// The HTTP version of a message; the parser accepts only these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: close by default, no chunked requests.
    Http10,
    /// HTTP/1.1: keep-alive by default.
    Http11,
}

/// A header's name and value as byte ranges into the parsed buffer (no copies, no allocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpan {
    /// The field name as received.
    pub name: Range<usize>,
    /// The field value without leading and trailing whitespace.
    pub value: Range<usize>,
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// A chunked body; decode it with [`ChunkedDecoder`].
    Chunked,
    /// The body runs until the upstream closes the connection (responses only).
    CloseDelimited,
}

/// A parsed request head. Ranges index the buffer given to [`parse_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, including skipped leading empty lines and the final CRLFCRLF.
    pub head_len: usize,
    /// The method token.
    pub method: Range<usize>,
    /// The request target as received.
    pub target: Range<usize>,
    /// The request's version.
    pub version: Version,
    /// The value of the single Host header, if any (required on HTTP/1.1).
    pub host: Option<Range<usize>>,
    /// [`Framing::None`], [`Framing::Length`] or [`Framing::Chunked`].
    pub framing: Framing,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue` on HTTP/1.1 and waits before sending the body.
    pub expect_continue: bool,
    /// The Upgrade header's value, set only when Connection lists `upgrade` on HTTP/1.1.
    pub upgrade: Option<Range<usize>>,
}

/// A parsed response head. Ranges index the buffer given to [`parse_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head including the final CRLFCRLF.
    pub head_len: usize,
    /// The response's version.
    pub version: Version,
    /// The three-digit status code (100..=999).
    pub status: u16,
    /// The reason phrase as received (may be empty).
    pub reason: Range<usize>,
    /// How the body is delimited, per RFC 9112 §6.3.
    pub framing: Framing,
    /// Whether the upstream connection may be reused after this response.
    pub keep_alive: bool,
    /// What its Connection fields name, for the head written to the client.
    named: ConnectionNames,
}

/// The outcome of parsing a head from a buffer that may not hold all of it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The head is not complete yet; read more and call again with the whole buffer.
    Partial,
    /// The head is complete.
    Complete(T),
}

/// Request-side failures, each mapping to one status; [`HttpError::BadResponse`] is the upstream's fault and maps to
/// 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// 400: malformed or ambiguous request; the text says what was wrong.
    BadRequest(&'static str),
    /// 414: the request line is longer than [`Limits::max_request_line`].
    UriTooLong,
    /// 431: the head is larger than [`Limits::max_header_bytes`] or has too many fields.
    HeadersTooLarge,
    /// 417: an Expect value other than `100-continue`.
    ExpectationFailed,
    /// 501: a feature we do not implement, such as a transfer coding other than chunked.
    NotImplemented(&'static str),
    /// 505: an HTTP version other than 1.0 and 1.1 (including the HTTP/2 preface).
    VersionNotSupported,
    /// 502: the upstream sent something we cannot parse or frame.
    BadResponse(&'static str),
}

impl HttpError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::UriTooLong => 414,
            HttpError::HeadersTooLarge => 431,
            HttpError::ExpectationFailed => 417,
            HttpError::NotImplemented(_) => 501,
            HttpError::VersionNotSupported => 505,
            HttpError::BadResponse(_) => 502,
        }
    }

    /// Short human text for the error body and logs.
    pub fn reason(&self) -> &'static str {
        match *self {
            HttpError::BadRequest(why) | HttpError::NotImplemented(why) | HttpError::BadResponse(why) => why,
            HttpError::UriTooLong => "request line too long",
            HttpError::HeadersTooLarge => "request header section too large",
            HttpError::ExpectationFailed => "unsupported Expect value",
            HttpError::VersionNotSupported => "unsupported HTTP version",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status(),
            reason_phrase(self.status()),
            self.reason()
        )
    }
}

impl std::error::Error for HttpError {}

/// Parses a request head from the start of `buf` (which may also hold the body or a pipelined request after the
/// head). `headers` is cleared and filled with the fields in order, so a per-connection Vec avoids allocating per
/// request.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
    headers: &mut Vec<HeaderSpan>,
) -> Result<Parsed<RequestHead>, HttpError> {
    headers.clear();
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        if start / 2 == MAX_LEADING_EMPTY_LINES {
            return Err(HttpError::BadRequest("too many empty lines before the request line"));
        }
        start += 2;
    }
    // Uninitialised slots: filling 256 empty ones (8 KiB) cost more than parsing a small head.
    // `spare`: the slow path's (it parses again, into slots of its own).
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP];
    let mut spare = [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP];
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let window = head_window(buf, start, limits);
    let mut req = httparse::Request::new(&mut []);
    let head_end = match req.parse_with_uninit_headers(window, &mut slots[..max_headers]) {
        Ok(httparse::Status::Complete(n)) if scanned_clean(window, n, req.headers, limits) => start + n,
        _ => {
            let Some(head_end) = scan_head(buf, start, limits).map_err(ScanError::for_request)? else {
                return Ok(Parsed::Partial);
            };
            let head = &buf[start..head_end];
            req = httparse::Request::new(&mut []);
            match req.parse_with_uninit_headers(head, &mut spare[..max_headers]) {
                Ok(httparse::Status::Complete(n)) if n == head.len() => {}
                // scan_head found the end, so httparse stopping elsewhere means we disagree: reject.
                Ok(_) => return Err(HttpError::BadRequest("malformed request head")),
                Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
                Err(httparse::Error::Version) if looks_like_http_version(head) => {
                    return Err(HttpError::VersionNotSupported);
                }
                Err(e) => return Err(HttpError::BadRequest(httparse_reason(e))),
            }
            head_end
        }
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("malformed request line"));
    };
    // A 2xx to CONNECT turns the upstream connection into a tunnel (RFC 9112 §6.3 item 2) that must never go
    // back to a pool; a reverse proxy has no use for it.
    if method == "CONNECT" {
        return Err(HttpError::NotImplemented("CONNECT is not supported"));
    }
    let version = if minor == 0 { Version::Http10 } else { Version::Http11 };
    let fields = Fields::gather(buf, req.headers, headers).map_err(HttpError::BadRequest)?;
    let keep_alive = fields.keep_alive(version);

    // RFC 9112 §6.1 and §6.3: the body must be framed the way any server behind us would frame it, so every ambiguous
    // combination is refused; the first rule broken decides.
    let bad = HttpError::BadRequest;
    let framing = match (&fields.te, fields.content_length) {
        (Some(_), _) if version == Version::Http10 => return Err(bad("Transfer-Encoding in an HTTP/1.0 request")),
        (Some(_), Some(_)) => return Err(bad("both Content-Length and Transfer-Encoding")),
        (Some(te), None) if te.chunked > 1 => return Err(bad("chunked applied more than once")),
        (Some(te), None) if !te.last_chunked => return Err(bad("Transfer-Encoding does not end in chunked")),
        (Some(te), None) if te.other => return Err(HttpError::NotImplemented("transfer coding other than chunked")),
        (Some(_), None) => Framing::Chunked,
        (None, Some(cl)) => Framing::Length(cl.map_err(bad)?),
        (None, None) => Framing::None,
    };
    match fields.hosts {
        0 if version == Version::Http11 => return Err(bad("missing Host header")),
        0 | 1 => {}
        _ => return Err(bad("more than one Host header")),
    }
    // RFC 9112 §3.2: a Host value that is not `uri-host [":" port]` must be refused.
    if let Some(h) = &fields.host
        && !valid_host(&buf[h.clone()])
    {
        return Err(bad("invalid Host header"));
    }
    let upgrade = if version == Version::Http11 && fields.conn_upgrade {
        if fields.upgrades > 1 {
            return Err(bad("more than one Upgrade header"));
        }
        fields.upgrade
    } else {
        None
    };
    // RFC 9110 §10.1.1: 100-continue in an HTTP/1.0 request is ignored; anything else is refused.
    let expect_continue = match fields.expect {
        None => false,
        Some(true) => version == Version::Http11,
        Some(false) => return Err(HttpError::ExpectationFailed),
    };
    Ok(Parsed::Complete(RequestHead {
        head_len: head_end,
        method: span(buf, method.as_bytes()),
        target: span(buf, target.as_bytes()),
        version,
        host: fields.host,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

/// Parses a response head from the start of `buf`. `head_request` says the request was HEAD, so the response has no
/// body whatever its headers say. Framing follows RFC 9112 §6.3: 1xx, 204, 304 and HEAD have none; a
/// Transfer-Encoding ending in chunked is chunked (a Content-Length beside it is ignored); any other
/// Transfer-Encoding, or no length at all, is close-delimited; otherwise Content-Length. Transfer-Encoding beside
/// Content-Length or in an HTTP/1.0 response is faulty framing (§6.1), so such a connection is not reused. A 101 is
/// valid only when the request asked for an upgrade; that check is the caller's.
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
    head_request: bool,
    headers: &mut Vec<HeaderSpan>,
) -> Result<Parsed<ResponseHead>, HttpError> {
    headers.clear();
    // httparse skips empty lines before a status line; RFC 9112 allows that only for requests, and here it would mean
    // the previous body was longer than framed.
    if buf.starts_with(b"\r\n") {
        return Err(HttpError::BadResponse("empty line before the status line"));
    }
    let mut slots = [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP];
    let mut spare = [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP];
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let config = httparse::ParserConfig::default();
    let window = head_window(buf, 0, limits);
    let mut res = httparse::Response::new(&mut []);
    let head_end = match config.parse_response_with_uninit_headers(&mut res, window, &mut slots[..max_headers]) {
        Ok(httparse::Status::Complete(n)) if scanned_clean(window, n, res.headers, limits) => n,
        _ => {
            let Some(head_end) = scan_head(buf, 0, limits).map_err(ScanError::for_response)? else {
                return Ok(Parsed::Partial);
            };
            let head = &buf[..head_end];
            res = httparse::Response::new(&mut []);
            match config.parse_response_with_uninit_headers(&mut res, head, &mut spare[..max_headers]) {
                Ok(httparse::Status::Complete(n)) if n == head.len() => {}
                Ok(_) => return Err(HttpError::BadResponse("malformed response head")),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(HttpError::BadResponse("too many response headers"));
                }
                Err(e) => return Err(HttpError::BadResponse(httparse_reason(e))),
            }
            head_end
        }
    };
    let head = &buf[..head_end];
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(HttpError::BadResponse("malformed status line"));
    };
    if status < 100 {
        return Err(HttpError::BadResponse("invalid status code"));
    }
    let version = if minor == 0 { Version::Http10 } else { Version::Http11 };
    // httparse hands back a static "" for a reason with obs-text, which is no range of `buf`; the status line's shape
    // is fixed ("HTTP/1.x NNN"), so the reason starts at 13.
    let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(0);
    let reason = line_end.min(13)..line_end;
    let fields = Fields::gather(buf, res.headers, headers).map_err(HttpError::BadResponse)?;

    let mut keep_alive = fields.keep_alive(version);
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::None
    } else if let Some(te) = &fields.te {
        if te.chunked > 1 {
            return Err(HttpError::BadResponse("chunked applied more than once"));
        }
        if fields.content_length.is_some() || version == Version::Http10 {
            keep_alive = false;
        }
        if te.last_chunked {
            Framing::Chunked
        } else {
            Framing::CloseDelimited
        }
    } else if let Some(cl) = fields.content_length {
        Framing::Length(cl.map_err(HttpError::BadResponse)?)
    } else {
        Framing::CloseDelimited
    };
    if framing == Framing::CloseDelimited {
        keep_alive = false;
    }
    Ok(Parsed::Complete(ResponseHead {
        head_len: head_end,
        version,
        status,
        reason,
        framing,
        keep_alive,
        named: ConnectionNames {
            close: fields.conn_close,
            other: fields.conn_other,
        },
    }))
}

/// Why a head (or trailer section) could not be delimited.
enum ScanError {
    BareLf,
    BareCr,
    LineTooLong,
    HeadTooLarge,
}

impl ScanError {
    fn for_request(self) -> HttpError {
        match self {
            ScanError::BareLf => HttpError::BadRequest("bare LF in request head"),
            ScanError::BareCr => HttpError::BadRequest("bare CR in request head"),
            ScanError::LineTooLong => HttpError::UriTooLong,
            ScanError::HeadTooLarge => HttpError::HeadersTooLarge,
        }
    }

    fn for_response(self) -> HttpError {
        HttpError::BadResponse(match self {
            ScanError::BareLf => "bare LF in response head",
            ScanError::BareCr => "bare CR in response head",
            ScanError::LineTooLong => "status line too long",
            ScanError::HeadTooLarge => "response head too large",
        })
    }
}

/// What [`scan_head`] may look at of the head that starts at `start`: at most one byte beyond
/// the largest allowed head.
fn head_window<'b>(buf: &'b [u8], start: usize, limits: &Limits) -> &'b [u8] {
    let limit = buf
        .len()
        .min(start.saturating_add(limits.max_header_bytes).saturating_add(1));
    buf.get(start..limit).unwrap_or_default()
}

/// Whether the `n` bytes of `window` (its start is a head's) that httparse parsed as a whole head
/// with `fields` are one that [`scan_head`] finds complete at the same end, without an error:
/// the fast path of both parsers, a look at each line's end instead of a search for it.
///
/// httparse refuses a CR that is not followed by LF, ends a line at any LF (a bare one too),
/// skips empty lines before a request line and refuses obs-fold; so a head it parsed, not
/// starting with CR or LF, is its start line, one line per field and the empty line, and every
/// line ends in CRLF exactly when each field's line starts after a CRLF and the head ends in
/// CRLF CRLF. The limits are [`scan_head`]'s: the start line and the head. `false`: let
/// [`scan_head`] decide, and name the error.
fn scanned_clean(window: &[u8], n: usize, fields: &[httparse::Header<'_>], limits: &Limits) -> bool {
    let Some(head) = window.get(..n) else { return false };
    if matches!(head.first(), None | Some(b'\r' | b'\n')) || n > limits.max_header_bytes || !head.ends_with(b"\r\n\r\n")
    {
        return false;
    }
    // Where the start line ends: before the first field, or before the empty line.
    let mut start_line = n - 4;
    for (i, h) in fields.iter().enumerate() {
        let at = span(head, h.name.as_bytes()).start;
        if at < 2 || head[at - 2..at] != *b"\r\n" {
            return false;
        }
        if i == 0 {
            start_line = at - 2;
        }
    }
    start_line <= limits.max_request_line
}

/// Finds the end of the head that starts at `start`: the index just past its CRLFCRLF, or `None` while it is
/// incomplete. httparse accepts bare LF line endings, which lets a lenient peer and a strict one see different heads,
/// so every LF must follow a CR and every CR precede an LF. Limits are checked against what is buffered, so an
/// oversized line or head is refused before it is complete.
fn scan_head(buf: &[u8], start: usize, limits: &Limits) -> Result<Option<usize>, ScanError> {
    let (max_line, max_head) = (limits.max_request_line, limits.max_header_bytes);
    // Never look past one byte beyond the largest allowed head: a buffer that grows without a terminator is refused
    // without scanning all of it.
    let limit = buf.len().min(start.saturating_add(max_head).saturating_add(1));
    let mut first_line = true;
    let mut i = start;
    loop {
        let window = buf.get(i..limit).unwrap_or_default();
        // memchr2: a vectorised search; the byte loop cost 8 % of a proxied request's
        // instructions (benches/callgrind_request.sh, BENCHMARKS.md).
        let Some(j) = memchr::memchr2(b'\r', b'\n', window).map(|rel| i + rel) else {
            if first_line && limit - start > max_line {
                return Err(ScanError::LineTooLong);
            }
            if limit - start > max_head {
                return Err(ScanError::HeadTooLarge);
            }
            return Ok(None);
        };
        if first_line && j - start > max_line {
            return Err(ScanError::LineTooLong);
        }
        if buf[j] == b'\n' {
            return Err(ScanError::BareLf);
        }
        match buf.get(j + 1) {
            // A CR as the last buffered byte: its LF may still be on the way.
            None if j + 1 - start > max_head => return Err(ScanError::HeadTooLarge),
            None => return Ok(None),
            Some(b'\n') => {}
            Some(_) => return Err(ScanError::BareCr),
        }
        let end = j + 2;
        if end - start > max_head {
            return Err(ScanError::HeadTooLarge);
        }
        // Every CR/LF so far was a CRLF pair, so CRLF right before this one is an empty line.
        if !first_line && buf[j - 2..j] == *b"\r\n" {
            return Ok(Some(end));
        }
        first_line = false;
        i = end;
    }
}

/// The bytes a reg-name or IPv4 address holds besides percent-encodings: unreserved characters
/// and sub-delims (RFC 3986 §3.2.2). A table: every request's Host goes through it.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            );
        i += 1;
    }
    table
};

/// Whether `v` is an `authority` without userinfo as RFC 3986 §3.2.2 defines it: `uri-host
/// [":" port]`, where the host is a bracketed IPv6 literal or a reg-name/IPv4 address made of
/// unreserved characters, percent-encodings and sub-delims. Empty is allowed (RFC 9112 §3.2).
pub fn valid_host(v: &[u8]) -> bool {
    let (host_ok, rest) = if let Some(inner) = v.strip_prefix(b"[") {
        match inner.iter().position(|&b| b == b']') {
            Some(end) => (
                end > 0
                    && inner[..end]
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
                &inner[end + 1..],
            ),
            None => return false,
        }
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let mut host = &v[..end];
        let mut ok = true;
        while let Some((&b, tail)) = host.split_first() {
            if b == b'%' {
                ok &= tail.len() >= 2 && tail[0].is_ascii_hexdigit() && tail[1].is_ascii_hexdigit();
                host = tail.get(2..).unwrap_or_default();
            } else {
                ok &= REG_NAME[usize::from(b)];
                host = tail;
            }
        }
        (ok, &v[end..])
    };
    host_ok
        && match rest.split_first() {
            None => true,
            Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
            Some(_) => false,
        }
}

/// Whether an httparse version error is a well-formed but unsupported version (505) rather than garbage (400): the
/// request line ends in `HTTP/` followed by digits and dots.
fn looks_like_http_version(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    version
        .strip_prefix(b"HTTP/")
        .is_some_and(|v| !v.is_empty() && v.iter().all(|&b| b.is_ascii_digit() || b == b'.'))
}

/// Body text for an httparse error.
fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name (or whitespace before colon, or obs-fold)",
        httparse::Error::HeaderValue => "invalid byte in header value",
        httparse::Error::NewLine => "malformed line ending",
        httparse::Error::Status => "malformed status line",
        httparse::Error::Token => "malformed request line",
        httparse::Error::Version => "malformed HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

/// The range `part` occupies in `buf`. httparse returns slices of the buffer it was given; anything else (it never
/// should be) becomes an empty range instead of a panic.
fn span(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr().addr().wrapping_sub(buf.as_ptr().addr());
    if start <= buf.len() && part.len() <= buf.len() - start {
        start..start + part.len()
    } else {
        0..0
    }
}

/// The bytes of `range` in `buf`, or nothing when the range does not fit (a caller mixing up buffers gets wrong
/// output, not a panic).
fn at<'a>(buf: &'a [u8], range: &Range<usize>) -> &'a [u8] {
    buf.get(range.clone()).unwrap_or_default()
}

/// The elements of a comma-separated header value, each with surrounding whitespace trimmed.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A Transfer-Encoding list gathered over all its header lines.
#[derive(Default)]
struct TransferCodings {
    /// How many times `chunked` appears.
    chunked: usize,
    /// Whether the final coding is `chunked`.
    last_chunked: bool,
    /// Whether any coding other than `chunked` appears.
    other: bool,
}

/// The header fields that decide framing and connection handling, gathered in one pass so the request and response
/// rules read as policy over the same facts.
#[derive(Default)]
struct Fields {
    /// `Some` when any Content-Length was present: its value, or why it is unusable.
    content_length: Option<Result<u64, &'static str>>,
    te: Option<TransferCodings>,
    conn_close: bool,
    conn_keep_alive: bool,
    conn_upgrade: bool,
    /// A Connection option names a field that is not hop-by-hop anyway ([`ConnectionNames`]).
    conn_other: bool,
    host: Option<Range<usize>>,
    hosts: usize,
    upgrade: Option<Range<usize>>,
    upgrades: usize,
    /// `Some(true)` when every Expect value is 100-continue, `Some(false)` when one is not.
    expect: Option<bool>,
}

impl Fields {
    /// Records httparse's fields in `headers` as ranges of `buf` and reads the relevant ones. Fails only on a
    /// malformed Transfer-Encoding, which no policy can frame; Content-Length problems are kept, since some responses
    /// ignore it.
    fn gather(
        buf: &[u8],
        parsed: &[httparse::Header<'_>],
        headers: &mut Vec<HeaderSpan>,
    ) -> Result<Fields, &'static str> {
        let mut f = Fields::default();
        for h in parsed {
            let (name, value) = (h.name.as_bytes(), h.value);
            headers.push(HeaderSpan {
                name: span(buf, name),
                value: span(buf, value),
            });
            // By length first: most fields are none of these, and a name of another length
            // costs one comparison instead of six.
            if !matches!(name.len(), 4 | 6 | 7 | 10 | 14 | 17) {
                continue;
            }
            if eq_ci(name, b"content-length") {
                merge_content_length(&mut f.content_length, value);
            } else if eq_ci(name, b"transfer-encoding") {
                let te = f.te.get_or_insert_default();
                for coding in list_elements(value) {
                    // Empty elements and parameters are legal elsewhere, but nothing legitimate sends them here and a
                    // differing reading of them is a smuggling vector.
                    if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
                        return Err("malformed Transfer-Encoding");
                    }
                    te.last_chunked = eq_ci(coding, b"chunked");
                    if te.last_chunked {
                        te.chunked += 1;
                    } else {
                        te.other = true;
                    }
                }
            } else if eq_ci(name, b"connection") {
                for option in list_elements(value) {
                    f.conn_close |= eq_ci(option, b"close");
                    f.conn_keep_alive |= eq_ci(option, b"keep-alive");
                    f.conn_upgrade |= eq_ci(option, b"upgrade");
                    f.conn_other |= !option.is_empty() && !eq_ci(option, b"close") && !is_one_of(option, &HOP_BY_HOP);
                }
            } else if eq_ci(name, b"host") {
                f.hosts += 1;
                f.host.get_or_insert(span(buf, value));
            } else if eq_ci(name, b"upgrade") {
                f.upgrades += 1;
                f.upgrade.get_or_insert(span(buf, value));
            } else if eq_ci(name, b"expect") {
                let ok = eq_ci(value, b"100-continue");
                f.expect = Some(f.expect.unwrap_or(true) && ok);
            }
        }
        Ok(f)
    }

    /// RFC 9112 §9.3: 1.1 persists unless told to close; 1.0 only when asked to keep alive.
    fn keep_alive(&self, version: Version) -> bool {
        !self.conn_close && (version == Version::Http11 || self.conn_keep_alive)
    }
}

/// Folds one Content-Length value (possibly a comma list) into `state`. Each element must be 1..=19 digits (so it
/// fits a u64) and all elements of all lines must agree (RFC 9112 §6.3 item 5); the first problem sticks.
fn merge_content_length(state: &mut Option<Result<u64, &'static str>>, value: &[u8]) {
    for element in list_elements(value) {
        let parsed = if !element.is_empty() && element.len() <= 19 && element.iter().all(u8::is_ascii_digit) {
            Ok(element.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
        } else {
            Err("invalid Content-Length")
        };
        *state = match (*state, parsed) {
            (Some(Err(e)), _) | (_, Err(e)) => Some(Err(e)),
            (Some(Ok(a)), Ok(b)) if a != b => Some(Err("conflicting Content-Length values")),
            (_, Ok(n)) => Some(Ok(n)),
        };
    }
}

/// What [`ChunkedDecoder::step`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkEvent {
    /// A size line, a CRLF or the trailer section is incomplete: read more.
    NeedMore,
    /// Body bytes: this range of the input.
    Data(Range<usize>),
    /// The last chunk and the trailer section were consumed; the body is over. `trailers` holds the trailer lines,
    /// each with its CRLF, without the final empty line.
    End {
        /// The trailer field lines (empty range when there are none).
        trailers: Range<usize>,
    },
}

/// Where the decoder is in the chunked grammar (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    /// Inside a chunk with this many bytes to go; at 0 its CRLF is next.
    Data(u64),
    Trailers,
    Done,
}

/// Incremental decoder of a chunked body. Holds no buffer: the caller keeps the unconsumed bytes and hands them back
/// on every [`step`](ChunkedDecoder::step).
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl ChunkedDecoder {
    /// A decoder positioned before the first chunk-size line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the whole body, trailers included, has been consumed.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Looks at `input` (the unconsumed bytes the caller has buffered) and returns `(consumed, event)`. For `Data(r)`
    /// the caller forwards `input[r]`; in every case it then drops `consumed` bytes from the front (`consumed` covers
    /// any framing before the data and may be non-zero with `NeedMore`). After `End`, further calls return `End` with
    /// nothing consumed. Chunk extensions are checked and discarded: the proxy re-encodes the body, so they never
    /// reach the other side.
    pub fn step(&mut self, input: &[u8]) -> Result<(usize, ChunkEvent), HttpError> {
        let mut off = 0;
        loop {
            let rest = input.get(off..).unwrap_or_default();
            match self.state {
                ChunkState::Size => {
                    let Some(line) = chunk_line(rest)? else {
                        return Ok((off, ChunkEvent::NeedMore));
                    };
                    let size = parse_chunk_size(line).map_err(HttpError::BadRequest)?;
                    off += line.len() + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) if remaining > 0 => {
                    if rest.is_empty() {
                        return Ok((off, ChunkEvent::NeedMore));
                    }
                    let n = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    self.state = ChunkState::Data(remaining - n as u64);
                    return Ok((off + n, ChunkEvent::Data(off..off + n)));
                }
                ChunkState::Data(_) => match rest {
                    [] | [b'\r'] => return Ok((off, ChunkEvent::NeedMore)),
                    [b'\r', b'\n', ..] => {
                        off += 2;
                        self.state = ChunkState::Size;
                    }
                    _ => return Err(HttpError::BadRequest("chunk data not followed by CRLF")),
                },
                ChunkState::Trailers => {
                    if rest.starts_with(b"\r\n") {
                        self.state = ChunkState::Done;
                        return Ok((off + 2, ChunkEvent::End { trailers: off..off }));
                    }
                    let Some(end) = trailer_section(rest).map_err(HttpError::BadRequest)? else {
                        return Ok((off, ChunkEvent::NeedMore));
                    };
                    self.state = ChunkState::Done;
                    let trailers = off..off + end - 2;
                    return Ok((off + end, ChunkEvent::End { trailers }));
                }
                ChunkState::Done => return Ok((0, ChunkEvent::End { trailers: 0..0 })),
            }
        }
    }
}

/// The length of the trailer section (RFC 9112 §7.1.2) at the start of `rest`, which holds at least one field line,
/// or `None` while incomplete. It is held to the same line-ending rules as a head and validated by httparse, since
/// the proxy forwards it.
fn trailer_section(rest: &[u8]) -> Result<Option<usize>, &'static str> {
    let Some(end) = scan_head(rest, 0, &TRAILER_LIMITS).map_err(|e| match e {
        ScanError::BareLf | ScanError::BareCr => "bare CR or LF in trailers",
        ScanError::LineTooLong | ScanError::HeadTooLarge => "trailer section too large",
    })?
    else {
        return Ok(None);
    };
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
    match httparse::parse_headers(&rest[..end], &mut slots) {
        Ok(httparse::Status::Complete((n, _))) if n == end => Ok(Some(end)),
        Err(httparse::Error::TooManyHeaders) => Err("too many trailer fields"),
        _ => Err("malformed trailer field"),
    }
}

/// The chunk-size line at the start of `rest` without its CRLF, or `None` while incomplete.
fn chunk_line(rest: &[u8]) -> Result<Option<&[u8]>, HttpError> {
    let window = &rest[..rest.len().min(MAX_CHUNK_LINE + 1)];
    let Some(j) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if rest.len() > MAX_CHUNK_LINE {
            return Err(HttpError::BadRequest("chunk size line too long"));
        }
        return Ok(None);
    };
    match (rest[j], rest.get(j + 1)) {
        (b'\n', _) => Err(HttpError::BadRequest("bare LF in chunk size line")),
        (_, None) => Ok(None),
        (_, Some(b'\n')) => Ok(Some(&rest[..j])),
        (_, Some(_)) => Err(HttpError::BadRequest("bare CR in chunk size line")),
    }
}

/// Parses `chunk-size [chunk-ext]` (RFC 9112 §7.1.1): 1..=16 hex digits, nothing else before the extensions. BWS
/// (spaces and tabs) is accepted only where the grammar puts it, around `;` and `=`; whitespace before the size or at
/// the end of the line is not. The grammar is unambiguous, and since the body is re-encoded no other parser ever
/// reads these extensions.
fn parse_chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size");
    }
    let hex = |d: u8| u64::from(char::from(d).to_digit(16).unwrap_or(0));
    let size = line[..digits].iter().fold(0, |n, &d| (n << 4) | hex(d));
    let mut rest = &line[digits..];
    while !rest.is_empty() {
        let Some(after_semi) = trim_bws(rest).strip_prefix(b";") else {
            return Err("invalid chunk size or extension");
        };
        let ext = trim_bws(after_semi);
        let name_len = ext.iter().take_while(|&&b| is_tchar(b)).count();
        if name_len == 0 {
            return Err("invalid chunk extension name");
        }
        rest = &ext[name_len..];
        if let Some(after_eq) = trim_bws(rest).strip_prefix(b"=") {
            let value = trim_bws(after_eq);
            let value_len = if value.first() == Some(&b'"') {
                quoted_string_len(value).ok_or("invalid chunk extension value")?
            } else {
                value.iter().take_while(|&&b| is_tchar(b)).count()
            };
            if value_len == 0 {
                return Err("invalid chunk extension value");
            }
            rest = &value[value_len..];
        }
    }
    Ok(size)
}

/// `s` without leading spaces and tabs.
fn trim_bws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// The length of the quoted-string (RFC 9110 §5.6.4) at the start of `s`, quotes included.
fn quoted_string_len(s: &[u8]) -> Option<usize> {
    let text = |b: u8| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
    let mut i = 1;
    loop {
        match *s.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' if text(*s.get(i + 1)?) => i += 2,
            b if text(b) && b != b'\\' => i += 1,
            _ => return None,
        }
    }
}

/// Appends `"<hex len>\r\n"`, the header of a chunk of `len` bytes; the caller then appends the data and `"\r\n"`. Do
/// not call with 0: that is [`write_last_chunk`].
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    debug_assert_ne!(len, 0, "a zero-size chunk would end the body");
    push_radix::<16>(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk: `"0\r\n"`, the trailer lines (each CRLF-terminated, as
/// [`ChunkEvent::End`] gives them) whose field [`trailer_passes`], and the final `"\r\n"`.
pub fn write_last_chunk(out: &mut Vec<u8>, trailers: &[u8]) {
    out.extend_from_slice(b"0\r\n");
    // The decoder checked the section (no obs-fold, every line `name: value` and CRLF-ended).
    for line in trailers.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if trailer_passes(name) {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Fields a trailer section must not carry (RFC 9110 §6.5.1), besides [`HOP_BY_HOP`] ones:
/// routing, request modifiers, authentication and cookies, response control data, and how to
/// process the content.
const NOT_TRAILERS: [&[u8]; 26] = [
    b"host",
    b"authorization",
    b"proxy-authorization",
    b"www-authenticate",
    b"proxy-authenticate",
    b"cookie",
    b"set-cookie",
    b"content-type",
    b"content-encoding",
    b"content-range",
    b"cache-control",
    b"max-forwards",
    b"pragma",
    b"range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
    b"age",
    b"expires",
    b"date",
    b"location",
    b"retry-after",
    b"vary",
    b"warning",
];

/// Whether a trailer field called `name` is passed on, whichever protocol it came in and goes
/// out on. Not the fields RFC 9110 §6.5.1 keeps out of trailers (`NOT_TRAILERS`), nor
/// hop-by-hop ones, nor those kedge writes in the head itself (`FORWARDING_HEADERS`): a
/// recipient that merged a trailer into the head (against §6.5.1, but some do) would otherwise
/// read framing, a host or a client address other than the ones kedge forwarded.
pub fn trailer_passes(name: &[u8]) -> bool {
    !is_one_of(name, &HOP_BY_HOP) && !is_one_of(name, &NOT_TRAILERS) && !is_one_of(name, &FORWARDING_HEADERS)
}

/// Request headers the proxy writes itself, so the client's copies never pass through.
const FORWARDING_HEADERS: [&[u8]; 5] = [
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-real-ip",
];

/// Headers that describe one hop (RFC 9110 §7.6.1) or the framing, which the proxy replaces with its own; Expect is
/// answered by the proxy itself.
const HOP_BY_HOP: [&[u8]; 9] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"expect",
];

/// The names the upstream head writer treats apart from the rest: [`FORWARDING_HEADERS`],
/// [`HOP_BY_HOP`], Host and X-Request-ID.
const REQUEST_SPECIAL: [&[&[u8]]; 3] = [&FORWARDING_HEADERS, &HOP_BY_HOP, &[b"host", b"x-request-id"]];

/// For each first byte (ASCII lowercase, the high bit dropped), a bit per length of the
/// [`REQUEST_SPECIAL`] names that start with it: one lookup tells most fields (a browser's
/// Accept-*, Cookie, User-Agent, Sec-Fetch-*) from all of those names, where the lists took
/// fifteen comparisons.
const REQUEST_SPECIAL_LENGTHS: [u32; 128] = {
    let mut table = [0u32; 128];
    let mut l = 0;
    while l < REQUEST_SPECIAL.len() {
        let mut i = 0;
        while i < REQUEST_SPECIAL[l].len() {
            let name = REQUEST_SPECIAL[l][i];
            assert!(name.len() < 32 && name[0].is_ascii_lowercase());
            table[name[0] as usize] |= 1 << name.len();
            i += 1;
        }
        l += 1;
    }
    table
};

/// Whether `name` may be one of [`REQUEST_SPECIAL`] (`false`: it is none of them).
fn maybe_request_special(name: &[u8]) -> bool {
    match name.first() {
        Some(&b) if name.len() < 32 => {
            REQUEST_SPECIAL_LENGTHS[usize::from(b.to_ascii_lowercase() & 0x7f)] >> name.len() & 1 == 1
        }
        _ => false,
    }
}

/// What the proxy says about itself and the client to the upstream.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The client's address as text (X-Real-IP), made once per connection (IPv4-mapped IPv6 as IPv4).
    pub client_ip: &'a [u8],
    /// The address of the connection's peer (after PROXY protocol), appended to X-Forwarded-For:
    /// the client's, unless a trusted proxy sent the request.
    pub peer_ip: &'a [u8],
    /// The peer is a trusted proxy: its X-Forwarded-Proto and -Port are passed on instead of
    /// kedge's own.
    pub from_trusted: bool,
    /// The scheme the client used: "http" or "https".
    pub proto: &'a str,
    /// The Host header value as received (also sent as Host when the request had none).
    pub host: &'a [u8],
    /// The listener's port.
    pub port: u16,
    /// Sent as X-Request-ID only when the request does not carry one.
    pub request_id: &'a [u8],
    /// The request target to send instead of the client's (a rewrite), in origin form.
    pub target: Option<&'a [u8]>,
    /// The Host to send instead of the client's (a Gateway URLRewrite); X-Forwarded-Host keeps
    /// `host`.
    pub upstream_host: Option<&'a [u8]>,
}

/// The values of the fields called `name`, in order.
fn values<'a>(buf: &'a [u8], headers: &'a [HeaderSpan], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let named = headers.iter().filter(move |h| eq_ci(at(buf, &h.name), name));
    named.map(move |h| at(buf, &h.value))
}

/// What the Connection fields of a head name beyond the fields dropped anyway (RFC 9110 §7.6.1),
/// read once per head: asking [`named_by_connection`] for every field would scan all fields again
/// per field. Nearly every head names nothing else (`keep-alive`, `close`, `upgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnectionNames {
    /// `close` is named: a field called `Close` is dropped.
    close: bool,
    /// Some other name: each field is checked against the Connection fields.
    other: bool,
}

impl ConnectionNames {
    /// From the values of the head's Connection fields.
    fn of<'a>(values: impl Iterator<Item = &'a [u8]>) -> ConnectionNames {
        let mut named = ConnectionNames {
            close: false,
            other: false,
        };
        for value in values {
            for option in list_elements(value) {
                if eq_ci(option, b"close") {
                    named.close = true;
                } else if !option.is_empty() && !is_one_of(option, &HOP_BY_HOP) {
                    named.other = true;
                }
            }
        }
        named
    }

    /// Whether field `name` (not hop-by-hop itself) is named; `all` asks the Connection fields.
    fn names(self, name: &[u8], all: impl FnOnce() -> bool) -> bool {
        if self.other {
            all()
        } else {
            self.close && eq_ci(name, b"close")
        }
    }
}

/// Whether `name` is one of `list` (which is lowercase).
fn is_one_of(name: &[u8], list: &[&[u8]]) -> bool {
    list.iter().any(|l| eq_ci(name, l))
}

/// `a.eq_ignore_ascii_case(b)`, eight bytes at a time (overlapping words at the end) instead
/// of one: field names are compared on every field of both heads of a request, and the byte
/// loop was most of `Fields::gather` and of the head writers' field checks. The length check
/// inline: most comparisons stop there.
#[inline(always)]
pub(crate) fn eq_ci(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && eq_ci_same_len(a, b)
}

/// [`eq_ci`] of two slices of the same length.
#[inline]
fn eq_ci_same_len(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            if !eq_ci_word(word8(a, i), word8(b, i)) {
                return false;
            }
            i += 8;
        }
        return eq_ci_word(word8(a, n - 8), word8(b, n - 8));
    }
    if n >= 4 {
        let two = |s: &[u8]| u64::from(word4(s, 0)) | (u64::from(word4(s, n - 4)) << 32);
        return eq_ci_word(two(a), two(b));
    }
    a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// The 8 bytes of `s` from `i` (in bounds: the callers check).
#[inline]
fn word8(s: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or_default())
}

/// The 4 bytes of `s` from `i`.
#[inline]
fn word4(s: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(s[i..i + 4].try_into().unwrap_or_default())
}

/// Whether two words of bytes are equal but for ASCII case.
#[inline]
fn eq_ci_word(x: u64, y: u64) -> bool {
    x == y || ascii_lower_word(x) == ascii_lower_word(y)
}

/// Each byte of `x` in `A..=Z` lowered (bit 5 set); every other byte, non-ASCII included, kept.
#[inline]
fn ascii_lower_word(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Per byte, without carries between bytes: the low seven bits plus an offset sets the high
    // bit from `A` up, or from just past `Z` up.
    let low = x & (0x7f * ONES);
    let from_a = low + (0x80 - u64::from(b'A')) * ONES;
    let past_z = low + (0x80 - u64::from(b'Z') - 1) * ONES;
    let upper = from_a & !past_z & !x & (0x80 * ONES);
    x | (upper >> 2)
}

/// Whether a Connection header names `name` as hop-by-hop (RFC 9110 §7.6.1).
fn named_by_connection(buf: &[u8], headers: &[HeaderSpan], name: &[u8]) -> bool {
    let mut options = values(buf, headers, b"connection").flat_map(list_elements);
    options.any(|option| eq_ci(option, name))
}

/// Whether a header from the other side is passed on: hop-by-hop ones and those a Connection header names are not.
pub fn passes(buf: &[u8], headers: &[HeaderSpan], name: &[u8]) -> bool {
    !is_one_of(name, &HOP_BY_HOP) && !named_by_connection(buf, headers, name)
}

/// Appends `name: value\r\n`.
fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in base `RADIX`, 10 or 16 (lowercase), without going through `fmt`. A constant
/// radix: the division is a multiplication (three numbers per proxied request).
fn push_radix<const RADIX: u64>(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n % RADIX) as usize];
        n /= RADIX;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `HTTP/1.1 <status> <reason>\r\n`; the SP before an empty reason is required.
fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    // Three digits (every status kedge parses or makes), written without a loop.
    let [h, t, u] = [status / 100 % 10, status / 10 % 10, status % 10].map(|d| b'0' + d as u8);
    match status {
        100..=999 => out.extend_from_slice(&[b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'1', b' ', h, t, u, b' ']),
        _ => {
            out.extend_from_slice(b"HTTP/1.1 ");
            push_radix::<10>(out, u64::from(status));
            out.push(b' ');
        }
    }
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// Appends the framing header for `framing`, if it has one.
fn push_framing(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_radix::<10>(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::CloseDelimited => {}
    }
}

/// A request as the upstream head writer reads it, whichever front end it came in on: the
/// HTTP/1.1 head's parts, or an HTTP/2 request's (pseudo-headers resolved, cookies joined).
#[derive(Debug, Clone, Copy)]
pub struct RequestOut<'a> {
    pub method: &'a [u8],
    /// The target as received: origin form, absolute form or `*`.
    pub target: &'a [u8],
    /// The header fields in order (name as received, value trimmed).
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// Whether `headers` has a Host field (an HTTP/2 request routed on `:authority` has none).
    pub has_host: bool,
    /// The body framing to announce upstream.
    pub framing: Framing,
    /// The protocol an HTTP/1.1 client asks to switch to.
    pub upgrade: Option<&'a [u8]>,
    /// Where `headers` came from, when they are an HTTP/1.1 head's fields as parsed (`None`:
    /// HTTP/2, or fields a Gateway rule changed).
    pub lines: Option<FieldLines<'a>>,
}

/// The field lines of a head parsed by [`parse_request`] or [`parse_response`], one span per
/// field in order (for a request, one per pair of [`RequestOut::headers`]): the head writers copy
/// a run of kept fields as the lines they came in, at once. Every line ends in CRLF (parsing made
/// sure), so a field's line is the bytes from its name to the next field's name, and the last
/// one's ends where the empty line starts.
#[derive(Debug, Clone, Copy)]
pub struct FieldLines<'a> {
    buf: &'a [u8],
    spans: &'a [HeaderSpan],
    end: usize,
}

impl<'a> FieldLines<'a> {
    /// The lines of the head of `head_len` bytes at the start of `buf`, whose fields parsing
    /// found at `spans`.
    pub fn new(buf: &'a [u8], spans: &'a [HeaderSpan], head_len: usize) -> FieldLines<'a> {
        FieldLines {
            buf,
            spans,
            end: head_len.saturating_sub(2),
        }
    }

    /// Appends the lines of the fields `keep` takes (by index), each run of them in one copy.
    fn copy_kept(&self, out: &mut Vec<u8>, mut keep: impl FnMut(usize) -> bool) {
        let mut from = None;
        for (i, h) in self.spans.iter().enumerate() {
            match (keep(i), from) {
                (true, None) => from = Some(h.name.start),
                (false, Some(f)) => {
                    out.extend_from_slice(self.buf.get(f..h.name.start).unwrap_or_default());
                    from = None;
                }
                _ => {}
            }
        }
        if let Some(f) = from {
            out.extend_from_slice(self.buf.get(f..self.end).unwrap_or_default());
        }
    }
}

/// The values of the pairs called `name`, in order.
fn pair_values<'a>(headers: &'a [(&'a [u8], &'a [u8])], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    headers.iter().filter(move |(n, _)| eq_ci(n, name)).map(|&(_, v)| v)
}

/// The Content-Length a message head declares, when it declares one valid length.
pub fn declared_length(buf: &[u8], headers: &[HeaderSpan]) -> Option<u64> {
    let mut cl = None;
    values(buf, headers, b"content-length").for_each(|v| merge_content_length(&mut cl, v));
    cl.and_then(Result::ok)
}

/// Appends the request head for the upstream: `METHOD SP target SP HTTP/1.1`, the client's headers minus hop-by-hop
/// ones (the fixed list and any a Connection header names, except Host, which a client must not be able to strip) and
/// minus its X-Forwarded-* and X-Real-IP, then Host (only if the request had none, from `fwd.host`), X-Forwarded-For
/// (earlier values joined with ", ", then the peer), X-Forwarded-Proto/-Host/-Port, X-Real-IP, X-Request-ID (only
/// if absent), the framing header, and for an upgrade `Connection: upgrade` + `Upgrade`. Without an upgrade no
/// Connection header is sent: keep-alive is HTTP/1.1's default.
pub fn write_request_head(out: &mut Vec<u8>, req: &RequestOut<'_>, fwd: &Forwarded<'_>) {
    let headers = req.headers;
    out.extend_from_slice(req.method);
    out.push(b' ');
    // An absolute-form target (RFC 9112 §3.2.2) goes upstream in origin form, and its
    // authority (which the caller routed on and passes as `fwd.host`) replaces Host.
    let target = req.target;
    let origin = origin_form(target);
    match origin {
        _ if fwd.target.is_some() => out.extend_from_slice(fwd.target.unwrap_or_default()),
        Some(rest) => {
            if !rest.starts_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(rest);
        }
        None => out.extend_from_slice(target),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_request_id = false;
    let named = ConnectionNames::of(pair_values(headers, b"connection"));
    let named_by_connection = |name: &[u8]| {
        named.names(name, || {
            pair_values(headers, b"connection")
                .flat_map(list_elements)
                .any(|o| eq_ci(o, name))
        })
    };
    // Whether a field goes upstream (noting an X-Request-ID that does).
    let mut kept = |name: &[u8]| {
        // Most fields are none of the names treated apart: one table lookup says so.
        let special = maybe_request_special(name);
        let is_host = special && eq_ci(name, b"host");
        if (special && is_one_of(name, &FORWARDING_HEADERS))
            || (is_host && (origin.is_some() || fwd.upstream_host.is_some()))
            || (!is_host && ((special && is_one_of(name, &HOP_BY_HOP)) || named_by_connection(name)))
        {
            return false;
        }
        has_request_id |= special && eq_ci(name, b"x-request-id");
        true
    };
    // With the head's lines, a run of kept fields is one copy of their lines as they came.
    match req.lines.filter(|l| l.spans.len() == headers.len()) {
        Some(lines) => lines.copy_kept(out, |i| kept(headers[i].0)),
        None => {
            for &(name, value) in headers {
                if kept(name) {
                    push_header(out, name, value);
                }
            }
        }
    }
    if let Some(host) = fwd.upstream_host {
        push_header(out, b"Host", host);
    } else if !req.has_host || origin.is_some() {
        push_header(out, b"Host", fwd.host);
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for earlier in pair_values(headers, b"x-forwarded-for").filter(|v| !v.is_empty()) {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(fwd.peer_ip);
    let trusted = |name: &'static [u8]| fwd.from_trusted.then(|| pair_values(headers, name).next()).flatten();
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(trusted(b"x-forwarded-proto").unwrap_or(fwd.proto.as_bytes()));
    out.extend_from_slice(b"\r\n");
    push_header(out, b"X-Forwarded-Host", fwd.host);
    out.extend_from_slice(b"X-Forwarded-Port: ");
    match trusted(b"x-forwarded-port") {
        Some(port) => out.extend_from_slice(port),
        None => push_radix::<10>(out, u64::from(fwd.port)),
    }
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_slice(fwd.client_ip);
    out.extend_from_slice(b"\r\n");
    if !has_request_id {
        push_header(out, b"X-Request-ID", fwd.request_id);
    }
    push_framing(out, req.framing);
    if let Some(upgrade) = req.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        push_header(out, b"Upgrade", upgrade);
    }
    out.extend_from_slice(b"\r\n");
}

/// For an absolute-form target (`http://host/path?q`), the part after the authority (`/path?q`,
/// possibly empty or starting with `?`); `None` for any other form.
fn origin_form(target: &[u8]) -> Option<&[u8]> {
    let scheme = if target.len() >= 7 && eq_ci(&target[..7], b"http://") {
        7
    } else if target.len() >= 8 && eq_ci(&target[..8], b"https://") {
        8
    } else {
        return None;
    };
    let rest = &target[scheme..];
    let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    Some(&rest[end..])
}

/// How a response goes to the client: its body framing there, the client's version, and
/// whether the connection stays open after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToClient {
    pub framing: Framing,
    pub version: Version,
    pub keep_alive: bool,
}

/// Appends the response head for the client: `HTTP/1.1 <status> <reason as received>`, the upstream's headers minus
/// hop-by-hop ones (for a 101, Upgrade is kept and `Connection: upgrade` written), then the framing header for
/// `to.framing` (`out_framing` below), then `Connection: close` when `!to.keep_alive`, or `Connection: keep-alive` for an HTTP/1.0 client
/// that keeps the connection, then `extra`: zero or more whole header lines of kedge's own (each ending in CRLF:
/// HSTS, an affinity cookie), written in place before the blank line.
///
/// Two cases keep information the plain rules would lose: transfer codings other than chunked are still applied to
/// the body, so they are re-announced (followed by chunked when `out_framing` is chunked; never combine them with a
/// `Length` out_framing); and for HEAD and 304 responses a valid Content-Length describes the representation, so it
/// is passed on when `out_framing` is `None`.
pub fn write_response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    headers: &[HeaderSpan],
    to: ToClient,
    extra: &[u8],
) {
    write_response_head_dropping(out, buf, head, headers, to, extra, |_| false);
}

/// [`write_response_head`] without the upstream's fields whose name `drop` refuses (a Gateway
/// API ResponseHeaderModifier's `remove` and `set`).
pub fn write_response_head_dropping(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    headers: &[HeaderSpan],
    to: ToClient,
    extra: &[u8],
    drop: impl Fn(&[u8]) -> bool,
) {
    let ToClient {
        framing: out_framing,
        version: client_version,
        keep_alive,
    } = to;
    push_status_line(out, head.status, at(buf, &head.reason));
    let switching = head.status == 101;
    // Read by `parse_response` with the rest of the Connection fields.
    let named = head.named;
    // `passes`, with the Connection fields read once.
    let passes =
        |name: &[u8]| !is_one_of(name, &HOP_BY_HOP) && !named.names(name, || named_by_connection(buf, headers, name));
    // A kept field goes out as the upstream wrote its line, a run of kept lines in one copy.
    FieldLines::new(buf, headers, head.head_len).copy_kept(out, |i| {
        let name = at(buf, &headers[i].name);
        (switching && eq_ci(name, b"upgrade")) || (passes(name) && !drop(name))
    });
    let coded_body = matches!(head.framing, Framing::Chunked | Framing::CloseDelimited);
    let mut codings = false;
    if coded_body && !matches!(out_framing, Framing::Length(_)) {
        for coding in values(buf, headers, b"transfer-encoding").flat_map(list_elements) {
            if !eq_ci(coding, b"chunked") {
                out.extend_from_slice(if codings { b", " } else { b"Transfer-Encoding: " });
                out.extend_from_slice(coding);
                codings = true;
            }
        }
    }
    match out_framing {
        Framing::Chunked if codings => out.extend_from_slice(b", chunked\r\n"),
        _ if codings => out.extend_from_slice(b"\r\n"),
        Framing::None if head.framing == Framing::None && head.status >= 200 && head.status != 204 => {
            let mut cl = None;
            values(buf, headers, b"content-length").for_each(|v| merge_content_length(&mut cl, v));
            if let Some(Ok(n)) = cl {
                push_framing(out, Framing::Length(n));
            }
        }
        framing => push_framing(out, framing),
    }
    if switching {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    end_head(out, extra);
}

/// Ends a head: kedge's `extra` header lines (whole lines, each ending in CRLF, or empty), then
/// the blank line.
fn end_head(out: &mut Vec<u8>, extra: &[u8]) {
    debug_assert!(
        extra.is_empty() || extra.ends_with(b"\r\n"),
        "extra header lines end in CRLF"
    );
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// Appends a permanent redirect (308, method and body kept) to `https://host[:port]path[?query]`;
/// the port is left out when it is 443, an empty path is `/` (and then the query is dropped).
pub fn write_redirect(out: &mut Vec<u8>, host: &[u8], port: u16, path: &[u8], query: Option<&[u8]>, close: bool) {
    let mut port_text = Vec::new();
    if port != 443 {
        port_text.push(b':');
        push_radix::<10>(&mut port_text, u64::from(port));
    }
    let port_text = &port_text[..];
    match query {
        _ if path.is_empty() => write_location(out, 308, &[b"https://", host, port_text, b"/"], b"", close),
        Some(q) => write_location(out, 308, &[b"https://", host, port_text, path, b"?", q], b"", close),
        None => write_location(out, 308, &[b"https://", host, port_text, path], b"", close),
    }
}

/// Appends a redirect with `status` (301, 302, 307, 308) to the concatenation of `location`,
/// and an empty body; `extra` as in [`write_response_head`].
pub fn write_location(out: &mut Vec<u8>, status: u16, location: &[&[u8]], extra: &[u8], close: bool) {
    push_status_line(out, status, reason_phrase(status).as_bytes());
    out.extend_from_slice(b"Location: ");
    for part in location {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 0\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    end_head(out, extra);
}

/// The host part of a Host header value (or authority): without the port; an IPv6 literal
/// keeps its brackets.
pub fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

/// Appends a complete canned answer: status line with the standard reason phrase, a plain text type, Content-Length,
/// `Connection: close` when `close`, `extra` as in [`write_response_head`] (a 401's
/// WWW-Authenticate), and `body_line` plus a newline as the body.
pub fn write_canned(out: &mut Vec<u8>, status: u16, body_line: &str, extra: &[u8], close: bool) {
    push_status_line(out, status, reason_phrase(status).as_bytes());
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_radix::<10>(out, body_line.len() as u64 + 1);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    end_head(out, extra);
    out.extend_from_slice(body_line.as_bytes());
    out.push(b'\n');
}

/// The standard reason phrase for `status` (RFC 9110 §15), or "" for codes without one, which the status-line grammar
/// allows.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
