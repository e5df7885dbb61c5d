//! A gRPC upstream for `benches/h2.sh`'s gRPC variant: an h2c server (the `h2` crate on a
//! current-thread tokio runtime) that answers every request, whatever its path, as a unary gRPC
//! call: it reads the request body to the end, then sends status 200 with
//! `content-type: application/grpc`, one length-prefixed message (an empty protobuf message) and
//! the trailers `grpc-status: 0`. The cost per call is that of the HTTP/2 framing only, so the
//! bench measures the proxies, not a service.
//!
//! ```text
//! grpc_upstream --addr 127.0.0.1:18091
//! ```
//!
//! Prints `listening ADDR` on stdout once bound; runs until killed.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:18091".parse().expect("default address");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                let v = args.next().unwrap_or_default();
                addr = v.parse().unwrap_or_else(|e| {
                    eprintln!("--addr {v}: {e}");
                    std::process::exit(2)
                });
            }
            other => {
                eprintln!("unknown argument {other}; usage: grpc_upstream --addr HOST:PORT");
                std::process::exit(2)
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| {
            eprintln!("bind {addr}: {e}");
            std::process::exit(2)
        });
        println!("listening {addr}");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::Builder::new()
                    .max_concurrent_streams(1024)
                    .handshake(tcp)
                    .await
                else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(call(req, respond));
                }
            });
        }
    });
}

/// One unary call: the request message is read and dropped, the answer is an empty message.
async fn call(req: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let mut body = req.into_body();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let resp = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("static response");
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    // Not compressed, length 0: an empty message.
    if send.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}
