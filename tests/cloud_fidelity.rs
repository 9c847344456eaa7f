//! Where the vendor reference is silent or loose, the client must cope with every plausible
//! server, not only with our simulator: a service that answers "no active ticket" as 200
//! with `null` (or with nothing) instead of 404, and one that ignores the undocumented
//! `offset` of the product lists. A small HTTP server in this process plays such a service.

use obdgw::cloud::Credentials;
use obdgw::cloud::client::{Client, ClientSettings, collect_pages};
use obdgw::cloud::token::{make_jwt, now_unix};
use obdgw::config::Secret;
use obdgw::sim::cloud::{DEMO_CONNECTOR_UUID, DEMO_PINCODE};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fixed answer: path, status, body.
type Answer = (&'static str, u16, String);

/// A service that logs the connector in and answers each path with a fixed status and body,
/// whatever the query; counts the requests per path. Returns its base URL.
async fn fixed_service(answers: Vec<Answer>) -> (String, Arc<Vec<AtomicUsize>>) {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::Response;
    let answers = Arc::new(answers);
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new(answers.iter().map(|_| AtomicUsize::new(0)).collect());
    let (a, c) = (answers.clone(), counts.clone());
    let app = axum::Router::new().fallback(move |req: Request| {
        let (answers, counts) = (a.clone(), c.clone());
        async move {
            let path = req.uri().path();
            let (status, body) = if path == "/v1/authenticate/connector" {
                let t = make_jwt(&json!({ "exp": now_unix() + 3600 }), "signature");
                (
                    200,
                    json!({ "id_token": t, "access_token": t, "refresh_token": t }).to_string(),
                )
            } else if let Some(i) = answers.iter().position(|(p, ..)| *p == path) {
                counts[i].fetch_add(1, Ordering::Relaxed);
                (answers[i].1, answers[i].2.clone())
            } else {
                (
                    404,
                    json!({ "status": 404, "title": "Not Found", "detail": "no such path" })
                        .to_string(),
                )
            };
            let mut r = Response::builder().status(status);
            if !body.is_empty() {
                r = r.header("content-type", "application/json");
            }
            r.body(Body::from(body)).unwrap()
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), counts)
}

fn client(base: &str) -> Client {
    Client::new(
        ClientSettings::for_base_url(base),
        Some(Credentials::ConnectorUuid {
            uuid: DEMO_CONNECTOR_UUID.into(),
            pincode: Secret::new(DEMO_PINCODE),
        }),
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn no_active_ticket_as_404_as_200_null_and_as_an_empty_answer() {
    let ticket = json!({"id": "3", "uuid": "abcb2f39-7620-401a-8dab-ec2f6075ed8a",
        "vinNumber": "JFL91010104591010", "product_ids": [[324234]], "connector_id": 4, "state": 1});
    let (base, counts) = fixed_service(vec![
        ("/v1/connectors/1/active-ticket", 200, "null".into()),
        ("/v1/connectors/2/active-ticket", 204, String::new()),
        ("/v1/connectors/3/active-ticket", 404, String::new()),
        ("/v1/connectors/4/active-ticket", 200, ticket.to_string()),
        ("/v1/connectors/5/active-ticket", 500, String::new()),
    ])
    .await;
    let c = client(&base);
    assert_eq!(c.active_ticket(1).await.unwrap(), None, "200 null");
    assert_eq!(c.active_ticket(2).await.unwrap(), None, "204");
    assert_eq!(c.active_ticket(3).await.unwrap(), None, "404");
    let t = c.active_ticket(4).await.unwrap().unwrap();
    assert_eq!((t.id, t.vin(), t.state), (3, "JFL91010104591010", 1));
    let e = c.active_ticket(5).await.unwrap_err();
    assert_eq!(e.status(), Some(500), "{e}");
    for (i, c) in counts.iter().enumerate().take(4) {
        assert_eq!(c.load(Ordering::Relaxed), 1, "answer {i}");
    }
}

#[tokio::test]
async fn a_service_that_ignores_offset_is_walked_once() {
    // Seven product groups announced, but every request answers the same first three.
    let page = json!({"result": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "total": 7, "offset": 0, "limit": 20});
    let (base, counts) = fixed_service(vec![("/v1/product-groups", 200, page.to_string())]).await;
    let c = client(&base);
    let walked = collect_pages(3, |p| c.product_groups(1, 2, p))
        .await
        .unwrap();
    assert_eq!(
        walked.items.iter().map(|g| g.id).collect::<Vec<_>>(),
        [1, 2, 3],
        "no item twice"
    );
    assert_eq!(walked.repeated_at, Some(3));
    assert_eq!(walked.total, 7);
    assert_eq!(
        counts[0].load(Ordering::Relaxed),
        2,
        "stopped at the first repeat"
    );

    // The command line says so instead of pretending the list is whole.
    let dir = tempfile::tempdir().unwrap();
    let b = base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_obdgw"))
            .args([
                "api",
                "products",
                "groups",
                "--vehicle-model-id",
                "1",
                "--vehicle-model-variant-id",
                "2",
                "--all",
                "--base-url",
                &b,
                "--state-dir",
            ])
            .arg(dir.path())
            .env_remove("OBDGW_CONFIG")
            .env("OBDGW_CLOUD__CONNECTOR_UUID", DEMO_CONNECTOR_UUID)
            .env("OBDGW_CLOUD__PINCODE", DEMO_PINCODE)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("(3 of 7"), "{stdout}");
    assert!(
        stderr.contains("repeated the previous one") && stderr.contains("ignore --offset"),
        "{stderr}"
    );
    assert_eq!(counts[0].load(Ordering::Relaxed), 4);
}
