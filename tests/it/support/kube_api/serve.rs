//! The HTTPS side: TLS, the bearer-token check, routing `/api/v1/...` and
//! `/apis/{group}/{version}/...` paths to the store, and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

use super::select::Filter;
use super::store::{ApiError, Kind, Manager, PatchBody};
use super::{Gauge, Shared};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// A watch without `timeoutSeconds` ends after this long (the API server picks 30 to 60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// Accepts connections until `stop`; during an outage closes each one as soon as it is accepted.
pub(super) async fn accept_loop(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let acceptor = TlsAcceptor::from(tls);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                if *shared.paused.borrow() {
                    shared.turned_away.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let open = Gauge::new(&shared.open_connections);
                tokio::spawn(connection(Arc::clone(&shared), acceptor.clone(), tcp, open));
            }
        }
    }
}

/// Serves one connection until the client leaves or an outage starts.
async fn connection(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream, _open: Gauge) {
    let mut paused = shared.paused.subscribe();
    // As the API server's (Go's net package sets TCP_NODELAY on every connection): a watch
    // event goes out at once, not behind the previous event's delayed ACK (up to 40 ms on
    // Linux), which a watch stream of small events now and then would otherwise meet.
    let _ = tcp.set_nodelay(true);
    let serve = async move {
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        let service = service_fn(move |req| handle(Arc::clone(&shared), req));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await;
    };
    tokio::select! {
        () = serve => {}
        _ = paused.wait_for(|p| *p) => {}
    }
}

/// Where a request goes: a collection (no name) or one object, or its status.
struct Target<'a> {
    kind: &'static Kind,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    status: bool,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    shared
        .log
        .lock()
        .expect("log lock")
        .push(format!("{} {target}", req.method()));
    let expected = format!("Bearer {}", shared.token);
    if req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Ok(error(&ApiError::new(401, "Unauthorized", "Unauthorized")));
    }
    let (parts, body) = req.into_parts();
    let gateway_api = shared.gateway_api.load(Ordering::SeqCst);
    if parts.method == Method::GET
        && let Some(list) = discovery(parts.uri.path(), gateway_api)
    {
        return Ok(ok(200, &list));
    }
    let Some(t) = route(parts.uri.path()).filter(|t| gateway_api || !t.kind.crd) else {
        let message = "the server could not find the requested resource";
        return Ok(error(&ApiError::new(404, "NotFound", message)));
    };
    let q = query(parts.uri.query().unwrap_or(""));
    // The API server's default field manager: the User-Agent up to its first `/`.
    let agent = parts
        .headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let manager = arg(&q, "fieldManager")
        .unwrap_or_else(|| agent.split('/').next().unwrap_or(""))
        .to_owned();
    let manager = Manager {
        name: &manager,
        apply: false,
    };
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(error(&ApiError::new(400, "BadRequest", "the request body was cut off")));
    };
    let result = match (&parts.method, t.name) {
        (&Method::GET, None) => collection(&shared, &t, &q),
        (&Method::GET, Some(name)) => shared
            .read(|s| s.get(t.kind, t.namespace, name).cloned())
            .ok_or_else(|| ApiError::not_found(t.kind, name))
            .map(|obj| ok(200, &obj)),
        (&Method::POST, None) if t.kind.namespaced && t.namespace.is_none() => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "create needs a namespace in the path",
        )),
        (&Method::POST, None) => parse_json(&body)
            .and_then(|obj| shared.write(|s| s.create(t.kind, t.namespace, obj, manager)))
            .map(|obj| ok(201, &obj)),
        (&Method::PUT, Some(name)) => parse_json(&body)
            .and_then(|obj| shared.write(|s| s.replace(t.kind, t.namespace, name, t.status, obj, manager)))
            .map(|obj| ok(200, &obj)),
        (&Method::PATCH, Some(name)) => parse_patch(&content_type, &body)
            .and_then(|patch| shared.write(|s| s.patch(t.kind, t.namespace, name, t.status, &patch, manager)))
            .map(|obj| ok(200, &obj)),
        (&Method::DELETE, Some(name)) if !t.status => shared
            .write(|s| s.remove(t.kind, t.namespace, name))
            .map(|obj| ok(200, &obj)),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method",
        )),
    };
    Ok(result.unwrap_or_else(|e| error(&e)))
}

/// GET of a collection: a LIST, or a WATCH with `watch=true`.
fn collection(shared: &Arc<Shared>, t: &Target<'_>, q: &Query) -> Result<Reply, ApiError> {
    let filter = Filter::new(t.namespace, arg(q, "labelSelector"), arg(q, "fieldSelector"))
        .map_err(|m| ApiError::new(400, "BadRequest", m))?;
    if matches!(arg(q, "watch"), Some("true" | "1")) {
        return watch(shared, t.kind, filter, q);
    }
    let limit = arg(q, "limit").and_then(|l| l.parse().ok());
    shared
        .write(|s| s.list(t.kind, &filter, limit, arg(q, "continue")))
        .map(|list| ok(200, &list))
}

/// Starts a watch stream: chunked, one JSON event per line, from `resourceVersion` (or from
/// the current objects, as ADDED events, when it is unset or "0").
fn watch(shared: &Arc<Shared>, kind: &'static Kind, filter: Filter, q: &Query) -> Result<Reply, ApiError> {
    let since = match arg(q, "resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::new(400, "BadRequest", format!("invalid resource version: {rv:?}")))?,
        ),
    };
    let opts = WatchOpts {
        since,
        initial_events: arg(q, "sendInitialEvents") == Some("true"),
        bookmarks: arg(q, "allowWatchBookmarks") == Some("true"),
        timeout: arg(q, "timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs),
    };
    shared.watches.fetch_add(1, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let open = Gauge::new(&shared.open_watches);
    tokio::spawn(stream_events(Arc::clone(shared), kind, filter, opts, tx, open));
    let frames = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

struct WatchOpts {
    since: Option<u64>,
    initial_events: bool,
    bookmarks: bool,
    timeout: Duration,
}

/// Feeds one watch stream until its timeout, an expired resourceVersion, or the client leaving.
async fn stream_events(
    shared: Arc<Shared>,
    kind: &'static Kind,
    filter: Filter,
    opts: WatchOpts,
    tx: mpsc::Sender<Bytes>,
    _open: Gauge,
) {
    let mut changed = shared.changed.subscribe();
    changed.borrow_and_update();
    let (mut events, mut at) = shared.read(|s| {
        let initial = if opts.since.is_none() || opts.initial_events {
            let added = s.matching(kind, &filter);
            added
                .into_iter()
                .map(|o| json!({"type": "ADDED", "object": o}))
                .collect()
        } else {
            Vec::new()
        };
        (initial, opts.since.unwrap_or(s.rv()))
    });
    if opts.initial_events {
        events.push(bookmark(kind, at, true));
    }
    if !send(&tx, &events).await {
        return;
    }
    let deadline = tokio::time::sleep(opts.timeout);
    tokio::pin!(deadline);
    let start = tokio::time::Instant::now() + BOOKMARK_EVERY;
    let mut ticks = tokio::time::interval_at(start, BOOKMARK_EVERY);
    loop {
        changed.borrow_and_update();
        match shared.read(|s| s.events_since(kind, &filter, at)) {
            Ok((events, next)) => {
                at = next;
                if !send(&tx, &events).await {
                    return;
                }
            }
            Err(gone) => {
                send(&tx, &[json!({"type": "ERROR", "object": gone.status()})]).await;
                return;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = ticks.tick(), if opts.bookmarks => {
                shared.bookmarks.fetch_add(1, Ordering::SeqCst);
                if !send(&tx, &[bookmark(kind, at, false)]).await {
                    return;
                }
            }
            () = &mut deadline => return,
            () = tx.closed() => return,
        }
    }
}

/// A BOOKMARK event: only the kind and the resourceVersion the watch has reached (and, to end
/// the initial events of a streaming list, the annotation saying so).
fn bookmark(kind: &Kind, rv: u64, initial_events_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({
        "type": "BOOKMARK",
        "object": {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta},
    })
}

/// Sends each event as a line of its own chunk; false once the client is gone.
async fn send(tx: &mpsc::Sender<Bytes>, events: &[Value]) -> bool {
    for event in events {
        if tx.send(Bytes::from(event_line(event))).await.is_err() {
            return false;
        }
    }
    true
}

/// One watch event as the API server writes it: `{"type":…,"object":…}` and a newline, the
/// type first (the order of Go's `WatchEvent` fields). `serde_json` would sort the keys and put
/// the object first, which makes a client buffer the whole object before it knows the event's
/// type: a cost no real cluster imposes.
fn event_line(event: &Value) -> Vec<u8> {
    let mut line = br#"{"type":"#.to_vec();
    serde_json::to_writer(&mut line, &event["type"]).expect("event JSON");
    line.extend_from_slice(br#","object":"#);
    serde_json::to_writer(&mut line, &event["object"]).expect("event JSON");
    line.extend_from_slice(b"}\n");
    line
}

/// Parses `/api/v1/[namespaces/{ns}/]{plural}[/{name}[/status]]` and the same under
/// `/apis/{group}/{version}`.
fn route(path: &str) -> Option<Target<'_>> {
    let (api_version, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("v1".to_owned(), rest)
    } else {
        let mut parts = path.strip_prefix("/apis/")?.splitn(3, '/');
        let (group, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
        (format!("{group}/{version}"), rest)
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (namespace, segments) = match segments.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(*ns), tail),
        all => (None, all),
    };
    let (plural, name, status) = match segments {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some(*name), false),
        [plural, name, "status"] => (*plural, Some(*name), true),
        _ => return None,
    };
    let kind = Kind::by_path(&api_version, plural)?;
    // A namespaced kind is listed across namespaces without one, but its objects live in one;
    // a cluster-scoped kind never has one. Only some kinds have a status subresource.
    let scoped_right = if kind.namespaced {
        namespace.is_some() || name.is_none()
    } else {
        namespace.is_none()
    };
    (scoped_right && (kind.has_status || !status)).then_some(Target {
        kind,
        namespace,
        name,
        status,
    })
}

/// `GET /apis/{group}/{version}`: the group version's `APIResourceList`, as kube's discovery
/// reads it; `None` (a 404) for a group version the fixture does not serve, or whose CRDs are
/// not installed.
fn discovery(path: &str, gateway_api: bool) -> Option<Value> {
    let group_version = path.strip_prefix("/apis/")?.trim_end_matches('/');
    if group_version.split('/').count() != 2 {
        return None;
    }
    let resources: Vec<Value> = super::store::KINDS
        .iter()
        .filter(|k| k.api_version == group_version && (gateway_api || !k.crd))
        .map(|k| {
            json!({"name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced,
                   "kind": k.kind, "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]})
        })
        .collect();
    (!resources.is_empty()).then(|| {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
               "resources": resources})
    })
}

/// The query string's parameters, percent-decoded.
type Query = HashMap<String, String>;

/// A query parameter, unless it is missing or empty.
fn arg<'q>(q: &'q Query, name: &str) -> Option<&'q str> {
    q.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

/// Parses a query string (kube starts it with `&`: empty pairs are skipped).
fn query(q: &str) -> Query {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Undoes `application/x-www-form-urlencoded` escaping: `%XX` and `+`.
fn decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                match std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => out.push(v),
                    None => {
                        out.push(b'%');
                        out.extend(hex);
                    }
                }
            }
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(ApiError::new(400, "BadRequest", "the body is not a JSON object")),
    }
}

/// A PATCH body by its Content-Type. Apply patches must be JSON (valid YAML, and what kube sends).
fn parse_patch(content_type: &str, body: &[u8]) -> Result<PatchBody, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            parse_json(body).map(PatchBody::Merge)
        }
        "application/apply-patch+yaml" => parse_json(body).map(PatchBody::Apply),
        "application/json-patch+json" => serde_json::from_slice(body)
            .map(PatchBody::Json)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("not a JSON patch: {e}"))),
        _ => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "unsupported patch type {media:?}: the fixture takes json-patch+json, merge-patch+json, \
                 strategic-merge-patch+json (as a merge patch) and apply-patch+yaml (in JSON)"
            ),
        )),
    }
}

fn ok(code: u16, body: &Value) -> Reply {
    let mut resp = Response::new(BodyExt::boxed(Full::new(Bytes::from(
        serde_json::to_vec(body).expect("JSON"),
    ))));
    *resp.status_mut() = StatusCode::from_u16(code).expect("status code");
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(e: &ApiError) -> Reply {
    ok(e.code, &e.status())
}
