//! The Customer API client against the cloud simulator, in-process on 127.0.0.1:0:
//! every operation's success and failure, 401 and re-login, 5xx retries for idempotent
//! requests only, timeouts, token persistence, fixtures and state files.

use obdgw::cloud::client::{Client, ClientSettings, collect_all};
use obdgw::cloud::model::*;
use obdgw::cloud::spec::{OPS, Op};
use obdgw::cloud::validate::ApiRequest;
use obdgw::cloud::{ApiError, Credentials};
use obdgw::config::Secret;
use obdgw::sim::cloud::{
    self as sim, DEMO_CONNECTOR_ID, DEMO_CONNECTOR_UUID, DEMO_PINCODE, Running, SimOptions,
};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn demo() -> Credentials {
    Credentials::ConnectorUuid {
        uuid: DEMO_CONNECTOR_UUID.into(),
        pincode: Secret::new(DEMO_PINCODE),
    }
}

async fn start(opts: SimOptions) -> Running {
    sim::start(sim::data::SimData::builtin().unwrap(), opts, None)
        .await
        .unwrap()
}

fn fast(base: &str) -> ClientSettings {
    let mut s = ClientSettings::for_base_url(base);
    s.retry_base = Duration::from_millis(5);
    s.retry_max = Duration::from_millis(20);
    s
}

fn client(r: &Running) -> Client {
    Client::new(fast(&r.base_url), Some(demo()), None).unwrap()
}

async fn admin(r: &Running, path: &str, body: Value) -> u16 {
    http()
        .post(format!("{}{path}", r.base_url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn http() -> reqwest::Client {
    obdgw::tls::http_client(Duration::from_secs(10)).unwrap()
}

fn requests(r: &Running) -> u64 {
    r.shared.requests.load(Ordering::Relaxed)
}

const GOLF8: (i64, i64) = (200102, 2001021);
const GOLF8_VIN: &str = "WVWZZZCDZMW012345";

#[tokio::test]
async fn every_operation_succeeds() {
    let r = start(SimOptions::default()).await;
    let c = client(&r);
    let mut seen: HashSet<Op> = HashSet::new();
    let all = Page::default();

    let l = c.connectors(Page::new(0, 2)).await.unwrap();
    assert_eq!((l.result.len(), l.total, l.limit), (2, 3, 2));
    seen.insert(Op::ConnectorsList);
    let me = c.connector(DEMO_CONNECTOR_ID).await.unwrap();
    assert_eq!(me.uuid, DEMO_CONNECTOR_UUID);
    assert!(me.supports_doip);
    seen.insert(Op::ConnectorsGet);
    assert_eq!(
        c.connector_by_uuid(DEMO_CONNECTOR_UUID).await.unwrap().id,
        DEMO_CONNECTOR_ID
    );
    seen.insert(Op::ConnectorsGetByUuid);
    c.dismiss_call_for_attention(DEMO_CONNECTOR_UUID)
        .await
        .unwrap();
    seen.insert(Op::ConnectorsDismissAttention);
    assert_eq!(c.active_ticket(DEMO_CONNECTOR_ID).await.unwrap(), None);

    // The garage's workflow: VIN -> vehicle -> products -> prerequisites -> totals -> ticket.
    let v = c.lookup_vin(GOLF8_VIN).await.unwrap();
    assert_eq!(v.make.as_ref().unwrap().name, "Volkswagen");
    assert!(v.model.as_ref().unwrap().requires_doip);
    assert_eq!(v.model_variant.as_ref().unwrap().id, GOLF8.1);
    seen.insert(Op::VehiclesLookup);
    let groups = c.product_groups(GOLF8.0, GOLF8.1, all).await.unwrap();
    assert!(groups.result.iter().any(|g| g.name == "Diagnostics"));
    seen.insert(Op::ProductsGroups);
    let bundles = c
        .product_bundles(GOLF8.0, GOLF8.1, Some(2691), all)
        .await
        .unwrap();
    assert_eq!(bundles.result.len(), 1);
    assert_eq!(bundles.result[0].blocks[0].product_ids, vec![52355]);
    seen.insert(Op::ProductsBundles);
    // The favorite filter defaults to true (the reference): without it, favorites only.
    let favorites = c
        .products(GOLF8.0, GOLF8.1, Some(2690), None, None, all)
        .await
        .unwrap();
    let ids: Vec<i64> = favorites.result.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![52351]);
    let others = c
        .products(GOLF8.0, GOLF8.1, Some(2690), None, Some(false), all)
        .await
        .unwrap();
    assert_eq!(
        others.result.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![52352]
    );
    let by_group = c
        .all_products(GOLF8.0, GOLF8.1, Some(2690), None)
        .await
        .unwrap();
    let ids: Vec<i64> = by_group.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![52351, 52352]);
    assert!(
        by_group[0].gross_price.as_ref().unwrap().value.unwrap()
            > by_group[0].net_price.as_ref().unwrap().value.unwrap()
    );
    let by_bundle = c
        .all_products(GOLF8.0, GOLF8.1, None, Some(&bundles.result[0].id))
        .await
        .unwrap();
    let mut bundle_ids: Vec<i64> = by_bundle.iter().map(|p| p.id).collect();
    bundle_ids.sort_unstable();
    assert_eq!(bundle_ids, vec![52351, 52355]);
    seen.insert(Op::ProductsList);
    // Add-favorite sends the whole product, as listed (the reference's body).
    let camera = c
        .products(GOLF8.0, GOLF8.1, Some(2695), None, Some(false), all)
        .await
        .unwrap()
        .result
        .into_iter()
        .find(|p| p.id == 52357)
        .unwrap();
    c.add_favorite(&camera).await.unwrap();
    let favs = c
        .products(GOLF8.0, GOLF8.1, None, None, Some(true), all)
        .await
        .unwrap();
    assert!(favs.result.iter().any(|p| p.id == 52357 && p.is_favorite));
    seen.insert(Op::ProductsAddFavorite);
    c.remove_favorite("52357").await.unwrap();
    let favs = c
        .products(GOLF8.0, GOLF8.1, None, None, Some(true), all)
        .await
        .unwrap();
    assert!(!favs.result.iter().any(|p| p.id == 52357));
    seen.insert(Op::ProductsRemoveFavorite);
    let pre = c
        .prerequisites(GOLF8.0, GOLF8.1, &[52351, 52357], all)
        .await
        .unwrap();
    let pre_ids: Vec<i64> = pre.result.iter().map(|p| p.id).collect();
    assert_eq!(pre_ids, vec![1, 2, 4]);
    assert_eq!(pre.result[1].options.len(), 3);
    seen.insert(Op::ProductsPrerequisites);
    let totals = c
        .totals(&TotalsRequest {
            voucher: Some("WINTER10".into()),
            vehicle_model_id: GOLF8.0,
            vehicle_model_variant_id: GOLF8.1,
            vin: Some(GOLF8_VIN.into()),
            prepared_ticket_id: None,
            product_ids: vec![52351, 52352],
        })
        .await
        .unwrap();
    let net = totals
        .total
        .as_ref()
        .unwrap()
        .net_price
        .as_ref()
        .unwrap()
        .value
        .unwrap();
    assert!((net - (49.0 + 19.5) * 0.9).abs() < 0.01, "{net}");
    assert!(totals.needs_confirmation_for_unattended_service);
    assert_eq!(totals.items.len(), 2);
    seen.insert(Op::TicketsTotals);
    let t = c
        .create_ticket(&NewTicket {
            vin: GOLF8_VIN.into(),
            vehicle_model_id: GOLF8.0,
            vehicle_model_variant_id: GOLF8.1,
            connector_id: DEMO_CONNECTOR_ID,
            product_ids: vec![52351],
            product_prerequisites: vec![PrerequisiteAnswer {
                definition_id: 4,
                value: "true".into(),
            }],
            metadata: default_metadata(),
            reference: Some("GZ-123-K".into()),
            ..NewTicket::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (t.state, t.connector_id, t.product_ids.clone()),
        (1, DEMO_CONNECTOR_ID, vec![52351])
    );
    seen.insert(Op::TicketsCreate);
    let active = c.active_ticket(DEMO_CONNECTOR_ID).await.unwrap().unwrap();
    assert_eq!(active.id, t.id);
    seen.insert(Op::ConnectorsActiveTicket);
    c.csat(t.id, 0.5, Some("quick and friendly")).await.unwrap();
    seen.insert(Op::TicketsCsat);
    let notes = c.ticket_notes(7014044, all).await.unwrap();
    assert_eq!(notes.result.len(), 1);
    assert!(notes.result[0].value.contains("Battery"));
    // "Notes with attachments" (the reference).
    assert_eq!(
        notes.result[0]
            .attachments
            .iter()
            .map(|a| a.file_name.as_str())
            .collect::<Vec<_>>(),
        ["bms-report.pdf"]
    );
    assert!(
        notes.result[0].attachments[0]
            .file_reference
            .ends_with("/bms-report.pdf")
    );
    assert!(c.ticket_notes(t.id, all).await.unwrap().result.is_empty());
    seen.insert(Op::TicketsNotes);
    let hist = c
        .historical_tickets(None, Some(DEMO_CONNECTOR_ID), all)
        .await
        .unwrap();
    assert_eq!(hist.total, 2);
    let h = c.historical_ticket(7014044).await.unwrap();
    assert_eq!((h.state, h.product_lines.len()), (7, 2));
    assert!(h.total.unwrap().total_discount.unwrap().percentage.unwrap() > 0.0);
    seen.insert(Op::TicketsHistorical);
    seen.insert(Op::TicketsHistoricalGet);
    let prepared = c.prepared_tickets(GOLF8_VIN, all).await.unwrap();
    assert_eq!(prepared.result[0].product_lines[0].product_id, 52357);
    seen.insert(Op::TicketsPrepared);

    let serviced = c.serviced_vehicles(all).await.unwrap();
    assert_eq!(serviced.result[0].vin, GOLF8_VIN, "most recent first");
    assert_eq!(serviced.total, 3);
    seen.insert(Op::VehiclesServiced);
    let makes = c.makes(all).await.unwrap();
    assert!(makes.total >= 6);
    seen.insert(Op::VehiclesMakes);
    let mgs = c.model_groups(20, all).await.unwrap();
    assert_eq!(
        mgs.result
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        ["Golf", "Passat"]
    );
    seen.insert(Op::VehiclesModelGroups);
    assert_eq!(
        c.model_group(2001).await.unwrap().vehicle_make_name,
        "Volkswagen"
    );
    seen.insert(Op::VehiclesModelGroup);
    let models = c.models(2001, all).await.unwrap();
    assert_eq!(models.total, 2);
    seen.insert(Op::VehiclesModels);
    let m = c.model(GOLF8.0).await.unwrap();
    assert!(m.requires_doip && m.manufactured_to.is_none());
    seen.insert(Op::VehiclesModel);
    let vs = c.variants(GOLF8.0, all).await.unwrap();
    assert_eq!(vs.total, 2);
    seen.insert(Op::VehiclesVariants);
    assert_eq!(
        c.variant(GOLF8.1).await.unwrap().vehicle_model_group_name,
        "Golf"
    );
    seen.insert(Op::VehiclesVariant);

    assert_eq!(
        c.user_info().await.unwrap().client["name"],
        "Garage Van Dijk"
    );
    seen.insert(Op::AccountUserInfo);
    assert_eq!(c.wallet().await.unwrap().balance, Some(120.0));
    seen.insert(Op::AccountWallet);
    let cust = c.customer().await.unwrap();
    assert_eq!(
        cust.phone.as_deref(),
        Some("31651226913"),
        "phone given as a number"
    );
    seen.insert(Op::AccountCustomer);
    let cust = c
        .edit_customer(&CustomerEdit {
            city: Some("Breda".into()),
            ..CustomerEdit::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (cust.city.as_deref(), cust.name.as_str()),
        (Some("Breda"), "Garage Van Dijk")
    );
    seen.insert(Op::AccountCustomerEdit);
    assert!(!c.branding().await.unwrap().branding_name.is_empty());
    seen.insert(Op::AccountBranding);
    assert_eq!(
        c.forgot_password("jan@garage-vandijk.example")
            .await
            .unwrap()
            .method,
        "SESSION"
    );
    seen.insert(Op::AccountForgotPassword);

    let emps = c.employees(all).await.unwrap();
    assert_eq!(emps.total, 3);
    seen.insert(Op::EmployeesList);
    let new = EmployeeInput {
        given_name: "Piet".into(),
        family_name: "Jansen".into(),
        username: "piet@garage-vandijk.example".into(),
        correspondence_locale: Some("nl-NL".into()),
        enabled: None,
    };
    let e = c.add_employee(&new).await.unwrap();
    assert!(e.enabled && obdgw::cloud::validate::is_uuid(&e.id));
    seen.insert(Op::EmployeesAdd);
    assert_eq!(c.employee("me").await.unwrap().given_name, "Jan");
    assert_eq!(c.employee(&e.id).await.unwrap().family_name, "Jansen");
    seen.insert(Op::EmployeesGet);
    let e2 = c
        .edit_employee(
            &e.id,
            &EmployeeInput {
                enabled: Some(false),
                ..new.clone()
            },
        )
        .await
        .unwrap();
    assert!(!e2.enabled);
    seen.insert(Op::EmployeesEdit);

    let pin = Secret::new(DEMO_PINCODE);
    assert!(
        obdgw::cloud::token::jwt_exp(
            &c.login_uuid(DEMO_CONNECTOR_UUID, &pin)
                .await
                .unwrap()
                .access_token
        )
        .is_some()
    );
    seen.insert(Op::AuthLoginUuid);
    assert!(
        !c.login_pincode(DEMO_CONNECTOR_ID, &pin)
            .await
            .unwrap()
            .id_token
            .is_empty()
    );
    seen.insert(Op::AuthLoginPincode);
    let otp = Secret::new("bafd50b7-7388-4eb1-8812-cbb5517faa2c");
    assert!(!c.login_otp(&otp).await.unwrap().refresh_token.is_empty());
    assert_eq!(
        c.login_otp(&otp).await.unwrap_err().status(),
        Some(401),
        "OTPs are single use"
    );
    seen.insert(Op::AuthLoginOtp);

    assert!(c.service_center().await.unwrap().csat_enabled);
    seen.insert(Op::ServiceCenterInfo);
    assert_eq!(c.service_center_state().await.unwrap().state, "opened");
    seen.insert(Op::ServiceCenterState);
    let tr = c.translate("Hello world!", "de").await.unwrap();
    assert_eq!(tr.message.original, "Hello world!");
    assert!(tr.message.translated.unwrap().contains("Hello"));
    seen.insert(Op::MiscTranslate);

    let chat = t.chat_id.clone().unwrap();
    assert_eq!(c.channel(&chat).await.unwrap().ticket_id, Some(t.id));
    seen.insert(Op::ChannelsGet);
    assert_eq!(
        c.send_control_message(&chat).await.unwrap().channel_id,
        chat
    );
    seen.insert(Op::ChannelsControlMessage);
    let a = c
        .create_attachment(&chat, Some("scan report.pdf"))
        .await
        .unwrap();
    assert_eq!(a.file_name, "scan_report.pdf");
    assert!(a.file_reference.starts_with(&format!("/channel/{chat}/")));
    seen.insert(Op::ChannelsCreateAttachment);
    assert_eq!(
        c.attachment(&chat, &a.file_reference).await.unwrap(),
        Attachment {
            upload_url: None,
            ..a.clone()
        }
    );
    seen.insert(Op::ChannelsAttachment);

    let missing: Vec<&str> = OPS
        .iter()
        .filter(|s| !seen.contains(&s.op))
        .map(|s| s.name)
        .collect();
    assert!(missing.is_empty(), "not exercised: {missing:?}");
    assert_eq!(c.login_count().await, 1, "one login served every call");
    r.stop().await;
}

fn invalid(e: ApiError, field: &str) {
    match e {
        ApiError::Invalid { violation, .. } => assert_eq!(violation.field, field),
        other => panic!("expected a validation error on {field}, got {other}"),
    }
}

#[tokio::test]
async fn client_side_validation_sends_nothing() {
    let r = start(SimOptions::default()).await;
    let c = client(&r);
    c.login().await.unwrap();
    let before = requests(&r);
    let all = Page::default();
    invalid(c.connectors(Page::new(0, 201)).await.unwrap_err(), "limit");
    invalid(c.lookup_vin("WVWZZZ").await.unwrap_err(), "vin");
    invalid(
        c.prepared_tickets("WVWZZZCDZMW01234!", all)
            .await
            .unwrap_err(),
        "vin",
    );
    invalid(
        c.products(
            1,
            2,
            Some(3),
            Some("01e2b527-c085-4d8a-ad02-715553d0becb"),
            None,
            all,
        )
        .await
        .unwrap_err(),
        "product_bundle_id",
    );
    invalid(
        c.products(1, 2, None, Some("not-a-uuid"), None, all)
            .await
            .unwrap_err(),
        "product_bundle_id",
    );
    invalid(c.csat(1, 1.5, None).await.unwrap_err(), "score");
    invalid(c.csat(1, -1.01, None).await.unwrap_err(), "score");
    invalid(
        c.prerequisites(1, 2, &[], all).await.unwrap_err(),
        "product_id",
    );
    let bad = EmployeeInput {
        given_name: "A".into(),
        family_name: "B".into(),
        username: "nope".into(),
        ..EmployeeInput::default()
    };
    invalid(c.add_employee(&bad).await.unwrap_err(), "username");
    let long = EmployeeInput {
        given_name: "x".repeat(256),
        family_name: "B".into(),
        username: "a@b.cd".into(),
        ..EmployeeInput::default()
    };
    invalid(
        c.edit_employee("me", &long).await.unwrap_err(),
        "given_name",
    );
    let loc = EmployeeInput {
        correspondence_locale: Some("en_GB".into()),
        ..bad.clone()
    };
    invalid(
        c.add_employee(&EmployeeInput {
            username: "a@b.cd".into(),
            ..loc
        })
        .await
        .unwrap_err(),
        "correspondence_locale",
    );
    invalid(
        c.forgot_password("not-an-email").await.unwrap_err(),
        "email_address",
    );
    invalid(c.translate("", "de").await.unwrap_err(), "message.original");
    invalid(
        c.translate("hi", "de_DE").await.unwrap_err(),
        "target_language",
    );
    invalid(
        c.connector_by_uuid("xyz").await.unwrap_err(),
        "connectorUUID",
    );
    invalid(
        c.edit_customer(&CustomerEdit {
            country: Some("NLD".into()),
            ..CustomerEdit::default()
        })
        .await
        .unwrap_err(),
        "country",
    );
    invalid(
        c.edit_customer(&CustomerEdit {
            email_address: Some("x".into()),
            ..CustomerEdit::default()
        })
        .await
        .unwrap_err(),
        "email_address",
    );
    let t = NewTicket {
        vin: "SHORT".into(),
        product_ids: vec![1],
        metadata: json!({}),
        ..NewTicket::default()
    };
    invalid(c.create_ticket(&t).await.unwrap_err(), "vin");
    let t = NewTicket {
        vin: GOLF8_VIN.into(),
        product_ids: vec![],
        metadata: json!({}),
        ..NewTicket::default()
    };
    invalid(c.create_ticket(&t).await.unwrap_err(), "product_ids");
    invalid(
        c.totals(&TotalsRequest {
            vin: Some("x".into()),
            product_ids: vec![1],
            ..TotalsRequest::default()
        })
        .await
        .unwrap_err(),
        "vin",
    );
    invalid(c.login_otp(&Secret::new("")).await.unwrap_err(), "otp");
    invalid(c.attachment("c", "").await.unwrap_err(), "file_reference");
    assert_eq!(
        requests(&r),
        before,
        "invalid requests must not reach the service"
    );
    let e = c.csat(1, 2.0, None).await.unwrap_err().to_string();
    assert!(
        e.contains("score") && e.contains("-1 to 1") && e.contains("nothing was sent"),
        "{e}"
    );
    r.stop().await;
}

/// The simulator enforces the same rules against a client that does not validate.
#[tokio::test]
async fn simulator_rejects_invalid_requests_with_problem_json() {
    let r = start(SimOptions::default()).await;
    let c = client(&r);
    c.login().await.unwrap();
    let token = c.bearer().await.unwrap();
    let http = http();
    let cases: Vec<(reqwest::Method, String, Option<Value>, u16, &str)> = vec![
        (reqwest::Method::GET, "/v1/connectors?limit=201".into(), None, 400, "limit"),
        (reqwest::Method::GET, "/v1/connectors?offset=-1".into(), None, 400, "offset"),
        (reqwest::Method::GET, "/v1/vehicles/lookup?vin=ABC".into(), None, 400, "VIN"),
        (reqwest::Method::GET, "/v1/vehicles/lookup".into(), None, 400, "vin"),
        (reqwest::Method::GET, "/v1/products?vehicle_model_id=200102&vehicle_model_variant_id=2001021&product_group_id=1&product_bundle_id=01e2b527-c085-4d8a-ad02-715553d0becb".into(), None, 400, "product_group_id"),
        (reqwest::Method::PUT, "/v1/tickets/1/csat".into(), Some(json!({"score": 3})), 400, "-1 to 1"),
        (reqwest::Method::POST, "/v1/employees".into(), Some(json!({"given_name": "A", "family_name": "B", "username": "no"})), 400, "e-mail"),
        (reqwest::Method::POST, "/v1/employees".into(), Some(json!({"given_name": "A", "username": "a@b.cd"})), 400, "family_name"),
        (reqwest::Method::POST, "/v1/employees".into(), Some(json!({"given_name": "A", "family_name": "B", "username": "a@b.cd", "correspondence_locale": "xx-XX"})), 400, "not supported"),
        (reqwest::Method::POST, "/v1/tickets".into(), Some(json!("text")), 400, "JSON object"),
        (reqwest::Method::GET, "/v1/connectors/abc".into(), None, 400, "integer"),
        (reqwest::Method::GET, "/v1/connectors/1".into(), None, 404, "connector"),
        (reqwest::Method::GET, "/v1/vehicle-models/1".into(), None, 404, "model"),
        (reqwest::Method::GET, "/v1/nope".into(), None, 404, "no such route"),
        (reqwest::Method::PATCH, "/v1/employees".into(), None, 405, "not allowed"),
    ];
    for (method, path, body, status, needle) in cases {
        let mut rb = http
            .request(method.clone(), format!("{}{path}", r.base_url))
            .bearer_auth(&token);
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
        let p: Value = resp.json().await.unwrap();
        assert_eq!(p["status"], status);
        assert!(
            p["detail"].as_str().unwrap().contains(needle),
            "{method} {path}: {p}"
        );
    }
    let resp = http
        .post(format!("{}/v1/tickets", r.base_url))
        .body("{bad")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    r.stop().await;
}

#[tokio::test]
async fn server_side_failures_are_typed() {
    let r = start(SimOptions::default()).await;
    let c = client(&r);
    let all = Page::default();
    let nf = |e: ApiError| assert_eq!(e.status(), Some(404), "{e}");
    nf(c.connector(1).await.unwrap_err());
    nf(c.connector_by_uuid("00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err());
    nf(
        c.dismiss_call_for_attention("00000000-0000-4000-8000-000000000000")
            .await
            .unwrap_err(),
    );
    // An unknown connector and a connector without a ticket both answer 404: both are "none".
    assert_eq!(c.active_ticket(1).await.unwrap(), None);
    nf(c.product_groups(1, 2, all).await.unwrap_err());
    nf(c.product_bundles(GOLF8.0, 34234, None, all)
        .await
        .unwrap_err());
    nf(c.products(
        GOLF8.0,
        GOLF8.1,
        None,
        Some("00000000-0000-4000-8000-000000000000"),
        None,
        all,
    )
    .await
    .unwrap_err());
    nf(c.add_favorite(&Product {
        id: 1,
        ..Product::default()
    })
    .await
    .unwrap_err());
    nf(c.remove_favorite("1").await.unwrap_err());
    nf(c.remove_favorite("not-a-number").await.unwrap_err());
    nf(c.prerequisites(GOLF8.0, GOLF8.1, &[1], all)
        .await
        .unwrap_err());
    nf(c.csat(1, 1.0, None).await.unwrap_err());
    nf(c.ticket_notes(1, all).await.unwrap_err());
    nf(c.historical_ticket(1).await.unwrap_err());
    assert!(
        c.historical_tickets(Some("AAAAAAAAAAAAAAAAA"), None, all)
            .await
            .unwrap()
            .result
            .is_empty()
    );
    assert!(
        c.prepared_tickets("AAAAAAAAAAAAAAAAA", all)
            .await
            .unwrap()
            .result
            .is_empty()
    );
    nf(c.lookup_vin("AAAAAAAAAAAAAAAAA").await.unwrap_err());
    nf(c.model_groups(1, all).await.unwrap_err());
    nf(c.model_group(1).await.unwrap_err());
    nf(c.models(1, all).await.unwrap_err());
    nf(c.model(1).await.unwrap_err());
    nf(c.variants(1, all).await.unwrap_err());
    nf(c.variant(1).await.unwrap_err());
    nf(c.employee("00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err());
    nf(c.channel("nope").await.unwrap_err());
    nf(c.send_control_message("nope").await.unwrap_err());
    nf(c.create_attachment("nope", None).await.unwrap_err());
    nf(c.attachment("nope", "/x").await.unwrap_err());
    let bad_totals = TotalsRequest {
        vehicle_model_id: GOLF8.0,
        vehicle_model_variant_id: GOLF8.1,
        product_ids: vec![52351],
        voucher: Some("NOPE".into()),
        ..TotalsRequest::default()
    };
    assert_eq!(c.totals(&bad_totals).await.unwrap_err().status(), Some(400));
    let dup = EmployeeInput {
        given_name: "J".into(),
        family_name: "D".into(),
        username: "jan@garage-vandijk.example".into(),
        ..EmployeeInput::default()
    };
    assert_eq!(c.add_employee(&dup).await.unwrap_err().status(), Some(409));

    // One pending ticket per connector; required prerequisites must be answered.
    let mut t = NewTicket {
        vin: GOLF8_VIN.into(),
        vehicle_model_id: GOLF8.0,
        vehicle_model_variant_id: GOLF8.1,
        connector_id: DEMO_CONNECTOR_ID,
        product_ids: vec![52351],
        metadata: default_metadata(),
        ..NewTicket::default()
    };
    let e = c.create_ticket(&t).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("prerequisite 4"), "{e}");
    t.product_prerequisites = vec![PrerequisiteAnswer {
        definition_id: 4,
        value: "true".into(),
    }];
    c.create_ticket(&t).await.unwrap();
    let e = c.create_ticket(&t).await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    let text = e.to_string();
    assert!(
        text.contains("already has pending ticket") && text.contains("wait until it is closed"),
        "{text}"
    );
    t.connector_id = 910000002;
    assert_eq!(c.create_ticket(&t).await.unwrap_err().status(), Some(403));

    // Bad credentials: 401 with a hint, and no retry loop.
    let wrong = Client::new(
        fast(&r.base_url),
        Some(Credentials::ConnectorUuid {
            uuid: DEMO_CONNECTOR_UUID.into(),
            pincode: Secret::new("0000"),
        }),
        None,
    )
    .unwrap();
    let before = requests(&r);
    let e = wrong.makes(all).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    // A refused login names the credentials, not "log in again".
    assert!(e.to_string().contains("pincode is wrong"), "{e}");
    assert!(!e.to_string().contains("obdgw login"), "{e}");
    assert_eq!(
        requests(&r) - before,
        1,
        "one failed login, no request without a token"
    );
    assert_eq!(
        wrong
            .login_pincode(DEMO_CONNECTOR_ID, &Secret::new("0000"))
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    // No credentials at all.
    let anon = Client::new(fast(&r.base_url), None, None).unwrap();
    assert!(matches!(
        anon.makes(all).await.unwrap_err(),
        ApiError::Auth(_)
    ));
    r.stop().await;
}

#[tokio::test]
async fn rejected_token_logs_in_again_once_and_repeats() {
    let r = start(SimOptions::default()).await;
    let c = client(&r);
    c.makes(Page::default()).await.unwrap();
    assert_eq!(c.login_count().await, 1);
    // The service revokes every token: the next call gets 401, logs in and repeats.
    assert_eq!(admin(&r, "/admin/tokens/expire", json!({})).await, 204);
    let before = requests(&r);
    c.makes(Page::default()).await.unwrap();
    assert_eq!(c.login_count().await, 2);
    assert_eq!(requests(&r) - before, 3, "401, login, repeat");
    // A POST is repeated after a 401 too: it was not processed.
    admin(&r, "/admin/tokens/expire", json!({})).await;
    c.translate("hi", "nl").await.unwrap();
    assert_eq!(c.login_count().await, 3);
    // A second 401 after a fresh login is returned, not looped on.
    admin(
        &r,
        "/admin/faults",
        json!({"status": 401, "count": 2, "path_prefix": "/v1/vehicle-makes"}),
    )
    .await;
    let e = c.makes(Page::default()).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert_eq!(c.login_count().await, 4);
    r.stop().await;
}

#[tokio::test]
async fn logs_in_again_before_expiry() {
    // Tokens live 60 s; with a 120 s margin every token is already "due", so each call logs
    // in first: re-login happens before the service would reject the token.
    let r = start(SimOptions {
        token_ttl_s: 60,
        ..SimOptions::default()
    })
    .await;
    let mut s = fast(&r.base_url);
    s.refresh_margin_s = 120;
    let c = Client::new(s, Some(demo()), None).unwrap();
    for i in 1..=3 {
        c.makes(Page::default()).await.unwrap();
        assert_eq!(c.login_count().await, i);
    }
    let exp = c.expires_at().await.unwrap();
    let now = obdgw::cloud::token::now_unix();
    assert!(
        (now + 55..=now + 61).contains(&exp),
        "expiry read from the JWT: {exp} vs {now}"
    );
    // With a 10 s margin the same token is reused.
    let mut s = fast(&r.base_url);
    s.refresh_margin_s = 10;
    let c = Client::new(s, Some(demo()), None).unwrap();
    c.makes(Page::default()).await.unwrap();
    c.makes(Page::default()).await.unwrap();
    assert_eq!(c.login_count().await, 1);
    r.stop().await;
}

#[tokio::test]
async fn idempotent_requests_retry_5xx_and_drops_posts_do_not() {
    let r = start(SimOptions::default()).await;
    let c = client(&r);
    c.login().await.unwrap();
    let all = Page::default();

    admin(
        &r,
        "/admin/faults",
        json!({"status": 503, "count": 2, "path_prefix": "/v1/vehicle-makes"}),
    )
    .await;
    let before = requests(&r);
    assert!(c.makes(all).await.unwrap().total >= 6);
    assert_eq!(requests(&r) - before, 3, "two 503s then success");

    admin(
        &r,
        "/admin/faults",
        json!({"status": 500, "count": 5, "path_prefix": "/v1/vehicle-makes"}),
    )
    .await;
    let before = requests(&r);
    let e = c.makes(all).await.unwrap_err();
    assert_eq!(e.status(), Some(500));
    assert!(e.is_transient());
    assert_eq!(requests(&r) - before, 3, "1 + retries (2), then the error");
    admin(&r, "/admin/faults", json!({})).await;
    http()
        .delete(format!("{}/admin/faults", r.base_url))
        .send()
        .await
        .unwrap();

    // PUT is idempotent: retried.
    let t = 7014044;
    admin(
        &r,
        "/admin/faults",
        json!({"status": 502, "count": 1, "method": "PUT"}),
    )
    .await;
    let before = requests(&r);
    c.csat(t, 1.0, None).await.unwrap();
    assert_eq!(requests(&r) - before, 2);

    // POST is not: one attempt, the 503 surfaces.
    admin(
        &r,
        "/admin/faults",
        json!({"status": 503, "count": 1, "path_prefix": "/v1/tickets/totals"}),
    )
    .await;
    let before = requests(&r);
    let req = TotalsRequest {
        vehicle_model_id: GOLF8.0,
        vehicle_model_variant_id: GOLF8.1,
        product_ids: vec![52351],
        ..TotalsRequest::default()
    };
    let e = c.totals(&req).await.unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert!(e.to_string().contains("try again later"), "{e}");
    assert_eq!(requests(&r) - before, 1);
    c.totals(&req).await.unwrap();

    // A dropped connection mid-answer: GET retried, POST not.
    admin(
        &r,
        "/admin/faults",
        json!({"drop": true, "count": 1, "path_prefix": "/v1/vehicle-makes"}),
    )
    .await;
    assert!(c.makes(all).await.is_ok());
    admin(
        &r,
        "/admin/faults",
        json!({"drop": true, "count": 1, "path_prefix": "/v1/translate"}),
    )
    .await;
    assert!(matches!(
        c.translate("x", "de").await.unwrap_err(),
        ApiError::Transport { .. }
    ));
    r.stop().await;
}

#[tokio::test]
async fn requests_time_out() {
    let r = start(SimOptions::default()).await;
    let mut s = fast(&r.base_url);
    s.request_timeout = Duration::from_millis(300);
    s.retries = 1;
    let c = Client::new(s, Some(demo()), None).unwrap();
    c.login().await.unwrap();
    admin(
        &r,
        "/admin/faults",
        json!({"latency_ms": 2000, "count": 1, "path_prefix": "/v1/vehicle-makes"}),
    )
    .await;
    // The first attempt times out, the retry succeeds.
    assert!(c.makes(Page::default()).await.is_ok());
    admin(
        &r,
        "/admin/faults",
        json!({"latency_ms": 2000, "count": 1, "path_prefix": "/v1/translate"}),
    )
    .await;
    match c.translate("x", "de").await.unwrap_err() {
        ApiError::Transport { timeout, .. } => assert!(timeout),
        e => panic!("expected a timeout, got {e}"),
    }
    r.stop().await;
}

#[tokio::test]
async fn tokens_persist_in_the_state_dir() {
    use std::os::unix::fs::PermissionsExt as _;
    let r = start(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let c = Client::new(fast(&r.base_url), Some(demo()), Some(&state)).unwrap();
    c.makes(Page::default()).await.unwrap();
    let file = state.join(obdgw::cloud::token::STORE_FILE);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("pincode"), "no pincode stored");
    // A new process (client) reuses the stored session: no login.
    let c2 = Client::new(fast(&r.base_url), Some(demo()), Some(&state)).unwrap();
    c2.makes(Page::default()).await.unwrap();
    assert_eq!(c2.login_count().await, 0);
    // A stored session for another base URL is not used.
    let r2 = start(SimOptions::default()).await;
    let c3 = Client::new(fast(&r2.base_url), Some(demo()), Some(&state)).unwrap();
    c3.makes(Page::default()).await.unwrap();
    assert_eq!(c3.login_count().await, 1);
    r.stop().await;
    r2.stop().await;
}

#[tokio::test]
async fn deprecated_and_otp_logins_drive_the_client() {
    let r = start(SimOptions::default()).await;
    let by_id = Client::new(
        fast(&r.base_url),
        Some(Credentials::ConnectorId {
            id: DEMO_CONNECTOR_ID,
            pincode: Secret::new(DEMO_PINCODE),
        }),
        None,
    )
    .unwrap();
    assert_eq!(by_id.connectors(Page::default()).await.unwrap().total, 3);
    let otp = Client::new(fast(&r.base_url), None, None).unwrap();
    otp.login_with(&Credentials::Otp(Secret::new(
        "3c1f9e4a-0d2b-4b8e-9f6a-7e5d4c3b2a19",
    )))
    .await
    .unwrap();
    assert_eq!(otp.makes(Page::default()).await.unwrap().total, 6);
    r.stop().await;
}

#[tokio::test]
async fn generic_call_and_route_overrides() {
    let r = start(SimOptions::default()).await;
    let c = client(&r);
    let v = c
        .call(
            Op::VehiclesLookup,
            ApiRequest::new().query("vin", GOLF8_VIN),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v["make"]["name"], "Volkswagen");
    // A wrong route override surfaces as a 404 that names the route table.
    let mut cfg = obdgw::cloud::config::CloudConfig {
        base_url: r.base_url.clone(),
        ..Default::default()
    };
    cfg.routes
        .insert("vehicles_makes".into(), "/v2/makes".into());
    let mut s = ClientSettings::from_config(&cfg).unwrap();
    s.retries = 0;
    let c2 = Client::new(s, Some(demo()), None).unwrap();
    let e = c2.makes(Page::default()).await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("cloud.routes"), "{e}");
    r.stop().await;
}

#[tokio::test]
async fn fixture_file_and_state_file() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cloud/small.json"
    );
    let data = sim::load_data(Some(std::path::Path::new(fixture)), None).unwrap();
    assert_eq!(data.makes.len(), 1);
    let r = sim::start(data, SimOptions::default(), None).await.unwrap();
    let c = Client::new(
        fast(&r.base_url),
        Some(Credentials::ConnectorUuid {
            uuid: "11111111-2222-4333-8444-555555555555".into(),
            pincode: Secret::new("2468"),
        }),
        None,
    )
    .unwrap();
    assert_eq!(
        c.makes(Page::default()).await.unwrap().result[0].name,
        "Skoda"
    );
    r.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sim-state.json");
    let opts = SimOptions {
        state_file: Some(state.clone()),
        ..SimOptions::default()
    };
    let r = sim::start(
        sim::load_data(None, Some(&state)).unwrap(),
        opts.clone(),
        None,
    )
    .await
    .unwrap();
    let c = client(&r);
    c.add_favorite(&Product {
        id: 52357,
        ..Product::default()
    })
    .await
    .unwrap();
    r.stop().await;
    let r = sim::start(sim::load_data(None, Some(&state)).unwrap(), opts, None)
        .await
        .unwrap();
    let c = client(&r);
    let favs = c
        .products(GOLF8.0, GOLF8.1, None, None, Some(true), Page::default())
        .await
        .unwrap();
    assert!(
        favs.result.iter().any(|p| p.id == 52357),
        "favorite survived the restart"
    );
    r.stop().await;

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"models": [{"id": 1, "vehicle_model_group_id": 9}]}"#,
    )
    .unwrap();
    let e = sim::load_data(Some(&bad), None).unwrap_err();
    assert!(e.contains("unknown model group 9"), "{e}");
}

#[tokio::test]
async fn collect_all_walks_the_simulator() {
    let r = start(SimOptions::default()).await;
    let c = client(&r);
    let makes = collect_all(2, |p| c.makes(p)).await.unwrap();
    assert_eq!(
        makes.iter().map(|m| m.id).collect::<Vec<_>>(),
        [10, 20, 30, 40, 50, 60]
    );
    r.stop().await;
}
