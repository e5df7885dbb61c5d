//! kedge end to end: the real binary between hyper (and raw TCP) upstreams and a raw client.
//! Data-plane tests run once per I/O driver (`io_uring`, `epoll`, through `both_drivers!`);
//! control-plane tests (clusters, status, outages, admin, command line, systemd) once, on the
//! default driver. Run with `cargo test --test it`.

/// The harness: a kedge process, upstreams, a raw client, the `both_drivers!` macro.
mod support;

/// The access log, in text and JSON.
mod access_log;
/// The admin listener: `/healthz`, `/readyz` through a cluster's states, what it refuses.
mod admin;
/// ingress-nginx annotations: rewrite-target, app-root, redirects, source ranges, body size and
/// timeouts per Ingress, bad values reported.
mod annotations;
/// Balancing: round-robin, least-request, hashing, cookie affinity, outlier ejection.
mod balancing;
/// Large and streamed bodies both ways, chunked with trailers, close-delimited, bodiless answers.
mod bodies;
/// Endpoint churn and a rolling update under constant load: not one failed request.
mod churn;
/// The command line: `kedge check` on good and bad files, `kedge run` refusing to start, `version`.
mod cli;
/// Routes from a cluster through the fixture API server: Ingress → Service → EndpointSlice →
/// upstreams standing in for pods; changes applied live; other classes and broken objects.
mod cluster;
/// `Expect: 100-continue`, and the limit check that comes before it.
mod expect;
/// The Gateway API kinds: absent CRDs, CRDs installed later, their objects in the state file.
mod gateway;
/// Gateway API routing: matches, precedence, weights, filters, timeouts, scopes, beside Ingress.
mod gateway_routes;
/// Gateway API status: GatewayClass, Gateway (listeners, addresses) and route parents, written
/// by the status Lease holder; HTTPS listeners' certificates.
mod gateway_status;
/// gRPC to pods (`GRPC`, `GRPCS`): streaming, trailers, resets, pooling, retries, own errors.
mod grpc;
/// Headers kedge adds (X-Forwarded-*, X-Real-IP, X-Request-ID) and the hop-by-hop ones it drops.
mod headers;
/// HTTP/2 to clients (h2c, ALPN h2) in front of HTTP/1.1 upstreams: the same policies, what the
/// upstream receives, malformed requests, bodies under flow control, concurrent streams, resets,
/// the access log, GOAWAY on drain.
mod http2;
/// HTTP/2 abuse with raw frames: MadeYouReset, CONTINUATION flood, HPACK bomb, empty DATA, PING
/// and SETTINGS floods, a slow preface, a reset inside a header block; each bounded and counted.
mod http2_abuse;
/// Migrating from ingress-nginx: an app's Ingresses, then `ingress2gateway`'s Gateway API
/// objects for it, side by side, then alone, answering the same.
mod ingress2gateway;
/// Client keep-alive, upstream pooling, HTTP/1.0 clients, pipelining, concurrent clients.
mod keepalive;
/// The fixture Kubernetes API server, through the real kube client: list, watch, bookmarks,
/// 410 Gone after an outage, status writes, Lease create and update.
mod kube_fixture;
/// Several edges on one cluster: only the holder of the status Lease writes Ingress status; the
/// other takes over when it dies or hands over when it stops.
mod leader;
/// SIGHUP reload under traffic, and SIGTERM drain.
mod lifecycle;
/// Request limits (413, 414, 431) and malformed requests (400, 501).
mod limits;
/// RequestMirror with request bodies of every kind, byte-exact; a stalled mirror abandoned.
mod mirror;
/// Two clusters behind one kedge: merged routes, the first cluster wins a shared host.
mod multi_cluster;
/// The API server away: no failed request under load through an outage and a 410 relist; a
/// restart during an outage serves the persisted state until the live sync; unusable state files.
mod outage;
/// Behind an L4 balancer: PROXY protocol v1/v2 on plain and TLS listeners, refused sources, trusted X-Forwarded-For.
mod proxy_protocol;
/// Host and path matching, 404 for what no route matches.
mod routing;
/// Hostile clients: 4,000 slowloris connections and slow readers next to normal traffic, and the
/// per-client connection limit.
mod slow_clients;
/// Request smuggling: ambiguous framing and malformed heads or chunked bodies are refused, and
/// not a byte of them reaches the upstream; a bad chunk mid-stream cuts the upstream off.
mod smuggling;
/// Ingress status: publish addresses written on served Ingresses, cleared when no longer served,
/// never on another class's, only when they differ, and not at all without publish addresses.
mod status;
/// systemd notifications: READY, RELOADING/READY, WATCHDOG, STOPPING.
mod systemd;
/// The shape of the code: no import cycles, and ARCHITECTURE.md names only paths that exist.
mod tidy;
/// Client-side timeouts: request head and body (408), silent and idle connections.
mod timeouts;
/// TLS listeners: SNI, certificates from files and Secrets, rotation under load, resumption,
/// redirects and HSTS, bad certificates and clients that do not speak TLS.
mod tls;
/// Protocol upgrades (WebSocket-style) and the tunnel after a 101.
mod upgrade;
/// Refused, silent and closing upstreams: 502/504, connect and request retries, cut-off bodies.
mod upstream_failures;
/// Two edge hosts behind one virtual IP with keepalived (VRRP) in network namespaces: the
/// address moves when the master's kedge dies.
mod vrrp;
