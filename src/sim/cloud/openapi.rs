//! The OpenAPI 3 document of everything the simulator implements, generated from the
//! operation table so it cannot disagree with the routes and the validation.
//!
//! Owns: parameter and body schemas (with the documented rules as JSON Schema keywords),
//! response schemas of every resource, and security. The admin interface and the
//! websocket are not part of it (see `docs/cloud.md`): an API fuzzer must not inject faults.

use crate::cloud::spec::{Loc, NULL_RESPONSE, OPS, Op, OpSpec, Param, Ty};
use crate::cloud::validate::MAX_LIMIT;
use serde_json::{Map, Value, json};

const BCP47: &str = "^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$";

fn int() -> Value {
    json!({ "type": "integer", "format": "int64" })
}
fn string() -> Value {
    json!({ "type": "string" })
}
fn nstring() -> Value {
    json!({ "type": "string", "nullable": true })
}
fn boolean() -> Value {
    json!({ "type": "boolean" })
}
fn number() -> Value {
    json!({ "type": "number" })
}
fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}
fn nref(name: &str) -> Value {
    json!({ "allOf": [r(name)], "nullable": true })
}
fn array(items: Value) -> Value {
    json!({ "type": "array", "items": items })
}
fn obj(props: &[(&str, Value)], required: &[&str]) -> Value {
    let mut p = Map::new();
    for (k, v) in props {
        p.insert((*k).to_string(), v.clone());
    }
    json!({ "type": "object", "properties": p, "required": required })
}

/// Extra JSON Schema keywords for the documented rules of one parameter.
fn rules(op: Op, p: &Param) -> Vec<(&'static str, Value)> {
    match (op, p.name) {
        (_, "vin") => vec![
            ("pattern", json!("^[a-zA-Z0-9]{17}$")),
            ("minLength", json!(17)),
            ("maxLength", json!(17)),
        ],
        (Op::TicketsCsat, "score") => vec![("minimum", json!(-1)), ("maximum", json!(1))],
        (_, "given_name" | "family_name") => {
            vec![("maxLength", json!(255)), ("pattern", json!("\\S"))]
        }
        (_, "username") => vec![("maxLength", json!(255))],
        (_, "correspondence_locale" | "target_language") => vec![("pattern", json!(BCP47))],
        (Op::AccountCustomerEdit, "country") => vec![("pattern", json!("^[A-Za-z]{2}$"))],
        _ => Vec::new(),
    }
}

/// Values from the built-in fixture, so generated requests reach existing resources.
fn example(op: Op, name: &str) -> Option<Value> {
    Some(match (op, name) {
        // Typed as strings by the reference.
        (Op::ConnectorsActiveTicket, "connectorId") => {
            json!(super::DEMO_CONNECTOR_ID.to_string())
        }
        (Op::ProductsRemoveFavorite, "id") => json!("52351"),
        (_, "connectorId" | "connector_id") => json!(super::DEMO_CONNECTOR_ID),
        (_, "connectorUUID" | "connector_uuid") => json!(super::DEMO_CONNECTOR_UUID),
        (_, "vehicle_model_id" | "modelId") => json!(200102),
        (_, "vehicle_model_variant_id" | "modelVariantId") => json!(2001021),
        (_, "vin") => json!("WVWZZZCDZMW012345"),
        (_, "vehicle_make_id") => json!(20),
        (_, "vehicle_model_group_id" | "modelGroupId") => json!(2001),
        (_, "historicalTicketId" | "ticketId") => json!(7014044),
        (Op::ProductsPrerequisites, "product_id") => json!([52351, 52357]),
        (_, "product_ids") => json!([52352]),
        (_, "id") => json!(52351),
        (Op::ProductsList, "product_group_id") => json!(2690),
        (Op::ProductsBundles, "product_group_id") => json!(2691),
        (_, "employeeId") => json!("me"),
        (_, "pincode") => json!(super::DEMO_PINCODE),
        (_, "target_language") => json!("de"),
        (_, "message.original") => json!("Hello world!"),
        (_, "score") => json!(1),
        (_, "email_address" | "username") => json!("jan@garage-vandijk.example"),
        (_, "correspondence_locale") => json!("nl-NL"),
        (_, "country") => json!("NL"),
        _ => return None,
    })
}

fn param_schema(op: Op, p: &Param, in_body: bool) -> Value {
    let mut s = match p.ty {
        Ty::Int if in_body => {
            json!({ "oneOf": [int(), { "type": "string", "pattern": "^-?[0-9]{1,18}$" }] })
        }
        Ty::Int => int(),
        Ty::Num => number(),
        Ty::Str if p.required => json!({ "type": "string", "minLength": 1 }),
        Ty::Str => string(),
        Ty::Code => json!({ "oneOf": [{ "type": "string", "minLength": 1 }, int()] }),
        Ty::Bool => boolean(),
        Ty::Uuid => json!({ "type": "string", "format": "uuid" }),
        Ty::Email => json!({ "type": "string", "format": "email", "maxLength": 255 }),
        Ty::IntList => json!({ "type": "array", "items": int(), "minItems": 1 }),
        Ty::Object => json!({ "type": "object" }),
        Ty::ObjectList => array(obj(
            &[("definition_id", int()), ("value", string())],
            &["definition_id"],
        )),
    };
    if (op, p.name) == (Op::ProductsList, "is_favorite") {
        // "boolean or integer, default true" in the reference.
        s = json!({ "oneOf": [boolean(), { "type": "integer", "enum": [0, 1] }], "default": true });
    }
    if let Value::Object(m) = &mut s {
        for (k, v) in rules(op, p) {
            m.insert(k.to_string(), v);
        }
        if in_body && !p.required {
            m.insert("nullable".into(), json!(true));
        }
        m.insert("description".into(), json!(p.help));
        if let Some(e) = example(op, p.name) {
            m.insert("example".into(), e);
        }
    }
    s
}

fn parameters(spec: &OpSpec) -> Vec<Value> {
    let mut out = Vec::new();
    for p in spec.params.iter().filter(|p| p.loc != Loc::Body) {
        let mut v = json!({
            "name": p.name,
            "in": if p.loc == Loc::Path { "path" } else { "query" },
            "required": p.required || p.loc == Loc::Path,
            "description": p.help,
            "schema": param_schema(spec.op, p, false),
        });
        if p.ty == Ty::IntList {
            v["style"] = json!("form");
            v["explode"] = json!(false);
        }
        out.push(v);
    }
    if spec.paged {
        out.push(json!({ "name": "offset", "in": "query", "required": false,
            "description": "items to skip", "schema": { "type": "integer", "minimum": 0, "format": "int64" } }));
        out.push(json!({ "name": "limit", "in": "query", "required": false,
            "description": "page size (default 20)", "schema": { "type": "integer", "minimum": 0, "maximum": MAX_LIMIT } }));
    }
    out
}

fn request_body(spec: &OpSpec) -> Option<Value> {
    let body: Vec<&Param> = spec.params.iter().filter(|p| p.loc == Loc::Body).collect();
    if body.is_empty() {
        return None;
    }
    let mut props = Map::new();
    let mut required = Vec::new();
    for p in &body {
        match p.name.split_once('.') {
            Some((outer, inner)) => {
                let entry = props.entry(outer.to_string()).or_insert_with(
                    || json!({ "type": "object", "properties": {}, "required": [] }),
                );
                entry["properties"][inner] = param_schema(spec.op, p, true);
                if p.required {
                    if let Some(a) = entry["required"].as_array_mut() {
                        a.push(json!(inner));
                    }
                    if !required.contains(&outer) {
                        required.push(outer);
                    }
                }
            }
            None => {
                props.insert(p.name.to_string(), param_schema(spec.op, p, true));
                if p.required {
                    required.push(p.name);
                }
            }
        }
    }
    Some(json!({
        "required": body.iter().any(|p| p.required),
        "content": { "application/json": { "schema": {
            "type": "object", "properties": props, "required": required,
        } } },
    }))
}

fn response_schema(name: &str) -> Value {
    match name.strip_prefix("List<").and_then(|n| n.strip_suffix('>')) {
        Some(item) => obj(
            &[
                ("result", array(r(item))),
                ("total", int()),
                ("offset", int()),
                ("limit", int()),
            ],
            &["result", "total", "offset", "limit"],
        ),
        None => r(name),
    }
}

fn operation(spec: &OpSpec) -> Value {
    let problem = json!({ "application/problem+json": { "schema": r("Problem") } });
    let mut responses = Map::new();
    let ok = if spec.response.is_empty() {
        json!({ "description": "done" })
    } else if spec.response == NULL_RESPONSE {
        json!({ "description": "done; the body is the JSON literal null", "content": { "application/json": { "schema": { "nullable": true, "enum": [null] } } } })
    } else {
        json!({ "description": "success", "content": { "application/json": { "schema": response_schema(spec.response) } } })
    };
    responses.insert(spec.ok_status.to_string(), ok);
    responses.insert(
        "400".into(),
        json!({ "description": "the request breaks a documented rule", "content": problem }),
    );
    if spec.auth
        || spec.op == Op::AuthLoginUuid
        || spec.op == Op::AuthLoginPincode
        || spec.op == Op::AuthLoginOtp
    {
        responses.insert("401".into(), json!({ "description": "missing, invalid or expired token, or bad credentials", "content": problem }));
    }
    responses.insert(
        "404".into(),
        json!({ "description": "not found", "content": problem }),
    );
    responses.insert(
        "default".into(),
        json!({ "description": "error", "content": problem }),
    );
    let mut o = json!({
        "operationId": spec.key(),
        "x-obdgw-route-key": spec.key(),
        "x-obdgw-path-confirmed": spec.confirmed,
        "tags": [spec.group],
        "summary": spec.summary,
        "parameters": parameters(spec),
        "responses": responses,
        "security": if spec.auth { json!([{ "bearer": [] }]) } else { json!([]) },
    });
    if let Some(b) = request_body(spec) {
        o["requestBody"] = b;
    }
    if spec.op == Op::AuthLoginPincode {
        o["deprecated"] = json!(true);
    }
    o
}

fn schemas() -> Value {
    let money = obj(
        &[
            ("currency", string()),
            ("value", number()),
            ("localized_value", number()),
            ("localized_currency", string()),
        ],
        &["currency", "value"],
    );
    let discount = obj(
        &[
            ("type", string()),
            ("percentage", number()),
            ("price", r("Money")),
        ],
        &["type"],
    );
    let summary = obj(
        &[
            ("gross_price", r("Money")),
            ("net_price", r("Money")),
            ("total_discount", r("Discount")),
        ],
        &["gross_price", "net_price"],
    );
    let product_line = obj(
        &[
            ("product_id", int()),
            ("description", string()),
            ("quantity", int()),
            ("gross_price", r("Money")),
            ("net_price", r("Money")),
            ("total_discount", r("Discount")),
            ("original_equipment_service_fee", nref("Money")),
            (
                "discounts",
                array(obj(
                    &[
                        ("product_id", int()),
                        ("description", string()),
                        ("discount", r("Discount")),
                    ],
                    &["product_id"],
                )),
            ),
        ],
        &["product_id"],
    );
    let dates = [
        ("manufactured_from", nstring()),
        ("manufactured_to", nstring()),
    ];
    let model = obj(
        &[
            ("id", int()),
            ("name", string()),
            dates[0].clone(),
            dates[1].clone(),
            ("vehicle_model_group_id", int()),
            ("vehicle_model_group_name", string()),
            ("vehicle_make_id", int()),
            ("vehicle_make_name", string()),
            ("requires_doip", boolean()),
        ],
        &["id", "name", "requires_doip"],
    );
    let variant = obj(
        &[
            ("id", int()),
            ("name", string()),
            dates[0].clone(),
            dates[1].clone(),
            ("vehicle_model_id", int()),
            ("vehicle_model_name", string()),
            ("vehicle_model_group_id", int()),
            ("vehicle_model_group_name", string()),
            ("vehicle_make_id", int()),
            ("vehicle_make_name", string()),
            ("requires_doip", boolean()),
        ],
        &["id", "name", "vehicle_model_id", "requires_doip"],
    );
    let employee = obj(
        &[
            ("id", string()),
            ("given_name", string()),
            ("family_name", string()),
            ("username", nstring()),
            ("enabled", boolean()),
            ("correspondence_locale", string()),
        ],
        &["id", "given_name", "family_name", "username", "enabled"],
    );
    let attachment = obj(
        &[
            ("file_name", string()),
            ("file_reference", string()),
            ("upload_url", string()),
        ],
        &["file_name", "file_reference"],
    );
    let loose = json!({ "description": "a string or a number" });
    json!({
        "Problem": obj(&[("status", int()), ("type", string()), ("title", string()), ("detail", string())], &["status", "title"]),
        "Money": money,
        "Discount": discount,
        "PriceSummary": summary,
        "ProductLine": product_line,
        "Connector": obj(&[
            ("id", int()), ("uuid", json!({"type": "string", "format": "uuid"})), ("is_online", boolean()),
            ("has_wifi", boolean()), ("software_version", int()), ("hardware_version", int()),
            ("supports_doip", boolean()), ("vehicle_path_string", string()), ("vin_number", string()),
            ("product_description", string()), ("hardware_type", string()),
        ], &["id", "uuid", "is_online"]),
        "Ticket": obj(&[
            ("id", string()), ("uuid", string()), ("vin", string()), ("vinNumber", string()),
            ("vehicle_model_id", int()), ("vehicle_model_variant_id", int()),
            ("product_ids", array(array(int()))), ("chat_id", string()), ("connector_id", int()), ("state", int()),
        ], &["id", "uuid", "vin", "connector_id", "state"]),
        "ProductGroup": obj(&[("id", int()), ("name", string())], &["id", "name"]),
        "ProductBundle": obj(&[
            ("id", string()), ("product_group_id", int()), ("name", string()), ("description", string()),
            ("reference", string()),
            ("blocks", array(obj(&[("optional", boolean()), ("product_ids", array(array(int())))], &["optional", "product_ids"]))),
        ], &["id", "name", "blocks"]),
        "Product": obj(&[
            ("id", int()), ("item_number", string()), ("name", string()), ("internal_name", string()),
            ("description", string()), ("is_favorite", boolean()), ("is_unattended", boolean()),
            ("gross_price", r("Money")), ("net_price", r("Money")), ("total_discount", r("Discount")),
            ("original_equipment_service_fee", nref("Money")),
            ("price", obj(&[("price_original", number()), ("price_final", number()), ("partner_price", number()),
                ("contains_discount", boolean()), ("currency", string())], &[])),
        ], &["id", "name", "is_favorite", "gross_price", "net_price"]),
        "Prerequisite": obj(&[
            ("id", int()), ("name", string()), ("description", string()), ("question", string()),
            ("required", boolean()), ("type", string()),
            ("options", array(obj(&[("id", int()), ("productPrerequisiteId", int()), ("value", string())], &["id", "value"]))),
        ], &["id", "name", "required", "type", "options"]),
        "Note": obj(&[("id", string()), ("ticket_id", int()), ("value", string()), ("created_at", string()), ("updated_at", string()),
            ("attachments", array(obj(&[("file_name", string()), ("file_reference", string())], &["file_reference"])))], &["id", "ticket_id", "value"]),
        "HistoricalTicket": obj(&[
            ("id", int()), ("connector_id", int()), ("state", int()), ("vin", string()),
            ("odometer_reading", json!({"type": "integer", "nullable": true})), ("reference", nstring()),
            ("voucher", nstring()), ("vehicle_model_id", int()), ("vehicle_model_variant_id", int()),
            ("sub_total", r("PriceSummary")), ("total", r("PriceSummary")),
            ("original_equipment_service_fee", r("PriceSummary")), ("product_lines", array(r("ProductLine"))),
            ("created_at", string()), ("finished_at", string()),
        ], &["id", "connector_id", "state", "vin", "total", "product_lines"]),
        "PreparedTicket": obj(&[
            ("id", string()), ("vin", string()), ("vehicle_model_id", int()), ("vehicle_model_variant_id", int()),
            ("product_lines", array(obj(&[("product_id", int()), ("name", string())], &["product_id"]))),
        ], &["id", "vin", "product_lines"]),
        "ServicedVehicle": obj(&[
            ("make_id", int()), ("make_name", string()), ("model_group_id", int()), ("model_group_name", string()),
            ("model_id", int()), ("model_name", string()), ("model_variant_id", int()), ("model_variant_name", string()),
            ("vin", string()), ("last_serviced_at", string()),
        ], &["vin", "model_id", "model_variant_id"]),
        "Make": obj(&[("id", int()), ("name", string())], &["id", "name"]),
        "ModelGroup": obj(&[("id", int()), ("name", string()), ("vehicle_make_id", int()), ("vehicle_make_name", string())], &["id", "name", "vehicle_make_id"]),
        "Model": model,
        "Variant": variant,
        "VinLookup": obj(&[("make", r("Make")), ("model_group", r("ModelGroup")), ("model", r("Model")), ("model_variant", r("Variant"))], &["make", "model_group", "model", "model_variant"]),
        "Totals": obj(&[
            ("voucher", nstring()), ("voucher_discount", r("Discount")), ("vehicle_model_id", int()),
            ("vehicle_model_variant_id", int()), ("needs_confirmation_for_unattended_service", boolean()),
            ("sub_total", r("PriceSummary")), ("voucher_sub_total", r("PriceSummary")),
            ("original_equipment_service_fee", r("PriceSummary")), ("total", r("PriceSummary")),
            ("items", array(obj(&[
                ("description", string()), ("product_id", int()), ("product_item_number", string()),
                ("product_name", string()), ("product_internal_name", string()), ("product_description", string()),
                ("product_is_unattended", boolean()), ("gross_price", r("Money")), ("net_price", r("Money")),
                ("total_discount", r("Discount")), ("original_equipment_service_fee", nref("Money")),
            ], &["product_id", "product_name"]))),
        ], &["vehicle_model_id", "vehicle_model_variant_id", "total", "items"]),
        "UserInfo": obj(&[
            ("id", string()), ("first_name", string()), ("middle_name", nstring()), ("last_name", string()),
            ("client", json!({"type": "object"})), ("service_provider", json!({"type": "object"})),
        ], &["id"]),
        "Employee": employee,
        "Tokens": obj(&[("id_token", string()), ("access_token", string()), ("refresh_token", string())], &["id_token", "access_token", "refresh_token"]),
        "ForgotPassword": obj(&[("method", string())], &["method"]),
        "Customer": obj(&[
            ("name", string()), ("reference", loose.clone()), ("street", string()), ("number", string()),
            ("postal_code", string()), ("city", string()), ("country", string()), ("email_address", string()),
            ("financial_email_address", string()), ("phone", loose), ("currency", string()),
        ], &["name"]),
        "Branding": obj(&[("branding_name", string()), ("customer_portal_url", string())], &["branding_name"]),
        "ServiceCenter": obj(&[
            ("name", string()), ("payment_by_prepaid_wallet", boolean()), ("pricing_version", int()),
            ("primary_background_color", string()), ("logo", string()), ("service_message", string()),
            ("primary_color", string()), ("csat_enabled", boolean()),
        ], &["name"]),
        "ServiceCenterState": obj(&[("state", string()), ("ends_at", nstring()), ("message", nstring())], &["state"]),
        "Translation": obj(&[
            ("message", obj(&[("original", string()), ("translated", string())], &["original"])),
            ("target_language", string()), ("source_language", string()),
        ], &["message", "target_language"]),
        "ControlMessage": obj(&[("channel_id", string())], &["channel_id"]),
        "Attachment": attachment,
        "Wallet": obj(&[("balance", number()), ("currency", string()), ("enabled", boolean())], &["balance", "currency"]),
        "Channel": obj(&[("id", string()), ("ticket_id", int()), ("chat_state", int()), ("created_at", string())], &["id"]),
    })
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for spec in OPS {
        let entry = paths
            .entry(spec.path.to_string())
            .or_insert_with(|| json!({}));
        entry[spec.method.as_str().to_ascii_lowercase()] = operation(spec);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Customer API (obdgw simulator)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every operation the obdgw cloud simulator implements, with the documented validation rules. Paths are the obdgw route-table defaults; the status websocket (GET /v1/ws) and the admin interface (/admin/...) are described in docs/cloud.md.",
        },
        "servers": [{ "url": "/" }],
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": schemas(),
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_documented_and_refs_resolve() {
        let doc = document();
        let mut n = 0;
        for spec in OPS {
            let o = &doc["paths"][spec.path][spec.method.as_str().to_ascii_lowercase()];
            assert_eq!(o["operationId"], spec.key());
            n += 1;
        }
        assert_eq!(n, OPS.len());
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
    }
}
