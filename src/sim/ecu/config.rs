//! Configuration of one simulated ECU, and the presets the default vehicle uses.
//!
//! Owns: [`EcuConfig`] and its parts (identification, DTCs, security, flash, timing, pending
//! behaviour, OBD-II support). Does not own the behaviour (see `super::Ecu`).

use crate::vehicle::uds::Vin;
use std::time::Duration;

use super::security::{KeyFn, default_key};

/// A diagnostic trouble code as UDS reports it: 3 bytes (the SAE J2012 2-byte code and a
/// failure type byte) and a status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dtc {
    /// 24-bit code: high 16 bits are the OBD-style code (e.g. 0x0301 = P0301), low 8 bits the
    /// failure type.
    pub code: u32,
    /// ISO 14229-1 DTC status byte (bit 0 testFailed, bit 2 pending, bit 3 confirmed, bit 7
    /// warningIndicatorRequested, ...).
    pub status: u8,
}

/// DTC status bits (ISO 14229-1 D.2).
pub mod dtc_status {
    pub const TEST_FAILED: u8 = 0x01;
    pub const TEST_FAILED_THIS_OPERATION_CYCLE: u8 = 0x02;
    pub const PENDING: u8 = 0x04;
    pub const CONFIRMED: u8 = 0x08;
    pub const TEST_NOT_COMPLETED_SINCE_LAST_CLEAR: u8 = 0x10;
    pub const TEST_FAILED_SINCE_LAST_CLEAR: u8 = 0x20;
    pub const TEST_NOT_COMPLETED_THIS_OPERATION_CYCLE: u8 = 0x40;
    pub const WARNING_INDICATOR_REQUESTED: u8 = 0x80;
    /// Status of a DTC right after ClearDiagnosticInformation.
    pub const AFTER_CLEAR: u8 =
        TEST_NOT_COMPLETED_SINCE_LAST_CLEAR | TEST_NOT_COMPLETED_THIS_OPERATION_CYCLE;
}

impl Dtc {
    pub const fn new(code: u32, status: u8) -> Dtc {
        Dtc {
            code: code & 0x00FF_FFFF,
            status,
        }
    }

    /// The two OBD-II bytes (SAE J2012 encoding) of this DTC.
    pub const fn obd_bytes(&self) -> [u8; 2] {
        [(self.code >> 16) as u8, (self.code >> 8) as u8]
    }

    /// The SAE J2012 text form, e.g. `P0301`.
    pub fn obd_code(&self) -> String {
        let [a, b] = self.obd_bytes();
        let letter = ['P', 'C', 'B', 'U'][usize::from(a >> 6)];
        format!("{letter}{}{:X}{:02X}", (a >> 4) & 0x03, a & 0x0F, b)
    }
}

/// SecurityAccess (0x27) behaviour.
#[derive(Clone, Debug)]
pub struct SecurityConfig {
    /// Supported levels, as their odd requestSeed sub-function (0x01, 0x03, ...); sendKey is
    /// level + 1.
    pub levels: Vec<u8>,
    /// The key for a seed (the tester must compute the same).
    pub key: KeyFn,
    /// Invalid keys accepted before the lockout (the failing one gets NRC 0x36).
    pub max_attempts: u8,
    /// How long requestSeed is refused with NRC 0x37 after too many invalid keys.
    pub lockout: Duration,
    /// Makes the seed sequence differ between ECUs (seeds are deterministic for tests).
    pub seed_salt: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            levels: vec![0x01, 0x03],
            key: default_key,
            max_attempts: 3,
            lockout: Duration::from_secs(10),
            seed_salt: 0x6F62_6467_7731,
        }
    }
}

/// Programming (RequestDownload / TransferData / RequestTransferExit) behaviour.
#[derive(Clone, Debug)]
pub struct FlashConfig {
    /// First address of the flash memory.
    pub base: u32,
    /// Size of the flash memory in bytes; downloads must fit in `base..base + size`.
    pub size: u32,
    /// maxNumberOfBlockLength announced in the RequestDownload response: the largest
    /// TransferData request (service id + counter + data). 4095 fits one classic ISO-TP PDU.
    pub max_block_length: u32,
    /// Whether RequestDownload needs the range erased first (RoutineControl 0xFF00), else
    /// NRC 0x70 uploadDownloadNotAccepted.
    pub require_erase: bool,
    /// Fault injection: TransferData fails with NRC 0x72 generalProgrammingFailure once the
    /// download would pass this many bytes.
    pub fail_after: Option<u32>,
}

impl Default for FlashConfig {
    fn default() -> Self {
        FlashConfig {
            base: 0x0000_0000,
            size: 4 * 1024 * 1024,
            max_block_length: 4095,
            require_erase: true,
            fail_after: None,
        }
    }
}

/// Timing parameters (announced in DiagnosticSessionControl, and the S3 session timeout).
#[derive(Clone, Copy, Debug)]
pub struct TimingConfig {
    /// P2server_max.
    pub p2: Duration,
    /// P2*server_max: the tester waits this long after each 0x78 response-pending.
    pub p2_star: Duration,
    /// S3server: a non-default session with no request for this long falls back to default.
    pub s3: Duration,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            p2: Duration::from_millis(50),
            p2_star: Duration::from_millis(5000),
            s3: Duration::from_millis(5000),
        }
    }
}

/// Which operations answer 0x78 response-pending first, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct PendingConfig {
    /// ECUReset.
    pub ecu_reset: Duration,
    /// RoutineControl start eraseMemory (0xFF00).
    pub erase: Duration,
    /// RequestTransferExit.
    pub transfer_exit: Duration,
    /// While an operation lasts longer, repeat 0x78 this often (keep below P2*).
    pub repeat_every: Duration,
    /// Fault/robustness testing: answer *every* request with 0x78 first and the final
    /// response after this delay.
    pub all_requests: Option<Duration>,
}

impl Default for PendingConfig {
    fn default() -> Self {
        PendingConfig {
            ecu_reset: Duration::from_millis(200),
            erase: Duration::from_millis(1500),
            transfer_exit: Duration::from_millis(300),
            repeat_every: Duration::from_millis(2000),
            all_requests: None,
        }
    }
}

/// OBD-II (SAE J1979) support of an ECU.
#[derive(Clone, Debug)]
pub struct ObdConfig {
    /// Service 01 PIDs with data (the supported-PID bitmaps 0x00/0x20/0x40 follow from this).
    pub pids: Vec<u8>,
    /// Whether this ECU answers service 09 PID 02 (VIN).
    pub reports_vin: bool,
    /// Service 09 PID 0A: acronym (up to 4 characters) and name (up to 15).
    pub ecu_name: (String, String),
    /// Service 09 PID 04: calibration id (up to 16 characters).
    pub calibration_id: String,
    /// Service 01 PID 1C value (0x01 OBD-II CARB, 0x06 EOBD, ...).
    pub obd_standard: u8,
}

/// Everything that makes one simulated ECU.
#[derive(Clone, Debug)]
pub struct EcuConfig {
    /// Short name, for descriptions and logs ("engine").
    pub name: String,
    /// VIN (DID 0xF190, OBD-II 09 02).
    pub vin: Vin,
    /// DID 0xF187 vehicleManufacturerSparePartNumber.
    pub spare_part_number: String,
    /// DID 0xF191 vehicleManufacturerECUHardwareNumber.
    pub hardware_number: String,
    /// DID 0xF195 systemSupplierECUSoftwareVersionNumber.
    pub software_version: String,
    /// DID 0xF18C ECUSerialNumber.
    pub serial_number: String,
    /// DID 0xF18A systemSupplierIdentifier.
    pub supplier: String,
    /// DID 0xF197 systemNameOrEngineType.
    pub system_name: String,
    /// Stored DTCs with their status.
    pub dtcs: Vec<Dtc>,
    /// DTCStatusAvailabilityMask: the status bits this ECU supports.
    pub dtc_status_availability: u8,
    pub security: SecurityConfig,
    pub flash: FlashConfig,
    pub timing: TimingConfig,
    pub pending: PendingConfig,
    /// Largest response PDU (NRC 0x14 responseTooLong beyond it); 4095 for classic ISO-TP.
    pub max_response_len: usize,
    /// Most DIDs in one ReadDataByIdentifier request (NRC 0x13 beyond it).
    pub max_dids_per_request: usize,
    /// OBD-II support; `None` for ECUs that are not emissions-related.
    pub obd: Option<ObdConfig>,
}

impl EcuConfig {
    fn base(name: &str, vin: Vin, part: &str, serial: &str, system: &str) -> EcuConfig {
        EcuConfig {
            name: name.to_owned(),
            vin,
            spare_part_number: part.to_owned(),
            hardware_number: format!("{part}-HW02"),
            software_version: "SW 4.2.1".to_owned(),
            serial_number: serial.to_owned(),
            supplier: "OBDGW-SIM".to_owned(),
            system_name: system.to_owned(),
            dtcs: Vec::new(),
            dtc_status_availability: 0xFF,
            security: SecurityConfig::default(),
            flash: FlashConfig::default(),
            timing: TimingConfig::default(),
            pending: PendingConfig::default(),
            max_response_len: 4095,
            max_dids_per_request: 16,
            obd: None,
        }
    }

    /// Engine control module: full OBD-II support (VIN, live data), two DTCs (P0301
    /// confirmed with MIL, P0420 pending).
    pub fn engine(vin: Vin) -> EcuConfig {
        use dtc_status::*;
        let mut c = Self::base(
            "engine",
            vin,
            "8W0907115B",
            "ECM0012345678",
            "EA888 2.0 TFSI",
        );
        c.software_version = "SW 0815.3".to_owned();
        c.dtcs = vec![
            Dtc::new(
                0x03_01_00,
                TEST_FAILED
                    | TEST_FAILED_THIS_OPERATION_CYCLE
                    | CONFIRMED
                    | TEST_FAILED_SINCE_LAST_CLEAR
                    | WARNING_INDICATOR_REQUESTED,
            ),
            Dtc::new(0x04_20_00, PENDING | TEST_FAILED_SINCE_LAST_CLEAR),
        ];
        c.obd = Some(ObdConfig {
            pids: vec![
                0x01, 0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x0F, 0x10, 0x11, 0x1C, 0x1F, 0x21, 0x2F, 0x31,
                0x33, 0x42, 0x46, 0x51, 0x5C,
            ],
            reports_vin: true,
            ecu_name: ("ECM".to_owned(), "EngineControl".to_owned()),
            calibration_id: "CAL8W0907115B03".to_owned(),
            obd_standard: if vin.is_north_american() { 0x01 } else { 0x06 },
        });
        c.security.seed_salt ^= 0x01;
        c
    }

    /// Transmission control module: OBD-II live data (speed) and DTC services, no VIN.
    pub fn transmission(vin: Vin) -> EcuConfig {
        let mut c = Self::base(
            "transmission",
            vin,
            "0GC927711C",
            "TCM0098765432",
            "DQ381 7-speed",
        );
        c.dtcs = vec![Dtc::new(
            0x07_00_00,
            dtc_status::TEST_FAILED_SINCE_LAST_CLEAR,
        )];
        c.obd = Some(ObdConfig {
            pids: vec![0x01, 0x0D, 0x1C],
            reports_vin: false,
            ecu_name: ("TCM".to_owned(), "TransmissionCtl".to_owned()),
            calibration_id: "CAL0GC927711C01".to_owned(),
            obd_standard: if vin.is_north_american() { 0x01 } else { 0x06 },
        });
        c.security.seed_salt ^= 0x02;
        c
    }

    /// ABS / ESC module: UDS only (not emissions-related, no OBD-II).
    pub fn abs(vin: Vin) -> EcuConfig {
        use dtc_status::*;
        let mut c = Self::base("abs", vin, "5Q0907379AB", "ABS0055512345", "ESC MK100");
        // C0035 left front wheel speed sensor, circuit (failure type 0x31: no signal).
        c.dtcs = vec![Dtc::new(
            0x40_35_31,
            TEST_FAILED | CONFIRMED | TEST_FAILED_SINCE_LAST_CLEAR,
        )];
        c.flash.size = 1024 * 1024 + 64 * 1024;
        c.security.seed_salt ^= 0x03;
        c
    }

    /// Body control module: UDS only, no stored DTCs.
    pub fn body(vin: Vin) -> EcuConfig {
        let mut c = Self::base("body", vin, "5Q0937084CM", "BCM0077700001", "BCM2 high");
        c.security.seed_salt ^= 0x04;
        c
    }
}
