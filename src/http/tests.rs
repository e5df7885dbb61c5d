//! Table tests for the sans-io HTTP/1 core: each row is raw bytes and what must come out. Failing rows are collected
//! and reported together, by label. Row tables carry `#[rustfmt::skip]` so they stay one row per line.

use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Small limits so the boundary rows stay readable.
const LIMITS: Limits = Limits {
    max_request_line: 64,
    max_header_bytes: 256,
    max_headers: 8,
};

/// What a row expects from a head parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Partial,
    /// Parsed, with this framing and keep-alive.
    Head(Framing, bool),
    /// Refused with this status.
    Status(u16),
}
use Want::{Head, Partial, Status};

/// A labelled row: raw bytes and the expected outcome.
type Row<'a> = (&'a str, &'a [u8], Want);

const NO_BODY: Want = Head(Framing::None, true);
const CLOSED: Want = Head(Framing::None, false);
const CHUNKED: Want = Head(Framing::Chunked, true);
const fn length(n: u64) -> Want {
    Head(Framing::Length(n), true)
}

fn request_outcome(raw: &[u8]) -> Want {
    match parse_request(raw, &LIMITS, &mut Vec::new()) {
        Ok(Parsed::Partial) => Partial,
        Ok(Parsed::Complete(head)) => Head(head.framing, head.keep_alive),
        Err(e) => Status(e.status()),
    }
}

fn response_outcome(raw: &[u8], head_request: bool) -> Want {
    match parse_response(raw, &LIMITS, head_request, &mut Vec::new()) {
        Ok(Parsed::Partial) => Partial,
        Ok(Parsed::Complete(head)) => Head(head.framing, head.keep_alive),
        Err(e) => Status(e.status()),
    }
}

/// Asserts every row, listing all the rows that fail.
fn check_rows<'a>(rows: impl IntoIterator<Item = (&'a str, Vec<u8>, Want)>, outcome: impl Fn(&[u8]) -> Want) {
    let mut failures = Vec::new();
    for (label, raw, want) in rows {
        let got = outcome(&raw);
        if got != want {
            let raw = String::from_utf8_lossy(&raw);
            failures.push(format!("{label}: got {got:?}, want {want:?} for {raw:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Rows of raw requests.
fn check_request(rows: &[Row<'_>]) {
    check_rows(
        rows.iter().map(|&(label, raw, want)| (label, raw.to_vec(), want)),
        request_outcome,
    );
}

/// Rows of header lines, each sent in `POST / HTTP/1.1` with a Host header.
fn check_request_fields(rows: &[Row<'_>]) {
    let wrap = |fields: &[u8]| [b"POST / HTTP/1.1\r\nHost: h\r\n", fields, b"\r\n"].concat();
    check_rows(
        rows.iter().map(|&(label, fields, want)| (label, wrap(fields), want)),
        request_outcome,
    );
}

/// Parses a request that must be complete (with the default limits).
fn request(raw: &[u8]) -> (RequestHead, Vec<HeaderSpan>) {
    let mut headers = Vec::new();
    match parse_request(raw, &Limits::default(), &mut headers) {
        Ok(Parsed::Complete(head)) => (head, headers),
        other => panic!("expected a complete head, got {other:?}"),
    }
}

/// The text of `range` in `raw`.
fn text(raw: &[u8], range: &Range<usize>) -> String {
    String::from_utf8_lossy(&raw[range.clone()]).into_owned()
}

#[test]
fn transfer_encoding_rules() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("plain chunked", b"Transfer-Encoding: chunked\r\n", CHUNKED),
        ("case and OWS", b"transfer-encoding:   ChUnKeD  \r\n", CHUNKED),
        ("CL then TE", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", Status(400)),
        ("TE then CL", b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", Status(400)),
        ("TE and CL 0", b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", Status(400)),
        ("not ending in chunked", b"Transfer-Encoding: chunked, gzip\r\n", Status(400)),
        ("lines not ending in chunked", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", Status(400)),
        ("gzip alone", b"Transfer-Encoding: gzip\r\n", Status(400)),
        ("identity", b"Transfer-Encoding: identity\r\n", Status(400)),
        ("chunk (typo)", b"Transfer-Encoding: chunk\r\n", Status(400)),
        ("chunked twice", b"Transfer-Encoding: chunked, chunked\r\n", Status(400)),
        ("chunked on two lines", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", Status(400)),
        ("gzip then chunked", b"Transfer-Encoding: gzip, chunked\r\n", Status(501)),
        ("gzip line, chunked line", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", Status(501)),
        ("unknown coding", b"Transfer-Encoding: x-custom, chunked\r\n", Status(501)),
        ("empty value", b"Transfer-Encoding:\r\n", Status(400)),
        ("trailing comma", b"Transfer-Encoding: chunked,\r\n", Status(400)),
        ("leading comma", b"Transfer-Encoding: , chunked\r\n", Status(400)),
        ("parameter", b"Transfer-Encoding: chunked;q=1\r\n", Status(400)),
        ("quoted", b"Transfer-Encoding: \"chunked\"\r\n", Status(400)),
        ("space inside", b"Transfer-Encoding: chun ked\r\n", Status(400)),
        ("obs-text", b"Transfer-Encoding: chunked\xff\r\n", Status(400)),
        ("vertical tab", b"Transfer-Encoding: \x0bchunked\r\n", Status(400)),
        ("space before colon", b"Transfer-Encoding : chunked\r\n", Status(400)),
        ("tab before colon", b"Transfer-Encoding\t: chunked\r\n", Status(400)),
        ("obs-fold", b"Transfer-Encoding: gzip,\r\n chunked\r\n", Status(400)),
    ];
    check_request_fields(rows);
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Status(400)),
        ("TE on HTTP/1.0 with Host", b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", Status(400)),
    ];
    check_request(rows);
}

#[test]
fn content_length_rules() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("plain", b"Content-Length: 5\r\n", length(5)),
        ("zero", b"Content-Length: 0\r\n", length(0)),
        ("leading zeros", b"Content-Length: 007\r\n", length(7)),
        ("19 digits", b"Content-Length: 9999999999999999999\r\n", length(9_999_999_999_999_999_999)),
        ("trailing tab trimmed", b"Content-Length: 5\t\r\n", length(5)),
        ("identical lines", b"Content-Length: 5\r\nContent-Length: 5\r\n", length(5)),
        ("identical list", b"Content-Length: 5, 5\r\n", length(5)),
        ("20 digits overflow", b"Content-Length: 18446744073709551616\r\n", Status(400)),
        ("20 digits in range", b"Content-Length: 10000000000000000000\r\n", Status(400)),
        ("letters", b"Content-Length: abc\r\n", Status(400)),
        ("plus", b"Content-Length: +5\r\n", Status(400)),
        ("minus", b"Content-Length: -5\r\n", Status(400)),
        ("space inside", b"Content-Length: 1 2\r\n", Status(400)),
        ("hex", b"Content-Length: 0x5\r\n", Status(400)),
        ("decimal point", b"Content-Length: 5.0\r\n", Status(400)),
        ("empty", b"Content-Length:\r\n", Status(400)),
        ("empty element", b"Content-Length: 5,\r\n", Status(400)),
        ("differing list", b"Content-Length: 5, 6\r\n", Status(400)),
        ("differing lines", b"Content-Length: 5\r\nContent-Length: 6\r\n", Status(400)),
        ("bad then good", b"Content-Length: x\r\nContent-Length: 5\r\n", Status(400)),
        ("space before colon", b"Content-Length : 5\r\n", Status(400)),
        ("obs-fold", b"Content-Length: 5\r\n 6\r\n", Status(400)),
    ];
    check_request_fields(rows);
}

#[test]
fn malformed_heads() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("ok", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", NO_BODY),
        ("bare LF in request line", b"GET / HTTP/1.1\nHost: h\r\n\r\n", Status(400)),
        ("bare LF after header", b"GET / HTTP/1.1\r\nHost: h\n\r\n", Status(400)),
        ("bare LF at the end", b"GET / HTTP/1.1\r\nHost: h\r\n\n", Status(400)),
        ("LF only", b"GET / HTTP/1.1\nHost: h\n\n", Status(400)),
        ("bare LF inside value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\nb\r\n\r\n", Status(400)),
        ("bare CR in request line", b"GET / HTTP/1.1\rHost: h\r\n\r\n", Status(400)),
        ("bare CR in value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", Status(400)),
        ("CR CR LF", b"GET / HTTP/1.1\r\nHost: h\r\r\n\r\n", Status(400)),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", Status(400)),
        ("obs-fold tab", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", Status(400)),
        ("space before first field", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", Status(400)),
        ("whitespace before colon", b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", Status(400)),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", Status(400)),
        ("SOH in value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", Status(400)),
        ("ESC in value", b"GET / HTTP/1.1\r\nHost: h\r\nX: \x1b[0m\r\n\r\n", Status(400)),
        ("DEL in value", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n", Status(400)),
        ("tab in value is fine", b"GET / HTTP/1.1\r\nHost: h\r\nX: a\tb\r\n\r\n", NO_BODY),
        ("obs-text in value is fine", b"GET / HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\r\n\r\n", NO_BODY),
        ("@ in name", b"GET / HTTP/1.1\r\nHost: h\r\nX@Y: a\r\n\r\n", Status(400)),
        ("space in name", b"GET / HTTP/1.1\r\nHost: h\r\nX Y: a\r\n\r\n", Status(400)),
        ("control in name", b"GET / HTTP/1.1\r\nHost: h\r\nX\x01: a\r\n\r\n", Status(400)),
        ("parenthesis in name", b"GET / HTTP/1.1\r\nHost: h\r\n(X): a\r\n\r\n", Status(400)),
        ("non-ASCII name", b"GET / HTTP/1.1\r\nHost: h\r\nX\xc3\xa9: a\r\n\r\n", Status(400)),
        ("empty name", b"GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n", Status(400)),
        ("no colon", b"GET / HTTP/1.1\r\nHost: h\r\nXY\r\n\r\n", Status(400)),
        ("two spaces in request line", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", Status(400)),
        ("tab in request line", b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", Status(400)),
        ("space after version", b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", Status(400)),
        ("no version", b"GET /\r\nHost: h\r\n\r\n", Status(400)),
        ("control in target", b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n", Status(400)),
        ("non-UTF-8 target", b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n", Status(400)),
        ("bad method byte", b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n", Status(400)),
        ("lowercase version", b"GET / http/1.1\r\nHost: h\r\n\r\n", Status(400)),
        ("garbage version", b"GET / HTTP/x\r\nHost: h\r\n\r\n", Status(400)),
        ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", Status(505)),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", Status(505)),
        ("HTTP/0.9 style", b"GET / HTTP/0.9\r\n\r\n", Status(505)),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Status(505)),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", Status(501)),
    ];
    check_request(rows);
}

#[test]
fn host_rules() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("missing on 1.1", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", Status(400)),
        ("missing on 1.0", b"GET / HTTP/1.0\r\n\r\n", CLOSED),
        ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Status(400)),
        ("two identical Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", Status(400)),
        ("two Host headers on 1.0", b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", Status(400)),
        ("empty Host", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", NO_BODY),
        ("host and port", b"GET / HTTP/1.1\r\nHost: a.example.com:8080\r\n\r\n", NO_BODY),
        ("IPv6 literal", b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", NO_BODY),
        ("sub-delims and pct-encoding", b"GET / HTTP/1.1\r\nHost: a,b%41~_\r\n\r\n", NO_BODY),
        ("two values in one line", b"GET / HTTP/1.1\r\nHost: s.test, evil.test\r\n\r\n", Status(400)),
        ("space inside", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Status(400)),
        ("slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Status(400)),
        ("userinfo", b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n", Status(400)),
        ("port not digits", b"GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n", Status(400)),
        ("two ports", b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n", Status(400)),
        ("bad percent", b"GET / HTTP/1.1\r\nHost: a%4\r\n\r\n", Status(400)),
        ("unclosed IPv6", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", Status(400)),
    ];
    check_request(rows);
    let raw = b"GET / HTTP/1.1\r\nhOsT:  example.com:8080 \r\n\r\n";
    let (head, _) = request(raw);
    assert_eq!(head.host.map(|r| text(raw, &r)).as_deref(), Some("example.com:8080"));
}

#[test]
fn leading_empty_lines() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("one", b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", NO_BODY),
        ("four", b"\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", NO_BODY),
        ("five", b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", Status(400)),
        ("only empty lines so far", b"\r\n\r\n", Partial),
        ("half an empty line", b"\r\n\r", Partial),
        ("bare LF", b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", Status(400)),
    ];
    check_request(rows);
    let raw = b"\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n";
    let (head, _) = request(raw);
    assert_eq!(head.head_len, raw.len(), "head_len counts the skipped lines");
    assert_eq!(text(raw, &head.target), "/x");
}

/// A request whose request line has `line` bytes (without CRLF) and whose head has `total` bytes, padding a header
/// value to get there.
fn padded_request(line: usize, total: usize) -> Vec<u8> {
    let mut raw = b"GET /".to_vec();
    raw.resize(line - " HTTP/1.1".len(), b'a');
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: h\r\nX: ");
    raw.resize(total - 4, b'b');
    raw.extend_from_slice(b"\r\n\r\n");
    raw
}

/// The start of a request line of `n` bytes, not terminated yet.
fn unterminated_line(n: usize) -> Vec<u8> {
    let mut raw = b"GET /".to_vec();
    raw.resize(n, b'a');
    raw
}

/// A request with `n` X- fields and a Host field.
fn with_fields(n: usize) -> Vec<u8> {
    let fields: String = (0..n).map(|i| format!("X-{i}: v\r\n")).collect();
    format!("GET / HTTP/1.1\r\n{fields}Host: h\r\n\r\n").into_bytes()
}

#[test]
fn size_limits() {
    let (max_line, max_head) = (LIMITS.max_request_line, LIMITS.max_header_bytes);
    let big_head = padded_request(20, max_head + 1);
    let line_then_cr = [unterminated_line(max_line), b"\r".to_vec()].concat();
    let far_over = [&big_head[..max_head - 4], &[b'c'; 5000][..]].concat();
    #[rustfmt::skip]
    let rows = [
        ("line and head at their limits", padded_request(max_line, max_head), NO_BODY),
        ("line one over", padded_request(max_line + 1, max_head), Status(414)),
        ("head one over", big_head.clone(), Status(431)),
        ("unterminated line at the limit", unterminated_line(max_line), Partial),
        ("unterminated line at the limit, then CR", line_then_cr, Partial),
        ("unterminated line one over", unterminated_line(max_line + 1), Status(414)),
        ("unterminated line far over", unterminated_line(10_000), Status(414)),
        ("partial head at the limit", big_head[..max_head].to_vec(), Partial),
        ("partial head one over", big_head[..max_head + 1].to_vec(), Status(431)),
        ("partial head far over", far_over, Status(431)),
        ("max_headers fields", with_fields(LIMITS.max_headers - 1), NO_BODY),
        ("one field too many", with_fields(LIMITS.max_headers), Status(431)),
    ];
    check_rows(rows, request_outcome);

    // max_headers is clamped to the stack array's size.
    let generous = Limits {
        max_headers: 10_000,
        ..Limits::default()
    };
    let mut headers = Vec::new();
    let at_cap = parse_request(&with_fields(MAX_HEADERS_CAP - 1), &generous, &mut headers);
    assert!(matches!(at_cap, Ok(Parsed::Complete(_))));
    assert_eq!(headers.len(), MAX_HEADERS_CAP);
    let over_cap = parse_request(&with_fields(MAX_HEADERS_CAP), &generous, &mut headers);
    assert_eq!(over_cap, Err(HttpError::HeadersTooLarge));
}

#[test]
fn every_prefix_of_a_valid_head_is_partial() {
    let raw = b"\r\nPOST /upload?x=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\n";
    for end in 0..raw.len() {
        assert_eq!(request_outcome(&raw[..end]), Partial, "prefix of {end} bytes");
    }
    assert_eq!(request_outcome(raw), length(3));
    let res = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    for end in 0..res.len() {
        assert_eq!(response_outcome(&res[..end], false), Partial, "prefix of {end} bytes");
    }
}

#[test]
fn spans_and_pipelining() {
    let raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-Empty:\r\n\r\nhelloGET /b HTTP/1.0\r\n\r\n";
    let (head, headers) = request(raw);
    assert_eq!(text(raw, &head.method), "POST");
    assert_eq!(text(raw, &head.target), "/a");
    assert_eq!(head.version, Version::Http11);
    assert_eq!(head.framing, Framing::Length(5));
    let fields: Vec<(String, String)> = headers
        .iter()
        .map(|h| (text(raw, &h.name), text(raw, &h.value)))
        .collect();
    let want = [("Host", "h"), ("Content-Length", "5"), ("X-Empty", "")];
    assert_eq!(fields, want.map(|(n, v)| (n.to_string(), v.to_string())));
    assert_eq!(&raw[head.head_len..head.head_len + 5], b"hello");

    // The reused Vec is cleared, and the next request parses from where the body ends.
    let mut reused = headers;
    let next = &raw[head.head_len + 5..];
    let Ok(Parsed::Complete(second)) = parse_request(next, &LIMITS, &mut reused) else {
        panic!("second request")
    };
    assert_eq!(text(next, &second.target), "/b");
    assert_eq!(
        (second.version, second.head_len, second.keep_alive),
        (Version::Http10, next.len(), false)
    );
    assert!(reused.is_empty());

    // Two heads back to back: head_len stops at the first.
    let two = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
    let (first, _) = request(two);
    assert_eq!(first.head_len, two.len() / 2);
}

#[test]
fn keep_alive_rules() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("1.1 default", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", NO_BODY),
        ("1.1 close", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", CLOSED),
        ("1.1 Close", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n", CLOSED),
        ("1.1 list with close", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-foo, CLOSE\r\n\r\n", CLOSED),
        ("1.1 keep-alive", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", NO_BODY),
        ("1.0 default", b"GET / HTTP/1.0\r\n\r\n", CLOSED),
        ("1.0 keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", NO_BODY),
        ("1.0 Keep-Alive", b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", NO_BODY),
        ("1.0 keep-alive and close", b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", CLOSED),
        ("1.0 two lines", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", CLOSED),
        ("1.0 Keep-Alive header only", b"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", CLOSED),
        ("1.0 with body", b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\n", Head(Framing::Length(2), false)),
    ];
    check_request(rows);
}

#[test]
fn expect_rules() {
    let refused = Err(HttpError::ExpectationFailed);
    #[rustfmt::skip]
    let cases: [(&[u8], Result<bool, HttpError>); 7] = [
        (b"Expect: 100-continue\r\n", Ok(true)),
        (b"Expect: 100-Continue\r\n", Ok(true)),
        (b"X-None: 1\r\n", Ok(false)),
        (b"Expect: 200-ok\r\n", refused),
        (b"Expect: 100-continue, foo\r\n", refused),
        (b"Expect: 100-continue\r\nExpect: foo\r\n", refused),
        (b"Expect:\r\n", refused),
    ];
    for (fields, want) in cases {
        let raw = [b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n", fields, b"\r\n"].concat();
        let got = parse_request(&raw, &LIMITS, &mut Vec::new()).map(|p| match p {
            Parsed::Complete(head) => head.expect_continue,
            Parsed::Partial => panic!("partial"),
        });
        assert_eq!(got, want, "{}", String::from_utf8_lossy(fields));
    }
    // RFC 9110 §10.1.1: HTTP/1.0 clients get no 100 Continue, but unknown expectations are still refused.
    let (head, _) = request(b"PUT /f HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n");
    assert!(!head.expect_continue);
    assert_eq!(request_outcome(b"PUT / HTTP/1.0\r\nExpect: x\r\n\r\n"), Status(417));
}

#[test]
fn upgrade_detection() {
    #[rustfmt::skip]
    let cases: [(&[u8], Option<&str>); 6] = [
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", Some("websocket")),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: keep-alive, upgrade\r\n\r\n", Some("h2c")),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", None),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n", None),
        (b"GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", None),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgraded\r\nUpgrade: websocket\r\n\r\n", None),
    ];
    for (raw, want) in cases {
        let (head, _) = request(raw);
        let got = head.upgrade.map(|r| text(raw, &r));
        assert_eq!(got.as_deref(), want, "{}", String::from_utf8_lossy(raw));
    }
    let two = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: a\r\nUpgrade: b\r\n\r\n";
    assert_eq!(request_outcome(two), Status(400));
}

#[test]
fn error_statuses_and_reasons() {
    let rows = [
        (HttpError::BadRequest("x"), 400, "x"),
        (HttpError::UriTooLong, 414, "request line too long"),
        (HttpError::HeadersTooLarge, 431, "request header section too large"),
        (HttpError::ExpectationFailed, 417, "unsupported Expect value"),
        (HttpError::NotImplemented("y"), 501, "y"),
        (HttpError::VersionNotSupported, 505, "unsupported HTTP version"),
        (HttpError::BadResponse("z"), 502, "z"),
    ];
    for (e, status, reason) in rows {
        assert_eq!((e.status(), e.reason()), (status, reason));
    }
    assert_eq!(
        HttpError::UriTooLong.to_string(),
        "414 URI Too Long: request line too long"
    );
    let raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let err = parse_request(raw, &LIMITS, &mut Vec::new()).unwrap_err();
    assert_eq!(err.reason(), "both Content-Length and Transfer-Encoding");
}

#[test]
fn response_framing() {
    let until_close = Head(Framing::CloseDelimited, false);
    let long_status = [b"HTTP/1.1 200 " as &[u8], &[b'x'; 60], b"\r\n\r\n"].concat();
    let big_head = [b"HTTP/1.1 200 OK\r\nX: " as &[u8], &[b'x'; 300]].concat();
    // (label, raw, whether the request was HEAD, expected)
    #[rustfmt::skip]
    let rows: &[(&str, &[u8], bool, Want)] = &[
        ("100", b"HTTP/1.1 100 Continue\r\n\r\n", false, NO_BODY),
        ("101", b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", false, NO_BODY),
        ("103 with CL", b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\n\r\n", false, NO_BODY),
        ("204 with CL", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false, NO_BODY),
        ("204 with bad CL", b"HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n", false, NO_BODY),
        ("304 with CL", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", false, NO_BODY),
        ("HEAD with CL", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true, NO_BODY),
        ("HEAD with TE", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, NO_BODY),
        ("HEAD without length", b"HTTP/1.1 200 OK\r\n\r\n", true, NO_BODY),
        ("CL", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, length(5)),
        ("CL 0", b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false, length(0)),
        ("identical CLs", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", false, length(5)),
        ("differing CLs", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false, Status(502)),
        ("CL list differing", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", false, Status(502)),
        ("CL letters", b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", false, Status(502)),
        ("CL negative", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, Status(502)),
        ("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, CHUNKED),
        ("gzip, chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, CHUNKED),
        ("TE and CL", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false, Head(Framing::Chunked, false)),
        ("TE and bad CL", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n", false, Head(Framing::Chunked, false)),
        ("TE gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, until_close),
        ("TE chunked twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", false, Status(502)),
        ("TE garbage", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x\r\n\r\n", false, Status(502)),
        ("no length", b"HTTP/1.1 200 OK\r\n\r\n", false, until_close),
        ("1.0 CL", b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", false, Head(Framing::Length(5), false)),
        ("1.0 keep-alive", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n", false, length(5)),
        ("1.0 TE", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, Head(Framing::Chunked, false)),
        ("close", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n", false, Head(Framing::Length(5), false)),
        ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n", false, Status(502)),
        ("bare CR", b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", false, Status(502)),
        ("bare LF after a field", b"HTTP/1.1 200 OK\r\nContent-Length: 5\n\r\n", false, Status(502)),
        ("bare LF at the end", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\n", false, Status(502)),
        ("LF only", b"HTTP/1.1 200 OK\nContent-Length: 5\n\n", false, Status(502)),
        ("leading LF", b"\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, Status(502)),
        ("CR CR LF", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\r\n\r\n", false, Status(502)),
        ("obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", false, Status(502)),
        ("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n", false, Status(502)),
        ("control in value", b"HTTP/1.1 200 OK\r\nX: \x01\r\n\r\n", false, Status(502)),
        ("status 000", b"HTTP/1.1 000 OK\r\n\r\n", false, Status(502)),
        ("two-digit status", b"HTTP/1.1 20 OK\r\n\r\n", false, Status(502)),
        ("HTTP/2", b"HTTP/2 200 OK\r\n\r\n", false, Status(502)),
        ("leading empty line", b"\r\nHTTP/1.1 200 OK\r\n\r\n", false, Status(502)),
        ("status line too long", &long_status, false, Status(502)),
        ("head too large", &big_head, false, Status(502)),
        ("partial", b"HTTP/1.1 200 OK\r\nContent-Len", false, Partial),
    ];
    // The HEAD flag rides in front of the raw bytes so one outcome function serves every row.
    let rows = rows
        .iter()
        .map(|&(label, raw, head, want)| (label, [&[u8::from(head)], raw].concat(), want));
    check_rows(rows, |raw| response_outcome(&raw[1..], raw[0] == 1));
}

#[test]
fn response_fields() {
    let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 \xffK\r\nContent-Length: 0\r\n\r\n";
    let mut headers = Vec::new();
    let Ok(Parsed::Complete(head)) = parse_response(raw, &LIMITS, false, &mut headers) else {
        panic!("first")
    };
    assert_eq!((head.status, head.version), (404, Version::Http11));
    assert_eq!(text(raw, &head.reason), "Not Found");
    let next = &raw[head.head_len..];
    let Ok(Parsed::Complete(second)) = parse_response(next, &LIMITS, false, &mut headers) else {
        panic!("second")
    };
    assert_eq!(
        &next[second.reason.clone()],
        b"\xffK",
        "obs-text reason is kept by range"
    );
    let bare = b"HTTP/1.1 200\r\n\r\n";
    let Ok(Parsed::Complete(head)) = parse_response(bare, &LIMITS, false, &mut headers) else {
        panic!("bare")
    };
    assert!(head.reason.is_empty());
}

// ---- chunked bodies ----

/// A decoded body: data, trailer lines, and whatever followed the body.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    trailers: Vec<u8>,
    rest: Vec<u8>,
}

/// Feeds `pieces` to a fresh decoder the way a connection delivers bytes, keeping the unconsumed tail like the proxy
/// does; `None` when the input ends before the body.
fn decode(pieces: &[&[u8]]) -> Result<Option<Decoded>, HttpError> {
    let mut decoder = ChunkedDecoder::new();
    let (mut buffered, mut data) = (Vec::new(), Vec::new());
    for (i, piece) in pieces.iter().enumerate() {
        buffered.extend_from_slice(piece);
        loop {
            let (consumed, event) = decoder.step(&buffered)?;
            assert!(consumed <= buffered.len());
            match event {
                ChunkEvent::NeedMore => {
                    buffered.drain(..consumed);
                    break;
                }
                ChunkEvent::Data(r) => {
                    assert!(
                        !r.is_empty() && r.end == consumed,
                        "data range {r:?}, consumed {consumed}"
                    );
                    data.extend_from_slice(&buffered[r]);
                    buffered.drain(..consumed);
                }
                ChunkEvent::End { trailers } => {
                    let trailers = buffered[trailers].to_vec();
                    buffered.drain(..consumed);
                    assert!(decoder.is_done());
                    pieces[i + 1..].iter().for_each(|p| buffered.extend_from_slice(p));
                    return Ok(Some(Decoded {
                        data,
                        trailers,
                        rest: buffered,
                    }));
                }
            }
        }
    }
    Ok(None)
}

/// Decodes `input` all at once, byte at a time, in pieces of 3 and 7, and split in two at every position (every
/// 97th for the few inputs of kilobytes); all must agree. Returns the all-at-once result.
fn decode_every_way(input: &[u8]) -> Result<Option<Decoded>, HttpError> {
    let whole = decode(&[input]);
    let show = String::from_utf8_lossy(input);
    for n in [1, 3, 7] {
        let pieces: Vec<&[u8]> = input.chunks(n).collect();
        assert_eq!(decode(&pieces), whole, "pieces of {n}: {show:?}");
    }
    let stride = if input.len() > 1000 { 97 } else { 1 };
    for at in (0..=input.len()).step_by(stride) {
        let (a, b) = input.split_at(at);
        assert_eq!(decode(&[a, b]), whole, "split at {at}: {show:?}");
    }
    whole
}

#[test]
fn chunked_valid_bodies() {
    let long_ext = [b"5;" as &[u8], &[b'e'; MAX_CHUNK_LINE - 2], b"\r\nhello\r\n0\r\n\r\n"].concat();
    // (input, data, trailers)
    #[rustfmt::skip]
    let rows: &[(&[u8], &[u8], &[u8])] = &[
        (b"0\r\n\r\n", b"", b""),
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world", b""),
        (b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", b"0123456789abcdefghij", b""),
        (b"005\r\nhello\r\n0000000000000000\r\n\r\n", b"hello", b""),
        (b"0000000000000005\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"5;name\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"5;name=value;other=1\r\nhello\r\n0;last\r\n\r\n", b"hello", b""),
        (b"5;q=\"quoted \\\" ; value\"\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"5 ; a = 1 ;\tb\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"2\r\n\r\n\r\n0\r\n\r\n", b"\r\n", b""),
        (b"0\r\nX-Sum: 1\r\nY: two words\r\n\r\n", b"", b"X-Sum: 1\r\nY: two words\r\n"),
        (b"3\r\nabc\r\n0\r\nX:\r\n\r\n", b"abc", b"X:\r\n"),
        (&long_ext, b"hello", b""),
    ];
    for &(input, data, trailers) in rows {
        let show = String::from_utf8_lossy(input);
        let want = Decoded {
            data: data.to_vec(),
            trailers: trailers.to_vec(),
            rest: Vec::new(),
        };
        assert_eq!(decode_every_way(input), Ok(Some(want)), "{show:?}");
        // A pipelined request after the body stays unconsumed.
        let next = [input, b"GET / HTTP/1.1\r\n"].concat();
        let decoded = decode_every_way(&next).unwrap().unwrap();
        assert_eq!(decoded.rest, b"GET / HTTP/1.1\r\n");
        // Every proper prefix just needs more.
        for end in 0..input.len() {
            assert_eq!(decode(&[&input[..end]]), Ok(None), "prefix {end} of {show:?}");
        }
    }
}

/// The last chunk, then a trailer section of exactly `len` bytes.
fn big_trailer(len: usize) -> Vec<u8> {
    [b"0\r\nX: " as &[u8], &vec![b't'; len - 7], b"\r\n\r\n"].concat()
}

#[test]
fn chunked_bad_lines() {
    let overlong = [b"5;" as &[u8], &[b'e'; MAX_CHUNK_LINE - 1], b"\r\nhello\r\n0\r\n\r\n"].concat();
    let overlong_partial = [b"5;" as &[u8], &[b'e'; MAX_CHUNK_LINE - 1]].concat();
    assert_eq!(big_trailer(MAX_TRAILER_BYTES).len(), 3 + MAX_TRAILER_BYTES);
    assert!(matches!(decode_every_way(&big_trailer(MAX_TRAILER_BYTES)), Ok(Some(_))));
    let too_big_trailer = big_trailer(MAX_TRAILER_BYTES + 1);
    let too_big_partial = &big_trailer(MAX_TRAILER_BYTES + 10)[..3 + MAX_TRAILER_BYTES + 1];
    #[rustfmt::skip]
    let rows: &[(&str, &[u8])] = &[
        ("minus", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("plus", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("underscore", b"5_0\r\n"),
        ("leading underscore", b"_5\r\n"),
        ("17 digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("17 digits overflow", b"fffffffffffffffff\r\n"),
        ("leading space", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("trailing space", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("trailing tab", b"5\t\r\nhello\r\n0\r\n\r\n"),
        ("empty size", b"\r\nhello\r\n"),
        ("not hex", b"g\r\n"),
        ("empty extension name", b"5;\r\nhello\r\n0\r\n\r\n"),
        ("extension without name", b"5;=x\r\nhello\r\n0\r\n\r\n"),
        ("empty extension value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
        ("unterminated quote", b"5;a=\"x\r\nhello\r\n0\r\n\r\n"),
        ("control in quote", b"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n"),
        ("control in extension", b"5;a\x01\r\nhello\r\n0\r\n\r\n"),
        ("DEL in extension", b"5;a\x7f\r\nhello\r\n0\r\n\r\n"),
        ("NUL after size", b"5\x00\r\nhello\r\n0\r\n\r\n"),
        ("bare LF in extension", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        ("bare LF ends size", b"5\nhello\r\n0\r\n\r\n"),
        ("bare CR in size line", b"5\rx\r\nhello\r\n0\r\n\r\n"),
        ("no CRLF after data", b"5\r\nhelloX\r\n0\r\n\r\n"),
        ("LF after data", b"5\r\nhello\n0\r\n\r\n"),
        ("CR CR after data", b"5\r\nhello\r\r\n0\r\n\r\n"),
        ("data longer than size", b"3\r\nhello\r\n0\r\n\r\n"),
        ("overlong size line", &overlong),
        ("overlong partial size line", &overlong_partial),
        ("trailer without colon", b"0\r\nX a\r\n\r\n"),
        ("trailer space before colon", b"0\r\nX : a\r\n\r\n"),
        ("trailer obs-fold", b"0\r\nX: a\r\n b\r\n\r\n"),
        ("trailer bare LF", b"0\r\nX: a\n\r\n"),
        ("trailer bare LF at end", b"0\r\nX: a\r\n\n"),
        ("trailer control", b"0\r\nX: \x01\r\n\r\n"),
        ("trailer section too large", &too_big_trailer),
        ("trailer section too large, partial", too_big_partial),
        ("last chunk bare LF", b"0\r\n\n"),
    ];
    for &(label, input) in rows {
        match decode_every_way(input) {
            Err(HttpError::BadRequest(_)) => {}
            other => panic!("{label}: want 400, got {other:?}"),
        }
    }
}

#[test]
fn chunked_step_by_step() {
    let mut decoder = ChunkedDecoder::new();
    assert_eq!(decoder.step(b"5\r"), Ok((0, ChunkEvent::NeedMore)));
    assert_eq!(decoder.step(b"5\r\nhel"), Ok((6, ChunkEvent::Data(3..6))));
    assert_eq!(decoder.step(b""), Ok((0, ChunkEvent::NeedMore)));
    assert_eq!(decoder.step(b"lo\r"), Ok((2, ChunkEvent::Data(0..2))));
    assert_eq!(decoder.step(b"\r"), Ok((0, ChunkEvent::NeedMore)));
    assert_eq!(
        decoder.step(b"\r\n3\r\n"),
        Ok((5, ChunkEvent::NeedMore)),
        "CRLF and size line consumed"
    );
    assert_eq!(
        decoder.step(b"abc\r\n0\r\nT: 1\r\n\r\nnext"),
        Ok((3, ChunkEvent::Data(0..3)))
    );
    let end = ChunkEvent::End { trailers: 5..11 };
    assert_eq!(decoder.step(b"\r\n0\r\nT: 1\r\n\r\nnext"), Ok((13, end)));
    assert!(decoder.is_done());
    assert_eq!(decoder.step(b"next"), Ok((0, ChunkEvent::End { trailers: 0..0 })));

    // A huge chunk is handed out as it arrives, without overflow.
    let mut decoder = ChunkedDecoder::new();
    assert_eq!(
        decoder.step(b"ffffffffffffffff\r\nabc"),
        Ok((21, ChunkEvent::Data(18..21)))
    );
    assert_eq!(decoder.step(b"defg"), Ok((4, ChunkEvent::Data(0..4))));
}

#[test]
fn chunk_writers_round_trip() {
    let mut out = Vec::new();
    #[rustfmt::skip]
    let headers = [(1, "1\r\n"), (15, "f\r\n"), (255, "ff\r\n"), (4096, "1000\r\n"), (usize::MAX, "ffffffffffffffff\r\n")];
    for (len, want) in headers {
        out.clear();
        write_chunk_header(&mut out, len);
        assert_eq!(String::from_utf8_lossy(&out), want);
    }
    out.clear();
    write_last_chunk(&mut out, b"");
    assert_eq!(out, b"0\r\n\r\n");

    let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let mut encoded = Vec::new();
    for piece in body.chunks(300) {
        write_chunk_header(&mut encoded, piece.len());
        encoded.extend_from_slice(piece);
        encoded.extend_from_slice(b"\r\n");
    }
    write_last_chunk(&mut encoded, b"X-Sum: 42\r\n");
    let want = Decoded {
        data: body,
        trailers: b"X-Sum: 42\r\n".to_vec(),
        rest: Vec::new(),
    };
    assert_eq!(decode_every_way(&encoded), Ok(Some(want)));
}

#[test]
fn the_last_chunk_carries_only_end_to_end_trailer_fields() {
    let mut out = Vec::new();
    write_last_chunk(
        &mut out,
        b"X-Sum: 42\r\nContent-Length: 9\r\ntransfer-encoding: chunked\r\nHost: evil.example.com\r\n\
          X-Forwarded-For: 198.51.100.9\r\nSet-Cookie: a=1\r\nTrailer: X-Sum\r\nGrpc-Status: 0\r\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "0\r\nX-Sum: 42\r\nGrpc-Status: 0\r\n\r\n"
    );
    for name in ["X-Sum", "grpc-message", "server-timing", "digest"] {
        assert!(trailer_passes(name.as_bytes()), "{name}");
    }
    for name in [
        "CONTENT-LENGTH",
        "te",
        "upgrade",
        "host",
        "x-real-ip",
        "authorization",
        "cookie",
        "content-type",
    ] {
        assert!(!trailer_passes(name.as_bytes()), "{name}");
    }
}

// ---- head rebuilding ----

/// The client 192.0.2.7 on an http listener at port 8080.
fn fwd<'a>(host: &'a [u8], request_id: &'a [u8]) -> Forwarded<'a> {
    Forwarded {
        client_ip: b"192.0.2.7",
        peer_ip: b"192.0.2.7",
        from_trusted: false,
        proto: "http",
        host,
        port: 8080,
        request_id,
        target: None,
        upstream_host: None,
    }
}

/// Parses `raw` and rebuilds it for the upstream, after what `out` already held.
fn rebuilt_request(raw: &[u8], fwd: &Forwarded<'_>) -> String {
    let (head, headers) = request(raw);
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|h| (&raw[h.name.clone()], &raw[h.value.clone()]))
        .collect();
    let req = RequestOut {
        method: &raw[head.method.clone()],
        target: &raw[head.target.clone()],
        headers: &pairs,
        has_host: head.host.is_some(),
        framing: head.framing,
        upgrade: head.upgrade.clone().map(|u| &raw[u]),
        lines: Some(FieldLines::new(raw, &headers, head.head_len)),
    };
    let mut out = b"kept|".to_vec();
    write_request_head(&mut out, &req, fwd);
    String::from_utf8(out).unwrap()
}

/// The forwarding block after X-Forwarded-For, for `fwd(b"h", _)`.
const FWD_BLOCK: &str =
    "X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Forwarded-Port: 8080\r\nX-Real-IP: 192.0.2.7\r\n";

#[test]
fn the_special_request_names_filter_misses_none_of_them() {
    for name in REQUEST_SPECIAL.iter().flat_map(|l| l.iter()) {
        let upper = name.to_ascii_uppercase();
        let mut title = name.to_vec();
        title[0] = title[0].to_ascii_uppercase();
        for n in [name.to_vec(), upper, title] {
            assert!(maybe_request_special(&n), "{}", String::from_utf8_lossy(&n));
        }
    }
    // What it is for: a browser's usual fields need no list comparison.
    for n in [
        "Accept",
        "Accept-Encoding",
        "Cookie",
        "User-Agent",
        "Sec-Fetch-Mode",
        "Referer",
        "Priority",
    ] {
        assert!(!maybe_request_special(n.as_bytes()), "{n}");
    }
    assert!(!maybe_request_special(b""));
    assert!(!maybe_request_special(&[b'x'; 40]));
}

#[test]
fn request_rebuild() {
    let f = fwd(b"h", b"rid-1");
    let cases: &[(&str, &[u8], String)] = &[
        (
            "kept lines as the client wrote them, split where fields are dropped",
            b"GET / HTTP/1.1\r\nHost: h\r\nuser-agent:t \r\nX-Forwarded-For: 198.51.100.1\r\nAccept:  */*\t\r\n\
              X-Empty:\r\nConnection: keep-alive\r\nCookie: a=1\r\n\r\n",
            format!(
                "kept|GET / HTTP/1.1\r\nHost: h\r\nuser-agent:t \r\nAccept:  */*\t\r\nX-Empty:\r\nCookie: a=1\r\n\
                 X-Forwarded-For: 198.51.100.1, 192.0.2.7\r\n{FWD_BLOCK}X-Request-ID: rid-1\r\n\r\n"
            ),
        ),
        (
            "plain GET: appended to out, headers in order",
            b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
            format!(
                "kept|GET /p?q=1 HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\nAccept: */*\r\n\
                 X-Forwarded-For: 192.0.2.7\r\n{FWD_BLOCK}X-Request-ID: rid-1\r\n\r\n"
            ),
        ),
        (
            "hop-by-hop removed, including Connection-named ones",
            b"POST /u HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\nX-Secret: 1\r\nx-secret: 2\r\n\
              Expect: 100-continue\r\nUpgrade: websocket\r\nContent-Length: 3\r\nX-Kept: yes\r\n\r\n",
            format!(
                "kept|POST /u HTTP/1.1\r\nHost: h\r\nX-Kept: yes\r\nX-Forwarded-For: 192.0.2.7\r\n{FWD_BLOCK}\
                 X-Request-ID: rid-1\r\nContent-Length: 3\r\n\r\n"
            ),
        ),
        (
            "XFF appended to every earlier value; spoofed forwarding headers replaced",
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 198.51.100.1, 198.51.100.2\r\nHost: h\r\nX-Real-IP: 1.1.1.1\r\n\
              x-forwarded-for: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\
              X-Forwarded-Port: 1\r\nX-Forwarded-For:\r\n\r\n",
            format!(
                "kept|GET / HTTP/1.1\r\nHost: h\r\n\
                 X-Forwarded-For: 198.51.100.1, 198.51.100.2, 203.0.113.9, 192.0.2.7\r\n{FWD_BLOCK}\
                 X-Request-ID: rid-1\r\n\r\n"
            ),
        ),
        (
            "X-Request-ID kept, none added; chunked framing",
            b"POST / HTTP/1.1\r\nHost: h\r\nx-request-id: abc\r\nTransfer-Encoding: chunked\r\n\r\n",
            format!(
                "kept|POST / HTTP/1.1\r\nHost: h\r\nx-request-id: abc\r\nX-Forwarded-For: 192.0.2.7\r\n{FWD_BLOCK}\
                 Transfer-Encoding: chunked\r\n\r\n"
            ),
        ),
        (
            "upgrade: Connection and Upgrade rewritten at the end",
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
            format!(
                "kept|GET /ws HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: k\r\nX-Forwarded-For: 192.0.2.7\r\n{FWD_BLOCK}\
                 X-Request-ID: rid-1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            ),
        ),
        (
            "Connection cannot strip Host; X-Forwarded-For named in Connection is still replaced",
            b"GET / HTTP/1.1\r\nConnection: Host, X-Forwarded-For\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
            format!(
                "kept|GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n{FWD_BLOCK}\
                 X-Request-ID: rid-1\r\n\r\n"
            ),
        ),
        (
            "HTTP/1.0 without Host: sent as 1.1 with the Host the caller chose, no Connection header",
            b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            format!(
                "kept|GET /old HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n{FWD_BLOCK}X-Request-ID: rid-1\r\n\r\n"
            ),
        ),
        (
            "absolute-form: origin form upstream, the authority (fwd.host) replaces Host",
            b"GET http://h/abs?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
            format!(
                "kept|GET /abs?q=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n{FWD_BLOCK}X-Request-ID: rid-1\r\n\r\n"
            ),
        ),
        (
            "absolute-form without a path: `/` added before the query",
            b"GET HTTPS://h?x HTTP/1.1\r\nHost: h\r\n\r\n",
            format!(
                "kept|GET /?x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\n{FWD_BLOCK}X-Request-ID: rid-1\r\n\r\n"
            ),
        ),
    ];
    for (label, raw, want) in cases {
        assert_eq!(&rebuilt_request(raw, &f), want, "{label}");
    }

    // IPv6 clients are written bare; IPv4-mapped ones as IPv4.
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let ip_text = |ip: IpAddr| ip.to_canonical().to_string().into_bytes();
    let v6 = ip_text(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
    let v6 = Forwarded {
        client_ip: &v6,
        peer_ip: &v6,
        ..f
    };
    assert!(rebuilt_request(raw, &v6).contains("X-Forwarded-For: 2001:db8::1\r\n"));
    let mapped = ip_text(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped()));
    let mapped = Forwarded {
        client_ip: &mapped,
        ..f
    };
    assert!(rebuilt_request(raw, &mapped).contains("X-Real-IP: 192.0.2.9\r\n"));
}

#[test]
fn a_trusted_proxy_keeps_its_forwarded_proto_and_port() {
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n\
                X-Forwarded-Port: 443\r\nX-Real-IP: 1.1.1.1\r\n\r\n";
    let trusted = Forwarded {
        client_ip: b"198.51.100.1",
        peer_ip: b"127.0.0.2",
        from_trusted: true,
        ..fwd(b"h", b"rid")
    };
    let out = rebuilt_request(raw, &trusted);
    assert!(
        out.contains(
            "X-Forwarded-For: 198.51.100.1, 127.0.0.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\
             X-Forwarded-Port: 443\r\nX-Real-IP: 198.51.100.1\r\n"
        ),
        "{out}"
    );
    // Without the headers, kedge's own values.
    let out = rebuilt_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &trusted);
    assert!(
        out.contains("X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Forwarded-Port: 8080\r\n"),
        "{out}"
    );
    // From anyone else they are replaced.
    let out = rebuilt_request(raw, &fwd(b"h", b"rid"));
    assert!(
        out.contains("X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nX-Forwarded-Port: 8080\r\n"),
        "{out}"
    );
}

/// Parses the response `raw` (after a HEAD request when `head_request`) and rebuilds it for the client.
fn rebuilt_response(raw: &[u8], head_request: bool, out_framing: Framing, client: Version, keep_alive: bool) -> String {
    let mut headers = Vec::new();
    let Ok(Parsed::Complete(head)) = parse_response(raw, &LIMITS, head_request, &mut headers) else {
        panic!("unparsable response {:?}", String::from_utf8_lossy(raw))
    };
    let mut out = Vec::new();
    let to = ToClient {
        framing: out_framing,
        version: client,
        keep_alive,
    };
    write_response_head(&mut out, raw, &head, &headers, to, b"");
    String::from_utf8(out).unwrap()
}

#[test]
fn response_rebuild() {
    use Framing::{Chunked, CloseDelimited, Length};
    use Version::{Http10, Http11};
    let plain =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\n\
                  Keep-Alive: timeout=5\r\nX-Hop: 1\r\nTrailer: X-Sum\r\nSet-Cookie: a=1\r\n\r\n";
    let kept = "Content-Type: text/plain\r\nSet-Cookie: a=1\r\n";
    let chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n";
    let gzip_chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
    let gzip_close = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
    let until_close = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n";
    let switching =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n";
    let head_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nETag: \"e\"\r\n\r\n";
    let not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n";
    let no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 100\r\n\r\n";
    let no_reason = b"HTTP/1.1 299\r\nContent-Length: 0\r\n\r\n";
    // Kept lines go out as written (spacing, case and empty values too); dropped ones split them.
    let as_written = b"HTTP/1.1 200 OK\r\nserver:nginx \r\nX-A:  two  words\t\r\nContent-Length: 2\r\nX-Empty:\r\n\
                       Connection: x-hop\r\nX-B: b\r\nx-hop: 1\r\nX-Last: z\r\n\r\n";
    #[rustfmt::skip]
    let cases: &[(&str, String, String)] = &[
        ("keep-alive to 1.1: no Connection header",
            rebuilt_response(plain, false, Length(5), Http11, true),
            format!("HTTP/1.1 200 OK\r\n{kept}Content-Length: 5\r\n\r\n")),
        ("closing",
            rebuilt_response(plain, false, Length(5), Http11, false),
            format!("HTTP/1.1 200 OK\r\n{kept}Content-Length: 5\r\nConnection: close\r\n\r\n")),
        ("keep-alive to 1.0",
            rebuilt_response(plain, false, Length(5), Http10, true),
            format!("HTTP/1.1 200 OK\r\n{kept}Content-Length: 5\r\nConnection: keep-alive\r\n\r\n")),
        ("chunked with CL: CL dropped",
            rebuilt_response(chunked, false, Chunked, Http11, true),
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n".into()),
        ("chunked re-framed for a 1.0 client",
            rebuilt_response(chunked, false, CloseDelimited, Http10, false),
            "HTTP/1.1 201 Created\r\nConnection: close\r\n\r\n".into()),
        ("other codings re-announced before chunked",
            rebuilt_response(gzip_chunked, false, Chunked, Http11, true),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".into()),
        ("other codings on a close-delimited body",
            rebuilt_response(gzip_close, false, CloseDelimited, Http11, false),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n".into()),
        ("close-delimited from a 1.0 upstream, chunked to a 1.1 client",
            rebuilt_response(until_close, false, Chunked, Http11, true),
            "HTTP/1.1 200 OK\r\nServer: old\r\nTransfer-Encoding: chunked\r\n\r\n".into()),
        ("101 keeps Upgrade",
            rebuilt_response(switching, false, Framing::None, Http11, true),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\nConnection: upgrade\r\n\r\n".into()),
        ("HEAD keeps the representation's length",
            rebuilt_response(head_reply, true, Framing::None, Http11, true),
            "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 100\r\n\r\n".into()),
        ("304 keeps the representation's length",
            rebuilt_response(not_modified, false, Framing::None, Http11, true),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n".into()),
        ("204 drops Content-Length",
            rebuilt_response(no_content, false, Framing::None, Http11, true),
            "HTTP/1.1 204 No Content\r\n\r\n".into()),
        ("empty reason keeps the SP",
            rebuilt_response(no_reason, false, Length(0), Http11, true),
            "HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n".into()),
        ("kept lines as the upstream wrote them, in order",
            rebuilt_response(as_written, false, Length(2), Http11, true),
            "HTTP/1.1 200 OK\r\nserver:nginx \r\nX-A:  two  words\t\r\nX-Empty:\r\nX-B: b\r\nX-Last: z\r\nContent-Length: 2\r\n\r\n".into()),
    ];
    for (label, got, want) in cases {
        assert_eq!(got, want, "{label}");
    }
}

#[test]
fn canned_answers() {
    let mut out = b"earlier|".to_vec();
    write_canned(&mut out, 404, "no route for host", b"", true);
    let want = "earlier|HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 18\r\n\
                Connection: close\r\n\r\nno route for host\n";
    assert_eq!(String::from_utf8_lossy(&out), want);
    out.clear();
    write_canned(&mut out, 503, "", b"", false);
    let want =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 1\r\n\r\n\n";
    assert_eq!(String::from_utf8_lossy(&out), want);
    for status in [400, 404, 408, 413, 414, 417, 431, 501, 502, 503, 504, 505] {
        assert!(!reason_phrase(status).is_empty(), "{status}");
    }
    assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
    assert_eq!(reason_phrase(599), "");
    assert_eq!(CONTINUE, b"HTTP/1.1 100 Continue\r\n\r\n");
}

#[test]
fn default_limits_match_the_config_defaults() {
    let want = Limits {
        max_request_line: 8192,
        max_header_bytes: 32768,
        max_headers: 100,
    };
    assert_eq!(Limits::default(), want);
}

#[test]
fn a_rewritten_target_replaces_the_clients() {
    let raw = b"GET http://shop.example.com/something/new?x=1 HTTP/1.1\r\nHost: other\r\n\r\n";
    let f = Forwarded {
        target: Some(b"/new?x=1"),
        ..fwd(b"shop.example.com", b"rid")
    };
    let out = rebuilt_request(raw, &f);
    assert!(out.starts_with("kept|GET /new?x=1 HTTP/1.1\r\n"), "{out}");
    assert!(out.contains("Host: shop.example.com\r\n"), "{out}");
}

#[test]
fn a_rewritten_host_replaces_host_and_keeps_x_forwarded_host() {
    for raw in [
        &b"GET /a HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"[..],
        b"GET http://shop.example.com/a HTTP/1.1\r\nHost: other\r\n\r\n",
    ] {
        let f = Forwarded {
            upstream_host: Some(b"inner.example.com"),
            ..fwd(b"shop.example.com", b"rid")
        };
        let out = rebuilt_request(raw, &f);
        assert_eq!(out.matches("Host: ").count(), 2, "{out}");
        assert!(out.contains("\r\nHost: inner.example.com\r\n"), "{out}");
        assert!(out.contains("X-Forwarded-Host: shop.example.com\r\n"), "{out}");
    }
}

#[test]
fn redirects_carry_their_location() {
    let mut out = Vec::new();
    write_location(&mut out, 301, &[b"https://example.com", b"/new"], b"", false);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 301 Moved Permanently\r\nLocation: https://example.com/new\r\n"),
        "{text}"
    );
    assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
    let mut out = Vec::new();
    write_redirect(&mut out, b"www.example.com", 443, b"", Some(b"dropped"), true);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Location: https://www.example.com/\r\n"), "{text}");
    assert!(text.contains("Connection: close\r\n"), "{text}");
    let mut out = Vec::new();
    write_redirect(&mut out, b"[::1]", 8443, b"/a/b", Some(b"x=1&y"), false);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Location: https://[::1]:8443/a/b?x=1&y\r\n"), "{text}");
    assert!(!text.contains("Connection:"), "{text}");
}

/// kedge's own header lines (HSTS, an affinity cookie, a 401's challenge) go in place, just
/// before the blank line that ends the head, whatever else the head holds.
#[test]
fn extra_header_lines_end_the_head() {
    let extra = b"Strict-Transport-Security: max-age=60\r\nSet-Cookie: a=1\r\n";
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up: 1\r\n\r\nhi";
    let mut headers = Vec::new();
    let Ok(Parsed::Complete(head)) = parse_response(raw, &LIMITS, false, &mut headers) else {
        panic!("unparsable")
    };
    let mut out = Vec::new();
    let to = ToClient {
        framing: Framing::Length(2),
        version: Version::Http11,
        keep_alive: false,
    };
    write_response_head(&mut out, raw, &head, &headers, to, extra);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 200 OK\r\nX-Up: 1\r\nContent-Length: 2\r\nConnection: close\r\n\
         Strict-Transport-Security: max-age=60\r\nSet-Cookie: a=1\r\n\r\n"
    );
    let mut out = Vec::new();
    write_canned(
        &mut out,
        401,
        "authentication required",
        b"WWW-Authenticate: Basic realm=\"r\"\r\n",
        false,
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\n\
         WWW-Authenticate: Basic realm=\"r\"\r\n\r\nauthentication required\n"
    );
    let mut out = Vec::new();
    write_location(&mut out, 302, &[b"/app"], b"X-A: b\r\n", true);
    assert!(String::from_utf8_lossy(&out).ends_with("Connection: close\r\nX-A: b\r\n\r\n"));
}

/// The head writers read the Connection fields once per head; every field they pass on or drop
/// must be the one `passes` (which reads them for each field) passes or drops, whatever the
/// Connection fields name: nothing else, `close` (a field called `Close` goes), a hop-by-hop
/// name, another name, or several lines.
#[test]
fn connection_named_fields_match_passes() {
    let connections: &[&[u8]] = &[
        b"",
        b"Connection: keep-alive\r\n",
        b"Connection: close\r\n",
        b"Connection: Keep-Alive, CLOSE\r\n",
        b"Connection: upgrade, te\r\n",
        b"Connection: keep-alive, X-Hop\r\n",
        b"Connection: , keep-alive ,\r\n",
        b"Connection: close\r\nConnection: x-hop\r\n",
    ];
    let fields = b"Close: 1\r\nX-Hop: 2\r\nX-Up: 3\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n";
    for conn in connections {
        let raw = [&b"HTTP/1.1 200 OK\r\n"[..], conn, fields, b"Content-Length: 0\r\n\r\n"].concat();
        let mut headers = Vec::new();
        let Ok(Parsed::Complete(head)) = parse_response(&raw, &LIMITS, false, &mut headers) else {
            panic!("unparsable response {:?}", String::from_utf8_lossy(&raw))
        };
        let to = ToClient {
            framing: Framing::Length(0),
            version: Version::Http11,
            keep_alive: true,
        };
        let mut out = Vec::new();
        write_response_head(&mut out, &raw, &head, &headers, to, b"");
        let out = String::from_utf8(out).unwrap();
        for h in &headers {
            let name = &raw[h.name.clone()];
            let line = format!("\r\n{}: ", String::from_utf8_lossy(name));
            if name.eq_ignore_ascii_case(b"content-length") {
                continue; // rewritten by kedge
            }
            assert_eq!(
                out.contains(&line),
                passes(&raw, &headers, name),
                "response with {:?}: {:?} in {out:?}",
                String::from_utf8_lossy(conn),
                String::from_utf8_lossy(name),
            );
        }
        let req = [&b"GET / HTTP/1.1\r\nHost: h\r\n"[..], conn, fields, b"\r\n"].concat();
        let out = rebuilt_request(&req, &fwd(b"h", b"rid"));
        let (_, headers) = request(&req);
        for h in &headers {
            let name = &req[h.name.clone()];
            if name.eq_ignore_ascii_case(b"host") {
                continue; // Host is never dropped for being named
            }
            let line = format!("\r\n{}: ", String::from_utf8_lossy(name));
            assert_eq!(
                out.contains(&line),
                passes(&req, &headers, name),
                "request with {:?}: {:?} in {out:?}",
                String::from_utf8_lossy(conn),
                String::from_utf8_lossy(name),
            );
        }
    }
}

/// The reg-name table holds what RFC 3986 lets a reg-name hold besides percent-encodings.
#[test]
fn eq_ci_is_eq_ignore_ascii_case() {
    // Every pair of bytes at the first, a middle and the last position of names of every
    // length up to 20 (the word, overlapping word and byte paths), the rest of the name
    // equal but for case.
    let base = b"Content-Length-X-Yz0";
    let lower = base.to_ascii_lowercase();
    for n in 0..=base.len() {
        for at in [0, n / 2, n.saturating_sub(1)] {
            if at >= n {
                continue;
            }
            for x in 0..=255u8 {
                for y in 0..=255u8 {
                    let mut a = base[..n].to_vec();
                    let mut b = lower[..n].to_vec();
                    a[at] = x;
                    b[at] = y;
                    assert_eq!(eq_ci(&a, &b), a.eq_ignore_ascii_case(&b), "{a:?} {b:?}");
                }
            }
        }
    }
    assert!(!eq_ci(b"host", b"hosts"));
    assert!(eq_ci(b"", b""));
}

#[test]
fn reg_name_table() {
    for b in 0..=255u8 {
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
        assert_eq!(REG_NAME[usize::from(b)], allowed, "byte {b}");
        assert_eq!(valid_host(&[b'a', b]), allowed || b == b':', "byte {b}");
    }
}
