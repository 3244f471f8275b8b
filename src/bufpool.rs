//! Per-worker pool of IO buffers.
//!
//! Owns: the free list of fixed-capacity `Vec<u8>` buffers a worker lends to connections for
//! rent-style IO (the buffer moves into an io_uring op and comes back with the result).
//!
//! Must not: be shared across threads, or keep more than `max_free` idle buffers (memory stays
//! bounded after a burst), or hand out a buffer whose capacity differs from `buf_size` unless the
//! caller asked to grow it. Buffers that grew past `buf_size` are dropped on return rather than
//! hoarded.

use std::cell::RefCell;

/// IO buffer size: fits a typical chat request and any SSE event; large bodies grow past it.
pub const BUF_SIZE: usize = 16 * 1024;

pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    buf_size: usize,
    max_free: usize,
}

impl BufPool {
    pub fn new(buf_size: usize, max_free: usize) -> Self {
        BufPool {
            free: RefCell::new(Vec::with_capacity(max_free.min(1024))),
            buf_size,
            max_free,
        }
    }

    /// An empty buffer with capacity `buf_size`.
    #[inline]
    pub fn take(&self) -> Vec<u8> {
        match self.free.borrow_mut().pop() {
            Some(b) => b,
            None => Vec::with_capacity(self.buf_size),
        }
    }

    /// Return a buffer; it is cleared, and kept only if it is of the pool's size.
    #[inline]
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.buf_size {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            buf.clear();
            free.push(buf);
        }
    }

    /// Free buffers kept for reuse right now (published to health by the worker's janitor).
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BufPool::new(1024, 2);
        let mut a = pool.take();
        a.extend_from_slice(b"abc");
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take();
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.is_empty());
        pool.give(b);
        pool.give(pool.take());
        pool.give(Vec::with_capacity(1024));
        pool.give(Vec::with_capacity(1024));
        assert_eq!(pool.idle(), 2);
        pool.give(Vec::with_capacity(4096));
        assert_eq!(pool.idle(), 2);
    }
}
