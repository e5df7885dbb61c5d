//! Message bodies: 64 MiB request bodies (Content-Length and chunked) and 64 MiB responses
//! (chunked and Content-Length) streamed through without kedge holding them (peak RSS), a
//! request pipelined right behind a large body, chunked trailers, close-delimited
//! and chunked upstream responses re-framed for 1.1 and 1.0 clients, interim 1xx answers,
//! HEAD/204/304 without a body, clients that leave half-way.

use crate::support::body::{fill, hash, pattern_hash};
use crate::support::{Client, Handler, Kedge, RawBehavior, RawUpstream, Upstream, both_drivers, route_all};

const BIG: u64 = 64 << 20;
/// Peak RSS kedge must stay under while moving a [`BIG`] body: streaming, not buffering.
const RSS_LIMIT: u64 = 48 << 20;

fn unlimited(upstream: std::net::SocketAddr) -> String {
    format!("[client]\nmax_body = 0\n\n{}", route_all(&[upstream]))
}

/// Writes `len` pattern bytes, 1 MiB at a time.
fn send_pattern(c: &mut Client, len: u64) {
    let mut at = 0;
    while at < len {
        let n = (len - at).min(1 << 20) as usize;
        c.send(&fill(at, n));
        at += n as u64;
    }
}

fn assert_streamed(kedge: &Kedge) {
    let peak = kedge.peak_rss();
    assert!(
        peak < RSS_LIMIT,
        "kedge peaked at {} MiB moving a {} MiB body: it buffers",
        peak >> 20,
        BIG >> 20
    );
}

both_drivers!(
    fn big_request_body_with_length_streams_intact(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &unlimited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        c.send(format!("POST /upload HTTP/1.1\r\nHost: b.test\r\nContent-Length: {BIG}\r\n\r\n").as_bytes());
        send_pattern(&mut c, BIG);
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = &up.requests()[0];
        assert_eq!(seen.body_len, BIG);
        assert_eq!(seen.body_hash, pattern_hash(BIG), "request body changed on the way");
        assert_eq!(seen.header("content-length"), Some(BIG.to_string().as_str()));
        assert_streamed(&kedge);
        // The connection is still good for another request.
        assert_eq!(c.get("b.test", "/after").status, 200);
    }
);

both_drivers!(
    fn big_chunked_request_body_streams_intact(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &unlimited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        c.send(b"POST /upload HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n");
        // Chunk sizes that do not line up with any buffer: one byte, odd sizes, a megabyte.
        let sizes = [1u64, 100, 4096, 65_537, 1_000_003, 7];
        let (mut at, mut i) = (0u64, 0);
        let mut out = Vec::new();
        while at < BIG {
            let n = sizes[i % sizes.len()].min(BIG - at);
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&fill(at, n as usize));
            out.extend_from_slice(b"\r\n");
            if out.len() >= 1 << 20 {
                c.send(&out);
                out.clear();
            }
            at += n;
            i += 1;
        }
        out.extend_from_slice(b"0\r\n\r\n");
        c.send(&out);
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = &up.requests()[0];
        assert_eq!(seen.body_len, BIG);
        assert_eq!(seen.body_hash, pattern_hash(BIG), "request body changed on the way");
        assert_streamed(&kedge);
        assert_eq!(c.get("b.test", "/after").status, 200);
    }
);

both_drivers!(
    fn big_response_streams_back_intact(driver) {
        let up = Upstream::start("big", Handler::Stream(BIG));
        let kedge = Kedge::start(driver, &unlimited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("b.test", "/download");
        assert_eq!(resp.status, 200);
        assert!(resp.header_has_token("transfer-encoding", "chunked"), "{:?}", resp.headers);
        assert_eq!(resp.body.len() as u64, BIG);
        assert_eq!(hash(&resp.body), pattern_hash(BIG), "response body changed on the way");
        assert_streamed(&kedge);
        assert_eq!(c.get("b.test", "/again").body.len() as u64, BIG);
    }
);

both_drivers!(
    fn big_response_with_length_streams_back_intact(driver) {
        let up = Upstream::start("big", Handler::Fixed(BIG as usize));
        let kedge = Kedge::start(driver, &unlimited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("b.test", "/download");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some(BIG.to_string().as_str()), "{:?}", resp.headers);
        assert_eq!(resp.body.len() as u64, BIG);
        assert_eq!(hash(&resp.body), pattern_hash(BIG), "response body changed on the way");
        assert_streamed(&kedge);
        assert_eq!(c.get("b.test", "/again").body.len() as u64, BIG);
    }
);

both_drivers!(
    fn request_sent_right_after_a_large_length_body_is_answered(driver) {
        // The body is larger than any one read of kedge's, and the next request follows its last
        // byte in the same write: reading the body must stop at its end and leave the next head.
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &unlimited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        let len: u64 = (3 << 20) + 7;
        let mut out = format!("POST /upload HTTP/1.1\r\nHost: b.test\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        out.extend_from_slice(&fill(0, len as usize));
        out.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: b.test\r\n\r\n");
        c.send(&out);
        assert_eq!(c.read_response().status, 200);
        assert_eq!(c.read_response().status, 200);
        let seen = up.requests();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].body_len, len);
        assert_eq!(seen[0].body_hash, pattern_hash(len), "request body changed on the way");
        assert_eq!(seen[1].uri, "/next");
        assert_eq!(seen[1].body_len, 0);
    }
);

both_drivers!(
    fn chunked_request_trailers_reach_the_upstream(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &unlimited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        c.send(
            b"POST /t HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
              5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: 12345\r\n\r\n",
        );
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = &up.requests()[0];
        assert_eq!(seen.body_len, 11);
        assert_eq!(seen.body_hash, hash(b"hello world"));
        assert_eq!(seen.trailers, [("x-checksum".to_owned(), "12345".to_owned())], "trailers lost on the way");
        assert_eq!(c.get("b.test", "/after").status, 200);
    }
);

/// Trailer fields RFC 9110 §6.5.1 keeps out of trailers (framing, routing, authentication),
/// hop-by-hop ones and those kedge writes itself: a recipient that merged them into the head
/// would read another message than kedge forwarded.
const FORBIDDEN_TRAILERS: &str = "Content-Length: 100\r\nTransfer-Encoding: chunked\r\nHOST: evil.test\r\n\
    Connection: close\r\nX-Forwarded-For: 198.51.100.9\r\nAuthorization: Basic eDp5\r\nTrailer: X-Sum\r\n";

both_drivers!(
    fn forbidden_trailer_fields_are_dropped_both_ways(driver) {
        // To the upstream: only the end-to-end field is left of the client's trailers.
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &unlimited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        let request = format!(
            "POST /t HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\
             {FORBIDDEN_TRAILERS}X-Checksum: 12345\r\n\r\n"
        );
        c.send(request.as_bytes());
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = &up.requests()[0];
        assert_eq!(seen.body_len, 5);
        assert_eq!(seen.trailers, [("x-checksum".to_owned(), "12345".to_owned())]);
        assert_eq!(c.get("b.test", "/after").status, 200, "the connection goes on");

        // To the client: the same for an upstream's chunked answer.
        let reply = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n{FORBIDDEN_TRAILERS}X-Sum: 7\r\n\r\n"
        );
        let raw = RawUpstream::start(RawBehavior::ReplyThenClose(reply.into_bytes()));
        let kedge = Kedge::start(driver, &route_all(&[raw.addr()]));
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("r.test", "/");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"abc");
        assert_eq!(resp.trailers, [("X-Sum".to_owned(), "7".to_owned())]);
    }
);

/// A raw upstream answering with `len` pattern bytes delimited by closing the connection.
fn close_delimited(len: usize) -> RawUpstream {
    let mut reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    reply.extend_from_slice(&fill(0, len));
    RawUpstream::start(RawBehavior::ReplyThenClose(reply))
}

both_drivers!(
    fn close_delimited_response_reaches_http11_client_chunked(driver) {
        let len = 300_007;
        let up = close_delimited(len);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        for round in 0..2 {
            let resp = c.get("cd.test", "/");
            assert_eq!(resp.status, 200);
            assert!(resp.header_has_token("transfer-encoding", "chunked"), "round {round}: {:?}", resp.headers);
            assert!(!resp.has_header("content-length"), "{:?}", resp.headers);
            assert_eq!(resp.body.len(), len, "round {round}");
            assert_eq!(hash(&resp.body), hash(&fill(0, len)), "round {round}");
        }
        assert_eq!(up.connections(), 2);
    }
);

both_drivers!(
    fn close_delimited_response_reaches_http10_client_close_delimited(driver) {
        let len = 300_007;
        let up = close_delimited(len);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET / HTTP/1.0\r\nHost: cd.test\r\nConnection: keep-alive\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        assert!(!resp.has_header("transfer-encoding"), "chunked sent to an HTTP/1.0 client: {:?}", resp.headers);
        assert!(!resp.has_header("content-length"), "{:?}", resp.headers);
        assert_eq!(resp.body.len(), len);
        assert_eq!(hash(&resp.body), hash(&fill(0, len)));
    }
);

both_drivers!(
    fn chunked_response_reaches_http10_client_close_delimited(driver) {
        let len = 300_007;
        let up = Upstream::start("chunked", Handler::Stream(len));
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET / HTTP/1.0\r\nHost: cd.test\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        assert!(!resp.has_header("transfer-encoding"), "chunked sent to an HTTP/1.0 client: {:?}", resp.headers);
        assert_eq!(resp.body.len() as u64, len);
        assert_eq!(hash(&resp.body), pattern_hash(len));
    }
);

both_drivers!(
    fn interim_responses_do_not_disturb_the_final_one(driver) {
        let up = RawUpstream::start(RawBehavior::ReplyThenClose(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
                .to_vec(),
        ));
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET / HTTP/1.1\r\nHost: hint.test\r\n\r\n");
        // A proxy may pass the 103 on (RFC 9110 §15.2) or not; the 200 must follow intact.
        let mut resp = c.read_response();
        if resp.status == 103 {
            resp = c.read_response();
        }
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.body, b"final");
    }
);

both_drivers!(
    fn head_keeps_content_length_and_sends_no_body(driver) {
        let up = Upstream::start("fixed", Handler::Fixed(1234));
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"HEAD /f HTTP/1.1\r\nHost: h.test\r\n\r\n");
        let resp = c.read_head_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("1234"), "{:?}", resp.headers);
        assert!(!resp.has_header("transfer-encoding"), "{:?}", resp.headers);
        assert_eq!(up.requests()[0].method, "HEAD");
        // Had kedge sent body bytes after the HEAD answer, this response would not parse.
        let resp = c.get("h.test", "/f");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, fill(0, 1234));
    }
);

both_drivers!(
    fn no_content_and_not_modified_have_no_body(driver) {
        let no_content = Upstream::start("204", Handler::Status(204));
        let not_modified = Upstream::start("304", Handler::Status(304));
        let config = format!(
            "[[route]]\npath = \"/204\"\nupstreams = [\"{}\"]\n\n[[route]]\npath = \"/304\"\nupstreams = [\"{}\"]\n",
            no_content.addr(),
            not_modified.addr()
        );
        let kedge = Kedge::start(driver, &config);
        let mut c = Client::connect(kedge.addr());
        c.send(
            b"GET /204 HTTP/1.1\r\nHost: n.test\r\n\r\n\
              GET /304 HTTP/1.1\r\nHost: n.test\r\nIf-None-Match: \"x\"\r\n\r\n\
              GET /204 HTTP/1.1\r\nHost: n.test\r\n\r\n",
        );
        for expected in [204, 304, 204] {
            let resp = c.read_response();
            assert_eq!(resp.status, expected);
            assert_eq!(resp.upstream(), Some(expected.to_string().as_str()));
            assert!(!resp.has_header("transfer-encoding"), "{expected}: {:?}", resp.headers);
            // A 304 may state the length of what it stands for; a 204 has no Content-Length.
            if expected == 204 {
                assert!(!resp.has_header("content-length"), "{:?}", resp.headers);
            }
        }
        // Any stray body byte would have turned into garbage before this answer.
        assert_eq!(c.get("n.test", "/204").status, 204);
    }
);

both_drivers!(
    fn client_leaving_mid_body_does_not_hurt_the_next_request(driver) {
        let big = Upstream::start("big", Handler::Stream(BIG));
        let echo = Upstream::start("echo", Handler::Echo);
        let config = format!(
            "[client]\nmax_body = 0\n\n[[route]]\npath = \"/big\"\nupstreams = [\"{}\"]\n\n\
             [[route]]\nupstreams = [\"{}\"]\n",
            big.addr(),
            echo.addr()
        );
        let kedge = Kedge::start(driver, &config);
        // Leaves while the response streams.
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET /big HTTP/1.1\r\nHost: b.test\r\n\r\n");
        drop(c);
        // Leaves half-way through a request body.
        let mut c = Client::connect(kedge.addr());
        c.send(b"POST /up HTTP/1.1\r\nHost: b.test\r\nContent-Length: 100000\r\n\r\n");
        c.send(&fill(0, 50_000));
        drop(c);
        kedge.wait_logs("kedge::access", 2, std::time::Duration::from_secs(10));
        for path in ["/big", "/up"] {
            let resp = Client::connect(kedge.addr()).get("b.test", path);
            assert_eq!(resp.status, 200, "{path}");
        }
        // The half-sent body never reached the upstream as a complete request.
        assert!(echo.requests().iter().all(|s| s.method != "POST" || !s.body_complete), "{:?}", echo.requests());
    }
);

both_drivers!(
    /// An upstream that refuses an upload by its head answers before reading the body and
    /// closes its connection (hyper, as most servers, does not read a refused body). kedge's
    /// write of the rest fails, and the answer the upstream gave, already in its socket, goes to
    /// the client, not a 502 (nginx 1.22 answers 502 here). The client's connection then closes
    /// (its body is left unread), and the upstream connection is not reused.
    fn an_upload_the_upstream_refuses_early_gets_its_answer(driver) {
        use std::io::{Read, Write};
        let up = Upstream::start("up", Handler::Refuse(413));
        let kedge = Kedge::start(driver, &unlimited(up.addr()));
        let mut s = std::net::TcpStream::connect(kedge.addr()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        const LEN: u64 = 8 << 20;
        // The body is sent while the answer is read; kedge stops reading it once it answers.
        let sender = std::thread::spawn(move || {
            let head = format!("POST /upload HTTP/1.1\r\nHost: b.test\r\nContent-Length: {LEN}\r\n\r\n");
            w.write_all(head.as_bytes())?;
            let mut at = 0;
            while at < LEN {
                let n = (LEN - at).min(1 << 16) as usize;
                w.write_all(&fill(at, n))?;
                at += n as u64;
            }
            Ok::<_, std::io::Error>(())
        });
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let _ = sender.join();
        let answer = String::from_utf8_lossy(&got);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("x-upstream: up\r\n"), "not the upstream's answer: {answer}");
        assert!(answer.ends_with("\r\n\r\nrefused\n"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close\r\n"), "{answer}");
        assert_eq!(up.requests().len(), 1);
        assert!(!up.requests()[0].body_complete);
        // The next request takes a new upstream connection.
        assert_eq!(Client::connect(kedge.addr()).get("b.test", "/after").status, 413);
        assert_eq!(up.connections(), 2, "the connection that answered early was reused");
    }
);
