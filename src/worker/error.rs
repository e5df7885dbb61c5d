//! Why one request failed: one error type for every phase of the request path, knowing whose
//! fault it is (client, upstream, kedge) and whether another try may help, and mapped to the
//! client's answer in one place ([`RequestError::answer`]), as pingora-error's
//! `ErrorSource`/`RetryType`.

use crate::http::HttpError;

/// Whose fault a failure is (for logs, metrics and the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The client sent something wrong, too slowly, or left.
    Client,
    /// The upstream could not be reached, or misbehaved.
    Upstream,
    /// Nothing to send the request to.
    Internal,
}

/// Whether another endpoint may get the request after this failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Nothing of the request left kedge (a connect or TLS failure): always.
    Always,
    /// The request went out but no response byte came back: only for a request without a body
    /// that is safe to repeat.
    IfIdempotent,
    /// Never (the response was under way, the body was sent, or the fault is not the endpoint's).
    Never,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The request head or body framing broke HTTP/1 rules (the error says which status).
    Http(HttpError),
    /// The request target is neither a path, `*` nor an absolute http(s) URI.
    BadTarget,
    /// An absolute-form target whose authority is not a host.
    BadAuthority,
    /// `*` (asterisk-form) with a method other than OPTIONS (RFC 9112 §3.2.4).
    AsteriskNotOptions,
    /// A path or query with a fragment, a backslash or broken percent-encoding.
    BadPath,
    /// CONNECT, which kedge does not proxy.
    Connect,
    /// The head did not arrive within the header timeout.
    HeadTimeout,
    /// The body stalled past the body timeout.
    BodyTimeout,
    /// The body is larger than the rule allows.
    BodyTooLarge,
    /// The client went away, or a response was half sent to it: nothing more can be said.
    ClientGone,
    /// The backend has no endpoint at all.
    NoEndpoint,
    /// TCP connect to the endpoint failed.
    ConnectFailed,
    ConnectTimeout,
    /// The TLS handshake with the endpoint failed.
    TlsFailed,
    TlsTimeout,
    /// The upstream did not take the request head in time.
    SendTimeout,
    /// The upstream connection died before any response byte.
    UpstreamClosed,
    /// No response byte within the read timeout.
    UpstreamTimeout,
    /// The response head started, then stalled past the read timeout.
    ResponseTimeout,
    /// The response head started, then the connection closed.
    ResponseCutShort,
    /// The response head did not parse.
    BadResponse,
    /// The upstream failed while taking the request body.
    UpstreamBodyFailed,
    /// Every endpoint tried answered with a status the rule retries on.
    AllTriedFailed,
    /// A 101 to a request that asked for no upgrade.
    UnaskedSwitch,
    /// The response body broke off after its head was sent: nothing more can be said.
    ResponseBroken,
    /// A gRPC (HTTP/2) backend asked for by an HTTP/1.1 request: gRPC needs HTTP/2 end to end.
    NeedsHttp2,
    /// The HTTP/2 upstream stream failed (refused, connection lost) before its response head.
    StreamRefused,
    /// No response head within a Gateway API rule's `timeouts.request`.
    RouteTimeout,
    /// The client's `grpc-timeout` passed (answered as gRPC DEADLINE_EXCEEDED by
    /// `forward_h2.rs`).
    GrpcDeadline,
}

/// Why a request could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestError {
    pub kind: ErrorKind,
}

/// A connect failure: what a request that tried no endpoint yet failed with.
impl Default for RequestError {
    fn default() -> Self {
        ErrorKind::ConnectFailed.into()
    }
}

impl From<ErrorKind> for RequestError {
    fn from(kind: ErrorKind) -> Self {
        RequestError { kind }
    }
}

impl From<HttpError> for RequestError {
    fn from(e: HttpError) -> Self {
        ErrorKind::Http(e).into()
    }
}

impl RequestError {
    /// Whose fault it is.
    pub(crate) fn side(&self) -> Side {
        use ErrorKind::*;
        match self.kind {
            Http(HttpError::BadResponse(_)) => Side::Upstream,
            Http(_) | BadTarget | BadAuthority | AsteriskNotOptions | BadPath | Connect | HeadTimeout | BodyTimeout
            | BodyTooLarge | ClientGone => Side::Client,
            NoEndpoint => Side::Internal,
            ConnectFailed | ConnectTimeout | TlsFailed | TlsTimeout | SendTimeout | UpstreamClosed
            | UpstreamTimeout | ResponseTimeout | ResponseCutShort | BadResponse | UpstreamBodyFailed
            | AllTriedFailed | UnaskedSwitch | ResponseBroken | StreamRefused | RouteTimeout => Side::Upstream,
            NeedsHttp2 | GrpcDeadline => Side::Client,
        }
    }

    /// Whether another endpoint may get the request.
    pub(crate) fn retry(&self) -> Retry {
        use ErrorKind::*;
        match self.kind {
            ConnectFailed | ConnectTimeout | TlsFailed | TlsTimeout => Retry::Always,
            UpstreamClosed | UpstreamTimeout => Retry::IfIdempotent,
            _ => Retry::Never,
        }
    }

    /// The status and one-line body the client gets, or `None` when nothing more can be said
    /// (the connection just closes).
    pub(crate) fn answer(&self) -> Option<(u16, &'static str)> {
        use ErrorKind::*;
        Some(match self.kind {
            Http(e) => (e.status(), e.reason()),
            BadTarget => (400, "request target is not a path or an absolute URI"),
            BadAuthority => (400, "invalid authority in the request target"),
            AsteriskNotOptions => (400, "the request target * is for OPTIONS only"),
            BadPath => (
                400,
                "request target with a fragment, a backslash or bad percent-encoding",
            ),
            Connect => (405, "CONNECT is not supported"),
            HeadTimeout => (408, "request head not received in time"),
            BodyTimeout => (408, "request body not received in time"),
            BodyTooLarge => (413, "request body larger than allowed"),
            NoEndpoint => (503, "no endpoint available for this backend"),
            ConnectFailed => (502, "cannot connect to upstream"),
            ConnectTimeout => (504, "upstream connect timed out"),
            TlsFailed => (502, "TLS handshake with upstream failed"),
            TlsTimeout => (504, "upstream TLS handshake timed out"),
            SendTimeout => (504, "upstream did not take the request in time"),
            UpstreamClosed => (502, "upstream closed the connection"),
            UpstreamTimeout | ResponseTimeout => (504, "upstream did not answer in time"),
            ResponseCutShort => (502, "upstream closed before a complete response head"),
            BadResponse => (502, "upstream sent an invalid response"),
            UpstreamBodyFailed => (502, "upstream failed while receiving the request body"),
            AllTriedFailed => (502, "every endpoint tried answered with an error"),
            UnaskedSwitch => (502, "upstream switched protocols without an upgrade request"),
            NeedsHttp2 => (502, "this backend speaks gRPC, which needs HTTP/2 from the client"),
            StreamRefused => (502, "upstream stream failed before its answer"),
            RouteTimeout => (504, "no answer within the route's request timeout"),
            GrpcDeadline => (504, "the call's grpc-timeout passed"),
            ClientGone | ResponseBroken => return None,
        })
    }
}
