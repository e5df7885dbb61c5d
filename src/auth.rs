//! HTTP basic authentication against an htpasswd file (ingress-nginx's `auth-type: basic` with
//! `auth-secret`): bcrypt (`$2a$`, `$2b$`, `$2y$`), Apache MD5 (`$apr1$`), SHA-1 (`{SHA}`) and
//! `{PLAIN}` entries. Pure functions; the worker caches successful checks (bcrypt is slow on
//! purpose).

use std::collections::HashMap;

use base64::Engine as _;

/// Users and their password hashes, and the realm shown to clients.
#[derive(Debug, Clone, Default)]
pub struct BasicAuth {
    pub realm: Box<str>,
    users: HashMap<Box<str>, Box<str>>,
    /// A hash of the users and their hashes: the same for the same file in every build, so a
    /// worker's cache of checked credentials survives table rebuilds.
    pub id: u64,
}

impl BasicAuth {
    /// Parses htpasswd lines (`user:hash`; blank lines and `#` comments skipped). Lines that
    /// cannot be used are returned as problems, and the others kept.
    pub fn parse(realm: &str, text: &str) -> (BasicAuth, Vec<String>) {
        let mut auth = BasicAuth {
            realm: realm.into(),
            users: HashMap::new(),
            id: 0,
        };
        let mut problems = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((user, hash)) if !user.is_empty() && supported(hash) => {
                    auth.users.insert(user.into(), hash.into());
                }
                Some((user, _)) => problems.push(format!(
                    "line {}: the hash of {user:?} is not bcrypt, $apr1$, {{SHA}} or {{PLAIN}}",
                    i + 1
                )),
                None => problems.push(format!("line {}: not user:hash", i + 1)),
            }
        }
        (auth, problems)
    }

    /// Adds `user` with `hash` (auth-map Secrets: one key per user).
    pub fn insert(&mut self, user: &str, hash: &str) -> bool {
        if !supported(hash) {
            return false;
        }
        self.users.insert(user.into(), hash.into());
        true
    }

    /// Computes `id` once the users are all in.
    pub fn seal(&mut self) {
        let mut entries: Vec<_> = self.users.iter().collect();
        entries.sort();
        let mut h = crate::hash::Fnv::default();
        for (u, p) in entries {
            h.write(u.as_bytes());
            h.write(b":");
            h.write(p.as_bytes());
            h.write(b"\n");
        }
        self.id = crate::hash::mix(h.0);
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The stored hash of `user`.
    pub fn hash_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(|h| &**h)
    }
}

fn supported(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$apr1$", "{SHA}", "{PLAIN}"]
        .iter()
        .any(|p| hash.starts_with(p))
}

/// The user and password of an `Authorization: Basic ...` value.
pub fn credentials(header: &[u8]) -> Option<(String, String)> {
    let rest = header
        .strip_prefix(b"Basic ")
        .or_else(|| header.strip_prefix(b"basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// Whether `password` matches `hash` (an htpasswd entry).
pub fn verify(password: &str, hash: &str) -> bool {
    if hash.starts_with("$2") {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        let Some((salt, _)) = rest.split_once('$') else {
            return false;
        };
        return constant_eq(apr1(password.as_bytes(), salt.as_bytes()).as_bytes(), hash.as_bytes());
    }
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, password.as_bytes());
        let mine = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        return constant_eq(mine.as_bytes(), b64.as_bytes());
    }
    if let Some(plain) = hash.strip_prefix("{PLAIN}") {
        return constant_eq(password.as_bytes(), plain.as_bytes());
    }
    false
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5-crypt (`$apr1$salt$hash`), as `htpasswd -m` writes it.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    use md5::{Digest, Md5};
    let salt = &salt[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(b"$apr1$");
    ctx.update(salt);
    let mut n = password.len();
    while n > 0 {
        ctx.update(&alt[..n.min(16)]);
        n = n.saturating_sub(16);
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();
    for r in 0..1000 {
        let mut c = Md5::new();
        if r & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if r % 3 != 0 {
            c.update(salt);
        }
        if r % 7 != 0 {
            c.update(password);
        }
        if r & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = format!("$apr1${}$", String::from_utf8_lossy(salt));
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    to64((f(0) << 16) | (f(6) << 8) | f(12), 4);
    to64((f(1) << 16) | (f(7) << 8) | f(13), 4);
    to64((f(2) << 16) | (f(8) << 8) | f(14), 4);
    to64((f(3) << 16) | (f(9) << 8) | f(15), 4);
    to64((f(4) << 16) | (f(10) << 8) | f(5), 4);
    to64(f(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_every_htpasswd_scheme() {
        // apr1 from `openssl passwd -apr1`, SHA-1 of "password", bcrypt at cost 4.
        let bcrypt_hash = bcrypt::hash("s3cret", 4).unwrap();
        let text = format!(
            "# users\nann:$apr1$r31.....$ARC3pREO82RIm0aQ2zszC0\nfay:$apr1$abcdefgh$XYDX/k2KKvO6qj5xMFQ8U0\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\
             cid:{bcrypt_hash}\ndee:{{PLAIN}}plain\nbroken\neve:md5-or-so\n"
        );
        let (auth, problems) = BasicAuth::parse("kedge", &text);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(verify("password", auth.hash_of("ann").unwrap()), "apr1");
        assert!(!verify("Password", auth.hash_of("ann").unwrap()));
        assert!(verify("a longer password, over 16 bytes", auth.hash_of("fay").unwrap()));
        assert!(verify("password", auth.hash_of("bob").unwrap()), "sha1");
        assert!(verify("s3cret", auth.hash_of("cid").unwrap()), "bcrypt");
        assert!(!verify("s3cre", auth.hash_of("cid").unwrap()));
        assert!(verify("plain", auth.hash_of("dee").unwrap()));
        assert!(auth.hash_of("eve").is_none());
    }

    #[test]
    fn reads_basic_credentials() {
        assert_eq!(
            credentials(b"Basic YW5uOnBhc3M6d29yZA=="),
            Some(("ann".into(), "pass:word".into()))
        );
        assert_eq!(credentials(b"Bearer abc"), None);
        assert_eq!(credentials(b"Basic !!!"), None);
    }
}
