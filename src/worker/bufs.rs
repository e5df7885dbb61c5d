//! A worker's spare buffers. A keep-alive connection between requests needs none of its
//! request buffers (the client's bytes, the upstream's, the output being assembled): it gives
//! them here while it waits, and takes a set back when the next request's bytes arrive. Idle
//! connections then hold only what their wait needs (a TLS connection: its ciphertext buffer),
//! and a busy worker moves the same few buffers between connections instead of allocating.
//! Worker-local: a `RefCell`, no lock.

use std::cell::RefCell;

use crate::http::HeaderSpan;

/// Spare buffers kept per class; more are freed.
const KEEP: usize = 64;
/// A buffer that grew past this (a large head, a pipelined burst) is freed, not kept.
const MAX_KEPT: usize = 64 * 1024;

/// The worker's spare buffers, by use.
#[derive(Default)]
pub(super) struct BufPool {
    /// Input: the client's and the upstream's bytes (16 KiB reads).
    input: RefCell<Vec<Vec<u8>>>,
    /// Output being assembled (heads, canned answers).
    output: RefCell<Vec<Vec<u8>>>,
    /// Header spans of parsed heads.
    spans: RefCell<Vec<Vec<HeaderSpan>>>,
    /// An HTTP/2 request's header fields as (name, value) slices, kept empty.
    pairs: RefCell<Vec<Pairs<'static>>>,
}

/// Header fields as (name, value) slices of a request head.
pub(super) type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// `v` emptied, as a list of slices of another lifetime: the same allocation (collecting a
/// `vec::IntoIter` through `map` into a vector of the same layout reuses it), no element
/// outlives what it borrowed.
fn relabel<'b>(mut v: Pairs<'_>) -> Pairs<'b> {
    v.clear();
    v.into_iter()
        .map(|_| -> (&'b [u8], &'b [u8]) { unreachable!("emptied above") })
        .collect()
}

/// Which class a buffer belongs to.
#[derive(Clone, Copy)]
pub(super) enum Class {
    Input,
    Output,
}

impl BufPool {
    fn class(&self, c: Class) -> &RefCell<Vec<Vec<u8>>> {
        match c {
            Class::Input => &self.input,
            Class::Output => &self.output,
        }
    }

    /// A spare buffer (empty), or a new one: input without capacity (a read reserves what it
    /// needs), output with room for a head.
    pub(super) fn take(&self, c: Class) -> Vec<u8> {
        match self.class(c).borrow_mut().pop() {
            Some(b) => b,
            None => match c {
                Class::Input => Vec::new(),
                Class::Output => Vec::with_capacity(4 * 1024),
            },
        }
    }

    /// Keeps `buf` for the next taker (emptied), unless it has no capacity, grew too large or
    /// enough are kept already.
    pub(super) fn give(&self, c: Class, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > MAX_KEPT {
            return;
        }
        buf.clear();
        let mut spare = self.class(c).borrow_mut();
        if spare.len() < KEEP {
            spare.push(buf);
        }
    }
}

impl BufPool {
    /// Spare header spans (empty), or new ones with room for 32 fields.
    pub(super) fn take_spans(&self) -> Vec<HeaderSpan> {
        self.spans.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(32))
    }

    /// Keeps `spans` for the next taker (emptied), as [`BufPool::give`].
    pub(super) fn give_spans(&self, mut spans: Vec<HeaderSpan>) {
        if spans.capacity() == 0 || spans.capacity() > 256 {
            return;
        }
        spans.clear();
        let mut spare = self.spans.borrow_mut();
        if spare.len() < KEEP {
            spare.push(spans);
        }
    }
}

/// A buffer taken from the pool for one request (an HTTP/2 stream's head, answer lines, upstream
/// reads) and given back when dropped, whichever way the request ends.
pub(super) struct Lease<'p> {
    pool: &'p BufPool,
    class: Class,
    buf: Vec<u8>,
}

impl<'p> Lease<'p> {
    pub(super) fn new(pool: &'p BufPool, class: Class) -> Self {
        Lease {
            pool,
            class,
            buf: pool.take(class),
        }
    }
}

impl std::ops::Deref for Lease<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.give(self.class, std::mem::take(&mut self.buf));
    }
}

/// A header field list taken from the pool for one HTTP/2 request, given back (emptied) when
/// dropped.
pub(super) struct PairsLease<'p, 'a> {
    pool: &'p BufPool,
    pairs: Pairs<'a>,
}

impl<'p, 'a> PairsLease<'p, 'a> {
    pub(super) fn new(pool: &'p BufPool) -> Self {
        let spare = pool.pairs.borrow_mut().pop();
        let pairs = spare.map_or_else(|| Vec::with_capacity(32), relabel);
        PairsLease { pool, pairs }
    }
}

impl<'a> std::ops::Deref for PairsLease<'_, 'a> {
    type Target = Pairs<'a>;
    fn deref(&self) -> &Pairs<'a> {
        &self.pairs
    }
}

impl<'a> std::ops::DerefMut for PairsLease<'_, 'a> {
    fn deref_mut(&mut self) -> &mut Pairs<'a> {
        &mut self.pairs
    }
}

impl Drop for PairsLease<'_, '_> {
    fn drop(&mut self) {
        let pairs = std::mem::take(&mut self.pairs);
        if pairs.capacity() == 0 || pairs.capacity() > 256 {
            return;
        }
        let mut spare = self.pool.pairs.borrow_mut();
        if spare.len() < KEEP {
            spare.push(relabel(pairs));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_class_and_bounded() {
        let pool = BufPool::default();
        let mut b = Vec::with_capacity(16 * 1024);
        b.extend_from_slice(b"left over");
        let ptr = b.as_ptr();
        pool.give(Class::Input, b);
        // Another class does not get it: a new output buffer has room for a head.
        let out = pool.take(Class::Output);
        assert_ne!(out.as_ptr(), ptr);
        assert_eq!(out.capacity(), 4 * 1024);
        let again = pool.take(Class::Input);
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
        assert!(again.is_empty(), "emptied");
        // Nothing kept: a new, unallocated buffer.
        assert_eq!(pool.take(Class::Input).capacity(), 0);
        // Unallocated and oversized buffers are not kept.
        pool.give(Class::Input, Vec::new());
        pool.give(Class::Input, Vec::with_capacity(MAX_KEPT + 1));
        assert_eq!(pool.take(Class::Input).capacity(), 0);
        // At most KEEP are kept.
        for _ in 0..KEEP + 10 {
            pool.give(Class::Output, Vec::with_capacity(64));
        }
        assert_eq!(pool.output.borrow().len(), KEEP);
    }

    #[test]
    fn a_lease_gives_its_buffer_back_when_dropped() {
        let pool = BufPool::default();
        let ptr = {
            let mut lease = Lease::new(&pool, Class::Output);
            lease.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            lease.as_ptr()
        };
        let again = Lease::new(&pool, Class::Output);
        assert_eq!(again.as_ptr(), ptr, "the next request gets the same allocation");
        assert!(again.is_empty());
    }

    #[test]
    fn a_field_list_is_reused_across_requests() {
        let pool = BufPool::default();
        let ptr = {
            let (name, value) = (b"accept".to_vec(), b"*/*".to_vec());
            let mut pairs = PairsLease::new(&pool);
            pairs.push((&name, &value));
            pairs.as_ptr() as usize
        };
        let pairs = PairsLease::new(&pool);
        assert_eq!(pairs.as_ptr() as usize, ptr, "the same allocation, relabelled");
        assert!(pairs.is_empty());
        assert_eq!(pairs.capacity(), 32);
    }
}
