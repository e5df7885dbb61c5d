//! Stable hashes for keys that must agree across workers, processes and versions (affinity
//! cookies, consistent hashing, cache keys): FNV-1a with a splitmix64 finaliser, no random seed.
//! Not for anything an attacker could exploit by choosing inputs to collide.

/// FNV-1a, for hash keys: stable across processes and versions (no random seed).
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A 64-bit finaliser (splitmix64), so that close inputs give unrelated outputs.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
