//! The simulator's data: the fixture records, the mutable state, and how records are shown
//! as API resources (denormalized names, prices, nested `product_ids`).
//!
//! Owns: the fixture/state file format (one JSON document: the fixture plus everything the
//! simulator changed), pricing, and bounded growth of everything clients can create.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Caps on what clients can create, so a fuzzer cannot exhaust memory.
pub const MAX_TICKETS: usize = 10_000;
pub const MAX_EMPLOYEES: usize = 1_000;
pub const MAX_ATTACHMENTS: usize = 1_000;
pub const MAX_TOKENS: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ConnectorRec {
    pub id: i64,
    pub uuid: String,
    pub pincode: String,
    pub is_online: bool,
    pub has_wifi: bool,
    pub software_version: i64,
    pub hardware_version: i64,
    pub supports_doip: bool,
    pub hardware_type: String,
    pub vin_number: String,
    pub vehicle_path_string: String,
    pub product_description: String,
    pub voltage: f64,
    pub call_for_attention: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct MakeRec {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ModelGroupRec {
    pub id: i64,
    pub name: String,
    pub vehicle_make_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ModelRec {
    pub id: i64,
    pub name: String,
    pub manufactured_from: Option<String>,
    pub manufactured_to: Option<String>,
    pub vehicle_model_group_id: i64,
    pub requires_doip: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VariantRec {
    pub id: i64,
    pub name: String,
    pub manufactured_from: Option<String>,
    pub manufactured_to: Option<String>,
    pub vehicle_model_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VinRec {
    pub vin: String,
    pub vehicle_model_variant_id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct GroupRec {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BlockRec {
    pub optional: bool,
    pub product_ids: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BundleRec {
    pub id: String,
    pub product_group_id: i64,
    pub name: String,
    pub description: String,
    pub reference: String,
    pub blocks: Vec<BlockRec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProductRec {
    pub id: i64,
    pub item_number: String,
    pub name: String,
    pub internal_name: String,
    pub description: String,
    pub is_unattended: bool,
    pub product_group_id: i64,
    /// Net price in the account currency.
    pub net_price: f64,
    /// Original-equipment service fee, when one applies.
    pub oe_fee: Option<f64>,
    pub is_favorite: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PrerequisiteRec {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub question: String,
    pub required: bool,
    #[serde(rename = "type")]
    pub kind: String,
    pub options: Vec<String>,
    pub product_ids: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct EmployeeRec {
    pub id: String,
    pub given_name: String,
    pub family_name: String,
    pub username: String,
    pub enabled: bool,
    pub correspondence_locale: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HistoricalRec {
    pub id: i64,
    pub connector_id: i64,
    pub state: i64,
    pub vin: String,
    pub odometer_reading: Option<i64>,
    pub reference: Option<String>,
    pub voucher: Option<String>,
    pub vehicle_model_id: i64,
    pub vehicle_model_variant_id: i64,
    pub product_ids: Vec<i64>,
    pub created_at: String,
    pub finished_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PreparedRec {
    pub id: String,
    pub vin: String,
    pub vehicle_model_id: i64,
    pub vehicle_model_variant_id: i64,
    pub product_ids: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NoteRec {
    pub id: String,
    pub ticket_id: i64,
    pub value: String,
    pub created_at: String,
    pub updated_at: String,
    /// Files attached to the note ("notes with attachments" in the reference, whose example
    /// omits the field; shaped like channel attachments).
    pub attachments: Vec<NoteAttachmentRec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NoteAttachmentRec {
    pub file_name: String,
    pub file_reference: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VoucherRec {
    pub code: String,
    pub percentage: f64,
}

/// A live ticket.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct TicketRec {
    pub id: i64,
    pub uuid: String,
    pub vin: String,
    pub vehicle_model_id: i64,
    pub vehicle_model_variant_id: i64,
    pub product_ids: Vec<i64>,
    pub connector_id: i64,
    pub state: i64,
    pub chat_id: String,
    pub chat_state: i64,
    pub connection_id: Option<i64>,
    pub connection_uuid: Option<String>,
    /// The operator's session token for the tunnel relay (`obdgw sim cloud --relay-listen`),
    /// issued with the connection and dropped with it. Shown by the admin interface only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_token: Option<String>,
    pub cancelled_reason: Option<i64>,
    pub voucher: Option<String>,
    pub reference: String,
    pub created_at: String,
    pub csat_score: Option<f64>,
    pub csat_comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct AttachmentRec {
    pub channel_id: String,
    pub file_name: String,
    pub file_reference: String,
}

/// An issued token.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TokenRec {
    pub token: String,
    pub subject: String,
    pub connector_id: Option<i64>,
    pub expires_at: u64,
}

/// Ticket states the simulator uses (the defaults of `cloud.ticket_states`).
pub mod state {
    pub const PENDING: i64 = 1;
    pub const IN_PROGRESS: i64 = 2;
    pub const OUTSOURCED: i64 = 3;
    pub const CLOSED: i64 = 7;
    pub const CANCELLED: i64 = 8;

    pub fn is_active(s: i64) -> bool {
        matches!(s, PENDING | IN_PROGRESS | OUTSOURCED)
    }
}

/// Everything the simulator knows: the fixture plus what clients changed. This is also the
/// format of `--fixture` and `--state` files.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SimData {
    pub currency: String,
    pub vat_percent: f64,
    pub connectors: Vec<ConnectorRec>,
    pub otps: Vec<String>,
    pub user: Value,
    pub customer: Value,
    pub branding: Value,
    pub service_center: Value,
    pub service_center_state: Value,
    pub wallet: Value,
    pub makes: Vec<MakeRec>,
    pub model_groups: Vec<ModelGroupRec>,
    pub models: Vec<ModelRec>,
    pub variants: Vec<VariantRec>,
    pub vins: Vec<VinRec>,
    pub product_groups: Vec<GroupRec>,
    pub products: Vec<ProductRec>,
    pub bundles: Vec<BundleRec>,
    pub prerequisites: Vec<PrerequisiteRec>,
    pub vouchers: Vec<VoucherRec>,
    pub locales: Vec<String>,
    pub me_employee_id: String,
    pub employees: Vec<EmployeeRec>,
    pub historical: Vec<HistoricalRec>,
    pub prepared: Vec<PreparedRec>,
    pub notes: Vec<NoteRec>,
    pub tickets: Vec<TicketRec>,
    pub attachments: Vec<AttachmentRec>,
    pub tokens: Vec<TokenRec>,
    pub next_id: i64,
}

/// The built-in fixture.
pub const BUILTIN_FIXTURE: &str = include_str!("fixture.json");

impl SimData {
    pub fn builtin() -> Result<SimData, String> {
        SimData::from_json(BUILTIN_FIXTURE)
    }

    /// Parse a fixture or state document and check its references.
    pub fn from_json(text: &str) -> Result<SimData, String> {
        let mut d: SimData = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if d.currency.is_empty() {
            d.currency = "EUR".into();
        }
        if d.next_id == 0 {
            d.next_id = 7_100_000;
        }
        d.check()?;
        Ok(d)
    }

    fn check(&self) -> Result<(), String> {
        for g in &self.model_groups {
            if !self.makes.iter().any(|m| m.id == g.vehicle_make_id) {
                return Err(format!(
                    "model group {} refers to unknown make {}",
                    g.id, g.vehicle_make_id
                ));
            }
        }
        for m in &self.models {
            if self.group(m.vehicle_model_group_id).is_none() {
                return Err(format!(
                    "model {} refers to unknown model group {}",
                    m.id, m.vehicle_model_group_id
                ));
            }
        }
        for v in &self.variants {
            if self.model(v.vehicle_model_id).is_none() {
                return Err(format!(
                    "variant {} refers to unknown model {}",
                    v.id, v.vehicle_model_id
                ));
            }
        }
        for v in &self.vins {
            if self.variant(v.vehicle_model_variant_id).is_none() {
                return Err(format!(
                    "VIN {} refers to unknown variant {}",
                    v.vin, v.vehicle_model_variant_id
                ));
            }
        }
        for p in &self.products {
            if !self
                .product_groups
                .iter()
                .any(|g| g.id == p.product_group_id)
            {
                return Err(format!(
                    "product {} refers to unknown product group {}",
                    p.id, p.product_group_id
                ));
            }
        }
        Ok(())
    }

    pub fn fresh_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn make(&self, id: i64) -> Option<&MakeRec> {
        self.makes.iter().find(|m| m.id == id)
    }
    pub fn group(&self, id: i64) -> Option<&ModelGroupRec> {
        self.model_groups.iter().find(|m| m.id == id)
    }
    pub fn model(&self, id: i64) -> Option<&ModelRec> {
        self.models.iter().find(|m| m.id == id)
    }
    pub fn variant(&self, id: i64) -> Option<&VariantRec> {
        self.variants.iter().find(|m| m.id == id)
    }
    pub fn product(&self, id: i64) -> Option<&ProductRec> {
        self.products.iter().find(|m| m.id == id)
    }
    pub fn connector(&self, id: i64) -> Option<&ConnectorRec> {
        self.connectors.iter().find(|c| c.id == id)
    }

    /// Whether a (model, variant) pair exists and belongs together.
    pub fn vehicle_ok(&self, model_id: i64, variant_id: i64) -> bool {
        self.variant(variant_id)
            .is_some_and(|v| v.vehicle_model_id == model_id)
    }

    pub fn show_connector(c: &ConnectorRec) -> Value {
        json!({
            "id": c.id, "uuid": c.uuid, "is_online": c.is_online, "has_wifi": c.has_wifi,
            "software_version": c.software_version, "hardware_version": c.hardware_version,
            "supports_doip": c.supports_doip, "vehicle_path_string": c.vehicle_path_string,
            "vin_number": c.vin_number, "product_description": c.product_description,
            "hardware_type": c.hardware_type,
        })
    }

    pub fn show_make(m: &MakeRec) -> Value {
        json!({ "id": m.id, "name": m.name })
    }

    pub fn show_group(&self, g: &ModelGroupRec) -> Value {
        json!({
            "id": g.id, "name": g.name, "vehicle_make_id": g.vehicle_make_id,
            "vehicle_make_name": self.make(g.vehicle_make_id).map(|m| m.name.as_str()).unwrap_or(""),
        })
    }

    pub fn show_model(&self, m: &ModelRec) -> Value {
        let g = self.group(m.vehicle_model_group_id);
        let make = g.and_then(|g| self.make(g.vehicle_make_id));
        json!({
            "id": m.id, "name": m.name,
            "manufactured_from": m.manufactured_from, "manufactured_to": m.manufactured_to,
            "vehicle_model_group_id": m.vehicle_model_group_id,
            "vehicle_model_group_name": g.map(|g| g.name.as_str()).unwrap_or(""),
            "vehicle_make_id": make.map(|m| m.id).unwrap_or(0),
            "vehicle_make_name": make.map(|m| m.name.as_str()).unwrap_or(""),
            "requires_doip": m.requires_doip,
        })
    }

    pub fn show_variant(&self, v: &VariantRec) -> Value {
        let m = self.model(v.vehicle_model_id);
        let g = m.and_then(|m| self.group(m.vehicle_model_group_id));
        let make = g.and_then(|g| self.make(g.vehicle_make_id));
        json!({
            "id": v.id, "name": v.name,
            "manufactured_from": v.manufactured_from, "manufactured_to": v.manufactured_to,
            "vehicle_model_id": v.vehicle_model_id,
            "vehicle_model_name": m.map(|m| m.name.as_str()).unwrap_or(""),
            "vehicle_model_group_id": g.map(|g| g.id).unwrap_or(0),
            "vehicle_model_group_name": g.map(|g| g.name.as_str()).unwrap_or(""),
            "vehicle_make_id": make.map(|m| m.id).unwrap_or(0),
            "vehicle_make_name": make.map(|m| m.name.as_str()).unwrap_or(""),
            "requires_doip": m.is_some_and(|m| m.requires_doip),
        })
    }

    /// Money in the account currency.
    pub fn money(&self, value: f64) -> Value {
        let v = round2(value);
        json!({ "currency": self.currency, "value": v, "localized_value": v, "localized_currency": self.currency })
    }

    pub fn discount(&self, percentage: f64, amount: f64) -> Value {
        json!({ "type": "percentual", "percentage": percentage, "price": self.money(amount) })
    }

    /// Gross, net and discount of a net amount with a discount percentage.
    pub fn summary(&self, net: f64, percentage: f64) -> Value {
        let disc = net * percentage / 100.0;
        let net_after = net - disc;
        json!({
            "gross_price": self.money(net_after * (1.0 + self.vat_percent / 100.0)),
            "net_price": self.money(net_after),
            "total_discount": self.discount(percentage, disc),
        })
    }

    pub fn voucher_percentage(&self, code: Option<&str>) -> f64 {
        code.and_then(|c| {
            self.vouchers
                .iter()
                .find(|v| v.code.eq_ignore_ascii_case(c))
        })
        .map(|v| v.percentage)
        .unwrap_or(0.0)
    }

    pub fn show_product(&self, p: &ProductRec) -> Value {
        let gross = p.net_price * (1.0 + self.vat_percent / 100.0);
        json!({
            "id": p.id, "item_number": p.item_number, "name": p.name,
            "internal_name": p.internal_name, "description": p.description,
            "is_favorite": p.is_favorite, "is_unattended": p.is_unattended,
            "gross_price": self.money(gross), "net_price": self.money(p.net_price),
            "total_discount": self.discount(0.0, 0.0),
            "original_equipment_service_fee": p.oe_fee.map(|f| self.money(f)),
            "price": {
                "price_original": round2(p.net_price), "price_final": round2(p.net_price),
                "partner_price": round2(p.net_price), "contains_discount": false,
                "currency": self.currency,
            },
        })
    }

    fn product_line(&self, id: i64, percentage: f64) -> Value {
        let p = self.product(id);
        let net = p.map(|p| p.net_price).unwrap_or(0.0);
        let disc = net * percentage / 100.0;
        let after = net - disc;
        json!({
            "product_id": id,
            "description": p.map(|p| p.name.as_str()).unwrap_or(""),
            "quantity": 1,
            "gross_price": self.money(after * (1.0 + self.vat_percent / 100.0)),
            "net_price": self.money(after),
            "total_discount": self.discount(percentage, disc),
            "original_equipment_service_fee": p.and_then(|p| p.oe_fee).map(|f| self.money(f)),
            "discounts": if percentage > 0.0 {
                vec![json!({ "product_id": id, "description": "voucher", "discount": self.discount(percentage, disc) })]
            } else { Vec::new() },
        })
    }

    fn net_sum(&self, ids: &[i64]) -> (f64, f64) {
        ids.iter()
            .filter_map(|id| self.product(*id))
            .fold((0.0, 0.0), |(n, f), p| {
                (n + p.net_price, f + p.oe_fee.unwrap_or(0.0))
            })
    }

    pub fn show_historical(&self, h: &HistoricalRec) -> Value {
        let pct = self.voucher_percentage(h.voucher.as_deref());
        let (net, fee) = self.net_sum(&h.product_ids);
        json!({
            "id": h.id, "connector_id": h.connector_id, "state": h.state, "vin": h.vin,
            "odometer_reading": h.odometer_reading, "reference": h.reference, "voucher": h.voucher,
            "vehicle_model_id": h.vehicle_model_id, "vehicle_model_variant_id": h.vehicle_model_variant_id,
            "sub_total": self.summary(net, 0.0),
            "total": self.summary(net + fee, pct),
            "original_equipment_service_fee": self.summary(fee, 0.0),
            "product_lines": h.product_ids.iter().map(|id| self.product_line(*id, pct)).collect::<Vec<_>>(),
            "created_at": h.created_at, "finished_at": h.finished_at,
        })
    }

    pub fn show_prepared(&self, p: &PreparedRec) -> Value {
        json!({
            "id": p.id, "vin": p.vin, "vehicle_model_id": p.vehicle_model_id,
            "vehicle_model_variant_id": p.vehicle_model_variant_id,
            "product_lines": p.product_ids.iter().map(|id| json!({
                "product_id": id,
                "name": self.product(*id).map(|p| p.name.as_str()).unwrap_or(""),
            })).collect::<Vec<_>>(),
        })
    }

    /// Totals of products for a vehicle with an optional voucher.
    pub fn totals(&self, voucher: Option<&str>, model: i64, variant: i64, ids: &[i64]) -> Value {
        let pct = self.voucher_percentage(voucher);
        let (net, fee) = self.net_sum(ids);
        let items: Vec<Value> = ids
            .iter()
            .filter_map(|id| self.product(*id))
            .map(|p| {
                json!({
                    "description": p.description, "product_id": p.id,
                    "product_item_number": p.item_number, "product_name": p.name,
                    "product_internal_name": p.internal_name, "product_description": p.description,
                    "product_is_unattended": p.is_unattended,
                    "gross_price": self.money(p.net_price * (1.0 + self.vat_percent / 100.0)),
                    "net_price": self.money(p.net_price),
                    "total_discount": self.discount(0.0, 0.0),
                    "original_equipment_service_fee": p.oe_fee.map(|f| self.money(f)),
                })
            })
            .collect();
        let unattended = ids
            .iter()
            .filter_map(|id| self.product(*id))
            .any(|p| p.is_unattended);
        json!({
            "voucher": voucher,
            "voucher_discount": self.discount(pct, net * pct / 100.0),
            "vehicle_model_id": model, "vehicle_model_variant_id": variant,
            "needs_confirmation_for_unattended_service": unattended,
            "sub_total": self.summary(net, 0.0),
            "voucher_sub_total": self.summary(net, pct),
            "original_equipment_service_fee": self.summary(fee, 0.0),
            "total": self.summary(net + fee, pct),
            "items": items,
        })
    }

    pub fn show_ticket(t: &TicketRec) -> Value {
        json!({
            "id": t.id.to_string(), "uuid": t.uuid, "vin": t.vin, "vinNumber": t.vin,
            "vehicle_model_id": t.vehicle_model_id, "vehicle_model_variant_id": t.vehicle_model_variant_id,
            "product_ids": [t.product_ids.clone()],
            "chat_id": t.chat_id, "connector_id": t.connector_id, "state": t.state,
        })
    }

    /// The websocket snapshot of a ticket.
    pub fn ticket_snapshot(t: &TicketRec) -> Value {
        json!({
            "id": t.id, "ticket_id": t.id, "ticket_uuid": t.uuid, "state": t.state,
            "connection_id": t.connection_id, "connection_uuid": t.connection_uuid,
            "cancelled_reason": t.cancelled_reason, "chat_state": t.chat_state,
            "vehicle_model_id": t.vehicle_model_id, "vehicle_model_variant_id": t.vehicle_model_variant_id,
            "is_script_composition_running": t.state == state::IN_PROGRESS,
            "vin": t.vin, "schedule": { "message": null, "until": null },
        })
    }

    pub fn show_employee(e: &EmployeeRec) -> Value {
        json!({
            "id": e.id, "given_name": e.given_name, "family_name": e.family_name,
            "username": e.username, "enabled": e.enabled,
            "correspondence_locale": e.correspondence_locale,
        })
    }

    /// Serviced vehicles from finished tickets, most recent first, one entry per VIN.
    pub fn serviced(&self) -> Vec<Value> {
        let mut latest: BTreeMap<&str, &HistoricalRec> = BTreeMap::new();
        for h in &self.historical {
            match latest.get(h.vin.as_str()) {
                Some(prev) if prev.finished_at >= h.finished_at => {}
                _ => {
                    latest.insert(&h.vin, h);
                }
            }
        }
        let mut rows: Vec<&HistoricalRec> = latest.into_values().collect();
        rows.sort_by(|a, b| b.finished_at.cmp(&a.finished_at));
        rows.iter()
            .map(|h| {
                let v = self.variant(h.vehicle_model_variant_id);
                let m = self.model(h.vehicle_model_id);
                let g = m.and_then(|m| self.group(m.vehicle_model_group_id));
                let make = g.and_then(|g| self.make(g.vehicle_make_id));
                json!({
                    "make_id": make.map(|x| x.id).unwrap_or(0),
                    "make_name": make.map(|x| x.name.as_str()).unwrap_or(""),
                    "model_group_id": g.map(|x| x.id).unwrap_or(0),
                    "model_group_name": g.map(|x| x.name.as_str()).unwrap_or(""),
                    "model_id": h.vehicle_model_id,
                    "model_name": m.map(|x| x.name.as_str()).unwrap_or(""),
                    "model_variant_id": h.vehicle_model_variant_id,
                    "model_variant_name": v.map(|x| x.name.as_str()).unwrap_or(""),
                    "vin": h.vin, "last_serviced_at": h.finished_at,
                })
            })
            .collect()
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A random version-4 UUID.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A fresh session token for the tunnel relay: 32 bytes from the kernel's random source
/// (`/dev/urandom`) in hex, prefixed `ops_`. Falls back to the non-cryptographic generator
/// only when the kernel source cannot be read (logged).
pub fn session_token() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if let Err(e) = read {
        tracing::warn!("cannot read /dev/urandom ({e}); session token from a weaker generator");
        for x in &mut b {
            *x = fastrand::u8(..);
        }
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("ops_{hex}")
}

/// RFC 3339 UTC timestamp of a Unix time.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's published algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_fixture_is_consistent_and_realistic() {
        let d = SimData::builtin().unwrap();
        assert!(d.makes.len() >= 5 && d.models.len() >= 8 && d.variants.len() >= 10);
        assert!(d.models.iter().any(|m| m.requires_doip));
        assert!(d.models.iter().any(|m| !m.requires_doip));
        assert!(d.products.iter().all(|p| p.net_price > 0.0));
        assert!(!d.prerequisites.is_empty());
        let v = d.show_variant(d.variant(2001021).unwrap());
        assert_eq!(v["vehicle_make_name"], "Volkswagen");
        assert_eq!(v["requires_doip"], true);
    }

    #[test]
    fn dates_and_uuids() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(rfc3339(1_631_095_409), "2021-09-08T10:03:29+00:00");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00+00:00");
        assert!(crate::cloud::validate::is_uuid(&uuid_v4()));
    }
}
