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

#[test]
fn hash_templates_parse_nginx_variables() {
    let hb = HashBy::parse("$request_uri").unwrap();
    assert_eq!(hb.0, [HashPart::RequestUri]);
    let hb = HashBy::parse("user:${http_x_user_id}@$host").unwrap();
    assert_eq!(
        hb.0,
        [
            HashPart::Text("user:".into()),
            HashPart::Header("x-user-id".into()),
            HashPart::Text("@".into()),
            HashPart::Host
        ]
    );
    assert_eq!(
        HashBy::parse("$cookie_session").unwrap().0,
        [HashPart::Cookie("session".into())]
    );
    assert_eq!(HashBy::parse("$binary_remote_addr").unwrap().0, [HashPart::ClientIp]);
    for bad in ["constant", "$nonsense", "$", "${http_x"] {
        assert!(HashBy::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn rendezvous_moves_only_the_keys_of_endpoints_that_change() {
    let eps: Vec<u64> = (1..=4u16)
        .map(|i| endpoint_key(std::net::SocketAddr::from(([192, 0, 2, i as u8], 8080))))
        .collect();
    let pick = |key: u64, eps: &[u64]| *eps.iter().max_by_key(|&&e| rendezvous(key, e)).unwrap();
    let mut counts = std::collections::HashMap::new();
    let mut moved = 0;
    for k in 0..4000u64 {
        let key = mix(k);
        let before = pick(key, &eps[..3]);
        *counts.entry(before).or_insert(0) += 1;
        let after = pick(key, &eps);
        if after != before {
            moved += 1;
            assert_eq!(after, eps[3], "a key only moves to the new endpoint");
        }
    }
    // Even spread (each of 3 endpoints near 1333) and about a quarter moves to the fourth.
    for (_, c) in counts {
        assert!((1100..1570).contains(&c), "{c}");
    }
    assert!((800..1200).contains(&moved), "{moved}");
}

#[test]
fn affinity_cookies_and_dates() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    let a = Affinity {
        cookie: "INGRESSCOOKIE".into(),
        path: "/shop".into(),
        max_age: Some(3600),
        expires: Some(60),
        secure: true,
        samesite: Some("Lax".into()),
        change_on_failure: false,
    };
    let mut out = Vec::new();
    a.set_cookie_line(0xab, 0, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "Set-Cookie: INGRESSCOOKIE=00000000000000ab; Path=/shop; Max-Age=3600; Expires=Thu, 01 Jan 1970 00:01:00 GMT; Secure; SameSite=Lax; HttpOnly\r\n"
    );
    // The same endpoint gets the same key in every process.
    let e = std::net::SocketAddr::from(([192, 0, 2, 1], 8080));
    assert_eq!(endpoint_key(e), endpoint_key(e));
    assert_ne!(
        endpoint_key(e),
        endpoint_key(std::net::SocketAddr::from(([192, 0, 2, 1], 8081)))
    );
}
