//! Request smuggling, end to end: every framing or head shape that two HTTP/1.1 parsers could read
//! differently (RFC 9112 §2.2, §5, §6.1, §6.3, §7.1; RFC 9110 §5.5, §5.6) is refused with a canned
//! answer, the client connection is closed, and not one byte of it reaches the upstream: a raw
//! recorder behind a catch-all route that logs every byte and every connection it accepts.
//!
//! Each row of a table is sent in ONE write on a fresh connection to one kedge per table. The
//! check that nothing reached the upstream is made deterministic with a probe: after the refusal
//! a valid `GET /probe/<row>` goes through on a new connection, and the first connection the
//! upstream accepted since the row began must be the probe's, starting with the probe's bytes.
//! (The recorder answers `Connection: close`, so kedge never pools a connection, and a request
//! kedge wrongly forwarded would have been connected before the refusal came back, so it would be
//! queued for accept ahead of the probe.)
//!
//! Whitespace around `chunked` (judgment calls, documented): OWS after the colon and at the end
//! of the value is part of the field syntax (RFC 9110 §5.5: leading and trailing whitespace is
//! excluded from the value), so `Transfer-Encoding:\tchunked\t` is a valid chunked request and is
//! a positive control row. Whitespace at the start of a line is not OWS: after another field it is
//! obs-fold (RFC 9112 §5.2), right after the request line it is whitespace before the first field
//! (RFC 9112 §2.2); both are refused with 400 whatever the folded text says.

use std::io::ErrorKind;
use std::time::Duration;

use crate::support::{Client, ConnLog, Driver, Kedge, RecordingUpstream, both_drivers, route_all, wait_until};

/// What a row expects.
#[derive(Clone, Copy)]
enum Expect {
    /// This canned status, `Connection: close`, the connection closed, nothing at the upstream.
    Refused(u16),
    /// The upstream's 200, after it received exactly one request with this body (re-framed as
    /// chunked when `chunked`, else with one Content-Length) and these trailer lines.
    Forwarded {
        body: &'static [u8],
        chunked: bool,
        trailers: &'static str,
    },
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Refused(status) => write!(f, "expected {status}"),
            Expect::Forwarded {
                body,
                chunked,
                trailers,
            } => write!(
                f,
                "expected 200 with body \"{}\" (chunked: {chunked}) and trailers {trailers:?} upstream",
                body.escape_ascii()
            ),
        }
    }
}

/// One row: a label for failure messages, the bytes sent in one write, the expectation.
struct Case {
    label: &'static str,
    raw: &'static [u8],
    expect: Expect,
}

const fn bad(label: &'static str, raw: &'static [u8], status: u16) -> Case {
    Case {
        label,
        raw,
        expect: Expect::Refused(status),
    }
}

/// A valid head with `Transfer-Encoding: chunked` and `$body` after it, as bytes.
macro_rules! chunked {
    ($body:literal) => {
        concat!(
            "POST /c HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n",
            $body
        )
        .as_bytes()
    };
}

/// Malformed or ambiguous request heads.
const HEAD_CASES: &[Case] = &[
    // RFC 9112 §6.1: a request with both "ought to be handled as an error"; as a proxy kedge
    // cannot forward it unambiguously, so 400 and close (§6.3 item 3).
    bad(
        "Content-Length then Transfer-Encoding: chunked",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    bad(
        "Transfer-Encoding: chunked then Content-Length",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    // RFC 9112 §6.3 item 4: a request whose final coding is not chunked cannot be delimited: 400.
    bad(
        "Transfer-Encoding: chunked, gzip",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    bad(
        "Transfer-Encoding: gzip",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        400,
    ),
    // RFC 9112 §6.1: an unknown coding "SHOULD respond with 501".
    bad(
        "Transfer-Encoding: gzip, chunked",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    bad(
        "Transfer-Encoding: foo, chunked",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    bad(
        "Transfer-Encoding: gzip and chunked on two lines",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    // RFC 9112 §6.1: "A sender MUST NOT apply the chunked transfer coding more than once".
    bad(
        "Transfer-Encoding: chunked, chunked",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    bad(
        "Transfer-Encoding: chunked on two lines",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    bad(
        "Transfer-Encoding: xchunked",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    bad(
        "Transfer-Encoding: \"chunked\" (quoted)",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n",
        400,
    ),
    // See the module doc: leading whitespace on a line is obs-fold or §2.2, never OWS.
    bad(
        "Transfer-Encoding value folded onto the next line",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    bad(
        "tab then Transfer-Encoding: chunked after a field (obs-fold)",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\n\tTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    bad(
        "space then Transfer-Encoding: chunked right after the request line",
        b"POST /h HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: s.test\r\n\r\n0\r\n\r\n",
        400,
    ),
    bad(
        "Transfer-Encoding : chunked (space before colon)",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
    bad(
        "Transfer-Encoding: chunked on HTTP/1.0",
        b"POST /h HTTP/1.0\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    // RFC 9110 §8.6: Content-Length = 1*DIGIT; RFC 9112 §6.3 item 5: invalid -> 400.
    bad(
        "Content-Length: +5",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    bad(
        "Content-Length: -5",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: -5\r\n\r\nhello",
        400,
    ),
    bad(
        "Content-Length: 0x5",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 0x5\r\n\r\nhello",
        400,
    ),
    bad(
        "Content-Length: 5 5",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5 5\r\n\r\nhello",
        400,
    ),
    bad(
        "Content-Length: 5,6",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5,6\r\n\r\nhello",
        400,
    ),
    bad(
        "Content-Length: (empty)",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: \r\n\r\nhello",
        400,
    ),
    bad(
        "Content-Length: 1e3",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 1e3\r\n\r\nhello",
        400,
    ),
    bad(
        "Content-Length: 2^64 (20 digits, overflows u64)",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 18446744073709551616\r\n\r\nhello",
        400,
    ),
    bad(
        "Content-Length: 20 nines",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
        400,
    ),
    bad(
        "two Content-Length headers that differ",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    // RFC 9112 §5.2: a server that does not unfold MUST reject obs-fold with 400.
    bad(
        "obs-fold with a space",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        400,
    ),
    bad(
        "obs-fold with a tab",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nX-A: a\r\n\tb\r\nContent-Length: 0\r\n\r\n",
        400,
    ),
    // RFC 9112 §5.1: whitespace between name and colon MUST be rejected with 400.
    bad(
        "Content-Length : 5 (space before colon)",
        b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length : 5\r\n\r\nhello",
        400,
    ),
    bad(
        "Host<tab>: x (tab before colon)",
        b"GET /h HTTP/1.1\r\nHost\t: x\r\n\r\n",
        400,
    ),
    // RFC 9112 §2.2: a bare CR MUST be rejected or replaced; kedge rejects every line end that is
    // not CRLF, bare LF included (which §2.2 lets a recipient accept), since the upstream might
    // read it differently.
    bad("bare LF ending the request line", b"GET /h HTTP/1.1\nHost: s.test\r\n\r\n", 400),
    bad("bare LF ending a header line", b"GET /h HTTP/1.1\r\nHost: s.test\nX-A: a\r\n\r\n", 400),
    bad("bare LF LF as the head terminator", b"GET /h HTTP/1.1\r\nHost: s.test\n\n", 400),
    bad("CRLF then bare LF as the head terminator", b"GET /h HTTP/1.1\r\nHost: s.test\r\n\n", 400),
    bad("bare CR ending the request line", b"GET /h HTTP/1.1\rHost: s.test\r\n\r\n", 400),
    bad("bare CR ending a header line", b"GET /h HTTP/1.1\r\nHost: s.test\rX-A: a\r\n\r\n", 400),
    bad("bare CR inside a header value", b"GET /h HTTP/1.1\r\nHost: s.test\r\nX-A: a\rb\r\n\r\n", 400),
    bad("CRLF then bare CR as the head terminator", b"GET /h HTTP/1.1\r\nHost: s.test\r\n\rX\r\n\r\n", 400),
    // RFC 9110 §5.5: field values are VCHAR, obs-text, SP and HTAB; NUL, CR and LF MUST be
    // rejected or replaced, other CTLs are invalid.
    bad("NUL in a header value", b"GET /h HTTP/1.1\r\nHost: s.test\r\nX-A: a\x00b\r\n\r\n", 400),
    bad("0x01 in a header value", b"GET /h HTTP/1.1\r\nHost: s.test\r\nX-A: a\x01b\r\n\r\n", 400),
    bad("DEL (0x7f) in a header value", b"GET /h HTTP/1.1\r\nHost: s.test\r\nX-A: a\x7fb\r\n\r\n", 400),
    bad("NUL in Content-Length", b"POST /h HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5\x00\r\n\r\nhello", 400),
    // RFC 9110 §5.1: a field name is a token (tchar only).
    bad("header name with a space (X Y:)", b"GET /h HTTP/1.1\r\nHost: s.test\r\nX Y: 1\r\n\r\n", 400),
    bad("header name with @ (X@Y:)", b"GET /h HTTP/1.1\r\nHost: s.test\r\nX@Y: 1\r\n\r\n", 400),
    bad("quoted header name (\"X\":)", b"GET /h HTTP/1.1\r\nHost: s.test\r\n\"X\": 1\r\n\r\n", 400),
    bad("non-ASCII byte in a header name", b"GET /h HTTP/1.1\r\nHost: s.test\r\nX\xc3\xa9Y: 1\r\n\r\n", 400),
    bad("empty header name (: 1)", b"GET /h HTTP/1.1\r\nHost: s.test\r\n: 1\r\n\r\n", 400),
    // RFC 9112 §3.2: no Host, or more than one Host field line, on HTTP/1.1 -> 400.
    bad("missing Host on HTTP/1.1", b"GET /h HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    bad("two Host headers", b"GET /h HTTP/1.1\r\nHost: s.test\r\nHost: evil.test\r\n\r\n", 400),
    bad("two identical Host headers", b"GET /h HTTP/1.1\r\nHost: s.test\r\nHost: s.test\r\n\r\n", 400),
    // RFC 9112 §3.2 also requires 400 for "a Host header field with an invalid field value".
    // Host = uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2), and SP is not in that
    // grammar (a bare comma is: reg-name allows sub-delims, so the check is the grammar, not "no
    // commas"). This is two Host values in one line, which is what RFC 9110 §5.3 combining makes
    // of the two-Host case above.
    bad(
        "Host with two values in one line (s.test, evil.test)",
        b"GET /h HTTP/1.1\r\nHost: s.test, evil.test\r\n\r\n",
        400,
    ),
    bad("Host with userinfo", b"GET /h HTTP/1.1\r\nHost: evil@s.test\r\n\r\n", 400),
    // RFC 9110 §4.2.4: userinfo in an http URI is an error; kedge would otherwise route on one
    // name and forward another.
    bad("absolute-form target with userinfo", b"GET http://evil@s.test/x HTTP/1.1\r\nHost: s.test\r\n\r\n", 400),
    // RFC 9112 §3.2: the target's form must fit the method: asterisk-form with OPTIONS only,
    // authority-form with CONNECT only (which kedge refuses anyway).
    bad("asterisk-form with GET", b"GET * HTTP/1.1\r\nHost: s.test\r\n\r\n", 400),
    bad("asterisk-form with POST", b"POST * HTTP/1.1\r\nHost: s.test\r\nContent-Length: 0\r\n\r\n", 400),
    bad("authority-form with GET", b"GET s.test:80 HTTP/1.1\r\nHost: s.test\r\n\r\n", 400),
    // Shapes outside RFC 3986 that an upstream could route differently from kedge.
    bad("fragment in the target", b"GET /public#/../admin HTTP/1.1\r\nHost: s.test\r\n\r\n", 400),
    bad("backslash in the path", b"GET /public\\..\\admin HTTP/1.1\r\nHost: s.test\r\n\r\n", 400),
    bad("broken percent-encoding", b"GET /a%zz HTTP/1.1\r\nHost: s.test\r\n\r\n", 400),
];

/// A valid chunked head followed by a malformed body, all in the same write (RFC 9112 §7.1).
const CHUNKED_CASES: &[Case] = &[
    bad("chunk size +5", chunked!("+5\r\nhello\r\n0\r\n\r\n"), 400),
    bad("chunk size -5", chunked!("-5\r\nhello\r\n0\r\n\r\n"), 400),
    bad("chunk size 0x5", chunked!("0x5\r\nhello\r\n0\r\n\r\n"), 400),
    bad("chunk size 1_0", chunked!("1_0\r\nhello, world!!!\r\n0\r\n\r\n"), 400),
    bad(
        "chunk size of 17 hex digits",
        chunked!("fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    bad("space before the chunk size", chunked!(" 5\r\nhello\r\n0\r\n\r\n"), 400),
    bad("tab before the chunk size", chunked!("\t5\r\nhello\r\n0\r\n\r\n"), 400),
    bad(
        "space after the chunk size, no extension",
        chunked!("5 \r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    bad("empty chunk-size line", chunked!("\r\nhello\r\n0\r\n\r\n"), 400),
    bad(
        "chunk-size line ending with bare LF",
        chunked!("5\nhello\r\n0\r\n\r\n"),
        400,
    ),
    bad(
        "chunk-size line ending with bare CR",
        chunked!("5\rhello\r\n0\r\n\r\n"),
        400,
    ),
    bad(
        "last-chunk line ending with bare LF",
        chunked!("5\r\nhello\r\n0\n\r\n"),
        400,
    ),
    bad(
        "0x01 in a chunk extension value",
        chunked!("5;a=\x01\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    bad(
        "NUL after a chunk extension name",
        chunked!("5;a\x00\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    bad(
        "DEL in a quoted chunk extension",
        chunked!("5;a=\"\x7f\"\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    bad(
        "bare LF inside a chunk extension",
        chunked!("5;a\nb\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    bad(
        "chunk data not followed by CRLF",
        chunked!("5\r\nhelloXX0\r\n\r\n"),
        400,
    ),
    bad(
        "chunk data longer than its size",
        chunked!("3\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    bad("invalid trailer line", chunked!("0\r\nbad trailer\r\n\r\n"), 400),
    bad("trailer line ending with bare LF", chunked!("0\r\nX-T: 1\n\r\n"), 400),
    bad("obs-fold in the trailers", chunked!("0\r\nX-T: 1\r\n 2\r\n\r\n"), 400),
];

/// Positive controls for the same runner: valid requests get the upstream's 200, intact.
const VALID_CASES: &[Case] = &[
    Case {
        label: "chunked with extensions (one with BWS and a quoted value) and a trailer",
        raw: chunked!("5;ext=val\r\nhello\r\n6 ; q=\"a b\"\r\n world\r\n0\r\nX-Trailer: t1\r\n\r\n"),
        expect: Expect::Forwarded {
            body: b"hello world",
            chunked: true,
            trailers: "X-Trailer: t1\r\n",
        },
    },
    Case {
        label: "Content-Length: 0",
        raw: b"POST /v HTTP/1.1\r\nHost: s.test\r\nContent-Length: 0\r\n\r\n",
        expect: Expect::Forwarded {
            body: b"",
            chunked: false,
            trailers: "",
        },
    },
    // RFC 9112 §6.3 item 5 / RFC 9110 §8.6: a list of identical values may be taken as one.
    Case {
        label: "Content-Length: 5, 5",
        raw: b"POST /v HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5, 5\r\n\r\nhello",
        expect: Expect::Forwarded {
            body: b"hello",
            chunked: false,
            trailers: "",
        },
    },
    Case {
        label: "two identical Content-Length lines",
        raw: b"POST /v HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        expect: Expect::Forwarded {
            body: b"hello",
            chunked: false,
            trailers: "",
        },
    },
    // RFC 9112 §7: transfer-coding names are case-insensitive; kedge re-frames in lower case.
    Case {
        label: "Transfer-Encoding: CHUNKED (upper case)",
        raw: b"POST /v HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        expect: Expect::Forwarded {
            body: b"hello",
            chunked: true,
            trailers: "",
        },
    },
    // See the module doc: OWS around the value is not part of it.
    Case {
        label: "Transfer-Encoding:<tab>chunked<tab> (OWS)",
        raw: b"POST /v HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding:\tchunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        expect: Expect::Forwarded {
            body: b"hello",
            chunked: true,
            trailers: "",
        },
    },
];

/// kedge in front of the recorder; short client timeouts, so a row that kedge wrongly waits on
/// fails as a 408 within seconds instead of hanging.
fn start(driver: Driver) -> (RecordingUpstream, Kedge) {
    let up = RecordingUpstream::start();
    let config = format!(
        "[client]\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"\n\n{}",
        route_all(&[up.addr()])
    );
    let kedge = Kedge::start(driver, &config);
    (up, kedge)
}

/// Runs every row against one kedge and fails once at the end, listing every failing row.
fn run_table(driver: Driver, table: &[Case]) {
    let (up, kedge) = start(driver);
    let failures: Vec<String> = table
        .iter()
        .enumerate()
        .filter_map(|(i, case)| {
            run_row(&kedge, &up, i, case).err().map(|why| {
                format!(
                    "row {i} {:?} ({:?}), bytes \"{}\": {why}",
                    case.label,
                    case.expect,
                    case.raw.escape_ascii()
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed on {}:\n{}",
        failures.len(),
        table.len(),
        driver.name(),
        failures.join("\n")
    );
}

/// Sends one row in one write and checks the answer, the connection and what the upstream got.
fn run_row(kedge: &Kedge, up: &RecordingUpstream, row: usize, case: &Case) -> Result<(), String> {
    let before = up.conns().len();
    let since = |up: &RecordingUpstream| up.conns().split_off(before);
    let mut c = Client::try_connect(kedge.addr()).map_err(|e| format!("connect: {e}"))?;
    c.try_send(case.raw).map_err(|e| format!("send: {e}"))?;
    let resp = c
        .try_read_response(false)
        .map_err(|e| format!("no response ({e}); the upstream got: {}", describe(&since(up))))?;
    match case.expect {
        Expect::Refused(status) => {
            if resp.status != status {
                return Err(format!(
                    "got {} {:?}; the upstream got: {}",
                    resp.status,
                    resp.text().trim(),
                    describe(&since(up))
                ));
            }
            if !resp.header_has_token("connection", "close") {
                return Err(format!(
                    "the {status} did not say Connection: close: {:?}",
                    resp.headers
                ));
            }
            if !c.is_closed() {
                return Err(format!("the connection stayed open after the {status}"));
            }
            probe(kedge, row)?;
            match since(up).as_slice() {
                [first] if first.bytes.starts_with(probe_line(row).as_bytes()) => Ok(()),
                other => Err(format!("the upstream got more than the probe: {}", describe(other))),
            }
        }
        Expect::Forwarded {
            body,
            chunked,
            trailers,
        } => {
            if resp.status != 200 || resp.upstream() != Some("recorder") {
                return Err(format!(
                    "got {} {:?}, not the upstream's 200",
                    resp.status,
                    resp.text().trim()
                ));
            }
            probe(kedge, row)?;
            let conns = since(up);
            let [got, probed] = conns.as_slice() else {
                return Err(format!(
                    "expected the request's connection then the probe's; the upstream got: {}",
                    describe(&conns)
                ));
            };
            if !probed.bytes.starts_with(probe_line(row).as_bytes()) {
                return Err(format!(
                    "the second upstream connection is not the probe: {}",
                    describe(&conns)
                ));
            }
            let [req] = got.requests.as_slice() else {
                return Err(format!("not exactly one request upstream: {}", describe(&conns)));
            };
            let sent_line = case.raw.split(|&b| b == b'\r').next().unwrap_or_default();
            if req.request_line().as_bytes() != sent_line {
                return Err(format!("the request line changed: {}", describe(&conns)));
            }
            let (te, cl) = (req.header_all("transfer-encoding"), req.header_all("content-length"));
            let framing_ok = if chunked {
                te == ["chunked"] && cl.is_empty()
            } else {
                te.is_empty() && cl == [body.len().to_string()]
            };
            if !framing_ok || req.body != body || req.trailers != trailers {
                return Err(format!(
                    "the request did not arrive intact (Transfer-Encoding {te:?}, Content-Length {cl:?}, body {:?}, \
                     trailers {:?}): {}",
                    String::from_utf8_lossy(&req.body),
                    req.trailers,
                    describe(&conns)
                ));
            }
            Ok(())
        }
    }
}

fn probe_line(row: usize) -> String {
    format!("GET /probe/{row} HTTP/1.1\r\n")
}

/// A valid request on a new connection, answered by the upstream: once its 200 is back, any
/// connection kedge opened for the row before it has been accepted and recorded.
fn probe(kedge: &Kedge, row: usize) -> Result<(), String> {
    let mut c = Client::try_connect(kedge.addr()).map_err(|e| format!("probe connect: {e}"))?;
    let req = format!("{}Host: probe.test\r\n\r\n", probe_line(row));
    c.try_send(req.as_bytes()).map_err(|e| format!("probe send: {e}"))?;
    match c.try_read_response(false) {
        Ok(resp) if resp.status == 200 => Ok(()),
        Ok(resp) => Err(format!("the probe got {} {:?}", resp.status, resp.text().trim())),
        Err(e) => Err(format!("the probe got no response: {e}")),
    }
}

/// The upstream connections for a failure message: how many, and each one's bytes.
fn describe(conns: &[ConnLog]) -> String {
    let each: Vec<String> = conns.iter().map(|c| format!("{:?}", c.text())).collect();
    format!("{} connection(s) [{}]", conns.len(), each.join(", "))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

both_drivers!(
    fn malformed_heads_never_reach_the_upstream(driver) {
        run_table(driver, HEAD_CASES);
    }
);

both_drivers!(
    fn malformed_chunked_bodies_never_reach_the_upstream(driver) {
        run_table(driver, CHUNKED_CASES);
    }
);

both_drivers!(
    fn valid_framing_passes_the_same_runner(driver) {
        run_table(driver, VALID_CASES);
    }
);

both_drivers!(
    /// A bad chunk-size line that arrives after kedge has already streamed the head and a first
    /// chunk upstream: the client gets a 400 and the upstream connection is closed before the
    /// last chunk, so the upstream never sees a complete request.
    fn bad_chunk_line_mid_stream_cuts_the_upstream_off(driver) {
        let (up, kedge) = start(driver);
        let mut c = Client::connect(kedge.addr());
        c.send(b"POST /stream HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        wait_until(Duration::from_secs(5), "the first chunk at the upstream", || {
            up.conns().first().is_some_and(|c| contains(&c.bytes, b"hello"))
        });
        c.send(b"-5\r\nworld\r\n0\r\n\r\n");
        match c.try_read_response(false) {
            Ok(resp) => {
                assert_eq!(resp.status, 400, "{resp:?}");
                assert!(c.is_closed(), "the connection stayed open after the 400");
            }
            // No answer at all is acceptable too, as long as the connection was closed (not a
            // read timeout). Both drivers answer 400 today.
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset),
                "neither a 400 nor a closed connection after the bad chunk line: {e}"
            ),
        }
        wait_until(Duration::from_secs(5), "kedge to close the upstream connection", || {
            up.conns()[0].closed
        });
        let conns = up.conns();
        assert_eq!(conns.len(), 1, "{}", describe(&conns));
        let got = &conns[0];
        // What the upstream recorded: the rebuilt head and the first chunk, nothing else:
        //   POST /stream HTTP/1.1\r\nHost: s.test\r\nX-Forwarded-For: 127.0.0.1\r\n
        //   X-Forwarded-Proto: http\r\nX-Forwarded-Host: s.test\r\nX-Forwarded-Port: <port>\r\n
        //   X-Real-IP: 127.0.0.1\r\nX-Request-ID: <32 hex>\r\nTransfer-Encoding: chunked\r\n\r\n
        //   5\r\nhello\r\n
        // then EOF: no `-5` line, no `world`, no terminating `0\r\n\r\n`.
        assert!(got.requests.is_empty(), "the upstream saw a complete request: {}", describe(&conns));
        assert!(
            got.bytes.starts_with(b"POST /stream HTTP/1.1\r\n") && got.bytes.ends_with(b"\r\n\r\n5\r\nhello\r\n"),
            "{}",
            describe(&conns)
        );
        assert!(!contains(&got.bytes, b"0\r\n\r\n"), "{}", describe(&conns));
        assert!(!contains(&got.bytes, b"world"), "{}", describe(&conns));
    }
);

both_drivers!(
    /// A body that is `0\r\n\r\n` by Transfer-Encoding and hides a second request after
    /// Content-Length's 5 bytes (the CL.TE / TE.CL shape): 400, closed, `/smuggled` never upstream.
    fn request_hidden_behind_length_and_chunked_is_refused(driver) {
        let (up, kedge) = start(driver);
        let smuggles: [(&str, &[u8]); 2] = [
            (
                "Content-Length first",
                b"POST / HTTP/1.1\r\nHost: s.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                  0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            (
                "Transfer-Encoding first",
                b"POST / HTTP/1.1\r\nHost: s.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n\
                  0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
        ];
        for (i, (label, raw)) in smuggles.into_iter().enumerate() {
            let mut c = Client::connect(kedge.addr());
            c.send(raw);
            let resp = c.read_response();
            assert_eq!(resp.status, 400, "{label}: {resp:?}");
            assert!(resp.header_has_token("connection", "close"), "{label}: {:?}", resp.headers);
            assert!(c.is_closed(), "{label}: the connection stayed open after the 400");
            probe(&kedge, i).unwrap_or_else(|e| panic!("{label}: {e}"));
            let conns = up.conns();
            assert_eq!(conns.len(), i + 1, "{label}: only the probes may reach the upstream: {}", describe(&conns));
            assert!(
                conns[i].bytes.starts_with(probe_line(i).as_bytes()),
                "{label}: {}",
                describe(&conns)
            );
        }
        assert!(!contains(&up.all_bytes(), b"/smuggled"), "{}", describe(&up.conns()));
        assert_eq!(up.connections(), 2);
    }
);
