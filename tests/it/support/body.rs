//! Large bodies made on the fly from a fixed pseudo-random pattern (so no test holds a copy to
//! compare with), and a streaming hash to check them at the other end.

use std::sync::OnceLock;

/// The pattern's period: a prime, so that no buffer size lines up with it.
const PERIOD: usize = 65_521;

fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// Bytes `offset .. offset + len` of the endless pattern.
pub fn fill(offset: u64, len: usize) -> Vec<u8> {
    let p = pattern();
    let mut out = Vec::with_capacity(len);
    let mut at = (offset % PERIOD as u64) as usize;
    while out.len() < len {
        let take = (PERIOD - at).min(len - out.len());
        out.extend_from_slice(&p[at..at + take]);
        at = 0;
    }
    out
}

/// The hash of the pattern's first `len` bytes.
pub fn pattern_hash(len: u64) -> u64 {
    let mut h = BodyHash::default();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(1 << 20) as usize;
        h.update(&fill(at, n));
        at += n as u64;
    }
    h.finish()
}

/// The hash of `data`.
pub fn hash(data: &[u8]) -> u64 {
    let mut h = BodyHash::default();
    h.update(data);
    h.finish()
}

/// An order-sensitive 64-bit hash fed piece by piece; the result does not depend on how the
/// bytes were split (so it survives re-chunking). Word-wise, to stay quick in debug builds.
#[derive(Debug, Clone)]
pub struct BodyHash {
    h: u64,
    len: u64,
    tail: [u8; 8],
    tail_len: usize,
}

impl Default for BodyHash {
    fn default() -> Self {
        BodyHash {
            h: 0xcbf2_9ce4_8422_2325,
            len: 0,
            tail: [0; 8],
            tail_len: 0,
        }
    }
}

impl BodyHash {
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(5) ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }

    pub fn finish(&self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        let h = (self.h.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(0x0000_0100_0000_01b3);
        (h ^ self.len).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

#[test]
fn hash_ignores_how_bytes_are_split() {
    let data = fill(12_345, 100_003);
    let whole = hash(&data);
    for split in [1, 7, 8, 9, 4096, 65_537] {
        let mut h = BodyHash::default();
        for piece in data.chunks(split) {
            h.update(piece);
        }
        assert_eq!(h.finish(), whole, "split {split}");
    }
    assert_ne!(hash(&data[1..]), whole);
    assert_eq!(fill(0, PERIOD + 10)[PERIOD..], fill(0, 10)[..]);
}
