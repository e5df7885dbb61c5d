//! Sans-io PROXY protocol (HAProxy's, versions 1 and 2): the header an L4 load balancer puts
//! in front of a TCP connection to say whom the connection is really from. Bytes in,
//! [`Parsed`] out; the caller reads until the header is complete and hands the bytes after it
//! to the next stage (TLS or HTTP).
//!
//! - v1: one text line, `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or
//!   `PROXY UNKNOWN...\r\n`, at most 107 bytes with its CRLF.
//! - v2: a 12-byte signature, version and command (LOCAL or PROXY), family and transport, a
//!   length, the addresses, then TLVs (skipped).
//!
//! `UNKNOWN`, LOCAL (a balancer's own health check) and the unspecified or UNIX families carry
//! no usable address: [`Parsed::Done`] without one, and the socket's own address stays.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The longest v2 address block (addresses and TLVs) kedge reads. Balancers send a few TLVs
/// (AWS: a VPC endpoint id, GCP: a connection id); kilobytes of them are not a header.
pub const V2_MAX_PAYLOAD: usize = 4096;

/// What a buffer holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `len` bytes long; what follows belongs to the next stage.
    Done { len: usize, addresses: Option<Addresses> },
    /// A header prefix: read more.
    NeedMore,
}

/// The connection's ends as the balancer saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why the bytes are not a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY v1 line longer than 107 bytes")]
    TooLong,
    #[error("malformed PROXY v1 line")]
    BadLine,
    #[error("unsupported PROXY v2 version or command")]
    BadCommand,
    #[error("unsupported PROXY v2 address family or transport")]
    BadFamily,
    #[error("PROXY v2 address block too short or too long")]
    BadLength,
}

/// Parses the PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.starts_with(V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else if V2_SIGNATURE.starts_with(buf) || V1_PREFIX.starts_with(buf) {
        Ok(Parsed::NeedMore)
    } else {
        Err(Error::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return match buf.len() >= V1_MAX {
            true => Err(Error::TooLong),
            false => Ok(Parsed::NeedMore),
        };
    };
    if cr + 2 > V1_MAX {
        return Err(Error::TooLong);
    }
    match buf.get(cr + 1) {
        None => return Ok(Parsed::NeedMore),
        Some(b'\n') => {}
        _ => return Err(Error::BadLine),
    }
    let len = cr + 2;
    let line = &buf[V1_PREFIX.len()..cr];
    if line.starts_with(b"UNKNOWN") {
        return Ok(Parsed::Done { len, addresses: None });
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(proto), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Error::BadLine);
    };
    let (src, dst) = match proto {
        b"TCP4" => (ip::<Ipv4Addr>(src)?.into(), ip::<Ipv4Addr>(dst)?.into()),
        b"TCP6" => (ip::<Ipv6Addr>(src)?.into(), ip::<Ipv6Addr>(dst)?.into()),
        _ => return Err(Error::BadLine),
    };
    let addresses = Addresses {
        source: SocketAddr::new(src, port(sport)?),
        destination: SocketAddr::new(dst, port(dport)?),
    };
    Ok(Parsed::Done {
        len,
        addresses: Some(addresses),
    })
}

/// An address of the family `A` in v1 text.
fn ip<A: std::str::FromStr>(text: &[u8]) -> Result<A, Error> {
    let text = std::str::from_utf8(text).map_err(|_| Error::BadLine)?;
    text.parse().map_err(|_| Error::BadLine)
}

/// A v1 port: 1 to 5 decimal digits (no sign, no leading zero but for 0 itself), at most 65535.
fn port(text: &[u8]) -> Result<u16, Error> {
    let digits = !text.is_empty() && text.len() <= 5 && text.iter().all(u8::is_ascii_digit);
    if !digits || (text.len() > 1 && text[0] == b'0') {
        return Err(Error::BadLine);
    }
    ip::<u16>(text)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(Parsed::NeedMore);
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 || command > 1 {
        return Err(Error::BadCommand);
    }
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    let payload_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if payload_len > V2_MAX_PAYLOAD {
        return Err(Error::BadLength);
    }
    let len = 16 + payload_len;
    let Some(payload) = buf.get(16..len) else {
        return Ok(Parsed::NeedMore);
    };
    // LOCAL: the balancer speaking for itself; whatever follows the fixed part is skipped.
    if command == 0 {
        return Ok(Parsed::Done { len, addresses: None });
    }
    let addresses = match (family, transport) {
        // Unspecified: the receiver keeps the connection's own addresses.
        (0, _) => None,
        (1, 1) => {
            let a = payload.get(..12).ok_or(Error::BadLength)?;
            let ip = |at: usize| IpAddr::from([a[at], a[at + 1], a[at + 2], a[at + 3]]);
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            Some(Addresses {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        (2, 1) => {
            let a = payload.get(..36).ok_or(Error::BadLength)?;
            let ip = |at: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[at..at + 16]);
                IpAddr::from(b)
            };
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            Some(Addresses {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // UNIX sockets name no IP address: the connection's own stays.
        (3, 1) => {
            payload.get(..216).ok_or(Error::BadLength)?;
            None
        }
        _ => return Err(Error::BadFamily),
    };
    Ok(Parsed::Done { len, addresses })
}

#[cfg(test)]
mod tests;
