//! Property tests of the sans-io HTTP/1.1 core, over generated input (bounded case counts, so
//! they run in the normal suite):
//!
//! - no input makes the request or response parser, or the chunked decoder, panic;
//! - a generated request parses to what was generated (method, target, fields, framing), and a
//!   pipeline of them splits at the boundaries the generator knows, whatever the chunking of
//!   the bodies and however the bytes arrive (a second, independent reading of where each
//!   request ends);
//! - what kedge forwards upstream re-parses to the same request: method, origin-form target,
//!   the end-to-end fields in order, the same framing.

use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// Cases per property: enough to find the shapes, few enough for the normal suite.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A generated request body.
#[derive(Debug, Clone)]
enum GenBody {
    None,
    Length(Vec<u8>),
    /// Chunks (each non-empty), and trailer fields.
    Chunked(Vec<Vec<u8>>, Vec<(String, String)>),
}

/// A generated request: what its bytes must parse back to.
#[derive(Debug, Clone)]
struct GenRequest {
    method: &'static str,
    target: String,
    fields: Vec<(String, String)>,
    body: GenBody,
}

impl GenRequest {
    /// The body's bytes, decoded.
    fn data(&self) -> Vec<u8> {
        match &self.body {
            GenBody::None => Vec::new(),
            GenBody::Length(b) => b.clone(),
            GenBody::Chunked(chunks, _) => chunks.concat(),
        }
    }

    /// The request on the wire.
    fn wire(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\nHost: p.example\r\n", self.method, self.target).into_bytes();
        for (n, v) in &self.fields {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        match &self.body {
            GenBody::None => out.extend_from_slice(b"\r\n"),
            GenBody::Length(b) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            GenBody::Chunked(chunks, trailers) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in chunks {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for (n, v) in trailers {
                    out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }
}

/// Field names no proxy rule touches (no hop-by-hop, framing or forwarding names).
fn field_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,12}".prop_map(|s| format!("x-p-{s}"))
}

/// Field values: visible ASCII and inner spaces, no surrounding whitespace.
fn field_value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,30}[!-~])?"
}

fn target() -> impl Strategy<Value = String> {
    (
        vec("[a-zA-Z0-9._~!$&'()*+,;=:@-]{0,8}", 0..5),
        proptest::option::of("[a-zA-Z0-9=&/?._-]{0,16}"),
    )
        .prop_map(|(segments, query)| {
            let mut t = format!("/{}", segments.join("/"));
            if let Some(q) = query {
                t.push('?');
                t.push_str(&q);
            }
            t
        })
}

fn body() -> impl Strategy<Value = GenBody> {
    prop_oneof![
        Just(GenBody::None),
        vec(any::<u8>(), 0..300).prop_map(GenBody::Length),
        (
            vec(vec(any::<u8>(), 1..200), 0..6),
            vec((field_name(), field_value()), 0..3)
        )
            .prop_map(|(c, t)| GenBody::Chunked(c, t)),
    ]
}

fn request() -> impl Strategy<Value = GenRequest> {
    (
        prop::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"][..]),
        target(),
        vec((field_name(), field_value()), 0..8),
        body(),
    )
        .prop_map(|(method, target, fields, body)| GenRequest {
            method,
            target,
            fields,
            body,
        })
}

/// Decodes a chunked body from the start of `input`, fed in pieces of `step` bytes as reads
/// would deliver them; returns the data and how many bytes of `input` the body took.
fn decode_chunked(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), HttpError> {
    let mut decoder = ChunkedDecoder::new();
    let (mut data, mut taken, mut avail) = (Vec::new(), 0, 0);
    loop {
        let (used, event) = decoder.step(&input[taken..avail])?;
        match event {
            ChunkEvent::Data(r) => data.extend_from_slice(&input[taken + r.start..taken + r.end]),
            ChunkEvent::End { .. } => return Ok((data, taken + used)),
            ChunkEvent::NeedMore => {
                if avail == input.len() {
                    return Err(HttpError::BadRequest("body ended early"));
                }
                avail = (avail + step).min(input.len());
            }
        }
        taken += used;
    }
}

/// Splits a pipeline into its requests by parsing heads and reading bodies as framed: the
/// parser's view of where each request ends, with its decoded body.
fn split_pipeline(wire: &[u8], step: usize) -> Vec<(RequestHead, Vec<HeaderSpan>, usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let mut spans = Vec::new();
        let head = match parse_request(&wire[at..], &Limits::default(), &mut spans) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("request at {at}: {other:?}"),
        };
        let body_start = at + head.head_len;
        let (data, end) = match head.framing {
            Framing::None => (Vec::new(), body_start),
            Framing::Length(n) => {
                let end = body_start + n as usize;
                (wire[body_start..end].to_vec(), end)
            }
            Framing::Chunked => {
                let (d, used) = decode_chunked(&wire[body_start..], step).expect("a generated chunked body decodes");
                (d, body_start + used)
            }
            Framing::CloseDelimited => panic!("a request is never close-delimited"),
        };
        out.push((head, spans, at, data));
        at = end;
    }
    out
}

/// What [`fast_head_end_is_scan_heads`] builds heads of.
const HEAD_PIECES: [&str; 14] = [
    "GET / HTTP/1.1",
    "HTTP/1.1 200 OK",
    "HTTP/1.0 204",
    "\r\n",
    "\r\n",
    "\r\n\r\n",
    "\n",
    "\r",
    "Host: h",
    "X: a",
    "Content-Length: 0",
    " ",
    "\t",
    "a",
];

proptest! {
    // Many cases: the pieces make few distinct heads, and each is cheap.
    #![proptest_config(ProptestConfig { cases: 4096, ..config() })]

    /// Heads made of line pieces and stray CRs and LFs: whenever the parsers' fast path takes
    /// httparse's end of a head (`scanned_clean`), `scan_head` finds the same end without an
    /// error, so the fast path accepts nothing the strict scan refuses.
    #[test]
    fn fast_head_end_is_scan_heads(pieces in vec(0usize..HEAD_PIECES.len(), 1..14)) {
        let wire: Vec<u8> = pieces.iter().flat_map(|&i| HEAD_PIECES[i].bytes()).collect();
        let limits = Limits { max_request_line: 24, max_header_bytes: 64, max_headers: 8 };
        let window = head_window(&wire, 0, &limits);
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; 8];
        let mut req = httparse::Request::new(&mut []);
        if let Ok(httparse::Status::Complete(n)) = req.parse_with_uninit_headers(window, &mut slots)
            && scanned_clean(window, n, req.headers, &limits)
        {
            prop_assert!(matches!(scan_head(&wire, 0, &limits), Ok(Some(end)) if end == n), "{:?}", String::from_utf8_lossy(&wire));
        }
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; 8];
        let mut res = httparse::Response::new(&mut []);
        if let Ok(httparse::Status::Complete(n)) =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, window, &mut slots)
            && scanned_clean(window, n, res.headers, &limits)
        {
            prop_assert!(matches!(scan_head(&wire, 0, &limits), Ok(Some(end)) if end == n), "{:?}", String::from_utf8_lossy(&wire));
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes: every parser answers (a head, "more", or an error) without panicking,
    /// and the chunked decoder never claims more than it was given.
    #[test]
    fn no_input_panics(bytes in vec(any::<u8>(), 0..600)) {
        let mut spans = Vec::new();
        let _ = parse_request(&bytes, &Limits::default(), &mut spans);
        let _ = parse_response(&bytes, &Limits::default(), false, &mut spans);
        let _ = parse_response(&bytes, &Limits::default(), true, &mut spans);
        let mut decoder = ChunkedDecoder::new();
        let mut at = 0;
        for _ in 0..bytes.len() + 2 {
            match decoder.step(&bytes[at..]) {
                Ok((used, event)) => {
                    prop_assert!(used <= bytes.len() - at);
                    at += used;
                    if matches!(event, ChunkEvent::NeedMore | ChunkEvent::End { .. }) && used == 0 {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }

    /// Valid request heads with arbitrary bytes spliced in: still no panic, and anything that
    /// parses has its ranges inside the input.
    #[test]
    fn mutated_requests_never_panic(req in request(), at in any::<prop::sample::Index>(), junk in vec(any::<u8>(), 1..8)) {
        let mut wire = req.wire();
        let i = at.index(wire.len());
        wire.splice(i..i, junk);
        let mut spans = Vec::new();
        if let Ok(Parsed::Complete(h)) = parse_request(&wire, &Limits::default(), &mut spans) {
            prop_assert!(h.head_len <= wire.len());
            prop_assert!(h.target.end <= h.head_len && h.method.end <= h.head_len);
            for s in &spans {
                prop_assert!(s.name.end <= h.head_len && s.value.end <= h.head_len);
            }
        }
    }

    /// A pipeline of generated requests splits where the generator put the boundaries, each
    /// request parses to what was generated, and its body decodes to the generated bytes, however
    /// the chunked bodies arrive.
    #[test]
    fn pipelines_split_where_the_requests_end(reqs in vec(request(), 1..4), step in 1usize..64) {
        let mut wire = Vec::new();
        let mut starts = Vec::new();
        for r in &reqs {
            starts.push(wire.len());
            wire.extend_from_slice(&r.wire());
        }
        let got = split_pipeline(&wire, step);
        prop_assert_eq!(got.len(), reqs.len());
        for ((head, spans, at, data), (r, start)) in got.iter().zip(reqs.iter().zip(&starts)) {
            prop_assert_eq!(at, start);
            let buf = &wire[*at..];
            prop_assert_eq!(&buf[head.method.clone()], r.method.as_bytes());
            prop_assert_eq!(&buf[head.target.clone()], r.target.as_bytes());
            let fields: Vec<(String, String)> = spans
                .iter()
                .map(|s| (
                    String::from_utf8_lossy(&buf[s.name.clone()]).into_owned(),
                    String::from_utf8_lossy(&buf[s.value.clone()]).into_owned(),
                ))
                .filter(|(n, _)| n.starts_with("x-p-"))
                .collect();
            prop_assert_eq!(&fields, &r.fields);
            let want = match &r.body {
                GenBody::None => Framing::None,
                GenBody::Length(b) => Framing::Length(b.len() as u64),
                GenBody::Chunked(..) => Framing::Chunked,
            };
            prop_assert_eq!(head.framing, want);
            prop_assert_eq!(data, &r.data());
        }
    }

    /// The head kedge writes upstream re-parses to the same request: method, target, the
    /// end-to-end fields in order, and the framing (chunked stays chunked, a length stays that
    /// length).
    #[test]
    fn forwarded_heads_reparse_to_the_same_request(req in request()) {
        let wire = req.wire();
        let mut spans = Vec::new();
        let Ok(Parsed::Complete(head)) = parse_request(&wire, &Limits::default(), &mut spans) else {
            panic!("a generated request parses");
        };
        let pairs: Vec<(&[u8], &[u8])> = spans.iter().map(|s| (&wire[s.name.clone()], &wire[s.value.clone()])).collect();
        let out_req = RequestOut {
            method: &wire[head.method.clone()],
            target: &wire[head.target.clone()],
            headers: &pairs,
            has_host: head.host.is_some(),
            framing: head.framing,
            upgrade: None,
            lines: Some(FieldLines::new(&wire, &spans, head.head_len)),
        };
        let fwd = Forwarded {
            client_ip: b"192.0.2.7",
            peer_ip: b"192.0.2.7",
            from_trusted: false,
            proto: "http",
            host: b"p.example",
            port: 80,
            request_id: b"0123456789abcdef0123456789abcdef",
            target: None,
            upstream_host: None,
        };
        let mut up = Vec::new();
        write_request_head(&mut up, &out_req, &fwd);
        let mut up_spans = Vec::new();
        let Ok(Parsed::Complete(again)) = parse_request(&up, &Limits::default(), &mut up_spans) else {
            panic!("the forwarded head parses: {}", String::from_utf8_lossy(&up));
        };
        prop_assert_eq!(again.head_len, up.len());
        prop_assert_eq!(&up[again.method.clone()], req.method.as_bytes());
        prop_assert_eq!(&up[again.target.clone()], req.target.as_bytes());
        prop_assert_eq!(again.framing, head.framing);
        let fields: Vec<(&[u8], &[u8])> = up_spans
            .iter()
            .map(|s| (&up[s.name.clone()], &up[s.value.clone()]))
            .filter(|(n, _)| n.starts_with(b"x-p-"))
            .collect();
        let want: Vec<(&[u8], &[u8])> = req.fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        prop_assert_eq!(fields, want);
        prop_assert_eq!(again.host.map(|h| &up[h]), Some(&b"p.example"[..]));
    }
}
