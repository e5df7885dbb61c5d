//! Listening sockets: one SO_REUSEPORT socket per worker per address, made with socket2 so the
//! kernel spreads new connections over the workers without a shared accept queue.
//!
//! Every protocol kedge serves has the client speak first (an HTTP request, a TLS ClientHello,
//! the HTTP/2 preface, a PROXY header), so the listeners defer the accept until the first bytes
//! are in (`TCP_DEFER_ACCEPT`, nginx's `deferred`): the connection's first read finds them
//! instead of waiting for them (no poll armed, no wake-up per new connection), and a client
//! that connects and says nothing costs no file descriptor until the kernel hands it over
//! anyway, after `DEFER_ACCEPT_SECS` (then `[client] header_timeout` runs as usual).

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

/// How long the kernel holds a connection that has sent nothing before handing it to kedge
/// (rounded up to its SYN-ACK retransmission schedule: one retransmission, about 1 s).
const DEFER_ACCEPT_SECS: i32 = 1;

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
        defer_accept(&s)?;
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

/// Sets `TCP_DEFER_ACCEPT` (see the module doc). Not in socket2; Linux only, as kedge is.
#[allow(unsafe_code)]
fn defer_accept(s: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = DEFER_ACCEPT_SECS;
    // SAFETY: the fd is `s`'s, open for this call; the option value is a c_int that lives
    // through the call, and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel says of a listener's TCP_DEFER_ACCEPT (seconds; 0: off).
    #[allow(unsafe_code)]
    fn defer_accept_of(l: &TcpListener) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut secs: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the fd is `l`'s, open for this call; `secs` and `len` live through it and
        // `len` is `secs`'s size.
        let r = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&raw mut secs).cast(),
                &raw mut len,
            )
        };
        assert_eq!(r, 0, "getsockopt: {}", io::Error::last_os_error());
        secs
    }

    #[test]
    fn every_worker_socket_defers_accept_until_the_client_speaks() {
        let sockets = bind(SocketAddr::from(([127, 0, 0, 1], 0)), 2).expect("bind");
        assert_eq!(sockets.len(), 2);
        for s in &sockets {
            assert_eq!(defer_accept_of(s), DEFER_ACCEPT_SECS);
        }
    }
}
