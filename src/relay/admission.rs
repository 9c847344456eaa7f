//! Admission control: how the relay absorbs a storm of connections (every box reconnecting
//! after a relay restart) instead of amplifying it.
//!
//! Owns: the accept rate limit ([`TokenBucket`], sans-IO: it is given `now` and answers how
//! long to wait), the per-source cap on unauthenticated connections ([`PerSource`]), the
//! per-source throttle on authentication failures ([`AuthThrottle`], sans-IO too), what
//! counts as one source ([`source_key`]: an IPv4 address, an IPv6 /64), and the pre-auth byte
//! budget on a connection's input ([`Capped`]).
//!
//! Also the list of unauthenticated connections, oldest first ([`PreAuthList`]), from which
//! the accept loop evicts the oldest when the global pre-auth cap is full.
//!
//! Does not own: the global pre-auth cap (a semaphore in the accept loop), the deadline for
//! handshake and hello (the connection code), authentication.
//!
//! What happens at each limit (also in `docs/scaling.md`):
//! - accept rate: the accept loop sleeps; new connections wait in the kernel's listen queue.
//! - global pre-auth cap: the oldest unauthenticated connection is closed (counted as
//!   `evicted`) if it has been unauthenticated for at least `preauth_evict_after`
//!   (legitimate handshakes take milliseconds, so what is old is slow on purpose or stuck);
//!   otherwise the accept loop waits until one finishes or becomes old enough; new
//!   connections wait in the listen queue meanwhile.
//! - per-source cap: the connection is accepted and closed at once (counted).
//! - pre-auth bytes: a connection that sends more than the budget before its hello is
//!   accepted gets a read error and is closed (counted).
//! - authentication failures: each source has a bucket of `burst` failures that refills at
//!   `rate` per second; while it is empty, hellos from that source are not checked at all
//!   (a right token is refused too) and get the ordinary `auth_failed` answer after a delay
//!   (counted). The table of sources is bounded; beyond it, new sources share one bucket.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

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

/// What counts as one source: an IPv4 address (also when IPv4-mapped in IPv6), or the /64
/// prefix of an IPv6 address (one subscriber usually holds a whole /64, so a per-address
/// limit would not limit anyone there).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
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

    /// A place for a new connection from `ip` ([`source_key`]), or `None` when the source
    /// has `max`.
    pub fn enter(&self, ip: IpAddr) -> Option<SourceGuard> {
        if self.max == 0 {
            return Some(SourceGuard { inner: None });
        }
        let ip = source_key(ip);
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

/// Per-source throttle on authentication failures: each source ([`source_key`]) may fail
/// `burst` times, and earns one more try every `1 / rate` seconds. While a source has no
/// try left, the relay does not check its hellos at all: a brute-forcer learns nothing, not
/// even from a right guess. Sans-IO: the caller passes `now`.
///
/// Memory: at most `max_sources` entries (a few dozen bytes each). A source whose bucket is
/// full again carries no state and is forgotten when room is needed; when the table is
/// full of throttled sources, new ones share one overflow bucket (so many addresses cannot
/// buy more tries, only share them).
#[derive(Debug)]
pub struct AuthThrottle {
    inner: Mutex<ThrottleState>,
    burst: f64,
    rate: f64,
    max_sources: usize,
}

#[derive(Debug)]
struct ThrottleState {
    sources: HashMap<IpAddr, Tries>,
    overflow: Option<Tries>,
}

/// Tries left (may be fractional while refilling) as of `at`.
#[derive(Debug, Clone, Copy)]
struct Tries {
    left: f64,
    at: Instant,
}

impl Tries {
    fn now(self, now: Instant, rate: f64, burst: f64) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        (self.left + dt * rate).min(burst)
    }
}

impl AuthThrottle {
    /// `burst` failures per source (0: no throttle), refilled at `rate` per second, for at
    /// most `max_sources` sources at once.
    pub fn new(burst: u32, rate: f64, max_sources: usize) -> Self {
        AuthThrottle {
            inner: Mutex::new(ThrottleState {
                sources: HashMap::new(),
                overflow: None,
            }),
            burst: burst as f64,
            rate: if rate.is_finite() { rate.max(0.0) } else { 0.0 },
            max_sources: max_sources.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a hello from `ip` may be checked now (`false`: the source is throttled).
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        if self.burst <= 0.0 {
            return true;
        }
        let st = self.lock();
        let key = source_key(ip);
        let tries = match st.sources.get(&key) {
            Some(t) => Some(*t),
            None if st.sources.len() >= self.max_sources => st.overflow,
            None => None,
        };
        tries.is_none_or(|t| t.now(now, self.rate, self.burst) >= 1.0)
    }

    /// Count a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        if self.burst <= 0.0 {
            return;
        }
        let (rate, burst) = (self.rate, self.burst);
        let mut st = self.lock();
        let key = source_key(ip);
        if !st.sources.contains_key(&key) && st.sources.len() >= self.max_sources {
            // Forget sources that are whole again; they carry no state.
            st.sources.retain(|_, t| t.now(now, rate, burst) < burst);
        }
        let fresh = Tries {
            left: burst,
            at: now,
        };
        let slot = if st.sources.len() < self.max_sources || st.sources.contains_key(&key) {
            st.sources.entry(key).or_insert(fresh)
        } else {
            st.overflow.get_or_insert(fresh)
        };
        let left = slot.now(now, rate, burst);
        *slot = Tries {
            left: (left - 1.0).max(0.0),
            at: now,
        };
    }

    /// Sources with state (throttled or refilling).
    pub fn tracked(&self) -> usize {
        self.lock().sources.len()
    }
}

/// The unauthenticated connections, oldest first: when the global pre-auth cap is full,
/// the accept loop tells the oldest to go, so that connections held open on purpose
/// (slowloris, from more addresses than the per-source cap can stop) cannot keep new ones
/// out for a whole hello deadline. Sans-IO: the caller passes `now`.
#[derive(Debug, Clone, Default)]
pub struct PreAuthList {
    inner: Arc<Mutex<ListState>>,
}

#[derive(Debug, Default)]
struct ListState {
    next: u64,
    live: BTreeMap<u64, (Instant, CancellationToken)>,
}

/// A connection's place in the [`PreAuthList`]; leaving (drop) removes it.
#[derive(Debug)]
pub struct Listed {
    list: PreAuthList,
    id: u64,
}

impl PreAuthList {
    fn lock(&self) -> std::sync::MutexGuard<'_, ListState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// List a connection that started at `now`; `evict` is cancelled to make it go.
    pub fn enter(&self, now: Instant, evict: CancellationToken) -> Listed {
        let mut st = self.lock();
        let id = st.next;
        st.next += 1;
        st.live.insert(id, (now, evict));
        Listed {
            list: self.clone(),
            id,
        }
    }

    /// Tell the oldest connection to go if it started at least `min_age` before `now`
    /// (`Ok`); otherwise `Err` with when the oldest will be old enough (`None`: the list is
    /// empty). A zero `min_age` never evicts.
    pub fn evict_oldest(&self, now: Instant, min_age: Duration) -> Result<(), Option<Instant>> {
        let mut st = self.lock();
        let Some((&id, &(started, _))) = st.live.iter().next() else {
            return Err(None);
        };
        if min_age.is_zero() {
            return Err(None);
        }
        if now.saturating_duration_since(started) < min_age {
            return Err(Some(started + min_age));
        }
        if let Some((_, token)) = st.live.remove(&id) {
            token.cancel();
        }
        Ok(())
    }

    /// Connections listed now.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.list.lock().live.remove(&self.id);
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

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_prefixes() {
        let k = |s: &str| source_key(s.parse().unwrap()).to_string();
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        // One /64 is one source for the pre-auth cap too.
        let p = PerSource::new(1);
        let _g = p.enter("2001:db8::1".parse().unwrap()).unwrap();
        assert!(p.enter("2001:db8::2".parse().unwrap()).is_none());
        assert!(p.enter("2001:db8:0:1::2".parse().unwrap()).is_some());
    }

    #[test]
    fn auth_failures_are_throttled_per_source_and_refill() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let th = AuthThrottle::new(3, 2.0, 100);
        for _ in 0..3 {
            assert!(th.allows(a, t0));
            th.failed(a, t0);
        }
        assert!(!th.allows(a, t0), "the fourth try is not checked");
        assert!(th.allows(b, t0), "another source is not affected");
        // One try back every 1/rate = 500 ms, never more than the burst.
        assert!(!th.allows(a, at(499)));
        assert!(th.allows(a, at(500)));
        th.failed(a, at(500));
        assert!(!th.allows(a, at(600)));
        assert!(th.allows(a, at(60_000)));
        for _ in 0..3 {
            th.failed(a, at(60_000));
        }
        assert!(
            !th.allows(a, at(60_000)),
            "idle time does not bank more than the burst"
        );
        // Off: nothing is throttled or remembered.
        let off = AuthThrottle::new(0, 1.0, 10);
        for _ in 0..1000 {
            off.failed(a, t0);
        }
        assert!(off.allows(a, t0));
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn the_throttle_table_is_bounded_and_many_sources_share_one_bucket() {
        let t0 = Instant::now();
        let th = AuthThrottle::new(2, 1.0, 4);
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        for i in 0..4 {
            th.failed(ip(i), t0);
            th.failed(ip(i), t0);
        }
        assert_eq!(th.tracked(), 4);
        // The table is full of throttled sources: new ones share the overflow bucket.
        for i in 4..200 {
            th.failed(ip(i), t0);
        }
        assert_eq!(th.tracked(), 4);
        assert!(!th.allows(ip(250), t0), "the overflow bucket is empty");
        // Once sources are whole again they are forgotten to make room.
        let later = t0 + Duration::from_secs(10);
        th.failed(ip(251), later);
        assert_eq!(th.tracked(), 1);
        assert!(th.allows(ip(0), later));
    }

    #[test]
    fn the_oldest_unauthenticated_connection_is_evicted_once_old_enough() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let list = PreAuthList::default();
        let (a, b, c) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let la = list.enter(at(0), a.clone());
        let lb = list.enter(at(100), b.clone());
        let _lc = list.enter(at(200), c.clone());
        let min = Duration::from_secs(1);
        assert_eq!(list.evict_oldest(at(500), min), Err(Some(at(1000))));
        assert_eq!(list.evict_oldest(at(1000), min), Ok(()));
        assert!(a.is_cancelled() && !b.is_cancelled());
        assert_eq!(list.len(), 2);
        drop(la); // already gone from the list
        // A connection that finished is not evicted: the next oldest is.
        drop(lb);
        assert_eq!(list.evict_oldest(at(1100), min), Err(Some(at(1200))));
        assert_eq!(list.evict_oldest(at(1200), min), Ok(()));
        assert!(c.is_cancelled() && !b.is_cancelled());
        assert_eq!(list.evict_oldest(at(5000), min), Err(None));
        assert!(list.is_empty());
        // Zero: never.
        let _ld = list.enter(at(0), CancellationToken::new());
        assert_eq!(list.evict_oldest(at(99_999), Duration::ZERO), Err(None));
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
