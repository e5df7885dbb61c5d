use super::*;

/// What a case expects: the header's length and source, `None` source for a header without a
/// usable address, or an error.
type Want = Result<Option<(usize, Option<&'static str>)>, Error>;

fn check(name: &str, input: &[u8], want: Want) {
    let got = parse(input).map(|p| match p {
        Parsed::NeedMore => None,
        Parsed::Done { len, addresses } => Some((len, addresses.map(|a| a.source.to_string()))),
    });
    let want = want.map(|w| w.map(|(len, src)| (len, src.map(str::to_owned))));
    assert_eq!(got, want, "{name}");
}

/// A v2 header: version/command byte, family/transport byte, the address block.
fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

fn inet4_block() -> Vec<u8> {
    let mut b = vec![192, 0, 2, 7, 127, 0, 0, 1];
    b.extend_from_slice(&40000u16.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b
}

fn inet6_block() -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let dst: Ipv6Addr = "::1".parse().unwrap();
    let mut b = src.octets().to_vec();
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&40000u16.to_be_bytes());
    b.extend_from_slice(&80u16.to_be_bytes());
    b
}

#[test]
fn v1_lines() {
    let long_unknown = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 16));
    assert_eq!(long_unknown.len(), V1_MAX);
    let too_long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX - 15));
    let no_crlf = format!("PROXY UNKNOWN {}", "x".repeat(V1_MAX));
    #[rustfmt::skip]
    let cases: &[(&str, &[u8], Want)] = &[
        ("tcp4", b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\nGET", Ok(Some((41, Some("192.0.2.7:40000"))))),
        ("tcp6", b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n", Ok(Some((38, Some("[2001:db8::7]:40000"))))),
        ("unknown", b"PROXY UNKNOWN\r\n", Ok(Some((15, None)))),
        ("unknown with addresses", b"PROXY UNKNOWN ::1 ::1 1 2\r\n", Ok(Some((27, None)))),
        ("longest", long_unknown.as_bytes(), Ok(Some((V1_MAX, None)))),
        ("port 0", b"PROXY TCP4 192.0.2.7 127.0.0.1 0 80\r\n", Ok(Some((37, Some("192.0.2.7:0"))))),
        ("empty", b"", Ok(None)),
        ("prefix", b"PRO", Ok(None)),
        ("no CRLF yet", b"PROXY TCP4 192.0.2.7 127.0.0.1 40000", Ok(None)),
        ("CR without LF yet", b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r", Ok(None)),
        ("plain HTTP", b"GET / HTTP/1.1\r\n\r\n", Err(Error::Missing)),
        ("TLS", b"\x16\x03\x01\x00", Err(Error::Missing)),
        ("lower case", b"proxy TCP4 192.0.2.7 127.0.0.1 1 2\r\n", Err(Error::Missing)),
        ("too long", too_long.as_bytes(), Err(Error::TooLong)),
        ("no CRLF within 107", no_crlf.as_bytes(), Err(Error::TooLong)),
        ("CR then not LF", b"PROXY UNKNOWN\rX", Err(Error::BadLine)),
        ("bare LF", b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n\r\n", Err(Error::BadLine)),
        ("v6 in TCP4", b"PROXY TCP4 2001:db8::7 ::1 1 2\r\n", Err(Error::BadLine)),
        ("v4 in TCP6", b"PROXY TCP6 192.0.2.7 127.0.0.1 1 2\r\n", Err(Error::BadLine)),
        ("UDP4", b"PROXY UDP4 192.0.2.7 127.0.0.1 1 2\r\n", Err(Error::BadLine)),
        ("missing port", b"PROXY TCP4 192.0.2.7 127.0.0.1 1\r\n", Err(Error::BadLine)),
        ("extra field", b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2 3\r\n", Err(Error::BadLine)),
        ("two spaces", b"PROXY TCP4  192.0.2.7 127.0.0.1 1 2\r\n", Err(Error::BadLine)),
        ("port too big", b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 2\r\n", Err(Error::BadLine)),
        ("signed port", b"PROXY TCP4 192.0.2.7 127.0.0.1 +1 2\r\n", Err(Error::BadLine)),
        ("leading zero", b"PROXY TCP4 192.0.2.7 127.0.0.1 01 2\r\n", Err(Error::BadLine)),
        ("bad address", b"PROXY TCP4 192.0.2.256 127.0.0.1 1 2\r\n", Err(Error::BadLine)),
    ];
    for (name, input, want) in cases {
        check(name, input, *want);
    }
}

#[test]
fn v2_headers() {
    let v4 = v2(0x21, 0x11, &inet4_block());
    let v6 = v2(0x21, 0x21, &inet6_block());
    let mut with_tlvs = inet4_block();
    with_tlvs.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // PP2_TYPE_NOOP
    let tlvs = v2(0x21, 0x11, &with_tlvs);
    let local = v2(0x20, 0x00, &[]);
    let local_with_block = v2(0x20, 0x11, &inet4_block());
    let unspec = v2(0x21, 0x00, &[]);
    let unix = v2(0x21, 0x31, &[0u8; 216]);
    let mut followed = v4.clone();
    followed.extend_from_slice(b"\x16\x03\x01");
    let short4 = v2(0x21, 0x11, &inet4_block()[..11]);
    let short6 = v2(0x21, 0x21, &inet6_block()[..35]);
    let udp = v2(0x21, 0x12, &inet4_block());
    let bad_family = v2(0x21, 0x41, &inet4_block());
    let v1_byte = v2(0x11, 0x11, &inet4_block());
    let bad_cmd = v2(0x22, 0x11, &inet4_block());
    let mut huge = v2(0x21, 0x11, &[]);
    huge[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
    #[rustfmt::skip]
    let cases: &[(&str, &[u8], Want)] = &[
        ("inet stream", &v4, Ok(Some((28, Some("192.0.2.7:40000"))))),
        ("inet6 stream", &v6, Ok(Some((52, Some("[2001:db8::7]:40000"))))),
        ("TLVs skipped", &tlvs, Ok(Some((34, Some("192.0.2.7:40000"))))),
        ("bytes after stay", &followed, Ok(Some((28, Some("192.0.2.7:40000"))))),
        ("LOCAL", &local, Ok(Some((16, None)))),
        ("LOCAL ignores the block", &local_with_block, Ok(Some((28, None)))),
        ("unspecified family", &unspec, Ok(Some((16, None)))),
        ("unix", &unix, Ok(Some((232, None)))),
        ("signature only", &v4[..12], Ok(None)),
        ("fixed part only", &v4[..16], Ok(None)),
        ("one byte short", &v4[..27], Ok(None)),
        ("signature prefix", b"\r\n\r\n\0", Ok(None)),
        ("broken signature", b"\r\n\r\n\0\r\nQUIX\n", Err(Error::Missing)),
        ("version 1 byte", &v1_byte, Err(Error::BadCommand)),
        ("command 2", &bad_cmd, Err(Error::BadCommand)),
        ("UDP", &udp, Err(Error::BadFamily)),
        ("family 4", &bad_family, Err(Error::BadFamily)),
        ("inet block short", &short4, Err(Error::BadLength)),
        ("inet6 block short", &short6, Err(Error::BadLength)),
        ("length over the bound", &huge, Err(Error::BadLength)),
    ];
    for (name, input, want) in cases {
        check(name, input, *want);
    }
}

#[test]
fn destinations_are_read_too() {
    let Ok(Parsed::Done { addresses: Some(a), .. }) = parse(&v2(0x21, 0x21, &inet6_block())) else {
        panic!("not parsed")
    };
    assert_eq!(a.destination, "[::1]:80".parse().unwrap());
    let Ok(Parsed::Done { addresses: Some(a), .. }) = parse(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\n") else {
        panic!("not parsed")
    };
    assert_eq!(a.destination, "127.0.0.1:80".parse().unwrap());
}
