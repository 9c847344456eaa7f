//! Typed Customer API resources, deserialized leniently.
//!
//! Owns: the response types and the lenient field decoders the vendor's loose examples call
//! for: ids as strings or integers, `product_ids` as flat or nested arrays, phone numbers and
//! references as numbers or strings, missing optional fields (defaults) and unknown fields
//! (ignored). Serialization writes the documented types.
//!
//! Does not own: request validation (`validate`) or transport (`client`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Decoders for loosely typed fields.
pub mod lenient {
    use super::*;

    /// An integer from an integer, a float without fraction, or a string of digits; `null`
    /// and absent give the default.
    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Ok(opt_int(d)?.unwrap_or_default())
    }

    pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = Value::deserialize(d)?;
        match &v {
            Value::Null => Ok(None),
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an integer"))),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an integer"))),
            other => Err(serde::de::Error::custom(format!(
                "{other} is not an integer"
            ))),
        }
    }

    /// A string from a string, a number or a boolean; `null` and absent give `""`.
    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(opt_string(d)?.unwrap_or_default())
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => None,
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => Some(other.to_string()),
        })
    }

    /// A number from a number or a numeric string.
    pub fn opt_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
    }

    /// A boolean from a boolean, `0`/`1` or `"true"`/`"false"`; otherwise false.
    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Bool(b) => b,
            Value::Number(n) => n.as_i64() == Some(1),
            Value::String(s) => matches!(s.as_str(), "true" | "1"),
            _ => false,
        })
    }

    /// An optional boolean from a boolean, `0`/`1` or `"true"`/`"false"`; `null` and
    /// anything else give `None` (the vendor's examples send `script_ui_available: 1`).
    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Bool(b) => Some(b),
            Value::Number(n) => match n.as_i64() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            },
            Value::String(s) => match s.trim() {
                "true" | "1" => Some(true),
                "false" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        })
    }

    /// Attachments of a note: a list of objects (`file_name`, `file_reference`, ...) or of
    /// strings (taken as file references); `null`, absent or anything else gives none, and
    /// items that are neither are skipped.
    pub fn attachments<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<super::Attachment>, D::Error> {
        let Value::Array(items) = Value::deserialize(d)? else {
            return Ok(Vec::new());
        };
        Ok(items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(super::Attachment {
                    file_reference: s,
                    ..super::Attachment::default()
                }),
                v @ Value::Object(_) => serde_json::from_value(v).ok(),
                _ => None,
            })
            .collect())
    }

    /// Integers from any nesting of arrays (`[1, 2]`, `[[1], [2, 3]]`, `["4"]`), flattened.
    pub fn int_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        fn walk(v: &Value, out: &mut Vec<i64>, depth: u8) {
            match v {
                Value::Array(items) if depth < 8 => {
                    for i in items {
                        walk(i, out, depth + 1);
                    }
                }
                Value::Number(n) => out.extend(n.as_i64()),
                Value::String(s) => out.extend(s.trim().parse::<i64>().ok()),
                _ => {}
            }
        }
        let v = Value::deserialize(d)?;
        let mut out = Vec::new();
        walk(&v, &mut out, 0);
        Ok(out)
    }
}

/// `{ result, total, offset, limit }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub result: Vec<T>,
    #[serde(default, deserialize_with = "lenient::int")]
    pub total: i64,
    #[serde(default, deserialize_with = "lenient::int")]
    pub offset: i64,
    #[serde(default, deserialize_with = "lenient::int")]
    pub limit: i64,
}

/// A page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Page {
    pub offset: Option<u64>,
    pub limit: Option<u32>,
}

impl Page {
    pub fn new(offset: u64, limit: u32) -> Self {
        Page {
            offset: Some(offset),
            limit: Some(limit),
        }
    }
}

macro_rules! resource {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }
    };
}

resource!(
    /// A connector: the box in the vehicle's OBD port.
    Connector {
        #[serde(deserialize_with = "lenient::int")] id: i64,
        uuid: String,
        #[serde(deserialize_with = "lenient::bool")] is_online: bool,
        #[serde(deserialize_with = "lenient::bool")] has_wifi: bool,
        #[serde(deserialize_with = "lenient::opt_int")] software_version: Option<i64>,
        #[serde(deserialize_with = "lenient::opt_int")] hardware_version: Option<i64>,
        #[serde(deserialize_with = "lenient::bool")] supports_doip: bool,
        #[serde(deserialize_with = "lenient::opt_string")] vehicle_path_string: Option<String>,
        #[serde(deserialize_with = "lenient::opt_string")] vin_number: Option<String>,
        #[serde(deserialize_with = "lenient::opt_string")] product_description: Option<String>,
        #[serde(deserialize_with = "lenient::opt_string")] hardware_type: Option<String>,
    }
);

resource!(
    /// A ticket (an order of products for a vehicle on a connector).
    Ticket {
        #[serde(deserialize_with = "lenient::int")] id: i64,
        uuid: String,
        #[serde(deserialize_with = "lenient::string")] vin: String,
        /// The same VIN under the vendor's camel-case name; see [`Ticket::vin`].
        #[serde(rename = "vinNumber", deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")] vin_number: Option<String>,
        #[serde(deserialize_with = "lenient::int")] vehicle_model_id: i64,
        #[serde(deserialize_with = "lenient::int")] vehicle_model_variant_id: i64,
        #[serde(deserialize_with = "lenient::int_list")] product_ids: Vec<i64>,
        #[serde(deserialize_with = "lenient::opt_string")] chat_id: Option<String>,
        #[serde(deserialize_with = "lenient::int")] connector_id: i64,
        #[serde(deserialize_with = "lenient::int")] state: i64,
    }
);

impl Ticket {
    /// The VIN from `vin`, else from `vinNumber`.
    pub fn vin(&self) -> &str {
        if self.vin.is_empty() {
            self.vin_number.as_deref().unwrap_or("")
        } else {
            &self.vin
        }
    }
}

resource!(ProductGroup {
    #[serde(deserialize_with = "lenient::int")]
    id: i64,
    name: String,
});

resource!(BundleBlock {
    #[serde(deserialize_with = "lenient::bool")] optional: bool,
    #[serde(deserialize_with = "lenient::int_list")] product_ids: Vec<i64>,
});

resource!(ProductBundle {
    #[serde(deserialize_with = "lenient::string")] id: String,
    #[serde(deserialize_with = "lenient::opt_int")] product_group_id: Option<i64>,
    name: String,
    #[serde(deserialize_with = "lenient::opt_string")] description: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] reference: Option<String>,
    blocks: Vec<BundleBlock>,
});

resource!(
    /// An amount of money.
    Money {
        currency: String,
        #[serde(deserialize_with = "lenient::opt_num")] value: Option<f64>,
        #[serde(deserialize_with = "lenient::opt_num")] localized_value: Option<f64>,
        #[serde(deserialize_with = "lenient::opt_string")] localized_currency: Option<String>,
    }
);

resource!(Discount {
    #[serde(rename = "type")] kind: String,
    #[serde(deserialize_with = "lenient::opt_num")] percentage: Option<f64>,
    price: Option<Money>,
});

resource!(
    /// The deprecated flat price block.
    LegacyPrice {
        #[serde(deserialize_with = "lenient::opt_num")] price_original: Option<f64>,
        #[serde(deserialize_with = "lenient::opt_num")] price_final: Option<f64>,
        #[serde(deserialize_with = "lenient::opt_num")] partner_price: Option<f64>,
        #[serde(deserialize_with = "lenient::bool")] contains_discount: bool,
        currency: String,
    }
);

resource!(Product {
    #[serde(deserialize_with = "lenient::int")] id: i64,
    #[serde(deserialize_with = "lenient::string")] item_number: String,
    name: String,
    #[serde(deserialize_with = "lenient::opt_string")] internal_name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] description: Option<String>,
    #[serde(deserialize_with = "lenient::bool")] is_favorite: bool,
    #[serde(deserialize_with = "lenient::bool")] is_unattended: bool,
    gross_price: Option<Money>,
    net_price: Option<Money>,
    total_discount: Option<Discount>,
    original_equipment_service_fee: Option<Money>,
    price: Option<LegacyPrice>,
});

resource!(PrerequisiteOption {
    #[serde(deserialize_with = "lenient::int")]
    id: i64,
    #[serde(rename = "productPrerequisiteId", deserialize_with = "lenient::int")]
    product_prerequisite_id: i64,
    #[serde(deserialize_with = "lenient::string")]
    value: String,
});

resource!(Prerequisite {
    #[serde(deserialize_with = "lenient::int")] id: i64,
    name: String,
    #[serde(deserialize_with = "lenient::opt_string")] description: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] question: Option<String>,
    #[serde(deserialize_with = "lenient::bool")] required: bool,
    #[serde(rename = "type")] kind: String,
    options: Vec<PrerequisiteOption>,
});

resource!(
    /// A note of a ticket. The reference calls them "notes with attachments" but its example
    /// omits the attachment field: `attachments` is read as a list of [`Attachment`]s (an
    /// object per file; a bare string is taken as the file reference), absent or `null` as
    /// none.
    Note {
        #[serde(deserialize_with = "lenient::string")] id: String,
        #[serde(deserialize_with = "lenient::int")] ticket_id: i64,
        #[serde(deserialize_with = "lenient::string")] value: String,
        #[serde(deserialize_with = "lenient::opt_string")] created_at: Option<String>,
        #[serde(deserialize_with = "lenient::opt_string")] updated_at: Option<String>,
        #[serde(deserialize_with = "lenient::attachments")] attachments: Vec<Attachment>,
    }
);

resource!(
    /// Gross, net and discount of a set of products.
    PriceSummary {
        gross_price: Option<Money>,
        net_price: Option<Money>,
        total_discount: Option<Discount>,
    }
);

resource!(LineDiscount {
    #[serde(deserialize_with = "lenient::int")] product_id: i64,
    #[serde(deserialize_with = "lenient::opt_string")] description: Option<String>,
    discount: Option<Discount>,
});

resource!(ProductLine {
    #[serde(deserialize_with = "lenient::int")] product_id: i64,
    #[serde(deserialize_with = "lenient::opt_string")] description: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_int")] quantity: Option<i64>,
    gross_price: Option<Money>,
    net_price: Option<Money>,
    total_discount: Option<Discount>,
    original_equipment_service_fee: Option<Money>,
    discounts: Vec<LineDiscount>,
});

resource!(HistoricalTicket {
    #[serde(deserialize_with = "lenient::int")] id: i64,
    #[serde(deserialize_with = "lenient::int")] connector_id: i64,
    #[serde(deserialize_with = "lenient::int")] state: i64,
    #[serde(deserialize_with = "lenient::string")] vin: String,
    #[serde(deserialize_with = "lenient::opt_int")] odometer_reading: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")] reference: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] voucher: Option<String>,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_id: i64,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_variant_id: i64,
    sub_total: Option<PriceSummary>,
    total: Option<PriceSummary>,
    original_equipment_service_fee: Option<PriceSummary>,
    product_lines: Vec<ProductLine>,
    #[serde(deserialize_with = "lenient::opt_string")] created_at: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] finished_at: Option<String>,
});

resource!(PreparedTicket {
    #[serde(deserialize_with = "lenient::string")] id: String,
    #[serde(deserialize_with = "lenient::string")] vin: String,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_id: i64,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_variant_id: i64,
    product_lines: Vec<ProductLine>,
});

resource!(ServicedVehicle {
    #[serde(deserialize_with = "lenient::int")] make_id: i64,
    make_name: String,
    #[serde(deserialize_with = "lenient::int")] model_group_id: i64,
    model_group_name: String,
    #[serde(deserialize_with = "lenient::int")] model_id: i64,
    model_name: String,
    #[serde(deserialize_with = "lenient::int")] model_variant_id: i64,
    model_variant_name: String,
    #[serde(deserialize_with = "lenient::string")] vin: String,
    #[serde(deserialize_with = "lenient::opt_string")] last_serviced_at: Option<String>,
});

resource!(Make {
    #[serde(deserialize_with = "lenient::int")]
    id: i64,
    name: String,
});

resource!(ModelGroup {
    #[serde(deserialize_with = "lenient::int")]
    id: i64,
    name: String,
    #[serde(deserialize_with = "lenient::int")]
    vehicle_make_id: i64,
    #[serde(deserialize_with = "lenient::string")]
    vehicle_make_name: String,
});

resource!(Model {
    #[serde(deserialize_with = "lenient::int")] id: i64,
    name: String,
    #[serde(deserialize_with = "lenient::opt_string")] manufactured_from: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] manufactured_to: Option<String>,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_group_id: i64,
    #[serde(deserialize_with = "lenient::string")] vehicle_model_group_name: String,
    #[serde(deserialize_with = "lenient::int")] vehicle_make_id: i64,
    #[serde(deserialize_with = "lenient::string")] vehicle_make_name: String,
    #[serde(deserialize_with = "lenient::bool")] requires_doip: bool,
});

resource!(Variant {
    #[serde(deserialize_with = "lenient::int")] id: i64,
    name: String,
    #[serde(deserialize_with = "lenient::opt_string")] manufactured_from: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] manufactured_to: Option<String>,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_id: i64,
    #[serde(deserialize_with = "lenient::string")] vehicle_model_name: String,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_group_id: i64,
    #[serde(deserialize_with = "lenient::string")] vehicle_model_group_name: String,
    #[serde(deserialize_with = "lenient::int")] vehicle_make_id: i64,
    #[serde(deserialize_with = "lenient::string")] vehicle_make_name: String,
    #[serde(deserialize_with = "lenient::bool")] requires_doip: bool,
});

resource!(
    /// What a VIN lookup found.
    VinLookup {
        make: Option<Make>,
        model_group: Option<ModelGroup>,
        model: Option<Model>,
        model_variant: Option<Variant>,
    }
);

resource!(TotalsItem {
    #[serde(deserialize_with = "lenient::opt_string")] description: Option<String>,
    #[serde(deserialize_with = "lenient::int")] product_id: i64,
    #[serde(deserialize_with = "lenient::string")] product_item_number: String,
    #[serde(deserialize_with = "lenient::string")] product_name: String,
    #[serde(deserialize_with = "lenient::opt_string")] product_internal_name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] product_description: Option<String>,
    #[serde(deserialize_with = "lenient::bool")] product_is_unattended: bool,
    gross_price: Option<Money>,
    net_price: Option<Money>,
    total_discount: Option<Discount>,
    original_equipment_service_fee: Option<Money>,
});

resource!(Totals {
    #[serde(deserialize_with = "lenient::opt_string")] voucher: Option<String>,
    voucher_discount: Option<Discount>,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_id: i64,
    #[serde(deserialize_with = "lenient::int")] vehicle_model_variant_id: i64,
    #[serde(deserialize_with = "lenient::bool")] needs_confirmation_for_unattended_service: bool,
    sub_total: Option<PriceSummary>,
    voucher_sub_total: Option<PriceSummary>,
    original_equipment_service_fee: Option<PriceSummary>,
    total: Option<PriceSummary>,
    items: Vec<TotalsItem>,
});

resource!(
    /// Who is logged in. Nested company and provider details are kept as JSON.
    UserInfo {
        #[serde(deserialize_with = "lenient::string")] id: String,
        #[serde(deserialize_with = "lenient::opt_string")] first_name: Option<String>,
        #[serde(deserialize_with = "lenient::opt_string")] middle_name: Option<String>,
        #[serde(deserialize_with = "lenient::opt_string")] last_name: Option<String>,
        client: Value,
        service_provider: Value,
    }
);

resource!(Employee {
    #[serde(deserialize_with = "lenient::string")] id: String,
    given_name: String,
    family_name: String,
    #[serde(deserialize_with = "lenient::opt_string")] username: Option<String>,
    #[serde(deserialize_with = "lenient::bool")] enabled: bool,
    #[serde(deserialize_with = "lenient::opt_string")] correspondence_locale: Option<String>,
});

resource!(
    /// Login answer. `Debug` is derived, so never log this type: it holds bearer tokens.
    Tokens {
        id_token: String,
        access_token: String,
        refresh_token: String,
    }
);

resource!(ForgotPassword { method: String });

resource!(Customer {
    #[serde(deserialize_with = "lenient::string")] name: String,
    #[serde(deserialize_with = "lenient::opt_string")] reference: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] street: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] number: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] postal_code: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] city: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] country: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] email_address: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] financial_email_address: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] phone: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] currency: Option<String>,
});

/// Fields of a customer-details edit; `None` leaves a field unchanged.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CustomerEdit {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub financial_email_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

resource!(Branding {
    #[serde(deserialize_with = "lenient::string")] branding_name: String,
    #[serde(deserialize_with = "lenient::opt_string")] customer_portal_url: Option<String>,
});

resource!(ServiceCenter {
    #[serde(deserialize_with = "lenient::string")] name: String,
    #[serde(deserialize_with = "lenient::bool")] payment_by_prepaid_wallet: bool,
    #[serde(deserialize_with = "lenient::opt_int")] pricing_version: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_string")] primary_background_color: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] logo: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] service_message: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] primary_color: Option<String>,
    #[serde(deserialize_with = "lenient::bool")] csat_enabled: bool,
});

resource!(ServiceCenterState {
    #[serde(deserialize_with = "lenient::string")] state: String,
    #[serde(deserialize_with = "lenient::opt_string")] ends_at: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")] message: Option<String>,
});

resource!(TranslationMessage {
    #[serde(deserialize_with = "lenient::string")] original: String,
    #[serde(deserialize_with = "lenient::opt_string")] translated: Option<String>,
});

resource!(Translation {
    message: TranslationMessage,
    #[serde(deserialize_with = "lenient::string")] target_language: String,
    #[serde(deserialize_with = "lenient::opt_string")] source_language: Option<String>,
});

resource!(ControlMessage {
    #[serde(deserialize_with = "lenient::string")]
    channel_id: String,
});

resource!(Attachment {
    #[serde(deserialize_with = "lenient::string")] file_name: String,
    #[serde(deserialize_with = "lenient::string")] file_reference: String,
    #[serde(deserialize_with = "lenient::opt_string", skip_serializing_if = "Option::is_none")] upload_url: Option<String>,
});

resource!(
    /// The prepaid wallet (not in the reference; shape inferred from `prepaid_wallet_settings`).
    Wallet {
        #[serde(deserialize_with = "lenient::opt_num")] balance: Option<f64>,
        #[serde(deserialize_with = "lenient::opt_string")] currency: Option<String>,
        #[serde(deserialize_with = "lenient::bool")] enabled: bool,
    }
);

resource!(
    /// A chat channel (not in the reference; fields inferred).
    Channel {
        #[serde(deserialize_with = "lenient::string")] id: String,
        #[serde(deserialize_with = "lenient::opt_int")] ticket_id: Option<i64>,
        #[serde(deserialize_with = "lenient::opt_int")] chat_state: Option<i64>,
        #[serde(deserialize_with = "lenient::opt_string")] created_at: Option<String>,
    }
);

/// An answer to a product prerequisite when creating a ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrerequisiteAnswer {
    pub definition_id: i64,
    pub value: String,
}

/// Input of `tickets create`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct NewTicket {
    pub vin: String,
    pub vehicle_model_id: i64,
    pub vehicle_model_variant_id: i64,
    pub connector_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voucher: Option<String>,
    pub product_ids: Vec<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub product_prerequisites: Vec<PrerequisiteAnswer>,
    pub metadata: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared_ticket_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub confirmed_unattended_service: bool,
}

/// Input of `tickets totals`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TotalsRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voucher: Option<String>,
    pub vehicle_model_id: i64,
    pub vehicle_model_variant_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared_ticket_id: Option<String>,
    pub product_ids: Vec<i64>,
}

/// Input of `employees add` / `employees edit`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct EmployeeInput {
    pub given_name: String,
    pub family_name: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correspondence_locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Default metadata sent with tickets created from the box.
pub fn default_metadata() -> Value {
    serde_json::json!({
        "app_name": "obdgw",
        "app_version": env!("CARGO_PKG_VERSION"),
        "platform": std::env::consts::OS,
        "platform_version": std::env::consts::ARCH,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_from_the_vendor_example() {
        let t: Ticket = serde_json::from_str(
            r#"{"id":"3","uuid":"abcb2f39-7620-401a-8dab-ec2f6075ed8a","vinNumber":"JFL91010104591010",
            "vehicle_model_id":23423,"vehicle_model_variant_id":"23423","product_ids":[[324234],[5]],
            "chat_id":"x","connector_id":990001234,"state":1,"unknown_field":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(t.id, 3);
        assert_eq!(t.vin(), "JFL91010104591010");
        assert_eq!(t.vehicle_model_variant_id, 23423);
        assert_eq!(t.product_ids, vec![324234, 5]);
        assert_eq!(t.state, 1);
    }

    #[test]
    fn notes_carry_attachments() {
        let n: List<Note> = serde_json::from_str(
            r#"{"result":[{"id":"a","ticket_id":"7","value":"v","attachments":[
                {"file_name":"scan.pdf","file_reference":"/ticket/7/scan.pdf"},"/ticket/7/raw.bin",5]},
                {"id":"b","ticket_id":7,"value":"w","attachments":null},{"id":"c","ticket_id":7}],"total":3}"#,
        )
        .unwrap();
        let a = &n.result[0].attachments;
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a[0].file_name, "scan.pdf");
        assert_eq!(a[1].file_reference, "/ticket/7/raw.bin");
        assert!(n.result[1].attachments.is_empty() && n.result[2].attachments.is_empty());
    }

    #[test]
    fn missing_and_loose_fields() {
        let c: Customer =
            serde_json::from_str(r#"{"name":"X","phone":31651226913,"reference":213432}"#).unwrap();
        assert_eq!(c.phone.as_deref(), Some("31651226913"));
        assert_eq!(c.reference.as_deref(), Some("213432"));
        assert_eq!(c.city, None);
        let l: List<Make> =
            serde_json::from_str(r#"{"result":[{"id":"10","name":"Ford"}],"total":"1"}"#).unwrap();
        assert_eq!(l.result[0].id, 10);
        assert_eq!(l.total, 1);
        assert!(serde_json::from_str::<Make>(r#"{"id":"ten"}"#).is_err());
    }
}
