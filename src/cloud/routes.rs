//! The route table: operation to path template, defaults from the operation table,
//! overridable per deployment (`cloud.routes.<key> = "/v1/..."`) without a rebuild.

use super::error::ApiError;
use super::spec::{OPS, Op, placeholders};
use std::collections::{BTreeMap, HashMap};

/// Path templates by operation.
#[derive(Debug, Clone)]
pub struct RouteTable {
    paths: HashMap<Op, String>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            paths: OPS.iter().map(|s| (s.op, s.path.to_string())).collect(),
        }
    }
}

/// Check one override: known key, absolute path, same placeholders as the default.
pub fn check_override(key: &str, path: &str) -> Result<Op, String> {
    let Some(op) = Op::from_key(key) else {
        let mut keys: Vec<String> = OPS.iter().map(|s| s.key()).collect();
        keys.sort();
        return Err(format!(
            "unknown operation `{key}`; known: {}",
            keys.join(", ")
        ));
    };
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        return Err(format!(
            "`{path}` is not an absolute path without query (expected e.g. `{}`)",
            op.spec().path
        ));
    }
    let mut want = placeholders(op.spec().path);
    let mut got = placeholders(path);
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        return Err(format!(
            "`{path}` must use exactly the placeholders {{{}}}",
            want.join("}, {")
        ));
    }
    Ok(op)
}

impl RouteTable {
    /// Defaults with the given overrides (keys as in [`crate::cloud::spec::OpSpec::key`]).
    pub fn with_overrides(overrides: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut t = RouteTable::default();
        for (k, v) in overrides {
            let op = check_override(k, v).map_err(|e| format!("cloud.routes.{k}: {e}"))?;
            t.paths.insert(op, v.clone());
        }
        Ok(t)
    }

    /// The template of an operation.
    pub fn template(&self, op: Op) -> &str {
        self.paths
            .get(&op)
            .map(String::as_str)
            .unwrap_or(op.spec().path)
    }

    /// The path of an operation with its parameters filled in (percent-encoded).
    pub fn render(&self, op: Op, params: &BTreeMap<String, String>) -> Result<String, ApiError> {
        let template = self.template(op);
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('}').ok_or_else(|| ApiError::Route {
                op: op.spec().key(),
                message: format!("unclosed placeholder in `{template}`"),
            })?;
            let name = &after[..end];
            let value = params.get(name).ok_or_else(|| ApiError::Route {
                op: op.spec().key(),
                message: format!("no value for {{{name}}}"),
            })?;
            encode_segment(value, &mut out);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Percent-encode a path segment (RFC 3986 unreserved characters pass).
pub fn encode_segment(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_encoding() {
        let mut o = BTreeMap::new();
        o.insert(
            "connectors_get".to_string(),
            "/v2/boxes/{connectorId}".to_string(),
        );
        let t = RouteTable::with_overrides(&o).unwrap();
        let mut p = BTreeMap::new();
        p.insert("connectorId".to_string(), "12 /x".to_string());
        assert_eq!(
            t.render(Op::ConnectorsGet, &p).unwrap(),
            "/v2/boxes/12%20%2Fx"
        );
        assert_eq!(t.template(Op::EmployeesList), "/v1/employees");
        o.insert("connectors_get".to_string(), "/v2/boxes/{id}".to_string());
        assert!(
            RouteTable::with_overrides(&o)
                .unwrap_err()
                .contains("placeholders")
        );
        let mut o = BTreeMap::new();
        o.insert("nope".to_string(), "/x".to_string());
        assert!(
            RouteTable::with_overrides(&o)
                .unwrap_err()
                .contains("unknown operation")
        );
    }
}
