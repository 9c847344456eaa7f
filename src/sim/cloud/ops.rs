//! What the simulator answers to each operation, given a validated request and the state.
//!
//! Owns: the server-side rules that need state (404s, one pending ticket per connector,
//! known products and vehicles, single-use OTPs, supported locales) and the answers.
//! Requests reach this module only after type and rule validation (`cloud::validate`).

use super::data::{self, AttachmentRec, EmployeeRec, SimData, TicketRec, TokenRec, state};
use crate::cloud::spec::Op;
use crate::cloud::token::make_jwt;
use crate::cloud::validate::ApiRequest;
use serde_json::{Value, json};

/// An error answer (becomes problem+json).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub status: u16,
    pub detail: String,
}

pub fn fail(status: u16, detail: impl Into<String>) -> Fail {
    Fail {
        status,
        detail: detail.into(),
    }
}

fn not_found(what: &str) -> Fail {
    fail(404, format!("{what} not found"))
}

/// A successful answer: status and optional JSON body; `changed` when state changed.
pub struct Answer {
    pub status: u16,
    pub body: Option<Value>,
    pub changed: bool,
}

fn ok(op: Op, body: Value) -> Result<Answer, Fail> {
    Ok(Answer {
        status: op.spec().ok_status,
        body: Some(body),
        changed: false,
    })
}

fn changed(op: Op, body: Option<Value>) -> Result<Answer, Fail> {
    Ok(Answer {
        status: op.spec().ok_status,
        body,
        changed: true,
    })
}

/// Default page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 20;

/// A page of `items` as `{result, total, offset, limit}`.
pub fn page(items: Vec<Value>, req: &ApiRequest) -> Value {
    let (offset, limit) = req.page(DEFAULT_LIMIT);
    let total = items.len();
    let result: Vec<Value> = items
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(limit as usize)
        .collect();
    json!({ "result": result, "total": total, "offset": offset, "limit": limit })
}

/// Who is calling.
pub struct Caller<'a> {
    pub token: &'a TokenRec,
}

/// Token lifetime and the clock, from the simulator's options.
pub struct Clock {
    pub now: u64,
    pub token_ttl_s: u64,
}

fn issue_tokens(
    d: &mut SimData,
    clock: &Clock,
    subject: String,
    connector_id: Option<i64>,
) -> Value {
    let exp = clock.now + clock.token_ttl_s;
    let mk = |kind: &str| {
        let claims = json!({
            "iss": "obdgw-sim", "sub": subject, "token_use": kind,
            "iat": clock.now, "exp": exp, "jti": data::uuid_v4(),
        });
        make_jwt(&claims, &data::uuid_v4().replace('-', ""))
    };
    let (id_token, access_token, refresh_token) = (mk("id"), mk("access"), mk("refresh"));
    d.tokens.retain(|t| t.expires_at > clock.now);
    if d.tokens.len() >= data::MAX_TOKENS {
        d.tokens.remove(0);
    }
    for t in [&id_token, &access_token] {
        d.tokens.push(TokenRec {
            token: t.clone(),
            subject: subject.clone(),
            connector_id,
            expires_at: exp,
        });
    }
    json!({ "id_token": id_token, "access_token": access_token, "refresh_token": refresh_token })
}

fn code_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Operations that need no token (logins, forgot password).
pub fn public(op: Op, req: &ApiRequest, d: &mut SimData, clock: &Clock) -> Result<Answer, Fail> {
    let bad_login = || fail(401, "invalid credentials");
    match op {
        Op::AuthLoginUuid => {
            let uuid = req
                .b_str("connector_uuid")
                .unwrap_or_default()
                .to_ascii_lowercase();
            let pin = code_str(req.b("pincode")).unwrap_or_default();
            let c = d
                .connectors
                .iter()
                .find(|c| c.uuid == uuid && c.pincode == pin)
                .ok_or_else(bad_login)?;
            let (subject, id) = (format!("connector:{}", c.uuid), c.id);
            changed(op, Some(issue_tokens(d, clock, subject, Some(id))))
        }
        Op::AuthLoginPincode => {
            let id = code_str(req.b("connector_id")).unwrap_or_default();
            let pin = code_str(req.b("pincode")).unwrap_or_default();
            let c = d
                .connectors
                .iter()
                .find(|c| c.id.to_string() == id.trim() && c.pincode == pin)
                .ok_or_else(bad_login)?;
            let (subject, id) = (format!("connector-id:{}", c.id), c.id);
            changed(op, Some(issue_tokens(d, clock, subject, Some(id))))
        }
        Op::AuthLoginOtp => {
            let otp = req.b_str("otp").unwrap_or_default();
            let pos = d.otps.iter().position(|o| o == otp).ok_or_else(bad_login)?;
            d.otps.remove(pos);
            changed(op, Some(issue_tokens(d, clock, "otp".into(), None)))
        }
        Op::AccountForgotPassword => ok(op, json!({ "method": "SESSION" })),
        _ => Err(fail(500, "operation routed as public by mistake")),
    }
}

fn require_vehicle(d: &SimData, req: &ApiRequest) -> Result<(i64, i64), Fail> {
    let model = req.q_int("vehicle_model_id").unwrap_or(-1);
    let variant = req.q_int("vehicle_model_variant_id").unwrap_or(-1);
    if d.model(model).is_none() {
        return Err(not_found("vehicle model"));
    }
    if !d.vehicle_ok(model, variant) {
        return Err(not_found("vehicle model variant of this model"));
    }
    Ok((model, variant))
}

fn employee_fields(req: &ApiRequest, d: &SimData, e: &mut EmployeeRec) -> Result<(), Fail> {
    let locale = req.b_str("correspondence_locale");
    if let Some(l) = locale
        && !d.locales.iter().any(|x| x.eq_ignore_ascii_case(l))
    {
        return Err(fail(
            400,
            format!(
                "correspondence_locale `{l}` is not supported; supported: {}",
                d.locales.join(", ")
            ),
        ));
    }
    e.given_name = req.b_str("given_name").unwrap_or_default().to_string();
    e.family_name = req.b_str("family_name").unwrap_or_default().to_string();
    e.username = req.b_str("username").unwrap_or_default().to_string();
    if let Some(l) = locale {
        e.correspondence_locale = l.to_string();
    }
    Ok(())
}

/// Operations that need a token.
pub fn private(
    op: Op,
    req: &ApiRequest,
    d: &mut SimData,
    caller: &Caller<'_>,
    now: u64,
) -> Result<Answer, Fail> {
    match op {
        Op::ConnectorsList => {
            let items = d.connectors.iter().map(SimData::show_connector).collect();
            ok(op, page(items, req))
        }
        Op::ConnectorsGet => {
            let id = req.p_int("connectorId").unwrap_or(-1);
            let c = d.connector(id).ok_or_else(|| not_found("connector"))?;
            ok(op, SimData::show_connector(c))
        }
        Op::ConnectorsGetByUuid => {
            let uuid = req
                .p("connectorUUID")
                .unwrap_or_default()
                .to_ascii_lowercase();
            let c = d
                .connectors
                .iter()
                .find(|c| c.uuid == uuid)
                .ok_or_else(|| not_found("connector"))?;
            ok(op, SimData::show_connector(c))
        }
        Op::ConnectorsDismissAttention => {
            let uuid = req
                .p("connectorUUID")
                .unwrap_or_default()
                .to_ascii_lowercase();
            let c = d
                .connectors
                .iter_mut()
                .find(|c| c.uuid == uuid)
                .ok_or_else(|| not_found("connector"))?;
            c.call_for_attention = false;
            changed(op, None)
        }
        Op::ConnectorsActiveTicket => {
            let id = req.p_int("connectorId").unwrap_or(-1);
            d.connector(id).ok_or_else(|| not_found("connector"))?;
            let t = d
                .tickets
                .iter()
                .find(|t| t.connector_id == id && state::is_active(t.state))
                .ok_or_else(|| not_found("active ticket on this connector"))?;
            ok(op, SimData::show_ticket(t))
        }
        Op::ProductsGroups => {
            require_vehicle(d, req)?;
            let items = d
                .product_groups
                .iter()
                .map(|g| json!({ "id": g.id, "name": g.name }))
                .collect();
            ok(op, page(items, req))
        }
        Op::ProductsBundles => {
            require_vehicle(d, req)?;
            let group = req.q_int("product_group_id");
            let items = d
                .bundles
                .iter()
                .filter(|b| group.is_none_or(|g| g == b.product_group_id))
                .map(|b| {
                    json!({
                        "id": b.id, "product_group_id": b.product_group_id, "name": b.name,
                        "description": b.description, "reference": b.reference,
                        "blocks": b.blocks.iter().map(|k| json!({
                            "optional": k.optional, "product_ids": [k.product_ids.clone()],
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            ok(op, page(items, req))
        }
        Op::ProductsList => {
            require_vehicle(d, req)?;
            let group = req.q_int("product_group_id");
            let bundle = match req.q("product_bundle_id") {
                Some(b) => Some(
                    d.bundles
                        .iter()
                        .find(|x| x.id.eq_ignore_ascii_case(b))
                        .ok_or_else(|| not_found("product bundle"))?,
                ),
                None => None,
            };
            // The reference: "boolean or integer, default true" (favorites only).
            let fav = req.q_bool("is_favorite").unwrap_or(true);
            let items = d
                .products
                .iter()
                .filter(|p| group.is_none_or(|g| g == p.product_group_id))
                .filter(|p| {
                    bundle.is_none_or(|b| b.blocks.iter().any(|k| k.product_ids.contains(&p.id)))
                })
                .filter(|p| p.is_favorite == fav)
                .map(|p| d.show_product(p))
                .collect();
            ok(op, page(items, req))
        }
        Op::ProductsAddFavorite | Op::ProductsRemoveFavorite => {
            let id = if op == Op::ProductsAddFavorite {
                req.b_int("id")
            } else {
                req.p_int("id")
            }
            .unwrap_or(-1);
            let p = d
                .products
                .iter_mut()
                .find(|p| p.id == id)
                .ok_or_else(|| not_found("product"))?;
            p.is_favorite = op == Op::ProductsAddFavorite;
            // The reference answers add-favorite with `null`; remove-favorite with nothing.
            changed(op, (op == Op::ProductsAddFavorite).then_some(Value::Null))
        }
        Op::ProductsPrerequisites => {
            require_vehicle(d, req)?;
            let ids = req.q_int_list("product_id");
            if let Some(missing) = ids.iter().find(|id| d.product(**id).is_none()) {
                return Err(not_found(&format!("product {missing}")));
            }
            let items = d
                .prerequisites
                .iter()
                .filter(|p| p.product_ids.iter().any(|id| ids.contains(id)))
                .map(|p| {
                    json!({
                        "id": p.id, "name": p.name, "description": p.description,
                        "question": p.question, "required": p.required, "type": p.kind,
                        "options": p.options.iter().enumerate().map(|(i, v)| json!({
                            "id": p.id * 100 + i as i64 + 1, "productPrerequisiteId": p.id, "value": v,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            ok(op, page(items, req))
        }
        Op::TicketsCreate => create_ticket(req, d, caller, now),
        Op::TicketsCsat => {
            let id = req.p_int("ticketId").unwrap_or(-1);
            let score = req.b("score").and_then(Value::as_f64);
            let comment = req.b_str("comment").map(str::to_string);
            // The reference answers `null`.
            if let Some(t) = d.tickets.iter_mut().find(|t| t.id == id) {
                t.csat_score = score;
                t.csat_comment = comment;
                return changed(op, Some(Value::Null));
            }
            if d.historical.iter().any(|h| h.id == id) {
                return changed(op, Some(Value::Null));
            }
            Err(not_found("ticket"))
        }
        Op::TicketsNotes => {
            let id = req.p_int("ticketId").unwrap_or(-1);
            if !d.tickets.iter().any(|t| t.id == id) && !d.historical.iter().any(|h| h.id == id) {
                return Err(not_found("ticket"));
            }
            let items = d
                .notes
                .iter()
                .filter(|n| n.ticket_id == id)
                .map(|n| serde_json::to_value(n).unwrap_or(Value::Null))
                .collect();
            ok(op, page(items, req))
        }
        Op::TicketsHistorical => {
            let vin = req.q("vin");
            let conn = req.q_int("connector_id");
            let items = d
                .historical
                .iter()
                .rev()
                .filter(|h| vin.is_none_or(|v| h.vin.eq_ignore_ascii_case(v)))
                .filter(|h| conn.is_none_or(|c| c == h.connector_id))
                .map(|h| d.show_historical(h))
                .collect();
            ok(op, page(items, req))
        }
        Op::TicketsHistoricalGet => {
            let id = req.p_int("historicalTicketId").unwrap_or(-1);
            let h = d
                .historical
                .iter()
                .find(|h| h.id == id)
                .ok_or_else(|| not_found("historical ticket"))?;
            ok(op, d.show_historical(h))
        }
        Op::TicketsPrepared => {
            let vin = req.q("vin").unwrap_or_default();
            let items = d
                .prepared
                .iter()
                .filter(|p| p.vin.eq_ignore_ascii_case(vin))
                .map(|p| d.show_prepared(p))
                .collect();
            ok(op, page(items, req))
        }
        Op::TicketsTotals => {
            let model = req.b_int("vehicle_model_id").unwrap_or(-1);
            let variant = req.b_int("vehicle_model_variant_id").unwrap_or(-1);
            if !d.vehicle_ok(model, variant) {
                return Err(not_found("vehicle model variant of this model"));
            }
            let ids = req.b_int_list("product_ids");
            if let Some(missing) = ids.iter().find(|id| d.product(**id).is_none()) {
                return Err(not_found(&format!("product {missing}")));
            }
            check_prepared(d, req.b_str("prepared_ticket_id"))?;
            let voucher = check_voucher(d, req.b_str("voucher"))?;
            ok(op, d.totals(voucher, model, variant, &ids))
        }
        Op::VehiclesServiced => ok(op, page(d.serviced(), req)),
        Op::VehiclesLookup => {
            let vin = req.q("vin").unwrap_or_default();
            let rec = d
                .vins
                .iter()
                .find(|v| v.vin.eq_ignore_ascii_case(vin))
                .ok_or_else(|| not_found("vehicle for this VIN"))?;
            let v = d
                .variant(rec.vehicle_model_variant_id)
                .ok_or_else(|| not_found("variant"))?;
            let m = d
                .model(v.vehicle_model_id)
                .ok_or_else(|| not_found("model"))?;
            let g = d
                .group(m.vehicle_model_group_id)
                .ok_or_else(|| not_found("model group"))?;
            let make = d.make(g.vehicle_make_id).ok_or_else(|| not_found("make"))?;
            ok(
                op,
                json!({
                    "make": SimData::show_make(make), "model_group": d.show_group(g),
                    "model": d.show_model(m), "model_variant": d.show_variant(v),
                }),
            )
        }
        Op::VehiclesMakes => ok(
            op,
            page(d.makes.iter().map(SimData::show_make).collect(), req),
        ),
        Op::VehiclesModelGroups => {
            let make = req.q_int("vehicle_make_id").unwrap_or(-1);
            d.make(make).ok_or_else(|| not_found("vehicle make"))?;
            let items = d
                .model_groups
                .iter()
                .filter(|g| g.vehicle_make_id == make)
                .map(|g| d.show_group(g))
                .collect();
            ok(op, page(items, req))
        }
        Op::VehiclesModelGroup => {
            let g = d
                .group(req.p_int("modelGroupId").unwrap_or(-1))
                .ok_or_else(|| not_found("vehicle model group"))?;
            ok(op, d.show_group(g))
        }
        Op::VehiclesModels => {
            let gid = req.q_int("vehicle_model_group_id").unwrap_or(-1);
            d.group(gid)
                .ok_or_else(|| not_found("vehicle model group"))?;
            let items = d
                .models
                .iter()
                .filter(|m| m.vehicle_model_group_id == gid)
                .map(|m| d.show_model(m))
                .collect();
            ok(op, page(items, req))
        }
        Op::VehiclesModel => {
            let m = d
                .model(req.p_int("modelId").unwrap_or(-1))
                .ok_or_else(|| not_found("vehicle model"))?;
            ok(op, d.show_model(m))
        }
        Op::VehiclesVariants => {
            let mid = req.q_int("vehicle_model_id").unwrap_or(-1);
            d.model(mid).ok_or_else(|| not_found("vehicle model"))?;
            let items = d
                .variants
                .iter()
                .filter(|v| v.vehicle_model_id == mid)
                .map(|v| d.show_variant(v))
                .collect();
            ok(op, page(items, req))
        }
        Op::VehiclesVariant => {
            let v = d
                .variant(req.p_int("modelVariantId").unwrap_or(-1))
                .ok_or_else(|| not_found("vehicle model variant"))?;
            ok(op, d.show_variant(v))
        }
        Op::AccountUserInfo => ok(op, d.user.clone()),
        Op::AccountWallet => ok(op, d.wallet.clone()),
        Op::AccountCustomer => ok(op, d.customer.clone()),
        Op::AccountCustomerEdit => {
            if !d.customer.is_object() {
                d.customer = json!({});
            }
            for f in [
                "name",
                "street",
                "number",
                "postal_code",
                "city",
                "country",
                "email_address",
                "financial_email_address",
                "phone",
            ] {
                if let Some(v) = req.b(f) {
                    let v = match v {
                        Value::Number(n) => Value::String(n.to_string()),
                        other => other.clone(),
                    };
                    d.customer[f] = v;
                }
            }
            let body = d.customer.clone();
            changed(op, Some(body))
        }
        Op::AccountBranding => ok(op, d.branding.clone()),
        Op::EmployeesList => ok(
            op,
            page(
                d.employees.iter().map(SimData::show_employee).collect(),
                req,
            ),
        ),
        Op::EmployeesAdd => {
            if d.employees.len() >= data::MAX_EMPLOYEES {
                return Err(fail(
                    409,
                    format!("at most {} employees", data::MAX_EMPLOYEES),
                ));
            }
            let username = req.b_str("username").unwrap_or_default();
            if d.employees
                .iter()
                .any(|e| e.username.eq_ignore_ascii_case(username))
            {
                return Err(fail(409, format!("username {username} is taken")));
            }
            let mut e = EmployeeRec {
                id: data::uuid_v4(),
                enabled: true,
                correspondence_locale: "en-GB".into(),
                ..EmployeeRec::default()
            };
            employee_fields(req, d, &mut e)?;
            let body = SimData::show_employee(&e);
            d.employees.push(e);
            changed(op, Some(body))
        }
        Op::EmployeesGet | Op::EmployeesEdit => {
            let raw = req.p("employeeId").unwrap_or_default();
            let id = if raw == "me" {
                d.me_employee_id.clone()
            } else {
                raw.to_string()
            };
            let pos = d
                .employees
                .iter()
                .position(|e| e.id == id)
                .ok_or_else(|| not_found("employee"))?;
            if op == Op::EmployeesGet {
                return ok(op, SimData::show_employee(&d.employees[pos]));
            }
            let username = req.b_str("username").unwrap_or_default();
            if d.employees
                .iter()
                .enumerate()
                .any(|(i, e)| i != pos && e.username.eq_ignore_ascii_case(username))
            {
                return Err(fail(409, format!("username {username} is taken")));
            }
            let mut e = d.employees[pos].clone();
            employee_fields(req, d, &mut e)?;
            if let Some(b) = req.b("enabled").and_then(Value::as_bool) {
                e.enabled = b;
            }
            let body = SimData::show_employee(&e);
            d.employees[pos] = e;
            changed(op, Some(body))
        }
        Op::ServiceCenterInfo => ok(op, d.service_center.clone()),
        Op::ServiceCenterState => ok(op, d.service_center_state.clone()),
        Op::MiscTranslate => {
            let original = req.b_str("message.original").unwrap_or_default();
            let target = req.b_str("target_language").unwrap_or_default();
            ok(
                op,
                json!({
                    "message": { "original": original, "translated": format!("[{target}] {original}") },
                    "target_language": target, "source_language": "en",
                }),
            )
        }
        Op::ChannelsGet => {
            let id = req.p("channelId").unwrap_or_default();
            let t = find_channel(d, id)?;
            ok(
                op,
                json!({ "id": t.chat_id, "ticket_id": t.id, "chat_state": t.chat_state, "created_at": t.created_at }),
            )
        }
        Op::ChannelsControlMessage => {
            let id = req.p("channelId").unwrap_or_default();
            let t = find_channel(d, id)?;
            ok(op, json!({ "channel_id": t.chat_id }))
        }
        Op::ChannelsCreateAttachment => {
            let id = req.p("channel_id").unwrap_or_default();
            let t = find_channel(d, id)?;
            let chat = t.chat_id.clone();
            if d.attachments.len() >= data::MAX_ATTACHMENTS {
                return Err(fail(
                    409,
                    format!("at most {} attachments", data::MAX_ATTACHMENTS),
                ));
            }
            let name = req
                .b_str("file_name")
                .filter(|n| !n.is_empty())
                .unwrap_or("attachment.bin");
            let name: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                        c
                    } else {
                        '_'
                    }
                })
                .take(128)
                .collect();
            let reference = format!("/channel/{chat}/{}/{name}", data::uuid_v4());
            let rec = AttachmentRec {
                channel_id: chat,
                file_name: name,
                file_reference: reference,
            };
            let body = json!({
                "file_name": rec.file_name, "file_reference": rec.file_reference,
                "upload_url": format!("https://uploads.invalid{}", rec.file_reference),
            });
            d.attachments.push(rec);
            changed(op, Some(body))
        }
        Op::ChannelsAttachment => {
            let id = req.p("channel_id").unwrap_or_default();
            let t = find_channel(d, id)?;
            let reference = req.q("file_reference").unwrap_or_default();
            let a = d
                .attachments
                .iter()
                .find(|a| a.channel_id == t.chat_id && a.file_reference == reference)
                .ok_or_else(|| not_found("attachment"))?;
            ok(
                op,
                json!({ "file_name": a.file_name, "file_reference": a.file_reference }),
            )
        }
        Op::AuthLoginOtp | Op::AuthLoginPincode | Op::AuthLoginUuid | Op::AccountForgotPassword => {
            Err(fail(500, "public operation routed as private by mistake"))
        }
    }
}

fn find_channel<'a>(d: &'a SimData, id: &str) -> Result<&'a TicketRec, Fail> {
    d.tickets
        .iter()
        .find(|t| t.chat_id == id)
        .ok_or_else(|| not_found("channel"))
}

fn check_prepared(d: &SimData, id: Option<&str>) -> Result<(), Fail> {
    match id {
        Some(p) if !d.prepared.iter().any(|x| x.id.eq_ignore_ascii_case(p)) => {
            Err(not_found("prepared ticket"))
        }
        _ => Ok(()),
    }
}

fn check_voucher<'a>(d: &SimData, v: Option<&'a str>) -> Result<Option<&'a str>, Fail> {
    match v {
        Some(code) if !code.is_empty() => {
            if d.vouchers.iter().any(|x| x.code.eq_ignore_ascii_case(code)) {
                Ok(Some(code))
            } else {
                Err(fail(400, format!("voucher `{code}` is not valid")))
            }
        }
        _ => Ok(None),
    }
}

fn create_ticket(
    req: &ApiRequest,
    d: &mut SimData,
    caller: &Caller<'_>,
    now: u64,
) -> Result<Answer, Fail> {
    let op = Op::TicketsCreate;
    let connector_id = req.b_int("connector_id").unwrap_or(-1);
    if d.connector(connector_id).is_none() {
        return Err(not_found("connector"));
    }
    if let Some(own) = caller.token.connector_id
        && own != connector_id
    {
        return Err(fail(403, "a connector may only create tickets on itself"));
    }
    if let Some(t) = d
        .tickets
        .iter()
        .find(|t| t.connector_id == connector_id && state::is_active(t.state))
    {
        return Err(fail(
            409,
            format!(
                "connector {connector_id} already has pending ticket {}",
                t.id
            ),
        ));
    }
    let model = req.b_int("vehicle_model_id").unwrap_or(-1);
    let variant = req.b_int("vehicle_model_variant_id").unwrap_or(-1);
    if !d.vehicle_ok(model, variant) {
        return Err(not_found("vehicle model variant of this model"));
    }
    let ids = req.b_int_list("product_ids");
    if let Some(missing) = ids.iter().find(|id| d.product(**id).is_none()) {
        return Err(not_found(&format!("product {missing}")));
    }
    check_prepared(d, req.b_str("prepared_ticket_id"))?;
    let voucher = check_voucher(d, req.b_str("voucher"))?.map(str::to_string);
    // Required prerequisites of the ordered products must be answered.
    let answered: Vec<i64> = match req.b("product_prerequisites") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| {
                x.get("definition_id")
                    .and_then(crate::cloud::validate::lenient_int)
            })
            .collect(),
        _ => Vec::new(),
    };
    if let Some(p) = d.prerequisites.iter().find(|p| {
        p.required && p.product_ids.iter().any(|id| ids.contains(id)) && !answered.contains(&p.id)
    }) {
        return Err(fail(
            400,
            format!(
                "prerequisite {} ({}) must be answered: {}",
                p.id, p.name, p.question
            ),
        ));
    }
    if d.tickets.len() >= data::MAX_TICKETS {
        d.tickets.retain(|t| state::is_active(t.state));
        if d.tickets.len() >= data::MAX_TICKETS {
            return Err(fail(409, "too many tickets"));
        }
    }
    let id = d.fresh_id();
    let uuid = data::uuid_v4();
    let t = TicketRec {
        id,
        chat_id: format!("{id}_{}", data::uuid_v4()),
        uuid,
        vin: req.b_str("vin").unwrap_or_default().to_ascii_uppercase(),
        vehicle_model_id: model,
        vehicle_model_variant_id: variant,
        product_ids: ids,
        connector_id,
        state: state::PENDING,
        chat_state: 0,
        voucher,
        reference: req.b_str("reference").unwrap_or_default().to_string(),
        created_at: data::rfc3339(now),
        ..TicketRec::default()
    };
    let body = SimData::show_ticket(&t);
    d.tickets.push(t);
    changed(op, Some(body))
}

/// Admin: drive a ticket's life. Returns the ticket after the action.
pub fn ticket_action(d: &mut SimData, id: i64, action: &str, now: u64) -> Result<TicketRec, Fail> {
    let pos = d
        .tickets
        .iter()
        .position(|t| t.id == id)
        .ok_or_else(|| not_found("ticket"))?;
    let next_conn = d.next_id + 1;
    let t = &mut d.tickets[pos];
    if !state::is_active(t.state) {
        return Err(fail(
            409,
            format!("ticket {id} is finished (state {})", t.state),
        ));
    }
    match action {
        "join" => {
            t.state = state::IN_PROGRESS;
            t.chat_state = 1;
            if t.connection_uuid.is_none() {
                t.connection_uuid = Some(data::uuid_v4());
                t.connection_id = Some(next_conn);
                t.operator_token = Some(data::session_token());
            }
        }
        "outsource" => t.state = state::OUTSOURCED,
        "close" | "cancel" => {
            t.state = if action == "close" {
                state::CLOSED
            } else {
                state::CANCELLED
            };
            if action == "cancel" {
                t.cancelled_reason = Some(1);
            }
            t.connection_uuid = None;
            t.connection_id = None;
            t.operator_token = None;
            t.chat_state = 2;
        }
        other => {
            return Err(fail(
                400,
                format!("unknown action `{other}`; expected join, outsource, close or cancel"),
            ));
        }
    }
    let t = t.clone();
    if action == "join" {
        d.next_id += 1;
    }
    if t.state == state::CLOSED {
        d.historical.push(data::HistoricalRec {
            id: t.id,
            connector_id: t.connector_id,
            state: state::CLOSED,
            vin: t.vin.clone(),
            odometer_reading: None,
            reference: Some(t.reference.clone()),
            voucher: t.voucher.clone(),
            vehicle_model_id: t.vehicle_model_id,
            vehicle_model_variant_id: t.vehicle_model_variant_id,
            product_ids: t.product_ids.clone(),
            created_at: t.created_at.clone(),
            finished_at: data::rfc3339(now),
        });
    }
    Ok(t)
}
