//! SecurityAccess (0x27) state of a simulated ECU: seeds, keys, attempt counter, lockout.
//!
//! Owns: the default seed/key algorithm (public, so testers and tests compute keys), the
//! deterministic seed generator and the per-ECU security state. Does not own session rules
//! (the ECU decides when 0x27 is allowed at all).

use crate::vehicle::uds::Nrc;
use std::time::{Duration, Instant};

/// A seed/key algorithm: `(requestSeed level, seed) -> key`.
pub type KeyFn = fn(level: u8, seed: [u8; 4]) -> [u8; 4];

/// The simulator's default algorithm: the seed (big-endian) rotated left by `level + 3`
/// bits, XOR "OBDG". Not a secret: it exists so testers can unlock the simulator.
pub fn default_key(level: u8, seed: [u8; 4]) -> [u8; 4] {
    let s = u32::from_be_bytes(seed);
    (s.rotate_left(u32::from(level % 29) + 3) ^ 0x4F42_4447).to_be_bytes()
}

/// xorshift64*: a tiny deterministic generator, enough to make seeds differ.
#[derive(Clone, Debug)]
struct SeedGen(u64);

impl SeedGen {
    fn next_seed(&mut self) -> [u8; 4] {
        loop {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32;
            // An all-zero seed means "already unlocked": never hand it out as a challenge.
            if v != 0 {
                return v.to_be_bytes();
            }
        }
    }
}

/// Per-ECU security state.
#[derive(Clone, Debug)]
pub(crate) struct SecurityState {
    /// The level currently unlocked (its odd requestSeed value), if any.
    unlocked: Option<u8>,
    /// The seed handed out and not yet answered: (level, seed).
    outstanding: Option<(u8, [u8; 4])>,
    /// Invalid keys since the last success or lockout end.
    failed_attempts: u8,
    /// requestSeed is refused with 0x37 until then.
    locked_until: Option<Instant>,
    seeds: SeedGen,
}

/// What a SecurityAccess request produced.
pub(crate) enum SecurityOutcome {
    /// requestSeed accepted: send this seed.
    Seed([u8; 4]),
    /// sendKey accepted: unlocked.
    Unlocked,
}

impl SecurityState {
    pub(crate) fn new(salt: u64) -> SecurityState {
        SecurityState {
            unlocked: None,
            outstanding: None,
            failed_attempts: 0,
            locked_until: None,
            seeds: SeedGen(salt | 1),
        }
    }

    pub(crate) fn unlocked_level(&self) -> Option<u8> {
        self.unlocked
    }

    pub(crate) fn is_unlocked(&self) -> bool {
        self.unlocked.is_some()
    }

    /// Lock again (session change, reset). Attempt counter and lockout survive, as on real
    /// ECUs, so a reset cannot be used to brute-force keys.
    pub(crate) fn lock(&mut self) {
        self.unlocked = None;
        self.outstanding = None;
    }

    /// When the lockout ends, if one is running.
    pub(crate) fn locked_until(&self) -> Option<Instant> {
        self.locked_until
    }

    fn expire(&mut self, now: Instant) {
        if let Some(until) = self.locked_until
            && now >= until
        {
            self.locked_until = None;
            self.failed_attempts = 0;
        }
    }

    /// requestSeed for `level` (odd sub-function, already validated as supported).
    pub(crate) fn request_seed(&mut self, level: u8, now: Instant) -> Result<SecurityOutcome, Nrc> {
        self.expire(now);
        if self.locked_until.is_some() {
            return Err(Nrc::REQUIRED_TIME_DELAY_NOT_EXPIRED);
        }
        if self.unlocked == Some(level) {
            self.outstanding = None;
            return Ok(SecurityOutcome::Seed([0; 4]));
        }
        let seed = self.seeds.next_seed();
        self.outstanding = Some((level, seed));
        Ok(SecurityOutcome::Seed(seed))
    }

    /// sendKey for `level` (the odd level: the sub-function minus one).
    pub(crate) fn send_key(
        &mut self,
        level: u8,
        key: &[u8],
        algorithm: KeyFn,
        max_attempts: u8,
        lockout: Duration,
        now: Instant,
    ) -> Result<SecurityOutcome, Nrc> {
        self.expire(now);
        let Some((seed_level, seed)) = self.outstanding else {
            return Err(Nrc::REQUEST_SEQUENCE_ERROR);
        };
        if seed_level != level {
            return Err(Nrc::REQUEST_SEQUENCE_ERROR);
        }
        // A seed answers one key, right or wrong.
        self.outstanding = None;
        if key == algorithm(level, seed) {
            self.unlocked = Some(level);
            self.failed_attempts = 0;
            return Ok(SecurityOutcome::Unlocked);
        }
        self.failed_attempts = self.failed_attempts.saturating_add(1);
        if self.failed_attempts >= max_attempts {
            self.locked_until = Some(now + lockout);
            Err(Nrc::EXCEEDED_NUMBER_OF_ATTEMPTS)
        } else {
            Err(Nrc::INVALID_KEY)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_golden() {
        // 0x11223344 rotl 4 = 0x12233441; ^ 0x4F424447 = 0x5D617006
        assert_eq!(
            default_key(0x01, [0x11, 0x22, 0x33, 0x44]),
            [0x5D, 0x61, 0x70, 0x06]
        );
        assert_ne!(
            default_key(0x03, [0x11, 0x22, 0x33, 0x44]),
            default_key(0x01, [0x11, 0x22, 0x33, 0x44])
        );
    }

    #[test]
    fn seeds_are_nonzero_and_vary() {
        let mut g = SeedGen(1);
        let a = g.next_seed();
        let b = g.next_seed();
        assert_ne!(a, [0; 4]);
        assert_ne!(a, b);
    }
}
