//! Configuration errors that say which key, where its value came from, and what is expected.

use std::fmt;
use std::path::Path;

/// Metadata name of the environment provider.
pub(super) const ENV_SOURCE_NAME: &str = "OBDGW_* environment variables";

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path (`router.routes[1].to[0]`); empty for whole-file problems.
    pub key: String,
    /// Where the value came from: `FILE:LINE`, `environment variable NAME`, `built-in default`.
    pub source: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.source.is_empty()) {
            (true, true) => write!(f, "{}", self.message),
            (true, false) => write!(f, "{}: {}", self.source, self.message),
            (false, true) => write!(f, "key `{}`: {}", self.key, self.message),
            (false, false) => write!(f, "key `{}` ({}): {}", self.key, self.source, self.message),
        }
    }
}

/// The configuration is invalid; holds every issue found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

/// What error construction needs to attribute a key to its source.
pub(super) struct Context<'a> {
    pub figment: &'a figment::Figment,
    pub file: Option<&'a Path>,
    pub text: Option<&'a str>,
}

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Parse `router.routes[1].to[0]` into segments.
fn parse_key(key: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                segs.push(Seg::Key(rest[..open].to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    segs.push(Seg::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            segs.push(Seg::Key(rest.to_string()));
        }
    }
    segs
}

fn render_key(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// 1-based line number of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Byte offset of the deepest part of `segs` present in the TOML document.
fn locate(text: &str, segs: &[Seg]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text.to_string()).ok()?;
    walk(Node::Table(doc.as_table()), segs, None)
}

/// A position in a parsed TOML document.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Inline(&'a toml_edit::InlineTable),
    Value(&'a toml_edit::Value),
}

fn walk(node: Node<'_>, segs: &[Seg], best: Option<usize>) -> Option<usize> {
    use toml_edit::{Item, Value};
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    let start = |span: Option<std::ops::Range<usize>>| span.map(|s| s.start).or(best);
    match (seg, node) {
        (Seg::Key(k), Node::Table(t)) => match t.get_key_value(k) {
            Some((key, item)) => walk(Node::Item(item), rest, start(key.span())),
            None => best,
        },
        (Seg::Key(k), Node::Inline(t)) => match t.get_key_value(k) {
            Some((key, item)) => walk(Node::Item(item), rest, start(key.span())),
            None => best,
        },
        (_, Node::Item(Item::Table(t))) => walk(Node::Table(t), segs, best),
        (_, Node::Item(Item::Value(v))) => walk(Node::Value(v), segs, best),
        (Seg::Key(_), Node::Value(Value::InlineTable(t))) => walk(Node::Inline(t), segs, best),
        (Seg::Index(i), Node::Item(Item::ArrayOfTables(a))) => match a.get(*i) {
            Some(t) => walk(Node::Table(t), rest, start(t.span())),
            None => best,
        },
        (Seg::Index(i), Node::Value(Value::Array(a))) => match a.get(*i) {
            Some(v) => walk(Node::Value(v), rest, start(v.span())),
            None => best,
        },
        _ => best,
    }
}

fn env_var_name(segs: &[Seg]) -> String {
    let keys: Vec<String> = segs
        .iter()
        .take_while(|s| matches!(s, Seg::Key(_)))
        .map(|s| match s {
            Seg::Key(k) => k.to_ascii_uppercase(),
            Seg::Index(_) => String::new(),
        })
        .collect();
    format!("{}{}", super::ENV_PREFIX, keys.join("__"))
}

impl Context<'_> {
    /// Describe where the value at `segs` came from.
    fn source_of(&self, segs: &[Seg], meta: Option<&figment::Metadata>) -> String {
        let top: Vec<&str> = segs
            .iter()
            .take_while(|s| matches!(s, Seg::Key(_)))
            .map(|s| match s {
                Seg::Key(k) => k.as_str(),
                Seg::Index(_) => "",
            })
            .collect();
        // Longest key prefix that figment can attribute.
        let found = meta.cloned().or_else(|| {
            (1..=top.len())
                .rev()
                .find_map(|n| self.figment.find_metadata(&top[..n].join(".")).cloned())
        });
        match found {
            Some(m) if m.name == ENV_SOURCE_NAME => {
                format!("environment variable {}", env_var_name(segs))
            }
            Some(m) if !matches!(m.source, Some(figment::Source::File(_))) => {
                "built-in default".into()
            }
            Some(_) | None => match (self.file, self.text) {
                (Some(file), Some(text)) => match locate(text, segs) {
                    Some(off) => format!("{}:{}", file.display(), line_of(text, off)),
                    None => file.display().to_string(),
                },
                _ => "built-in default".into(),
            },
        }
    }
}

impl ConfigError {
    pub(super) fn single(issue: ConfigIssue) -> Self {
        ConfigError {
            issues: vec![issue],
        }
    }

    pub(super) fn from_figment(err: figment::Error, ctx: &Context<'_>) -> Self {
        use figment::error::Kind;
        let mut issues = Vec::new();
        for e in err {
            let mut segs: Vec<Seg> = Vec::new();
            for p in &e.path {
                match p.parse::<usize>() {
                    Ok(i) => segs.push(Seg::Index(i)),
                    Err(_) => segs.push(Seg::Key(p.clone())),
                }
            }
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    if segs.last() != Some(&Seg::Key(field.clone())) {
                        segs.push(Seg::Key(field.clone()));
                    }
                    if expected.is_empty() {
                        "unknown key; this section takes no keys".to_string()
                    } else {
                        format!("unknown key; expected one of: {}", expected.join(", "))
                    }
                }
                Kind::MissingField(field) => {
                    segs.push(Seg::Key(field.to_string()));
                    "required key is missing".to_string()
                }
                Kind::InvalidType(actual, expected) => {
                    format!("found {actual}, expected {expected}")
                }
                Kind::InvalidValue(actual, expected) => {
                    format!("invalid value {actual}, expected {expected}")
                }
                Kind::UnknownVariant(v, expected) => format!(
                    "unknown value `{v}`; expected one of: {}",
                    expected.join(", ")
                ),
                other => other.to_string(),
            };
            let source = ctx.source_of(&segs, e.metadata.as_ref());
            issues.push(ConfigIssue {
                key: render_key(&segs),
                source,
                message,
            });
        }
        ConfigError { issues }
    }

    pub(super) fn from_validation(issues: Vec<ConfigIssue>, ctx: &Context<'_>) -> Self {
        let issues = issues
            .into_iter()
            .map(|mut i| {
                let segs = parse_key(&i.key);
                i.source = ctx.source_of(&segs, None);
                i
            })
            .collect();
        ConfigError { issues }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_parse_and_render() {
        let segs = parse_key("router.routes[12].to[0]");
        assert_eq!(
            segs,
            vec![
                Seg::Key("router".into()),
                Seg::Key("routes".into()),
                Seg::Index(12),
                Seg::Key("to".into()),
                Seg::Index(0)
            ]
        );
        assert_eq!(render_key(&segs), "router.routes[12].to[0]");
        assert_eq!(env_var_name(&segs), "OBDGW_ROUTER__ROUTES");
    }

    #[test]
    fn locate_finds_lines() {
        let text = "[log]\nlevel = \"info\"\n\n[[router.routes]]\nfrom = \"a\"\nto = [\"b\"]\n\n[[router.routes]]\nfrom = \"x\"\nto = [\"y\", \"z\"]\n";
        let line = |k: &str| locate(text, &parse_key(k)).map(|o| line_of(text, o));
        assert_eq!(line("log.level"), Some(2));
        assert_eq!(line("router.routes[1].from"), Some(9));
        assert_eq!(line("router.routes[1].to[1]"), Some(10));
        assert_eq!(line("router.routes[0].to"), Some(6));
    }
}
