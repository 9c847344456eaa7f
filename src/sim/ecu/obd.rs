//! OBD-II (SAE J1979 / ISO 15031-5) services of a simulated ECU and its live data model.
//!
//! Owns: services 01 (current data, supported-PID bitmaps), 03/07 (stored/pending DTCs), 04
//! (clear) and 09 (vehicle information: supported PIDs, VIN, calibration id, ECU name), and
//! [`LiveData`], a deterministic drive cycle that makes values change plausibly with time.
//!
//! Does not own addressing (which ECUs get a functional request is the vehicle's business).

use crate::vehicle::uds::Nrc;
use std::time::{Duration, Instant};

use super::config::{ObdConfig, dtc_status};
use super::{Ecu, Reply};

/// Length of one simulated drive cycle, seconds.
const CYCLE_S: f64 = 180.0;
/// Distance covered in one drive cycle, km (integral of [`speed_at`] over a cycle).
const CYCLE_KM: f64 = 9500.0 / 3600.0;
/// Odometer-like offset so "distance since codes cleared" looks lived-in before any clear.
const INITIAL_DISTANCE_KM: f64 = 1523.0;

/// Speed (km/h) at `p` seconds into the cycle: idle, accelerate, cruise 50, accelerate,
/// cruise 100, brake, idle.
fn speed_at(p: f64) -> f64 {
    match p {
        p if p < 20.0 => 0.0,
        p if p < 40.0 => 50.0 * (p - 20.0) / 20.0,
        p if p < 80.0 => 50.0,
        p if p < 100.0 => 50.0 + 50.0 * (p - 80.0) / 20.0,
        p if p < 140.0 => 100.0,
        p if p < 170.0 => 100.0 * (1.0 - (p - 140.0) / 30.0),
        _ => 0.0,
    }
}

/// Distance (km) from the start of the cycle to `p` seconds into it.
fn distance_in_cycle(p: f64) -> f64 {
    // km·s/h integrals of each segment, accumulated.
    let area = |a: f64, b: f64, va: f64, vb: f64| (b - a) * (va + vb) / 2.0;
    let segments = [
        (0.0, 20.0),
        (20.0, 40.0),
        (40.0, 80.0),
        (80.0, 100.0),
        (100.0, 140.0),
        (140.0, 170.0),
        (170.0, CYCLE_S),
    ];
    let mut sum = 0.0;
    for (a, b) in segments {
        if p <= a {
            break;
        }
        let end = p.min(b);
        // Sample the speed just inside the segment so the piecewise-linear integral is exact.
        let va = speed_at(a + 1e-9);
        let vb = if end >= b {
            speed_at(b - 1e-9)
        } else {
            speed_at(end)
        };
        sum += area(a, end, va, vb);
    }
    sum / 3600.0
}

/// The state of the simulated engine and vehicle at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LiveData {
    pub speed_kmh: f64,
    pub rpm: f64,
    /// Calculated load, 0..=1.
    pub load: f64,
    /// Throttle position, 0..=1.
    pub throttle: f64,
    pub coolant_c: f64,
    pub oil_c: f64,
    pub intake_air_c: f64,
    pub ambient_c: f64,
    /// Intake manifold absolute pressure.
    pub map_kpa: f64,
    pub baro_kpa: f64,
    /// Mass air flow, g/s.
    pub maf_gs: f64,
    /// Fuel tank level, 0..=1.
    pub fuel: f64,
    pub voltage: f64,
    pub runtime_s: f64,
    /// Distance driven since the ECU started, km.
    pub distance_km: f64,
}

impl LiveData {
    /// The values `elapsed` after the engine started (deterministic).
    pub fn at(elapsed: Duration) -> LiveData {
        let t = elapsed.as_secs_f64();
        let p = t % CYCLE_S;
        let speed = speed_at(p);
        let accelerating = (20.0..40.0).contains(&p) || (80.0..100.0).contains(&p);
        let braking = (140.0..170.0).contains(&p);
        let load = if speed < 0.5 {
            0.18
        } else if accelerating {
            0.65
        } else if braking {
            0.08
        } else {
            0.28 + speed / 1000.0
        };
        let rpm = if speed < 0.5 {
            780.0 + 15.0 * (t * 1.3).sin()
        } else {
            // Gear from speed (7 ratios), engine speed from gear: 1500-3000 rpm in each gear.
            const RPM_PER_KMH: [f64; 7] = [110.0, 65.0, 45.0, 35.0, 29.0, 25.0, 22.0];
            let gear = ((speed / 22.0).ceil() as usize).clamp(1, 7);
            (speed * RPM_PER_KMH[gear - 1]).clamp(800.0, 6500.0)
        };
        let ambient = 20.0;
        let coolant = ambient + 70.0 * (1.0 - (-t / 240.0).exp());
        let cycles = (t / CYCLE_S).floor();
        let distance = cycles * CYCLE_KM + distance_in_cycle(p);
        LiveData {
            speed_kmh: speed,
            rpm,
            load,
            throttle: (0.12 + 0.8 * load).min(1.0),
            coolant_c: coolant,
            oil_c: (coolant - 3.0).max(ambient),
            intake_air_c: ambient + 8.0 * (1.0 - (-t / 300.0).exp()),
            ambient_c: ambient,
            map_kpa: 28.0 + 70.0 * load,
            baro_kpa: 101.0,
            maf_gs: rpm * load * 0.012,
            fuel: (0.75 - t * 0.000_02).max(0.05),
            voltage: 14.1 + 0.05 * (t * 0.7).sin(),
            runtime_s: t,
            distance_km: distance,
        }
    }
}

fn u8_of(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

fn u16_of(v: f64) -> [u8; 2] {
    (v.round().clamp(0.0, 65535.0) as u16).to_be_bytes()
}

/// Whether service 01 PID `pid` is supported by `obd` (bitmap PIDs follow from the data PIDs).
fn pid_supported(obd: &ObdConfig, pid: u8) -> bool {
    if pid.is_multiple_of(0x20) {
        pid == 0 || obd.pids.iter().any(|&q| q > pid)
    } else {
        obd.pids.contains(&pid)
    }
}

/// 4-byte supported bitmap for the PIDs `base+1 ..= base+32`.
fn bitmap(base: u8, supported: impl Fn(u16) -> bool) -> [u8; 4] {
    let mut out = [0u8; 4];
    for i in 1u16..=32 {
        if supported(u16::from(base) + i) {
            let bit = usize::from(i - 1);
            if let Some(byte) = out.get_mut(bit / 8) {
                *byte |= 0x80 >> (bit % 8);
            }
        }
    }
    out
}

/// Service 09 PIDs this simulator implements.
const VEHICLE_INFO_PIDS: [u8; 3] = [0x02, 0x04, 0x0A];

impl Ecu {
    fn obd_distance_since_clear(&self, live: &LiveData) -> f64 {
        match self.distance_at_clear {
            Some(mark) => live.distance_km - mark,
            None => INITIAL_DISTANCE_KM + live.distance_km,
        }
    }

    /// Live data now.
    pub fn live_data(&self, now: Instant) -> LiveData {
        LiveData::at(now.saturating_duration_since(self.started))
    }

    fn confirmed_dtcs(&self) -> impl Iterator<Item = &super::Dtc> {
        self.dtcs
            .iter()
            .filter(|d| d.status & dtc_status::CONFIRMED != 0)
    }

    /// Append service 01 PID `pid` and its data to `out`; `false` when unsupported.
    fn pid_data(&self, obd: &ObdConfig, pid: u8, now: Instant, out: &mut Vec<u8>) -> bool {
        if !pid_supported(obd, pid) {
            return false;
        }
        let live = self.live_data(now);
        out.push(pid);
        match pid {
            p if p.is_multiple_of(0x20) => out.extend_from_slice(&bitmap(p, |q| {
                u8::try_from(q).is_ok_and(|q| pid_supported(obd, q))
            })),
            0x01 => {
                let confirmed = self.confirmed_dtcs().count().min(0x7F) as u8;
                let mil = self
                    .confirmed_dtcs()
                    .any(|d| d.status & dtc_status::WARNING_INDICATOR_REQUESTED != 0);
                out.extend_from_slice(&[if mil { 0x80 } else { 0 } | confirmed, 0x07, 0x65, 0x00]);
            }
            0x04 => out.push(u8_of(live.load * 255.0)),
            0x05 => out.push(u8_of(live.coolant_c + 40.0)),
            0x0B => out.push(u8_of(live.map_kpa)),
            0x0C => out.extend_from_slice(&u16_of(live.rpm * 4.0)),
            0x0D => out.push(u8_of(live.speed_kmh)),
            0x0F => out.push(u8_of(live.intake_air_c + 40.0)),
            0x10 => out.extend_from_slice(&u16_of(live.maf_gs * 100.0)),
            0x11 => out.push(u8_of(live.throttle * 255.0)),
            0x1C => out.push(obd.obd_standard),
            0x1F => out.extend_from_slice(&u16_of(live.runtime_s)),
            0x21 => {
                let mil = self
                    .confirmed_dtcs()
                    .any(|d| d.status & dtc_status::WARNING_INDICATOR_REQUESTED != 0);
                let km = if mil {
                    self.obd_distance_since_clear(&live)
                } else {
                    0.0
                };
                out.extend_from_slice(&u16_of(km));
            }
            0x2F => out.push(u8_of(live.fuel * 255.0)),
            0x31 => out.extend_from_slice(&u16_of(self.obd_distance_since_clear(&live))),
            0x33 => out.push(u8_of(live.baro_kpa)),
            0x42 => out.extend_from_slice(&u16_of(live.voltage * 1000.0)),
            0x46 => out.push(u8_of(live.ambient_c + 40.0)),
            0x51 => out.push(0x01),
            0x5C => out.push(u8_of(live.oil_c + 40.0)),
            // Configured but without a model: report zero rather than refuse.
            _ => out.push(0x00),
        }
        true
    }

    /// OBD-II services; `sid` is 0x01..=0x0A, `rest` the bytes after it.
    pub(super) fn obd_service(&mut self, sid: u8, rest: &[u8], now: Instant) -> Reply {
        if self.config.obd.is_some() && sid == 0x04 {
            if !rest.is_empty() {
                return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
            }
            self.clear_dtcs(None, now);
            return Reply::Positive(vec![0x44]);
        }
        let Some(obd) = self.config.obd.as_ref() else {
            return Reply::Negative(Nrc::SERVICE_NOT_SUPPORTED);
        };
        match sid {
            0x01 => {
                if rest.is_empty() || rest.len() > 6 {
                    return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
                }
                let mut out = vec![0x41];
                let mut any = false;
                for &pid in rest {
                    any |= self.pid_data(obd, pid, now, &mut out);
                }
                if any {
                    Reply::Positive(out)
                } else {
                    Reply::Negative(Nrc::REQUEST_OUT_OF_RANGE)
                }
            }
            0x03 | 0x07 => {
                if !rest.is_empty() {
                    return Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT);
                }
                let bit = if sid == 0x03 {
                    dtc_status::CONFIRMED
                } else {
                    dtc_status::PENDING
                };
                let mut out = vec![sid + 0x40, 0];
                let mut n = 0u8;
                for d in self.dtcs.iter().filter(|d| d.status & bit != 0) {
                    out.extend_from_slice(&d.obd_bytes());
                    n = n.saturating_add(1);
                }
                if let Some(count) = out.get_mut(1) {
                    *count = n;
                }
                Reply::Positive(out)
            }
            0x09 => match rest {
                [0x00] => {
                    let supported = |q: u16| {
                        u8::try_from(q).is_ok_and(|q| {
                            VEHICLE_INFO_PIDS.contains(&q) && (q != 0x02 || obd.reports_vin)
                        })
                    };
                    let mut out = vec![0x49, 0x00];
                    out.extend_from_slice(&bitmap(0x00, supported));
                    Reply::Positive(out)
                }
                [0x02] if obd.reports_vin => {
                    let mut out = vec![0x49, 0x02, 0x01];
                    out.extend_from_slice(self.config.vin.as_bytes());
                    Reply::Positive(out)
                }
                [0x04] => {
                    let mut out = vec![0x49, 0x04, 0x01];
                    out.extend_from_slice(&padded::<16>(&obd.calibration_id));
                    Reply::Positive(out)
                }
                [0x0A] => {
                    let mut out = vec![0x49, 0x0A, 0x01];
                    out.extend_from_slice(&ecu_name_record(&obd.ecu_name.0, &obd.ecu_name.1));
                    Reply::Positive(out)
                }
                [_] => Reply::Negative(Nrc::REQUEST_OUT_OF_RANGE),
                _ => Reply::Negative(Nrc::INCORRECT_MESSAGE_LENGTH_OR_INVALID_FORMAT),
            },
            _ => Reply::Negative(Nrc::SERVICE_NOT_SUPPORTED),
        }
    }
}

/// `text` as `N` bytes, truncated or padded with 0x00.
fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(text.bytes()) {
        *o = b;
    }
    out
}

/// Service 09 PID 0A record: acronym padded to 4 bytes, '-', name padded to 15 bytes.
fn ecu_name_record(acronym: &str, name: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    let a = padded::<4>(acronym);
    let n = padded::<15>(name);
    out[..4].copy_from_slice(&a);
    out[4] = b'-';
    out[5..].copy_from_slice(&n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_distance_matches_constant() {
        assert!((distance_in_cycle(CYCLE_S) - CYCLE_KM).abs() < 1e-6);
        assert!((distance_in_cycle(20.0)).abs() < 1e-9);
        // 20..40 s: 0 to 50 km/h, area 500 km·s/h.
        assert!((distance_in_cycle(40.0) - 500.0 / 3600.0).abs() < 1e-6);
    }

    #[test]
    fn live_data_is_plausible_over_two_cycles() {
        let mut prev = LiveData::at(Duration::ZERO);
        for s in 1..=360 {
            let l = LiveData::at(Duration::from_secs(s));
            assert!((0.0..=100.0).contains(&l.speed_kmh), "{l:?}");
            assert!((700.0..=6500.0).contains(&l.rpm), "{l:?}");
            assert!(l.coolant_c >= prev.coolant_c && l.coolant_c <= 90.0);
            assert!(l.distance_km >= prev.distance_km);
            // No jumps: at most 3.5 km/h per second (about 1 m/s², gentle braking).
            assert!(
                (l.speed_kmh - prev.speed_kmh).abs() <= 3.5,
                "at {s}: {prev:?} -> {l:?}"
            );
            prev = l;
        }
    }

    #[test]
    fn ecu_name_layout() {
        assert_eq!(
            &ecu_name_record("ECM", "EngineControl"),
            b"ECM\0-EngineControl\0\0"
        );
    }

    #[test]
    fn bitmap_bits() {
        // PIDs 0x01 and 0x20 -> first bit of byte 0 and last bit of byte 3.
        assert_eq!(bitmap(0, |q| q == 0x01 || q == 0x20), [0x80, 0, 0, 0x01]);
        assert_eq!(bitmap(0x20, |q| q == 0x21 || q == 0x2F), [0x80, 0x02, 0, 0]);
    }
}
