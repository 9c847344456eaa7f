//! `obdgw api watch` as a person runs it: separate processes of the real binary (the cloud
//! simulator and two watchers, `--json` and human-readable), a ticket created through the
//! API (the garage) and joined and closed through the simulator's admin interface (the
//! vendor's back office). Each watcher prints the ticket's life, one line per event, and
//! ends with exit 0 on Ctrl-C (SIGINT). A wrong pincode ends the command at once with the
//! reason.

mod common;

use common::procs::Procs;
use obdgw::sim::cloud::{DEMO_CONNECTOR_ID, DEMO_CONNECTOR_UUID, DEMO_PINCODE};
use serde_json::Value;
use std::time::Duration;

const VIN: &str = "WVWZZZ1KZAW000042";

/// The next stdout line of watcher `i` as JSON; every line must be one JSON object with a
/// `time` and an `event`.
async fn next_json(procs: &mut Procs, i: usize, what: &str) -> Value {
    let v: Value = procs
        .line(i, what, |l| {
            Some(serde_json::from_str::<Value>(l).map_err(|e| format!("{e}: {l}")))
        })
        .await
        .unwrap_or_else(|e| panic!("`watch --json` printed a line that is not JSON: {e}"));
    assert!(
        v["time"].as_str().is_some_and(|t| t.ends_with('Z')) && v["event"].is_string(),
        "{v}"
    );
    v
}

/// Read `--json` lines of watcher `i` until each of `want` matched one; the matches in the
/// order of `want`.
async fn expect_json(
    procs: &mut Procs,
    i: usize,
    what: &str,
    want: &[&dyn Fn(&Value) -> bool],
) -> Vec<Value> {
    let mut got: Vec<Option<Value>> = vec![None; want.len()];
    while got.iter().any(Option::is_none) {
        let v = next_json(procs, i, what).await;
        if let Some(k) = (0..want.len()).find(|k| got[*k].is_none() && want[*k](&v)) {
            got[k] = Some(v);
        }
    }
    got.into_iter().flatten().collect()
}

/// Read human lines of watcher `i` until one contains `text`.
async fn expect_line(procs: &mut Procs, i: usize, text: &str) -> String {
    procs
        .line(i, &format!("a line with `{text}`"), |l| {
            l.contains(text).then(|| l.to_string())
        })
        .await
}

fn interrupt(procs: &Procs, i: usize) {
    let pid = procs.procs[i].child.id() as libc::pid_t;
    // SAFETY: kill(2) on a child this test started and has not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_a_tickets_life_and_ends_on_ctrl_c() {
    let mut procs = Procs::new();
    let cloud = procs.spawn(
        "sim cloud",
        &["sim", "cloud", "--listen", "127.0.0.1:0"],
        &[],
    );
    let base = procs
        .line(cloud, "its base URL", |l| {
            l.starts_with("http://").then(|| l.trim().to_string())
        })
        .await;
    let pin = procs.path("pin");
    std::fs::write(&pin, format!("{DEMO_PINCODE}\n")).unwrap();
    let cfg = procs.path("obdgw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cloud]\nconnector_uuid = \"{DEMO_CONNECTOR_UUID}\"\npincode_file = \"{}\"\n",
            pin.display()
        ),
    )
    .unwrap();
    let (cfg, s1, s2) = (
        cfg.display().to_string(),
        procs.path("state-json").display().to_string(),
        procs.path("state-human").display().to_string(),
    );
    let common = ["-c", &cfg, "--base-url", &base];
    let js = procs.spawn(
        "api watch --json",
        &[&["api", "watch", "--json", "--state-dir", &s1][..], &common].concat(),
        &[],
    );
    let human = procs.spawn(
        "api watch",
        &[&["api", "watch", "--state-dir", &s2][..], &common].concat(),
        &[],
    );

    // Connected, and the connector's first snapshot: online, no ticket.
    let first = expect_json(
        &mut procs,
        js,
        "the link and the connector",
        &[&|v| v["event"] == "link_up", &|v| v["event"] == "connector"],
    )
    .await;
    assert_eq!(first[1]["connector_id"], DEMO_CONNECTOR_ID, "{}", first[1]);
    assert_eq!(first[1]["is_online"], true, "{}", first[1]);
    assert_eq!(first[1]["active_ticket_id"], Value::Null, "{}", first[1]);
    expect_line(&mut procs, human, "status websocket connected").await;
    expect_line(
        &mut procs,
        human,
        &format!("connector {DEMO_CONNECTOR_ID}: online"),
    )
    .await;

    // The garage creates a ticket.
    let api = obdgw::sim::cloud::demo_client(&base).unwrap();
    let ticket = match api
        .create_ticket(&obdgw::sim::cloud::demo_ticket(VIN))
        .await
    {
        Ok(t) => t.id,
        Err(e) => procs.fail(&format!("creating a ticket: {e}")),
    };
    let is_ticket = move |v: &Value| v["ticket_id"] == ticket;
    let got = expect_json(
        &mut procs,
        js,
        "the new ticket",
        &[&|v| v["event"] == "ticket" && is_ticket(v)],
    )
    .await;
    assert_eq!(got[0]["from"], Value::Null, "{}", got[0]);
    assert_eq!(got[0]["to"], "pending", "{}", got[0]);
    assert_eq!(got[0]["final"], false, "{}", got[0]);
    expect_line(&mut procs, human, &format!("ticket {ticket}: pending")).await;

    // The back office: an operator joins (a connection starts), then the ticket is closed.
    let http = obdgw::tls::http_client(Duration::from_secs(10)).unwrap();
    let admin = |action: &str| {
        http.post(format!("{base}/admin/tickets/{ticket}/{action}"))
            .send()
    };
    let joined: Value = match admin("join").await {
        Ok(r) if r.status().is_success() => r.json().await.unwrap(),
        other => procs.fail(&format!("admin join of ticket {ticket}: {other:?}")),
    };
    let conn = joined["connection_uuid"].as_str().unwrap().to_string();
    let got = expect_json(
        &mut procs,
        js,
        "the join",
        &[
            &|v| v["event"] == "ticket" && is_ticket(v) && v["to"] == "in_progress",
            &|v| v["event"] == "connection_started" && is_ticket(v),
        ],
    )
    .await;
    assert_eq!(got[0]["from"], "pending", "{}", got[0]);
    assert_eq!(got[1]["connection_uuid"], conn.as_str(), "{}", got[1]);
    assert_eq!(got[1]["vin"], VIN, "{}", got[1]);
    expect_line(
        &mut procs,
        human,
        &format!("ticket {ticket}: pending -> in_progress"),
    )
    .await;
    expect_line(
        &mut procs,
        human,
        &format!("connection {conn} started for ticket {ticket} (VIN {VIN})"),
    )
    .await;

    match admin("close").await {
        Ok(r) if r.status().is_success() => {}
        other => procs.fail(&format!("admin close of ticket {ticket}: {other:?}")),
    }
    let got = expect_json(
        &mut procs,
        js,
        "the close",
        &[
            &|v| v["event"] == "ticket" && is_ticket(v) && v["to"] == "closed",
            &|v| v["event"] == "connection_ended" && is_ticket(v),
        ],
    )
    .await;
    assert_eq!(
        (&got[0]["from"], &got[0]["final"]),
        (&Value::from("in_progress"), &Value::from(true)),
        "{}",
        got[0]
    );
    assert_eq!(got[1]["connection_uuid"], conn.as_str(), "{}", got[1]);
    expect_line(
        &mut procs,
        human,
        &format!("ticket {ticket}: in_progress -> closed"),
    )
    .await;
    expect_line(
        &mut procs,
        human,
        &format!("connection {conn} ended (ticket {ticket})"),
    )
    .await;

    // Ctrl-C ends both cleanly.
    for i in [js, human] {
        interrupt(&procs, i);
        let status = procs.exit(i, "after SIGINT").await;
        if status.code() != Some(0) {
            procs.fail(&format!("watcher {i} ended with {status} after SIGINT"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_a_wrong_pincode_or_no_connector_says_so_and_exits() {
    let mut procs = Procs::new();
    let cloud = procs.spawn(
        "sim cloud",
        &["sim", "cloud", "--listen", "127.0.0.1:0"],
        &[],
    );
    let base = procs
        .line(cloud, "its base URL", |l| {
            l.starts_with("http://").then(|| l.trim().to_string())
        })
        .await;
    let pin = procs.path("wrong-pin");
    std::fs::write(&pin, "0000\n").unwrap();
    let empty = procs.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let (pin, empty, state) = (
        pin.display().to_string(),
        empty.display().to_string(),
        procs.path("state").display().to_string(),
    );
    let wrong = procs.spawn(
        "api watch (wrong pincode)",
        &[
            "api",
            "watch",
            "-c",
            &empty,
            "--base-url",
            &base,
            "--state-dir",
            &state,
            "--connector-uuid",
            DEMO_CONNECTOR_UUID,
            "--pincode-file",
            &pin,
        ],
        &[],
    );
    let status = procs.exit(wrong, "with a wrong pincode").await;
    let err = std::fs::read_to_string(&procs.procs[wrong].stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("obdgw api watch:") && err.contains("pincode") && !err.contains("0000"),
        "{err}"
    );
    let none = procs.spawn(
        "api watch (no connector)",
        &[
            "api",
            "watch",
            "-c",
            &empty,
            "--base-url",
            &base,
            "--state-dir",
            &state,
        ],
        &[],
    );
    let status = procs.exit(none, "without a connector").await;
    let err = std::fs::read_to_string(&procs.procs[none].stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--connector-uuid"), "{err}");
}
