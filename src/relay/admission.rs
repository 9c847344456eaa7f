//! Admission control: how the relay absorbs a storm of connections (every box reconnecting
//! after a relay restart) instead of amplifying it.
//!
//! Owns: the accept rate limit ([`TokenBucket`], sans-IO: it is given `now` and answers how
//! long to wait), the per-source cap on unauthenticated connections ([`PerSource`]), and the
//! pre-auth byte budget on a connection's input ([`Capped`]).
//!
//! Does not own: the global pre-auth cap (a semaphore in the accept loop), the deadline for
//! handshake and hello (the connection code), authentication.
//!
//! What happens at each limit (also in `docs/scaling.md`):
//! - accept rate: the accept loop sleeps; new connections wait in the kernel's listen queue.
//! - global pre-auth cap: the accept loop waits for an unauthenticated connection to finish
//!   (authenticated, refused or timed out); new connections wait in the listen queue.
//! - per-source cap: the connection is accepted and closed at once (counted).
//! - pre-auth bytes: a connection that sends more than the budget before its hello is
//!   accepted gets a read error and is closed (counted).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` per second (0: unlimited), `burst` at once; starts full.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Take one token: `None` when one is available now, otherwise how long to wait before
    /// asking again.
    pub fn take(&mut self, now: Instant) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

type Counts = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// Unauthenticated connections per source address.
#[derive(Debug, Clone)]
pub struct PerSource {
    inner: Counts,
    max: u32,
}

/// Held while a connection from a source is unauthenticated; dropping it frees the place.
#[derive(Debug)]
pub struct SourceGuard {
    inner: Option<(Counts, IpAddr)>,
}

impl PerSource {
    /// At most `max` unauthenticated connections per address (0: no limit).
    pub fn new(max: u32) -> Self {
        PerSource {
            inner: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    /// A place for a new connection from `ip`, or `None` when the address has `max`.
    pub fn enter(&self, ip: IpAddr) -> Option<SourceGuard> {
        if self.max == 0 {
            return Some(SourceGuard { inner: None });
        }
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            inner: Some((self.inner.clone(), ip)),
        })
    }

    /// Addresses with at least one unauthenticated connection.
    pub fn sources(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Some((m, ip)) = self.inner.take() {
            let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

/// A stream whose input is limited to `budget` bytes until [`Capped::lift`]: an
/// unauthenticated client cannot make the relay read (and buffer) more than that.
#[derive(Debug)]
pub struct Capped<S> {
    inner: S,
    left: Option<usize>,
}

impl<S> Capped<S> {
    pub fn new(inner: S, budget: usize) -> Self {
        Capped {
            inner,
            left: Some(budget),
        }
    }
    /// Remove the limit (the hello was accepted).
    pub fn lift(&mut self) {
        self.left = None;
    }
    /// Whether the budget is spent.
    pub fn exhausted(&self) -> bool {
        self.left == Some(0)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(left) = self.left else {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "pre-authentication byte budget exhausted",
            )));
        }
        let n = {
            let mut sub = buf.take(left);
            match Pin::new(&mut self.inner).poll_read(cx, &mut sub) {
                Poll::Ready(Ok(())) => sub.filled().len(),
                other => return other,
            }
        };
        // SAFETY: `sub` was a view of `buf`'s unfilled part; the inner reader initialised
        // and filled its first `n` bytes.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        self.left = Some(left - n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 3, t0);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0), None);
        let wait = b.take(t0).unwrap();
        assert!(wait > Duration::from_millis(9) && wait <= Duration::from_millis(10));
        assert_eq!(b.take(t0 + Duration::from_millis(10)), None);
        // Never more than the burst, however long it was idle.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(later), None);
        }
        assert!(b.take(later).is_some());
        let mut free = TokenBucket::new(0, 1, t0);
        for _ in 0..1000 {
            assert_eq!(free.take(t0), None);
        }
    }

    #[test]
    fn per_source_caps_each_address_and_frees_on_drop() {
        let p = PerSource::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let g1 = p.enter(a).unwrap();
        let _g2 = p.enter(a).unwrap();
        assert!(p.enter(a).is_none());
        let _g3 = p.enter(b).unwrap();
        drop(g1);
        assert!(p.enter(a).is_some());
        assert_eq!(p.sources(), 2);
        let unlimited = PerSource::new(0);
        let gs: Vec<_> = (0..100).map(|_| unlimited.enter(a).unwrap()).collect();
        assert_eq!(gs.len(), 100);
        assert_eq!(unlimited.sources(), 0);
    }

    #[tokio::test]
    async fn capped_reads_stop_at_the_budget_until_lifted() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tx.write_all(&[7u8; 100]).await.unwrap();
        let mut c = Capped::new(rx, 60);
        let mut buf = [0u8; 100];
        let mut got = 0;
        while got < 60 {
            got += c.read(&mut buf[got..]).await.unwrap();
        }
        assert_eq!(got, 60);
        assert!(c.exhausted());
        let e = c.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        c.lift();
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(n, 40);
    }
}
