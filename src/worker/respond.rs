//! What the client gets back: kedge's own answers (from a [`Decision`](super::decide::Decision)
//! or a [`RequestError`](super::error::RequestError)) and the upstream's response (head rebuilt
//! with kedge's header lines, body streamed). Header lines kedge adds (HSTS, the affinity
//! cookie, a 401's WWW-Authenticate) are handed to the sans-io writers, which put them in place
//! before the blank line. Also the one place that decides whether the client connection is kept.

use std::io::Write as _;
use std::time::Duration;

use super::Snapshot;
use super::decide::{Answer, AnswerHeader, Forward};
use super::error::{ErrorKind, RequestError};
use super::forward::{self, Exchange};
use super::log::Record;
use super::pump::{self, PumpLimits};
use super::request::Body;
use super::session::{ClientStream, Conn, Ctx, Next, write_client};
use crate::http::{self, Framing, RequestHead, Version};

/// How a request ended, as far as reusing the client connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// kedge answered with this status, without reading the request body.
    Answered(u16),
    /// The upstream's response goes to the client with this framing.
    Proxied(Framing),
}

/// Whether the client connection is kept after a request: only when the client wishes it, kedge
/// is not stopping, and the connection is in a clean state. An answer leaves it clean only
/// without an unread body, and only for the answers that are about routing or the upstream
/// (a CORS preflight's 200, redirects, 401, 403, 404, 502, 503, 504), not about a broken request; a response leaves it
/// clean unless its end is marked by closing.
pub(crate) fn keep_alive(wish: bool, body: Body, ending: Ending, stopping: bool) -> bool {
    if !wish || stopping {
        return false;
    }
    match ending {
        Ending::Answered(status) => {
            body == Body::None && matches!(status, 200 | 300..=399 | 401 | 403 | 404 | 502 | 503 | 504)
        }
        Ending::Proxied(framing) => framing != Framing::CloseDelimited,
    }
}

/// Whether an answer is an error (not a redirect or a challenge to a request that was fine).
/// Errors are written under a short fixed timeout and, when the connection closes after them,
/// linger (`Conn::linger`); redirects and challenges are written under the client body
/// timeout and linger only where the client may still be sending (`Conn::more_may_come`).
pub(crate) fn is_error(status: u16) -> bool {
    !matches!(status, 200 | 300..=399 | 401)
}

/// How long writing an error answer may take.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The body framing of an HTTP/1.1 request head, as a view has it.
pub(crate) fn body_of(framing: Framing) -> Body {
    match framing {
        Framing::None => Body::None,
        Framing::Length(n) => Body::Length(n),
        Framing::Chunked | Framing::CloseDelimited => Body::Streamed,
    }
}

/// Appends `answer` as a complete HTTP/1.1 response. `scratch` holds the extra header line of a
/// challenge (reused; formatted only on the 401 path).
pub(crate) fn write_answer(out: &mut Vec<u8>, scratch: &mut Vec<u8>, answer: &Answer<'_, '_>, close: bool) {
    match answer.header {
        AnswerHeader::None => http::write_canned(out, answer.status, answer.reason, b"", close),
        AnswerHeader::Location(to) => http::write_location(out, answer.status, &[to.as_bytes()], b"", close),
        AnswerHeader::Https {
            host,
            port,
            path,
            query,
        } => http::write_redirect(out, host, port, path, query, close),
        AnswerHeader::Redirect {
            scheme,
            host,
            hostname,
            port,
            path_head,
            path_tail,
            query,
        } => {
            // `:port`, formatted on the stack.
            let mut digits = [0u8; 6];
            let port = port.map(|p| {
                let mut at = digits.len();
                let mut n = p;
                loop {
                    at -= 1;
                    digits[at] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                at -= 1;
                digits[at] = b':';
                &digits[at..]
            });
            let host = hostname.map_or(host, str::as_bytes);
            let (q, query) = match query {
                Some(q) => (&b"?"[..], q),
                None => (&b""[..], &b""[..]),
            };
            let path_head = match (path_head, path_tail) {
                ("", "") => "/",
                (h, _) => h,
            };
            let parts: [&[u8]; 8] = [
                scheme.as_bytes(),
                b"://",
                host,
                port.unwrap_or_default(),
                path_head.as_bytes(),
                path_tail.as_bytes(),
                q,
                query,
            ];
            http::write_location(out, answer.status, &parts, b"", close);
        }
        AnswerHeader::Preflight {
            cors,
            origin,
            method,
            headers,
        } => {
            scratch.clear();
            if let Some(origin) = origin {
                let credentials = cors.allow_credentials;
                let line = |out: &mut Vec<u8>, name: &[u8], value: &[&[u8]]| {
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    value.iter().for_each(|v| out.extend_from_slice(v));
                    out.extend_from_slice(b"\r\n");
                };
                let joined = |list: &[Box<str>], out: &mut Vec<u8>| {
                    for (i, v) in list.iter().enumerate() {
                        if i > 0 {
                            out.extend_from_slice(b", ");
                        }
                        out.extend_from_slice(v.as_bytes());
                    }
                };
                let allow_origin: &[u8] = if cors.any_origin() && !credentials {
                    b"*"
                } else {
                    origin
                };
                line(scratch, b"Access-Control-Allow-Origin", &[allow_origin]);
                if credentials {
                    line(scratch, b"Access-Control-Allow-Credentials", &[b"true"]);
                }
                // With credentials a `*` is taken literally by browsers: the request's own
                // method and headers are named instead.
                match (cors.any_method(), credentials) {
                    (true, true) => line(scratch, b"Access-Control-Allow-Methods", &[method]),
                    (true, false) => line(scratch, b"Access-Control-Allow-Methods", &[b"*"]),
                    (false, _) if !cors.allow_methods.is_empty() => {
                        scratch.extend_from_slice(b"Access-Control-Allow-Methods: ");
                        joined(&cors.allow_methods, scratch);
                        scratch.extend_from_slice(b"\r\n");
                    }
                    (false, _) => {}
                }
                match (cors.any_header(), credentials) {
                    (true, true) if !headers.is_empty() => line(scratch, b"Access-Control-Allow-Headers", &[headers]),
                    (true, true) => {}
                    (true, false) => line(scratch, b"Access-Control-Allow-Headers", &[b"*"]),
                    (false, _) if !cors.allow_headers.is_empty() => {
                        scratch.extend_from_slice(b"Access-Control-Allow-Headers: ");
                        joined(&cors.allow_headers, scratch);
                        scratch.extend_from_slice(b"\r\n");
                    }
                    (false, _) => {}
                }
                let _ = write!(scratch, "Access-Control-Max-Age: {}\r\n", cors.max_age);
            }
            http::write_canned(out, answer.status, answer.reason, scratch, close);
        }
        AnswerHeader::Challenge(realm) => {
            scratch.clear();
            scratch.extend_from_slice(b"WWW-Authenticate: Basic realm=\"");
            // A quote or backslash would end or escape the quoted string: left out.
            scratch.extend(realm.bytes().filter(|b| !matches!(b, b'"' | b'\\')));
            scratch.extend_from_slice(b"\"\r\n");
            http::write_canned(out, answer.status, answer.reason, scratch, close);
        }
    }
}

/// Appends the header lines kedge adds to an upstream's response: HSTS on HTTPS (unless the
/// upstream sent its own), and the affinity cookie when the client did not name the endpoint
/// that answered.
pub(crate) fn response_lines(
    out: &mut Vec<u8>,
    hsts: Option<&[u8]>,
    upstream_sent_hsts: impl FnOnce() -> bool,
    f: &Forward<'_>,
    addr: std::net::SocketAddr,
    origin: Option<&[u8]>,
) {
    if let Some(line) = hsts
        && !line.is_empty()
        && !upstream_sent_hsts()
    {
        out.extend_from_slice(line);
    }
    if let Some(a) = &f.routed.policy.affinity {
        let key = crate::policy::endpoint_key(addr);
        if f.pick.sticky != Some(key) {
            a.set_cookie_line(key, crate::time::unix_now(), out);
        }
    }
    // A Gateway rule's CORS filter, for a request from an origin it allows.
    if let Some(cors) = f.gw.and_then(|g| g.action.cors.as_deref())
        && let Some(origin) = origin.filter(|o| cors.allows(o))
    {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(if cors.any_origin() && !cors.allow_credentials {
            b"*"
        } else {
            origin
        });
        out.extend_from_slice(b"\r\n");
        if cors.allow_credentials {
            out.extend_from_slice(b"Access-Control-Allow-Credentials: true\r\n");
        }
        if !cors.expose_headers.is_empty() {
            out.extend_from_slice(b"Access-Control-Expose-Headers: ");
            for (i, h) in cors.expose_headers.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(h.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(m) = response_mod(f) {
        for (name, value) in m.added() {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A Gateway API rule's ResponseHeaderModifier: its `set` and `add` fields are among kedge's
/// lines ([`response_lines`]); the upstream's fields it drops are left out of the head.
pub(crate) fn response_mod<'s>(f: &Forward<'s>) -> Option<&'s crate::routes::gateway::HeaderMod> {
    f.gw?.action.response_headers.as_deref()
}

/// Whether the upstream's response field `name` is left out for `f`'s rule.
pub(crate) fn drops_response_field(f: &Forward<'_>, name: &[u8]) -> bool {
    response_mod(f).is_some_and(|m| m.drops(name))
}

/// Appends kedge's own header lines (`Name: value\r\n` each, as `respond::response_lines`
/// writes them for HTTP/1.1) to an HTTP/2 header map.
pub(crate) fn append_lines(headers: &mut ::http::HeaderMap, lines: &[u8]) {
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (
            ::http::HeaderName::from_bytes(name),
            ::http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
}

/// An upstream answer whose chunked body is broken in the bytes read with its head (`buf`:
/// the head, then those bytes) is refused before anything of it goes to the client, on
/// HTTP/1.1 and HTTP/2 alike: a 502, not a head followed by a cut.
pub(super) fn check_answer_start(buf: &[u8], resp: &http::ResponseHead) -> Result<(), RequestError> {
    if resp.framing != Framing::Chunked {
        return Ok(());
    }
    pump::check_buffered_chunks(&buf[resp.head_len..], u64::MAX).map_err(|_| ErrorKind::BadResponse.into())
}

impl<S: ClientStream> Conn<S> {
    /// Whether the client may still be sending when kedge closes after answering `head`: it
    /// meant to keep the connection (its next request may be on its way, e.g. while kedge
    /// drains), it sent a body (which kedge may not have read), or bytes past this request are
    /// already here (pipelined). A close with bytes unread, or arriving after it, is a reset,
    /// which may destroy the answer before the client reads it (RFC 9112 §9.6): such a close
    /// lingers (`linger`); any other may hold the answer for the FIN (`before_last_answer`).
    pub(super) fn more_may_come(&self, head: &RequestHead) -> bool {
        head.keep_alive || !matches!(head.framing, Framing::None | Framing::Length(0)) || !self.cbuf.is_empty()
    }

    /// Before the answer to `head`: when it is the last answer to a client that asked to close
    /// and can send nothing more ([`Conn::more_may_come`]), the FIN is to go with it
    /// ([`ClientStream::last_answer`]).
    pub(super) fn before_last_answer(&mut self, head: &RequestHead) {
        if !self.more_may_come(head) {
            self.client.last_answer();
        }
    }

    /// Sends the answer in `out` to `head`; when `close`, the connection closes after it,
    /// lingering for errors and where more may come from the client.
    pub(super) async fn send_answer(
        &mut self,
        snap: &Snapshot,
        head: &RequestHead,
        status: u16,
        close: bool,
    ) -> Result<(), RequestError> {
        let timeout = match is_error(status) {
            true => ERROR_WRITE_TIMEOUT,
            false => snap.client.body_timeout,
        };
        let out = std::mem::take(&mut self.out);
        self.out = write_client(&mut self.client, out, timeout).await?;
        self.lingers = close && (is_error(status) || self.more_may_come(head));
        Ok(())
    }

    /// Sends a canned error answer (`close`: then closes, lingering once the request is
    /// logged). A client that cannot be written to is left to close.
    pub(super) async fn answer_error(&mut self, status: u16, why: &str, close: bool) {
        self.out.clear();
        http::write_canned(&mut self.out, status, why, b"", close);
        let out = std::mem::take(&mut self.out);
        match write_client(&mut self.client, out, ERROR_WRITE_TIMEOUT).await {
            Ok(b) => self.out = b,
            Err(_) => return,
        }
        self.lingers = close;
    }

    /// Before the connection closes: lingers when the last answer asked for it (`lingers`).
    pub(super) async fn close_gently(&mut self) {
        if std::mem::take(&mut self.lingers) {
            self.linger().await;
        }
    }

    /// Closes gently: shuts our side, and reads (discarding) what the client still sends for a
    /// moment, so that a request body in flight does not turn the close into a reset that would
    /// destroy the answer before the client reads it.
    async fn linger(&mut self) {
        let _ = self.client.shutdown().await;
        pump::drain_lingering(&mut self.client, std::mem::take(&mut self.cbuf)).await;
    }

    /// Sends the upstream's response to the client: a 101 hands both connections to the
    /// tunnel; anything else gets its head rebuilt (with kedge's lines) and its body streamed,
    /// and the upstream connection parked when it can be reused.
    pub(super) async fn respond(
        &mut self,
        cx: Ctx<'_>,
        head: &RequestHead,
        f: &Forward<'_>,
        upgrade_asked: bool,
        exchange: Exchange<'_>,
        rec: &mut Record,
    ) -> Result<Next, RequestError> {
        let Ctx { worker, snap, start } = cx;
        let Exchange {
            mut upstream,
            addr,
            resp,
            body_cut,
            ..
        } = exchange;
        if resp.status == 101 {
            if !upgrade_asked {
                return Err(ErrorKind::UnaskedSwitch.into());
            }
            self.out.clear();
            http::write_response_head(
                &mut self.out,
                &self.up.buf,
                &resp,
                &self.up.headers,
                http::ToClient {
                    framing: Framing::None,
                    version: head.version,
                    keep_alive: true,
                },
                b"",
            );
            self.up.buf.drain(..resp.head_len);
            let out = std::mem::take(&mut self.out);
            self.out = write_client(&mut self.client, out, snap.client.body_timeout).await?;
            return Ok(Next::Tunnel(upstream, f.timeouts.read));
        }

        // Client-side framing: lengths pass through; chunked and close-delimited bodies go
        // chunked to HTTP/1.1 clients and close-delimited to HTTP/1.0 ones.
        let out_framing = match resp.framing {
            Framing::None => Framing::None,
            Framing::Length(n) => Framing::Length(n),
            Framing::Chunked | Framing::CloseDelimited if head.version == Version::Http11 => Framing::Chunked,
            Framing::Chunked | Framing::CloseDelimited => Framing::CloseDelimited,
        };
        // An early answer leaves the client's body unread and the upstream's state unknown.
        let keep_client = !body_cut
            && keep_alive(
                head.keep_alive,
                body_of(head.framing),
                Ending::Proxied(out_framing),
                worker.stopping.is_set(),
            );
        let keep_upstream = !body_cut && resp.keep_alive && resp.framing != Framing::CloseDelimited;
        check_answer_start(&self.up.buf, &resp)?;
        self.before_last_answer(head);

        // (A bodiless HEAD or 304 answer keeps the Content-Length the upstream declared.)
        let mut extra = std::mem::take(&mut self.extra);
        extra.clear();
        let hsts = (S::SCHEME == "https").then_some(&*snap.https.hsts_line);
        let up = &self.up;
        let origin = (!self.origin.is_empty()).then_some(&self.origin[..]);
        response_lines(
            &mut extra,
            hsts,
            || up.has_field(b"strict-transport-security"),
            f,
            addr,
            origin,
        );
        self.out.clear();
        http::write_response_head_dropping(
            &mut self.out,
            &self.up.buf,
            &resp,
            &self.up.headers,
            http::ToClient {
                framing: out_framing,
                version: head.version,
                keep_alive: keep_client,
            },
            &extra,
            |name| drops_response_field(f, name),
        );
        self.extra = extra;
        self.up.buf.drain(..resp.head_len);
        let limits = PumpLimits {
            read_timeout: f.timeouts.read,
            write_timeout: snap.client.body_timeout,
            max: u64::MAX,
        };
        // Pinned where it is made, not copied into place (see `Conn::handle`).
        let moved = std::pin::pin!(pump::pump(
            &mut upstream,
            &mut self.client,
            &mut self.up.buf,
            &mut self.out,
            resp.framing,
            out_framing == Framing::Chunked,
            &limits,
        ))
        .await;
        match moved {
            Ok(n) => rec.bytes = n,
            Err(e) => {
                tracing::debug!(upstream = %addr, error = ?e, "response body cut short");
                return Err(ErrorKind::ResponseBroken.into());
            }
        }
        if keep_upstream && self.up.buf.is_empty() {
            forward::release(worker, snap, f.routed.backend, addr, upstream, start);
        }
        self.up.buf.clear();
        if keep_client {
            return Ok(Next::KeepAlive);
        }
        self.lingers = self.more_may_come(head);
        Ok(Next::Close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_decided_in_one_place() {
        use Ending::{Answered, Proxied};
        #[rustfmt::skip]
        let cases = [
            // wish, body, ending, stopping → keep
            (true, Body::None, Answered(404), false, true),
            (true, Body::None, Answered(200), false, true),
            (true, Body::None, Answered(308), false, true),
            (true, Body::None, Answered(401), false, true),
            (true, Body::None, Answered(502), false, true),
            (true, Body::None, Answered(400), false, false),
            (true, Body::None, Answered(413), false, false),
            (true, Body::Length(3), Answered(404), false, false),
            (true, Body::Streamed, Answered(308), false, false),
            (false, Body::None, Answered(404), false, false),
            (true, Body::None, Answered(404), true, false),
            (true, Body::Length(3), Proxied(Framing::Length(9)), false, true),
            (true, Body::None, Proxied(Framing::Chunked), false, true),
            (true, Body::None, Proxied(Framing::CloseDelimited), false, false),
            (true, Body::None, Proxied(Framing::None), true, false),
        ];
        for (wish, body, ending, stopping, want) in cases {
            assert_eq!(
                keep_alive(wish, body, ending, stopping),
                want,
                "{wish} {body:?} {ending:?} {stopping}"
            );
        }
    }
}
