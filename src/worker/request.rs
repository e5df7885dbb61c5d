//! A protocol-neutral view of one request: what the phases after parsing (decide, log) read.
//! It borrows byte slices from wherever the front end keeps the request (the HTTP/1.1 buffer
//! today; an HTTP/2 front end would build it from its decoded frames), never the HTTP/1.1
//! buffer layout, so nothing past the head parser knows the wire format.
//!
//! Building it allocates nothing: the header pairs go into a per-connection buffer that is
//! recycled from one request to the next ([`HeaderBuf`]).

use std::net::SocketAddr;

use super::error::{ErrorKind, RequestError};
use crate::http::{self, Framing, HeaderSpan, RequestHead};

/// One header field: name as received and value without surrounding whitespace.
pub(crate) type Header<'a> = (&'a [u8], &'a [u8]);

/// What is known about the request body before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// A body of unknown length (HTTP/1.1 chunked, an HTTP/2 stream without content-length).
    Streamed,
}

/// One request as the phases after parsing see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    pub method: &'a [u8],
    /// `http` or `https`: how the client reached kedge.
    pub scheme: &'static str,
    /// The host to route on, as sent (maybe with a port; empty when the request named none).
    pub authority: &'a [u8],
    /// The path (without the query); `None` when the target names none (`*`, or an absolute
    /// URI without a path), which routes as `/`.
    pub path: Option<&'a [u8]>,
    /// What follows the `?`, if there is one.
    pub query: Option<&'a [u8]>,
    /// The request target as received (`$request_uri`; the access log's path).
    pub target: &'a [u8],
    /// Header fields in order.
    pub headers: &'a [Header<'a>],
    /// The client's X-Request-ID, or one kedge made up.
    pub request_id: &'a [u8],
    pub body: Body,
    /// The client waits for a go-ahead (100 Continue) before sending the body.
    pub expect_continue: bool,
    /// The protocol the client asks to switch to (HTTP/1.1 Upgrade).
    pub upgrade: Option<&'a [u8]>,
    /// Whether the client wants the connection kept after this exchange.
    pub keep_alive: bool,
    pub peer: SocketAddr,
    /// kedge's address the connection arrived on (selects the Gateway scope).
    pub local: SocketAddr,
    /// The client's address as X-Forwarded-For carries it (formatted once per connection).
    pub client_ip: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, v)| v)
    }

    /// The value of cookie `name` in the request's Cookie headers.
    pub(crate) fn cookie(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
            .flat_map(|&(_, v)| v.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
            })
    }

    /// Whether repeating the request on another endpoint is safe: an idempotent method
    /// (RFC 9110 §9.2.2) and no body.
    pub(crate) fn retryable(&self) -> bool {
        self.body == Body::None
            && matches!(
                self.method,
                b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
            )
    }
}

/// A per-connection buffer for a view's header pairs, kept empty between requests so that
/// its allocation outlives the borrows of each request.
#[derive(Default)]
pub(crate) struct HeaderBuf(Vec<Header<'static>>);

impl HeaderBuf {
    /// The buffer, empty, ready to hold one request's headers.
    pub(crate) fn take<'a>(&mut self) -> Vec<Header<'a>> {
        recycle(std::mem::take(&mut self.0))
    }

    /// Gives the buffer back after the request (its borrows end here).
    pub(crate) fn put(&mut self, pairs: Vec<Header<'_>>) {
        self.0 = recycle(pairs);
    }
}

/// An empty Vec with `v`'s allocation and another lifetime. Emptied first, the collect holds
/// no element, and the standard library collects in place when the element layout is the same
/// (it is: only the lifetime differs), so no allocation happens (tested).
fn recycle<'b>(mut v: Vec<Header<'_>>) -> Vec<Header<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| -> Header<'b> { unreachable!("emptied") })
        .collect()
}

/// Resolves the header spans HTTP/1.1 parsing found in `buf` into pairs, appended to `out`.
pub(crate) fn h1_headers<'a>(buf: &'a [u8], spans: &[HeaderSpan], out: &mut Vec<Header<'a>>) {
    out.extend(spans.iter().map(|h| (&buf[h.name.clone()], &buf[h.value.clone()])));
}

/// Builds the view of an HTTP/1.1 request whose head `head` was parsed from `buf`, with its
/// `headers` (from [`h1_headers`]). Origin-form takes the authority from Host; absolute-form
/// from the target (its authority must be a host); `*` names no path. The request id is left
/// empty for the caller.
pub(crate) fn from_h1<'a>(
    buf: &'a [u8],
    head: &RequestHead,
    headers: &'a [Header<'a>],
    scheme: &'static str,
    peer: SocketAddr,
    local: SocketAddr,
    client_ip: &'a [u8],
) -> Result<RequestView<'a>, RequestError> {
    let target = &buf[head.target.clone()];
    let method = &buf[head.method.clone()];
    let (authority, rest) = split_target(target, method)?;
    let authority = match authority {
        Some(a) => a,
        None => head.host.clone().map_or(&b""[..], |h| &buf[h]),
    };
    // A target without a path (`*`, `http://h`, `http://h?q`) routes as `/`.
    let rest = rest.unwrap_or_default();
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    };
    check_path(path, query)?;
    let path = (!path.is_empty()).then_some(path);
    Ok(RequestView {
        method,
        scheme,
        authority,
        path,
        query,
        target,
        headers,
        request_id: b"",
        body: match head.framing {
            Framing::None => Body::None,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked | Framing::CloseDelimited => Body::Streamed,
        },
        expect_continue: head.expect_continue,
        upgrade: head.upgrade.clone().map(|u| &buf[u]),
        keep_alive: head.keep_alive,
        peer,
        local,
        client_ip,
    })
}

/// Refuses the path and query shapes the head parsers let through but RFC 9112 §3.2 (through
/// RFC 3986) does not allow, and that an upstream could read differently from kedge's routing:
/// a fragment (`#`, which a client never sends), a backslash (some servers take it for `/`),
/// and `%` not followed by two hex digits in the path. Other bytes outside the grammar (`"`,
/// `<`, `>`, `^`, `` ` ``, `{`, `|`, `}`, non-ASCII) pass, as nginx lets them: they change no
/// path structure, and real clients send them unencoded.
pub(crate) fn check_path(path: &[u8], query: Option<&[u8]>) -> Result<(), RequestError> {
    let bad = |b: &u8| *b == b'#' || *b == b'\\';
    if path.iter().any(bad) || query.is_some_and(|q| q.iter().any(bad)) {
        return Err(ErrorKind::BadPath.into());
    }
    let mut i = 0;
    while let Some(p) = path[i..].iter().position(|&b| b == b'%') {
        let at = i + p;
        match path.get(at + 1..at + 3) {
            Some(h) if h.iter().all(u8::is_ascii_hexdigit) => i = at + 3,
            _ => return Err(ErrorKind::BadPath.into()),
        }
    }
    Ok(())
}

/// The authority an HTTP/1.1 target names, and the rest of it.
type TargetParts<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Splits an HTTP/1.1 request target into the authority it names (absolute-form only) and the
/// rest (path and query; `None` for `*`).
fn split_target<'a>(target: &'a [u8], method: &[u8]) -> Result<TargetParts<'a>, RequestError> {
    if target.first() == Some(&b'/') {
        return Ok((None, Some(target)));
    }
    if target == b"*" {
        return match method {
            b"OPTIONS" => Ok((None, None)),
            _ => Err(ErrorKind::AsteriskNotOptions.into()),
        };
    }
    let scheme_len = if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else if method == b"CONNECT" {
        return Err(ErrorKind::Connect.into());
    } else {
        return Err(ErrorKind::BadTarget.into());
    };
    let after = &target[scheme_len..];
    let end = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    // RFC 9110 §4.2.4: userinfo in an http(s) URI is an error; and the authority must be a host.
    if !http::valid_host(&after[..end]) {
        return Err(ErrorKind::BadAuthority.into());
    }
    Ok((Some(&after[..end]), Some(&after[end..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_of(raw: &[u8], check: impl FnOnce(Result<RequestView<'_>, RequestError>)) {
        let mut spans = Vec::new();
        let Ok(http::Parsed::Complete(head)) = http::parse_request(raw, &http::Limits::default(), &mut spans) else {
            panic!("unparsable {:?}", String::from_utf8_lossy(raw))
        };
        let mut pairs = Vec::new();
        h1_headers(raw, &spans, &mut pairs);
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        check(from_h1(
            raw,
            &head,
            &pairs,
            "http",
            peer,
            "127.0.0.1:80".parse().unwrap(),
            b"192.0.2.1",
        ));
    }

    /// Authority, path, query.
    type Parts<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

    /// (request, authority, path, query) or the error's status.
    #[test]
    fn targets() {
        #[rustfmt::skip]
        let cases: &[(&[u8], Result<Parts<'_>, u16>)] = &[
            (b"GET /a/b?x=1&y HTTP/1.1\r\nHost: h:8080\r\n\r\n", Ok(("h:8080", Some("/a/b"), Some("x=1&y")))),
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", Ok(("h", Some("/"), None))),
            (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", Ok(("h", None, None))),
            (b"GET http://Other.example/p?q HTTP/1.1\r\nHost: h\r\n\r\n", Ok(("Other.example", Some("/p"), Some("q")))),
            (b"GET https://o.example HTTP/1.1\r\nHost: h\r\n\r\n", Ok(("o.example", None, None))),
            (b"GET http://o.example?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", Ok(("o.example", None, Some("q=1")))),
            (b"GET /x HTTP/1.0\r\n\r\n", Ok(("", Some("/x"), None))),
            (b"GET http://u@o.example/ HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"GET ftp://o.example/ HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            // RFC 9112 §3.2: asterisk-form is for OPTIONS only, authority-form for CONNECT only.
            (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"DELETE * HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"GET o.example:443 HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"OPTIONS o.example:443 HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            // Fragments, backslashes and broken percent-encoding.
            (b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"GET /a?q=1#frag HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"GET /public\\..\\admin HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"GET http://o.example/a%zz HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"GET /a%2 HTTP/1.1\r\nHost: h\r\n\r\n", Err(400)),
            (b"GET /a%2F%41 HTTP/1.1\r\nHost: h\r\n\r\n", Ok(("h", Some("/a%2F%41"), None))),
            // Kept, as nginx keeps them: no path structure changes.
            (b"GET /a|b{c}?x=\"y\" HTTP/1.1\r\nHost: h\r\n\r\n", Ok(("h", Some("/a|b{c}"), Some("x=\"y\"")))),
            (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", Ok(("h", Some("/caf\u{e9}"), None))),
        ];
        for (raw, want) in cases {
            view_of(raw, |got| {
                let got = got
                    .map(|v| {
                        let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                        (s(v.authority), v.path.map(s), v.query.map(s))
                    })
                    .map_err(|e| e.answer().unwrap().0);
                let want = want.map(|(a, p, q)| (a.to_owned(), p.map(str::to_owned), q.map(str::to_owned)));
                assert_eq!(got, want, "{}", String::from_utf8_lossy(raw));
            });
        }
    }

    #[test]
    fn connect_is_refused_even_if_the_parser_let_it_through() {
        let e = split_target(b"o.example:443", b"CONNECT").unwrap_err();
        assert_eq!(e.answer(), Some((405, "CONNECT is not supported")));
    }

    #[test]
    fn headers_cookies_and_facts() {
        let raw = b"PUT /u HTTP/1.1\r\nHost: h\r\nCookie: a=1; b = two \r\nX-Request-ID: r1\r\n\
                    Cookie: c=3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody";
        view_of(raw, |v| {
            let v = v.unwrap();
            assert_eq!(v.header(b"x-request-id"), Some(&b"r1"[..]));
            assert_eq!(v.cookie(b"b"), Some(&b"two"[..]));
            assert_eq!(v.cookie(b"c"), Some(&b"3"[..]));
            assert_eq!(v.cookie(b"d"), None);
            assert_eq!(v.body, Body::Length(4));
            assert!(!v.keep_alive);
            assert!(!v.retryable(), "a body makes it unsafe to repeat");
        });
    }

    #[test]
    fn the_header_buffer_is_reused_without_allocating() {
        let mut buf = HeaderBuf::default();
        let mut pairs = buf.take();
        pairs.reserve(8);
        let cap = pairs.capacity();
        let ptr = pairs.as_ptr() as usize;
        pairs.push((b"a", b"b"));
        buf.put(pairs);
        let again = buf.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap);
        assert_eq!(again.as_ptr() as usize, ptr);
    }
}
