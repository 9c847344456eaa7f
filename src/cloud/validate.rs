//! Request validation against the documented rules, shared by the client (before sending)
//! and the simulator (before answering), so both enforce exactly the same rules.
//!
//! Owns: the generic request form ([`ApiRequest`]), type and presence checks derived from the
//! operation table, and the operation-specific rules (VIN of 17 alphanumerics, `limit` in
//! 0..=200, product group XOR bundle, CSAT score in [-1, 1], e-mail usernames, name lengths).
//!
//! Does not own: rules that need server state (one pending ticket per connector, 404s).

use super::spec::{Loc, Op, OpSpec, Param, Ty};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Largest `limit` the API accepts.
pub const MAX_LIMIT: u32 = 200;

/// One operation's inputs in transport form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiRequest {
    /// Path parameters by placeholder name.
    pub path: BTreeMap<String, String>,
    /// Query pairs in order (a name may repeat).
    pub query: Vec<(String, String)>,
    /// JSON body, if any.
    pub body: Option<Value>,
}

impl ApiRequest {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn path(mut self, name: &str, value: impl ToString) -> Self {
        self.path.insert(name.to_string(), value.to_string());
        self
    }

    pub fn query(mut self, name: &str, value: impl ToString) -> Self {
        self.query.push((name.to_string(), value.to_string()));
        self
    }

    pub fn query_opt(self, name: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.query(name, v),
            None => self,
        }
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// The first value of a query parameter.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter as an integer, when present and valid.
    pub fn q_int(&self, name: &str) -> Option<i64> {
        self.q(name).and_then(|v| v.trim().parse().ok())
    }

    /// A query parameter as a boolean (`true`/`false`/`1`/`0`).
    pub fn q_bool(&self, name: &str) -> Option<bool> {
        self.q(name).and_then(parse_bool)
    }

    /// Every integer of a list parameter (comma-separated, possibly repeated).
    pub fn q_int_list(&self, name: &str) -> Vec<i64> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    }

    /// A path parameter.
    pub fn p(&self, name: &str) -> Option<&str> {
        self.path.get(name).map(String::as_str)
    }

    pub fn p_int(&self, name: &str) -> Option<i64> {
        self.p(name).and_then(|v| v.parse().ok())
    }

    /// A body field (a dot nests one level).
    pub fn b(&self, name: &str) -> Option<&Value> {
        let body = self.body.as_ref()?;
        let v = match name.split_once('.') {
            Some((outer, inner)) => body.get(outer)?.get(inner)?,
            None => body.get(name)?,
        };
        (!v.is_null()).then_some(v)
    }

    pub fn b_int(&self, name: &str) -> Option<i64> {
        self.b(name).and_then(lenient_int)
    }

    pub fn b_str(&self, name: &str) -> Option<&str> {
        self.b(name).and_then(Value::as_str)
    }

    pub fn b_int_list(&self, name: &str) -> Vec<i64> {
        match self.b(name) {
            Some(Value::Array(a)) => a.iter().filter_map(lenient_int).collect(),
            _ => Vec::new(),
        }
    }

    /// The pagination window: `(offset, limit)` with the given default limit.
    pub fn page(&self, default_limit: u32) -> (u64, u32) {
        let offset = self
            .q("offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64);
        let limit = self
            .q("limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_limit);
        (offset, limit)
    }
}

/// A request that breaks a documented rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The parameter (`vin`, `limit`, `message.original`); empty for the whole body.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.field, self.message)
        }
    }
}

fn violation(field: &str, message: impl Into<String>) -> Violation {
    Violation {
        field: field.to_string(),
        message: message.into(),
    }
}

/// An integer from a JSON integer or a string of digits.
pub fn lenient_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let s = s.trim();
            let digits = s.strip_prefix('-').unwrap_or(s);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok()
            } else {
                None
            }
        }
        _ => None,
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// A UUID in canonical 8-4-4-4-12 hexadecimal form.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A plausible e-mail address: `local@domain.tld`, 3..=255 characters, no spaces.
pub fn is_email(s: &str) -> bool {
    if s.len() < 3 || s.len() > 255 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        }
        None => false,
    }
}

/// A VIN as the API documents it: exactly 17 ASCII letters and digits.
pub fn is_vin(s: &str) -> bool {
    s.len() == 17 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A BCP 47 language tag, syntactically (`en`, `en-GB`, `zh-Hant-TW`).
pub fn is_bcp47(s: &str) -> bool {
    let mut parts = s.split('-');
    let Some(lang) = parts.next() else {
        return false;
    };
    (2..=8).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn type_name(ty: Ty) -> &'static str {
    match ty {
        Ty::Int => "an integer",
        Ty::Num => "a number",
        Ty::Str => "a string",
        Ty::Code => "a string or an integer",
        Ty::Bool => "true or false",
        Ty::Uuid => "a UUID (8-4-4-4-12 hexadecimal digits)",
        Ty::Email => "an e-mail address",
        Ty::IntList => "a non-empty list of integers",
        Ty::Object => "a JSON object",
        Ty::ObjectList => "a list of JSON objects",
    }
}

fn check_text(p: &Param, s: &str) -> Result<(), Violation> {
    let ok = match p.ty {
        Ty::Int => s.trim().parse::<i64>().is_ok(),
        Ty::Num => s.trim().parse::<f64>().is_ok_and(f64::is_finite),
        Ty::Str | Ty::Code => !(p.required && s.is_empty()),
        Ty::Bool => parse_bool(s).is_some(),
        Ty::Uuid => is_uuid(s),
        Ty::Email => is_email(s),
        Ty::IntList => !s.is_empty() && s.split(',').all(|x| x.trim().parse::<i64>().is_ok()),
        Ty::Object | Ty::ObjectList => false,
    };
    if ok {
        Ok(())
    } else {
        Err(violation(
            p.name,
            format!("`{s}` is not {}", type_name(p.ty)),
        ))
    }
}

fn check_json(p: &Param, v: &Value) -> Result<(), Violation> {
    let ok = match p.ty {
        Ty::Int => lenient_int(v).is_some(),
        Ty::Num => v.as_f64().is_some_and(f64::is_finite),
        Ty::Str => v.as_str().is_some_and(|s| !(p.required && s.is_empty())),
        Ty::Code => match v {
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.is_i64() || n.is_u64(),
            _ => false,
        },
        Ty::Bool => v.is_boolean(),
        Ty::Uuid => v.as_str().is_some_and(is_uuid),
        Ty::Email => v.as_str().is_some_and(is_email),
        Ty::IntList => v
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| lenient_int(x).is_some())),
        Ty::Object => v.is_object(),
        Ty::ObjectList => v.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
    };
    if ok {
        Ok(())
    } else {
        Err(violation(
            p.name,
            format!("{} is not {}", short(v), type_name(p.ty)),
        ))
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        let cut = (0..=40).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        format!("{}...", &s[..cut])
    } else {
        s
    }
}

/// Presence and type of every parameter of `spec`, plus `offset`/`limit` on paged operations.
pub fn check_types(spec: &OpSpec, req: &ApiRequest) -> Result<(), Violation> {
    if spec.paged {
        if let Some(v) = req.q("offset")
            && v.parse::<u64>().is_err()
        {
            return Err(violation("offset", format!("`{v}` is not an integer >= 0")));
        }
        if let Some(v) = req.q("limit")
            && !v.parse::<u32>().is_ok_and(|l| l <= MAX_LIMIT)
        {
            return Err(violation(
                "limit",
                format!("`{v}` is out of range; expected an integer in 0..={MAX_LIMIT}"),
            ));
        }
    }
    let has_body_params = spec.params.iter().any(|p| p.loc == Loc::Body);
    if has_body_params {
        match &req.body {
            Some(Value::Object(_)) => {}
            Some(other) => {
                return Err(violation(
                    "",
                    format!(
                        "the request body is {}, expected a JSON object",
                        short(other)
                    ),
                ));
            }
            None if spec.params.iter().any(|p| p.loc == Loc::Body && p.required) => {
                return Err(violation("", "a JSON object body is required"));
            }
            None => {}
        }
    }
    for p in spec.params {
        match p.loc {
            Loc::Path => match req.p(p.name) {
                Some(v) => check_text(p, v)?,
                None => return Err(violation(p.name, "missing path parameter")),
            },
            Loc::Query => {
                let mut any = false;
                for (_, v) in req.query.iter().filter(|(k, _)| k == p.name) {
                    any = true;
                    check_text(p, v)?;
                }
                if !any && p.required {
                    return Err(violation(p.name, "required query parameter is missing"));
                }
            }
            Loc::Body => {
                if let Some((outer, _)) = p.name.split_once('.')
                    && let Some(o) = req.body.as_ref().and_then(|b| b.get(outer))
                    && !o.is_object()
                    && !o.is_null()
                {
                    return Err(violation(
                        outer,
                        format!("{} is not a JSON object", short(o)),
                    ));
                }
                match req.b(p.name) {
                    Some(v) => check_json(p, v)?,
                    None if p.required => {
                        return Err(violation(p.name, "required field is missing"));
                    }
                    None => {}
                }
            }
        }
    }
    Ok(())
}

fn check_vin(field: &str, vin: Option<&str>) -> Result<(), Violation> {
    match vin {
        Some(v) if !is_vin(v) => Err(violation(
            field,
            format!("`{v}` is not a VIN; expected exactly 17 letters and digits"),
        )),
        _ => Ok(()),
    }
}

fn check_len(req: &ApiRequest, field: &str, max: usize) -> Result<(), Violation> {
    match req.b_str(field) {
        Some(s) if s.chars().count() > max => Err(violation(
            field,
            format!(
                "{} characters is too long; at most {max} are allowed",
                s.chars().count()
            ),
        )),
        _ => Ok(()),
    }
}

/// The operation-specific documented rules (after [`check_types`]).
pub fn check_rules(op: Op, req: &ApiRequest) -> Result<(), Violation> {
    match op {
        Op::VehiclesLookup | Op::TicketsPrepared | Op::TicketsHistorical => {
            check_vin("vin", req.q("vin"))
        }
        Op::TicketsCreate | Op::TicketsTotals => {
            check_vin("vin", req.b_str("vin"))?;
            if op == Op::TicketsCreate
                && let Some(Value::Array(items)) = req.b("product_prerequisites")
            {
                for (i, item) in items.iter().enumerate() {
                    if item.get("definition_id").and_then(lenient_int).is_none() {
                        return Err(violation(
                            &format!("product_prerequisites[{i}].definition_id"),
                            "required integer is missing",
                        ));
                    }
                }
            }
            Ok(())
        }
        Op::ProductsList => {
            if req.q("product_group_id").is_some() && req.q("product_bundle_id").is_some() {
                Err(violation(
                    "product_bundle_id",
                    "cannot be combined with product_group_id; give one of them",
                ))
            } else {
                Ok(())
            }
        }
        Op::TicketsCsat => match req.b("score").and_then(Value::as_f64) {
            Some(s) if !(-1.0..=1.0).contains(&s) => Err(violation(
                "score",
                format!("{s} is out of range; expected a number from -1 to 1"),
            )),
            _ => Ok(()),
        },
        Op::EmployeesAdd | Op::EmployeesEdit => {
            check_len(req, "given_name", 255)?;
            check_len(req, "family_name", 255)?;
            check_len(req, "username", 255)?;
            for f in ["given_name", "family_name"] {
                if req.b_str(f).is_some_and(|s| s.trim().is_empty()) {
                    return Err(violation(f, "must not be blank"));
                }
            }
            match req.b_str("correspondence_locale") {
                Some(l) if !is_bcp47(l) => Err(violation(
                    "correspondence_locale",
                    format!("`{l}` is not a BCP 47 locale such as en-GB"),
                )),
                _ => Ok(()),
            }
        }
        Op::MiscTranslate => match req.b_str("target_language") {
            Some(l) if !is_bcp47(l) => Err(violation(
                "target_language",
                format!("`{l}` is not a language code such as de or en-GB"),
            )),
            _ => Ok(()),
        },
        Op::AccountCustomerEdit => match req.b_str("country") {
            Some(c) if !(c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic())) => {
                Err(violation(
                    "country",
                    format!("`{c}` is not a two-letter country code such as NL"),
                ))
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Every documented rule of `op` for `req`.
pub fn validate(op: Op, req: &ApiRequest) -> Result<(), Violation> {
    check_types(op.spec(), req)?;
    check_rules(op, req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vin_limit_xor_and_score() {
        let ok = ApiRequest::new().query("vin", "WVWZZZ1KZ8W123456");
        assert!(validate(Op::VehiclesLookup, &ok).is_ok());
        let bad = ApiRequest::new().query("vin", "WVWZZZ1KZ8W12345");
        assert_eq!(validate(Op::VehiclesLookup, &bad).unwrap_err().field, "vin");
        let bad = ApiRequest::new().query("vin", "WVWZZZ1KZ8W12345-");
        assert!(validate(Op::VehiclesLookup, &bad).is_err());

        assert!(validate(Op::EmployeesList, &ApiRequest::new().query("limit", "200")).is_ok());
        assert!(validate(Op::EmployeesList, &ApiRequest::new().query("limit", "0")).is_ok());
        let e = validate(Op::EmployeesList, &ApiRequest::new().query("limit", "201")).unwrap_err();
        assert_eq!(e.field, "limit");
        assert!(validate(Op::EmployeesList, &ApiRequest::new().query("offset", "-1")).is_err());

        let both = ApiRequest::new()
            .query("vehicle_model_id", 1)
            .query("vehicle_model_variant_id", 2)
            .query("product_group_id", 3)
            .query("product_bundle_id", "5f3d760d-ade2-4a19-aea4-36e097678ae3");
        assert_eq!(
            validate(Op::ProductsList, &both).unwrap_err().field,
            "product_bundle_id"
        );

        let csat = |s: f64| {
            ApiRequest::new()
                .path("ticketId", 3)
                .body(json!({ "score": s }))
        };
        assert!(validate(Op::TicketsCsat, &csat(1.0)).is_ok());
        assert!(validate(Op::TicketsCsat, &csat(-1.0)).is_ok());
        assert!(validate(Op::TicketsCsat, &csat(1.01)).is_err());
    }

    #[test]
    fn lenient_ints_and_required_fields() {
        let req = ApiRequest::new().body(json!({
            "vin": "JFL91010104391010", "vehicle_model_id": "284841",
            "vehicle_model_variant_id": 284841, "connector_id": 910101043,
            "product_ids": [52351], "metadata": {}
        }));
        assert!(validate(Op::TicketsCreate, &req).is_ok());
        let mut missing = req.clone();
        if let Some(Value::Object(m)) = missing.body.as_mut() {
            m.remove("metadata");
        }
        assert_eq!(
            validate(Op::TicketsCreate, &missing).unwrap_err().field,
            "metadata"
        );
        let req = ApiRequest::new()
            .body(json!({"given_name": "A", "family_name": "B", "username": "not-an-email"}));
        assert_eq!(
            validate(Op::EmployeesAdd, &req).unwrap_err().field,
            "username"
        );
        let req =
            ApiRequest::new().body(json!({"message": {"original": "Hi"}, "target_language": "de"}));
        assert!(validate(Op::MiscTranslate, &req).is_ok());
        let req = ApiRequest::new().body(json!({"message": "Hi", "target_language": "de"}));
        assert_eq!(
            validate(Op::MiscTranslate, &req).unwrap_err().field,
            "message"
        );
        assert!(
            validate(
                Op::ProductsPrerequisites,
                &ApiRequest::new()
                    .query("vehicle_model_id", 1)
                    .query("vehicle_model_variant_id", 1)
                    .query("product_id", "1,2,x")
            )
            .is_err()
        );
    }

    #[test]
    fn syntax_helpers() {
        assert!(is_uuid("5f3d760d-ade2-4a19-aea4-36e097678ae3"));
        assert!(!is_uuid("5f3d760d-ade2-4a19-aea4-36e097678ae"));
        assert!(is_email("john.smith@my-garage.com"));
        assert!(!is_email("john@localhost"));
        assert!(!is_email("a b@c.de"));
        assert!(is_bcp47("en-GB") && is_bcp47("de") && !is_bcp47("e") && !is_bcp47("en_GB"));
    }
}
