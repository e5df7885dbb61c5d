use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn cidrs_match_by_prefix() {
    let net = Cidr::parse("192.0.2.0/24").unwrap();
    assert!(net.contains(ip("192.0.2.77")));
    assert!(!net.contains(ip("192.0.3.1")));
    assert!(!net.contains(ip("2001:db8::1")));
    let one = Cidr::parse("198.51.100.7").unwrap();
    assert!(one.contains(ip("198.51.100.7")) && !one.contains(ip("198.51.100.8")));
    let all = Cidr::parse("0.0.0.0/0").unwrap();
    assert!(all.contains(ip("203.0.113.9")));
    let v6 = Cidr::parse("2001:db8::/32").unwrap();
    assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
    for bad in ["192.0.2.0/33", "2001:db8::/129", "example.com", "192.0.2.0/x", ""] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(Cidr::parse_list("192.0.2.0/24, 198.51.100.7,").unwrap().len(), 2);
}

#[test]
fn deny_is_checked_before_allow_and_mapped_addresses_count_as_ipv4() {
    let p = Policy {
        allow: Cidr::parse_list("192.0.2.0/24").unwrap(),
        deny: Cidr::parse_list("192.0.2.66").unwrap(),
        ..Policy::default()
    };
    assert!(p.allows(ip("192.0.2.1")));
    assert!(
        p.allows(ip("::ffff:192.0.2.1")),
        "an IPv4 client on a dual-stack listener"
    );
    assert!(!p.allows(ip("192.0.2.66")));
    assert!(!p.allows(ip("203.0.113.1")));
    assert!(Policy::default().allows(ip("203.0.113.1")));
}

#[test]
fn rewrites_expand_captures() {
    let p = Policy {
        rewrite: Some(Rewrite {
            pattern: crate::routes::regex_path("/something(/|$)(.*)").unwrap(),
            target: "/$2".into(),
        }),
        ..Policy::default()
    };
    let mut out = String::new();
    for (path, want) in [
        ("/something", "/"),
        ("/something/", "/"),
        ("/something/new", "/new"),
        ("/SOMETHING/a/b", "/a/b"),
    ] {
        assert!(p.rewrite_into(path, &mut out), "{path}");
        assert_eq!(out, want, "{path}");
    }
    assert!(!p.rewrite_into("/other", &mut out));
    let p = Policy {
        rewrite: Some(Rewrite {
            pattern: crate::routes::regex_path("/api/(v[0-9]+)/(.*)").unwrap(),
            target: "internal/$2?version=$1&cost=$".into(),
        }),
        ..Policy::default()
    };
    assert!(p.rewrite_into("/api/v2/users", &mut out));
    assert_eq!(out, "/internal/users?version=v2&cost=$");
}
