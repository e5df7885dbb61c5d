//! Listening sockets: one SO_REUSEPORT socket per worker per address, made with socket2 so the
//! kernel spreads new connections over the workers without a shared accept queue.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ListenerSpec;

/// One worker's socket of a listener, with the spec that says what to do with a connection
/// accepted on it.
#[derive(Debug)]
pub struct Bound {
    pub spec: ListenerSpec,
    pub socket: TcpListener,
}

/// Listen backlog (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds `workers` sockets to `addr`, all on the same port. With port 0 the first socket picks a
/// free port and the others join it. Fails with a clear error when another process (even one
/// using SO_REUSEPORT itself) already holds the address, since SO_REUSEPORT would otherwise let
/// kedge silently share the port.
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        // A probe bind without SO_REUSEPORT fails if anything listens there.
        let probe = new_socket(addr, false)?;
        probe.bind(&addr.into()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e} (is another server using it?)"),
            )
        })?;
        drop(probe);
    }
    let mut out = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers {
        let s = new_socket(addr, true)?;
        s.bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        s.listen(BACKLOG)?;
        if addr.port() == 0 {
            addr = s
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no IP address"))?;
        }
        out.push(s.into());
    }
    Ok(out)
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // `[::]:80` is IPv6 only; list `0.0.0.0:80` too for IPv4. Predictable across hosts
        // whatever `net.ipv6.bindv6only` says.
        s.set_only_v6(true)?;
    }
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}
