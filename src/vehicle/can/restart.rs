//! Bus-off recovery policy: when obdgw restarts a controller, and when it stops.
//!
//! Owns: [`RestartPolicy`], sans-IO: it is told when the controller went bus-off and when it
//! came back, with `now`, and answers when to restart it, or that the hourly limit is
//! reached. Its constants: the backoff (100 ms doubling to 30 s, back to 100 ms once the bus
//! has stayed up for 60 s) and the window of the limit (one hour, sliding).
//!
//! Does not own: the restart itself (netlink, in [`super::socketcan`]) or the kernel's own
//! `restart-ms`.
//!
//! Why: a controller goes bus-off when it sees too many errors of its own making. Right
//! after a restart, a controller at the wrong bitrate (or on a bus with broken wiring or
//! termination) destroys the frames of every other node on the bus until it goes bus-off
//! again. Restarting at once, every time, would turn one misconfiguration into a storm of
//! error frames on the car's bus. So restarts back off exponentially, and after
//! `busoff_restarts_per_hour` restarts within the last hour obdgw stops restarting: the bus
//! stays off, which is safe for the car, and the port reports
//! [`super::CanPortStats::restart_limit_reached`] until the controller comes back by other
//! means (an operator's `ip link set can0 type can restart`, after checking the bitrate).
//!
//! The kernel's `restart-ms` (when configured non-zero) restarts the controller by itself,
//! after that fixed delay, every time and without any limit: `restart_ms = 100` allows up to
//! 36,000 restarts an hour. obdgw then leaves recovery to the kernel and this policy does
//! not apply. Prefer leaving `restart_ms` unset (obdgw restarts through netlink, which needs
//! CAP_NET_ADMIN).

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The delay before the first restart after a bus-off.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between bus-off and restart.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// How long the bus must stay up for the backoff to start again at [`FIRST_DELAY`].
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// The window of the restart limit.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// Restarts allowed within [`WINDOW`] when none is configured.
pub const DEFAULT_PER_HOUR: u32 = 20;
/// Valid `busoff_restarts_per_hour` values. The backoff alone allows about 130 restarts an
/// hour (one every 30 s once it has grown), so a higher limit would mean nothing.
pub const PER_HOUR_RANGE: std::ops::RangeInclusive<u32> = 0..=100;

/// What to do about a bus-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart the controller at this time.
    RestartAt(Instant),
    /// Do not restart: the limit is reached. `first` is true for the first refusal since
    /// the controller was last up (log it then, once).
    LimitReached { first: bool },
}

/// When to restart a controller after bus-off (see the module docs).
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// Restarts allowed within [`WINDOW`].
    per_hour: u32,
    /// The delay before the next restart.
    delay: Duration,
    /// When each restart within the last [`WINDOW`] was scheduled for, oldest first (at most
    /// `per_hour` entries).
    restarts: VecDeque<Instant>,
    /// When the controller came back after its last bus-off, if it has.
    up_since: Option<Instant>,
    /// The last bus-off was refused for the limit, and the controller has not come back.
    limited: bool,
}

impl RestartPolicy {
    /// A policy allowing `per_hour` restarts within any hour (0: never restart).
    pub fn new(per_hour: u32) -> Self {
        RestartPolicy {
            per_hour,
            delay: FIRST_DELAY,
            restarts: VecDeque::with_capacity(per_hour.min(128) as usize),
            up_since: None,
            limited: false,
        }
    }

    /// The configured limit.
    pub fn per_hour(&self) -> u32 {
        self.per_hour
    }

    /// The controller went bus-off at `now`.
    pub fn on_bus_off(&mut self, now: Instant) -> RestartDecision {
        if let Some(up) = self.up_since.take()
            && now.saturating_duration_since(up) >= STABLE_AFTER
        {
            self.delay = FIRST_DELAY;
        }
        while let Some(&t) = self.restarts.front() {
            if now.saturating_duration_since(t) >= WINDOW {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        if self.restarts.len() >= self.per_hour as usize {
            let first = !self.limited;
            self.limited = true;
            return RestartDecision::LimitReached { first };
        }
        let at = now + self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        self.restarts.push_back(at);
        RestartDecision::RestartAt(at)
    }

    /// The controller is up again at `now` (error-active after a restart, by obdgw or by
    /// hand). Lifts the refusal; the hourly count stays.
    pub fn on_recovered(&mut self, now: Instant) {
        self.up_since = Some(now);
        self.limited = false;
    }

    /// Whether the last bus-off was refused for the limit and the controller is still off.
    pub fn limit_reached(&self) -> bool {
        self.limited
    }

    /// Restarts scheduled within the hour before `now`.
    pub fn restarts_within_hour(&self, now: Instant) -> usize {
        self.restarts
            .iter()
            .filter(|&&t| now.saturating_duration_since(t) < WINDOW)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(d: RestartDecision) -> Instant {
        match d {
            RestartDecision::RestartAt(t) => t,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    /// Bus-off at `now`, restart when told, and the controller is back right away (as at a
    /// wrong bitrate: it goes off again at once). Returns the restart time.
    fn flap(p: &mut RestartPolicy, now: Instant) -> Instant {
        let t = at(p.on_bus_off(now));
        p.on_recovered(t);
        t
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let t0 = Instant::now();
        let mut p = RestartPolicy::new(100);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            let t = flap(&mut p, now);
            delays.push((t - now).as_millis() as u64);
            now = t;
        }
        assert_eq!(
            delays,
            vec![
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
    }

    #[test]
    fn backoff_resets_after_the_bus_stayed_up() {
        let t0 = Instant::now();
        let mut p = RestartPolicy::new(20);
        let t1 = flap(&mut p, t0);
        let t2 = flap(&mut p, t1);
        assert_eq!(t2 - t1, ms(200));
        // up for 59 s: not long enough, the backoff goes on
        let t3 = flap(&mut p, t2 + Duration::from_secs(59));
        assert_eq!(t3 - (t2 + Duration::from_secs(59)), ms(400));
        // up for 60 s: back to the first delay
        let off = t3 + STABLE_AFTER;
        assert_eq!(at(p.on_bus_off(off)) - off, FIRST_DELAY);
    }

    #[test]
    fn a_wrong_bitrate_stops_at_the_hourly_limit() {
        let t0 = Instant::now();
        let mut p = RestartPolicy::new(20);
        let mut now = t0;
        for _ in 0..20 {
            now = flap(&mut p, now);
        }
        assert_eq!(p.restarts_within_hour(now), 20);
        assert!(!p.limit_reached());
        // the 21st bus-off within the hour: no restart, reported once
        assert_eq!(
            p.on_bus_off(now),
            RestartDecision::LimitReached { first: true }
        );
        assert!(p.limit_reached());
        // further bus-off reports (without the controller coming back) are not "first"
        assert_eq!(
            p.on_bus_off(now + ms(5)),
            RestartDecision::LimitReached { first: false }
        );
        // 20 restarts: 100 ms doubling to 30 s is 8 minutes and a bit, well within the hour
        assert!(now - t0 < Duration::from_secs(9 * 60), "{:?}", now - t0);
    }

    #[test]
    fn a_manual_restart_lifts_the_refusal_and_the_window_slides() {
        let t0 = Instant::now();
        let mut p = RestartPolicy::new(3);
        let mut now = t0;
        for _ in 0..3 {
            now = flap(&mut p, now);
        }
        let first = t0 + FIRST_DELAY;
        assert_eq!(
            p.on_bus_off(now),
            RestartDecision::LimitReached { first: true }
        );
        // an operator restarts it by hand; it goes off again within the hour: refused, and
        // reported again (a new episode)
        p.on_recovered(now + Duration::from_secs(10));
        assert!(!p.limit_reached());
        assert_eq!(
            p.on_bus_off(now + Duration::from_secs(20)),
            RestartDecision::LimitReached { first: true }
        );
        // an hour after the first restart, one slot is free again
        p.on_recovered(first + WINDOW - ms(1));
        let later = first + WINDOW;
        assert_eq!(p.restarts_within_hour(later), 2);
        let t = at(p.on_bus_off(later));
        // the bus stayed up for less than STABLE_AFTER: the backoff went on (100, 200, 400,
        // then 800 ms)
        assert_eq!(t - later, ms(800));
        assert_eq!(p.restarts_within_hour(later), 3);
    }

    #[test]
    fn zero_per_hour_never_restarts() {
        let mut p = RestartPolicy::new(0);
        assert_eq!(
            p.on_bus_off(Instant::now()),
            RestartDecision::LimitReached { first: true }
        );
        assert_eq!(p.per_hour(), 0);
    }

    #[test]
    fn sparse_bus_offs_always_restart_quickly() {
        // one bus-off every 10 minutes, each after the bus was up for a while: always the
        // first delay, and never limited
        let t0 = Instant::now();
        let mut p = RestartPolicy::new(DEFAULT_PER_HOUR);
        for i in 0..100u64 {
            let now = t0 + Duration::from_secs(600 * i);
            let t = at(p.on_bus_off(now));
            assert_eq!(t - now, FIRST_DELAY, "bus-off {i}");
            p.on_recovered(t);
        }
        assert!(p.restarts_within_hour(t0 + Duration::from_secs(600 * 100)) <= 7);
    }
}
