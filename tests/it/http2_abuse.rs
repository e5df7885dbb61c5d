//! HTTP/2 abuse, end to end with raw frames against the real kedge: MadeYouReset, CONTINUATION
//! flood, HPACK bomb and oversized header lists, empty DATA / PING / SETTINGS floods, a slow or
//! missing preface, a stream reset before its head completed. Each ends (or refuses) only
//! what abused, is counted in `kedge_http2_abuse_total{kind}`, and reaches no upstream beyond
//! the stream limit.

use std::time::Duration;

use crate::support::h2_frames::{
    self, CONTINUATION, DATA, END_HEADERS, ENHANCE_YOUR_CALM, GOAWAY, HEADERS, PING, PROTOCOL_ERROR, RST_STREAM, RawH2,
    SETTINGS, WINDOW_UPDATE, frame, hpack_indexed_literal, hpack_literals,
};
use crate::support::tls::TestCa;
use crate::support::{Client, Handler, Kedge, TempDir, Upstream, both_drivers, wait_for, wait_until};

const SECOND: Duration = Duration::from_secs(1);
const H2_ON: &str = "[http2]\nenabled = true\n";

/// `/slow` to `slow`, everything else to `fast`.
fn two_routes(slow: &Upstream, fast: &Upstream) -> String {
    format!(
        "[[route]]\npath = \"/slow\"\nupstreams = [\"{}\"]\n\n{}",
        slow.addr(),
        crate::support::route_all(&[fast.addr()])
    )
}

/// The request fields of a GET.
fn get_fields(path: &str) -> [(&'static str, &str); 4] {
    [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "abuse.test"),
        (":path", path),
    ]
}

/// `kedge_http2_abuse_total{kind=...}`, once it is at least `at_least`.
fn wait_abuse(kedge: &Kedge, kind: &str, at_least: u64) -> u64 {
    let line = format!("kedge_http2_abuse_total{{kind=\"{kind}\"}} ");
    wait_for(5 * SECOND, &format!("{kind} counted"), || {
        let metrics = Client::connect(kedge.admin_addr()).get("admin", "/metrics").text();
        let n = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.parse::<u64>().ok())
            .unwrap_or(0);
        if n >= at_least { Ok(n) } else { Err(n) }
    })
}

/// Waits for the GOAWAY with an error code ending `raw` (graceful ones are passed over) and
/// checks its code, and that the connection closes.
fn assert_goaway(raw: &mut RawH2, code: u32, what: &str) {
    let goaway = raw
        .wait_frame(|f| f.kind == GOAWAY && f.error_code() != Some(h2_frames::NO_ERROR))
        .unwrap_or_else(|| panic!("no GOAWAY after {what}: {:?}", raw.received.last()));
    assert_eq!(goaway.error_code(), Some(code), "{what}: {goaway:?}");
    assert!(raw.closed_within(5 * SECOND), "the connection stayed open after {what}");
}

/// A fast GET on a new connection is answered: the abuse ended only its own connection.
fn others_served(kedge: &Kedge) {
    let mut raw = RawH2::connect(kedge.addr());
    raw.headers(1, &get_fields("/fast"), true);
    let end = raw.finish(1);
    assert!(end.ended() && end.reset.is_none(), "{end:?}");
}

both_drivers!(
    /// MadeYouReset (CVE-2025-8671): a WINDOW_UPDATE that overflows an open stream's window
    /// makes the server reset it (FLOW_CONTROL_ERROR; `h2` answers the other tricks, WINDOW_UPDATE
    /// 0 and DATA on a half-closed stream, with a connection error at once). 100 such resets are allowed per connection, the 101st ends it with
    /// GOAWAY ENHANCE_YOUR_CALM; meanwhile the upstream never has more of the connection's
    /// requests at once than the stream limit.
    fn made_you_reset_is_bounded(driver) {
        let slow = Upstream::start("slow", Handler::Delay(30 * SECOND));
        let fast = Upstream::start("fast", Handler::Echo);
        let kedge = Kedge::setup(driver)
            .tables("[http2]\nenabled = true\nmax_concurrent_streams = 4\n")
            .start(&two_routes(&slow, &fast));
        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        // Answered streams first, so that the resets below stay under half of all streams
        // (kedge's own Rapid Reset rule) and only h2's MadeYouReset budget is at stake.
        let mut id = 1;
        for _ in 0..101 {
            raw.headers(id, &get_fields("/fast"), true);
            let end = raw.finish(id);
            assert!(end.ended(), "{end:?}");
            id += 2;
        }
        // Each request reaches the upstream before kedge is made to reset its stream.
        for _ in 0..101 {
            let before = slow.request_count();
            raw.headers(id, &get_fields("/slow"), true);
            wait_until(5 * SECOND, "the request to reach the upstream", || slow.request_count() > before);
            raw.write(&frame(WINDOW_UPDATE, 0, id, &0x7fff_ffffu32.to_be_bytes()));
            id += 2;
        }
        assert_goaway(&mut raw, ENHANCE_YOUR_CALM, "101 provoked resets");
        wait_abuse(&kedge, "made_you_reset", 1);
        let (_, peak) = slow.in_flight();
        assert!(peak <= 4, "{peak} requests of one connection upstream at once, over the stream limit of 4");
        wait_until(5 * SECOND, "the reset streams' upstream requests to be cancelled", || {
            slow.in_flight().0 == 0
        });
        others_served(&kedge);
    }
);

both_drivers!(
    /// CONTINUATION flood, HPACK bomb, a header list over `max_header_bytes`: bounded by `h2`
    /// (GOAWAY ENHANCE_YOUR_CALM for the first two, a 431 for the last), counted, and nothing
    /// reaches the upstream.
    fn continuation_flood_and_header_bombs_reach_no_upstream(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::setup(driver).tables(H2_ON).start(&crate::support::route_all(&[up.addr()]));

        // Endless CONTINUATION frames without END_HEADERS.
        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        let mut flood = frame(HEADERS, 0, 1, &hpack_literals(&get_fields("/c")[..2]));
        for _ in 0..20_000 {
            flood.extend(frame(CONTINUATION, 0, 1, &[]));
        }
        let writer = raw.flood(flood);
        assert_goaway(&mut raw, ENHANCE_YOUR_CALM, "a CONTINUATION flood");
        let _ = writer.join();
        wait_abuse(&kedge, "continuation_flood", 1);

        // A 4 KB field put in the dynamic table, then referenced by one byte each: a 10 KB
        // block that decodes to 10 MB.
        let bomb = |repeats: usize| {
            let mut block = hpack_literals(&get_fields("/bomb"));
            block.extend(hpack_indexed_literal("x-bomb", &[b'b'; 4000]));
            block.extend(std::iter::repeat_n(0xbe, repeats));
            frame(HEADERS, END_HEADERS | h2_frames::END_STREAM, 1, &block)
        };
        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        raw.write(&bomb(2500));
        assert_goaway(&mut raw, ENHANCE_YOUR_CALM, "an HPACK bomb");
        wait_abuse(&kedge, "header_bomb", 1);

        // Over max_header_bytes (32 KiB) but not by much: that stream is refused, the
        // connection serves on.
        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        raw.write(&bomb(10));
        let end = raw.finish(1);
        assert!(!end.connection_ended && (end.reset.is_some() || end.headers() == 1), "{end:?}");
        assert_eq!(end.data_frames(), 0, "an answer with a body to an oversized header list: {end:?}");
        raw.headers(3, &get_fields("/after"), true);
        let after = raw.finish(3);
        assert!(after.ended() && after.reset.is_none(), "{after:?}");
        let seen: Vec<String> = up.requests().into_iter().map(|r| r.uri).collect();
        assert_eq!(seen, ["/after"], "only the request after the oversized one is forwarded");
    }
);

both_drivers!(
    /// Floods of frames that carry no request: empty DATA frames (bounded by `h2`), PINGs and
    /// SETTINGS (bounded by kedge: more than 1 MiB of control bytes beyond the request bytes).
    fn empty_data_ping_and_settings_floods_end_the_connection(driver) {
        let slow = Upstream::start("slow", Handler::Delay(30 * SECOND));
        let fast = Upstream::start("fast", Handler::Echo);
        let kedge = start_h2(driver, &two_routes(&slow, &fast));

        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        let post = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "abuse.test"),
            (":path", "/slow"),
        ];
        let mut flood = frame(HEADERS, END_HEADERS, 1, &hpack_literals(&post));
        for _ in 0..1000 {
            flood.extend(frame(DATA, 0, 1, &[]));
        }
        let writer = raw.flood(flood);
        assert_goaway(&mut raw, ENHANCE_YOUR_CALM, "an empty DATA flood");
        let _ = writer.join();
        wait_abuse(&kedge, "data_flood", 1);

        for (kind, one) in [(PING, frame(PING, 0, 0, b"12345678")), (SETTINGS, frame(SETTINGS, 0, 0, &[]))] {
            let mut raw = RawH2::connect(kedge.addr());
            raw.settled();
            let count = (3 << 20) / one.len();
            let writer = raw.flood(one.repeat(count));
            assert_goaway(&mut raw, ENHANCE_YOUR_CALM, &format!("a flood of frame type {kind}"));
            let _ = writer.join();
        }
        wait_abuse(&kedge, "control_flood", 2);
        others_served(&kedge);
    }
);

both_drivers!(
    /// A connection already going away (GOAWAY after `max_requests`, a stream still open) that
    /// floods is ended at once all the same.
    fn a_flood_while_draining_ends_the_connection(driver) {
        let slow = Upstream::start("slow", Handler::Delay(30 * SECOND));
        let fast = Upstream::start("fast", Handler::Echo);
        let kedge = Kedge::setup(driver)
            .tables("[http2]\nenabled = true\nmax_requests = 1\n")
            .start(&two_routes(&slow, &fast));
        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        raw.headers(1, &get_fields("/slow"), true);
        let first = raw.wait_frame(|f| f.kind == GOAWAY).expect("the graceful GOAWAY");
        assert_eq!(first.error_code(), Some(h2_frames::NO_ERROR), "{first:?}");
        wait_until(5 * SECOND, "the open stream to reach the upstream", || slow.request_count() == 1);
        let ping = frame(PING, 0, 0, b"12345678");
        let writer = raw.flood(ping.repeat((3 << 20) / ping.len()));
        assert_goaway(&mut raw, ENHANCE_YOUR_CALM, "a PING flood while draining");
        let _ = writer.join();
        wait_abuse(&kedge, "control_flood", 1);
    }
);

both_drivers!(
    /// What `h2` would warn of when a client misbehaves (here PING ACKs never asked for) does
    /// not reach kedge's log at the default level: a client must not fill the log.
    fn a_client_cannot_fill_the_log_through_h2(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = start_h2(driver, &crate::support::route_all(&[up.addr()]));
        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        raw.write(&frame(PING, h2_frames::ACK, 0, b"unasked!").repeat(100));
        raw.headers(1, &get_fields("/after"), true);
        let end = raw.finish(1);
        assert!(end.ended(), "{end:?}");
        let noisy: Vec<String> = kedge.logs().into_iter().filter(|l| l.contains("PING ack")).collect();
        assert!(noisy.is_empty(), "{} lines such as {:?}", noisy.len(), noisy.first());
    }
);

both_drivers!(
    /// Streams reset before kedge took them (HEADERS and RST_STREAM together), past `h2`'s
    /// limit of such resets: GOAWAY ENHANCE_YOUR_CALM, counted as a reset flood.
    fn resets_before_accept_are_bounded(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = start_h2(driver, &crate::support::route_all(&[up.addr()]));
        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        let mut burst = Vec::new();
        for i in 0..50u32 {
            let id = 1 + 2 * i;
            burst.extend(frame(HEADERS, END_HEADERS | h2_frames::END_STREAM, id, &hpack_literals(&get_fields("/r"))));
            burst.extend(frame(RST_STREAM, 0, id, &h2_frames::CANCEL.to_be_bytes()));
        }
        raw.write(&burst);
        assert_goaway(&mut raw, ENHANCE_YOUR_CALM, "50 streams reset at once");
        wait_abuse(&kedge, "reset_flood", 1);
        others_served(&kedge);
    }
);

fn start_h2(driver: crate::support::Driver, fragment: &str) -> Kedge {
    Kedge::setup(driver).tables(H2_ON).start(fragment)
}

both_drivers!(
    /// A connection that sends part of the preface, or nothing, is closed after `[client]
    /// header_timeout`, on a plain port and after TLS chose h2; the partial preface and the
    /// one missing after ALPN are counted.
    fn a_slow_or_missing_preface_is_closed_after_the_header_timeout(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let ca = TestCa::new();
        let dir = TempDir::new("h2-preface");
        let (cert, key) = ca.leaf(&["www.example.com"]).write(&dir, "default");
        let frag = format!(
            "[client]\nheader_timeout = \"300ms\"\n\n[tls]\ndefault_cert = \"{}\"\ndefault_key = \"{}\"\n\n{}",
            cert.display(),
            key.display(),
            crate::support::route_all(&[up.addr()])
        );
        let kedge = Kedge::setup(driver).tls().tables(H2_ON).start(&frag);
        let mut tls = Client::connect_tls(kedge.tls_addr(), ca.client_alpn(&[b"h2"]), "www.example.com");
        assert_eq!(tls.tls().alpn_protocol(), Some(&b"h2"[..]));
        assert!(tls.closed_after_reading(5 * SECOND), "the TLS connection without a preface stayed open");
        wait_abuse(&kedge, "preface_timeout", 1);
        for start in [&h2_frames::PREFACE[..16], &b""[..]] {
            let (answer, closed) = h2_frames::answer_to(kedge.addr(), start, 1 << 16).expect("talk to kedge");
            assert!(closed, "the connection that sent {start:?} stayed open");
            assert!(answer.is_empty() || !answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        }
        wait_abuse(&kedge, "preface_timeout", 2);
        assert_eq!(up.request_count(), 0);
    }
);

both_drivers!(
    /// A stream reset while its header block is still open (HEADERS without END_HEADERS, then
    /// RST_STREAM) is a connection error (PROTOCOL_ERROR: nothing may come between the frames
    /// of a header block); the request never reaches the upstream.
    fn a_stream_reset_before_its_head_completed_reaches_no_upstream(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = start_h2(driver, &crate::support::route_all(&[up.addr()]));
        let mut raw = RawH2::connect(kedge.addr());
        raw.settled();
        let mut bytes = frame(HEADERS, 0, 1, &hpack_literals(&get_fields("/half")));
        bytes.extend(frame(RST_STREAM, 0, 1, &h2_frames::CANCEL.to_be_bytes()));
        raw.write(&bytes);
        assert_goaway(&mut raw, PROTOCOL_ERROR, "a reset inside a header block");
        wait_abuse(&kedge, "protocol_error", 1);
        others_served(&kedge);
        let seen: Vec<String> = up.requests().into_iter().map(|r| r.uri).collect();
        assert_eq!(seen, ["/fast"], "the half-sent request reached the upstream");
    }
);
