//! The access log: one line per request under `kedge::access`, with status, upstream address
//! and request id, as text fields or as JSON objects; none when it is off.

use std::time::Duration;

use crate::support::{Client, Handler, Kedge, Upstream, both_drivers, route_all};

const WAIT: Duration = Duration::from_secs(5);

/// The value of `key=value` or `key="value"` in a text log line.
pub(crate) fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

both_drivers!(
    fn text_lines_have_status_upstream_and_request_id(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &format!("[log]\nformat = \"text\"\n\n{}", route_all(&[up.addr()])));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET /given HTTP/1.1\r\nHost: log.test\r\nX-Request-ID: trace-given-1\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
        assert_eq!(c.get("log.test", "/generated").status, 200);
        assert_eq!(Client::connect(kedge.addr()).get("log.test", "/x").status, 200);

        let lines = kedge.wait_logs("kedge::access", 3, WAIT);
        assert_eq!(lines.len(), 3, "not one line per request: {lines:#?}");
        let upstream = up.addr().to_string();
        let given = &lines[0];
        assert_eq!(text_field(given, "status"), Some("200"), "{given}");
        assert_eq!(text_field(given, "upstream"), Some(upstream.as_str()), "{given}");
        assert_eq!(text_field(given, "request_id"), Some("trace-given-1"), "{given}");
        assert!(given.contains("/given"), "{given}");

        // A generated id is logged as the upstream received it.
        let generated = &lines[1];
        let sent_id = up.requests()[1].header("x-request-id").map(str::to_owned);
        assert!(generated.contains("/generated"), "{generated}");
        assert_eq!(text_field(generated, "request_id").map(str::to_owned), sent_id, "{generated}");
    }
);

both_drivers!(
    fn canned_answers_are_logged_too(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &format!("[[route]]\nhost = \"known.test\"\nupstreams = [\"{}\"]\n", up.addr()));
        assert_eq!(Client::connect(kedge.addr()).get("unknown.test", "/nope").status, 404);
        let line = kedge.wait_log("kedge::access", WAIT);
        assert_eq!(text_field(&line, "status"), Some("404"), "{line}");
        assert_eq!(text_field(&line, "upstream"), Some("-"), "{line}");
    }
);

both_drivers!(
    fn json_lines_parse_and_carry_the_fields(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &format!("[log]\nformat = \"json\"\n\n{}", route_all(&[up.addr()])));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET /json?q=1 HTTP/1.1\r\nHost: log.test\r\nX-Request-ID: trace-json-1\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
        let line = kedge.wait_log("trace-json-1", WAIT);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["target"], "kedge::access", "{line}");
        assert_eq!(v["status"], 200, "{line}");
        assert_eq!(v["upstream"], up.addr().to_string(), "{line}");
        assert_eq!(v["request_id"], "trace-json-1", "{line}");
        assert_eq!(v["method"], "GET", "{line}");
        assert_eq!(v["host"], "log.test", "{line}");
        // Every line kedge writes in JSON mode is JSON, the start-up lines included.
        for l in kedge.logs() {
            assert!(serde_json::from_str::<serde_json::Value>(&l).is_ok(), "not JSON: {l}");
        }
    }
);

both_drivers!(
    fn access_log_off_writes_no_lines(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let config = format!("[log]\naccess_log = false\n\n{}", route_all(&[up.addr()]));
        let kedge = Kedge::start(driver, &config);
        assert_eq!(Client::connect(kedge.addr()).get("log.test", "/quiet").status, 200);
        // A later line to wait for; an access line would have been written before it.
        kedge.signal(crate::support::Signal::Hup);
        kedge.wait_log("configuration reloaded", WAIT);
        let access: Vec<String> = kedge.logs().into_iter().filter(|l| l.contains("kedge::access")).collect();
        assert!(access.is_empty(), "{access:?}");
    }
);
