//! The pincode never appears in logs (any level, any target, success and failure) nor in
//! `obdgw config check` output, valid or invalid.

use obdgw::cloud::Credentials;
use obdgw::cloud::client::{Client, ClientSettings};
use obdgw::cloud::model::Page;
use obdgw::config::Secret;
use obdgw::sim::cloud::{self as sim, DEMO_CONNECTOR_UUID, SimOptions};
use std::io::Write as _;
use std::sync::{Arc, Mutex};

const PIN: &str = "pin-83517290-q";
const WRONG_PIN: &str = "pin-wrong-61802-z";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

#[test]
fn pincode_never_reaches_the_logs() {
    let buf = Buf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.clone())
        .with_ansi(false)
        .finish();
    let _ = tracing_log::LogTracer::init();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Current-thread runtime: every task (server, client, hyper) logs into this subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut shown = String::new();
    rt.block_on(async {
        let mut data = sim::data::SimData::builtin().unwrap();
        data.connectors[0].pincode = PIN.into();
        let r = sim::start(data, SimOptions::default(), None).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let good = Credentials::ConnectorUuid {
            uuid: DEMO_CONNECTOR_UUID.into(),
            pincode: Secret::new(PIN),
        };
        let c = Client::new(
            ClientSettings::for_base_url(&r.base_url),
            Some(good.clone()),
            Some(dir.path()),
        )
        .unwrap();
        c.makes(Page::default()).await.unwrap();
        c.login().await.unwrap();
        shown.push_str(&format!("{c:?} {good:?} {:?}", c.session().await));
        let bad = Credentials::ConnectorUuid {
            uuid: DEMO_CONNECTOR_UUID.into(),
            pincode: Secret::new(WRONG_PIN),
        };
        let w = Client::new(ClientSettings::for_base_url(&r.base_url), Some(bad), None).unwrap();
        let e = w.makes(Page::default()).await.unwrap_err();
        shown.push_str(&format!("{e} {e:?}"));
        let e = w
            .login_uuid(DEMO_CONNECTOR_UUID, &Secret::new(WRONG_PIN))
            .await
            .unwrap_err();
        shown.push_str(&format!("{e} {e:?}"));
        let stored =
            std::fs::read_to_string(dir.path().join(obdgw::cloud::token::STORE_FILE)).unwrap();
        assert!(
            !stored.contains(PIN),
            "the token store holds tokens, not the pincode"
        );
        r.stop().await;
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("logged in to the Customer API"),
        "the capture works: {logs}"
    );
    assert!(logs.contains("api request"), "request logs captured");
    assert!(logs.lines().count() > 10);
    for secret in [PIN, WRONG_PIN] {
        assert!(!logs.contains(secret), "pincode in the logs");
        assert!(!shown.contains(secret), "pincode in Debug/Display: {shown}");
    }
}

fn config_check(toml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("obdgw.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(toml.as_bytes())
        .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_obdgw"));
    cmd.args(["config", "check", "-c"]).arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn pincode_never_reaches_config_check() {
    let (ok, out) = config_check(
        &format!("[cloud]\nconnector_uuid = \"{DEMO_CONNECTOR_UUID}\"\npincode = \"{PIN}\"\n"),
        &[],
    );
    assert!(ok, "{out}");
    assert!(out.contains("pincode = \"<redacted>\""), "{out}");
    assert!(!out.contains(PIN), "{out}");
    // Numeric pincode, from the environment.
    let (ok, out) = config_check("", &[("OBDGW_CLOUD__PINCODE", "83517290")]);
    assert!(ok, "{out}");
    assert!(!out.contains("83517290"), "{out}");
    // Invalid configurations print errors, never the pincode.
    let (ok, out) = config_check(
        &format!("[cloud]\nconnector_uuid = \"nope\"\npincode = \"{PIN}\"\n"),
        &[],
    );
    assert!(!ok);
    assert!(out.contains("cloud.connector_uuid"), "{out}");
    assert!(!out.contains(PIN), "{out}");
    let (ok, out) = config_check("[cloud]\npincode = [83517290]\n", &[]);
    assert!(!ok);
    assert!(out.contains("pincode"), "{out}");
    assert!(!out.contains("83517290"), "{out}");
    let (ok, out) = config_check(
        &format!("[cloud]\npincode = \"{PIN}\"\npincode_file = \"/x\"\n"),
        &[],
    );
    assert!(!ok);
    assert!(out.contains("keep one"), "{out}");
    assert!(!out.contains(PIN), "{out}");
}
