//! Ordered documents ([`Doc`]) and a small YAML emitter for them.
//!
//! serde_json's maps are sorted by key (the workspace does not enable `preserve_order`, and
//! turning it on would change every other crate's JSON), but output should list `id` first
//! and fields in column order: so commands build a [`Doc`], whose maps keep their order, and
//! print it as JSON (through [`serde::Serialize`]) or YAML ([`to_yaml`]).
//!
//! metroctl's documents are flat (scalars, lists of strings, string maps, lists of those), so
//! a hand-written block-style writer is enough and saves a YAML dependency. Strings are
//! written plain only when no YAML 1.1 or 1.2 reader can take them for anything but that
//! string; everything else is double-quoted with JSON escapes, which YAML's double-quoted
//! style accepts unchanged.

use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value;

/// A JSON-like value whose maps keep their insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    /// null, a boolean, a number or a string (never an array or object).
    Scalar(Value),
    /// A sequence.
    Seq(Vec<Doc>),
    /// A map, in this order.
    Map(Vec<(String, Doc)>),
}

impl Doc {
    /// A string scalar.
    pub fn str(s: impl Into<String>) -> Doc {
        Doc::Scalar(Value::String(s.into()))
    }

    /// A map from `(key, value)` pairs, in order.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Doc)>) -> Doc {
        Doc::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// This document as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_string())
    }

    /// This document as indented JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "null".to_string())
    }
}

impl From<Value> for Doc {
    fn from(value: Value) -> Doc {
        match value {
            Value::Array(items) => Doc::Seq(items.into_iter().map(Doc::from).collect()),
            Value::Object(map) => Doc::Map(map.into_iter().map(|(k, v)| (k, v.into())).collect()),
            scalar => Doc::Scalar(scalar),
        }
    }
}

impl serde::Serialize for Doc {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Scalar(v) => v.serialize(serializer),
            Doc::Seq(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Renders `doc` as a YAML document (without a `---` marker), ending in a newline.
pub fn to_yaml(doc: &Doc) -> String {
    let mut out = String::new();
    match doc {
        Doc::Seq(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        Doc::Map(map) if !map.is_empty() => write_map(&mut out, map, 0, false),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

/// Writes a map at `indent`; with `after_dash` its first key continues the line of a
/// sequence item's "- ".
fn write_map(out: &mut String, map: &[(String, Doc)], indent: usize, after_dash: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !after_dash {
            pad(out, indent);
        }
        out.push_str(&scalar_string(key));
        out.push(':');
        write_child(out, value, indent);
    }
}

fn write_seq(out: &mut String, items: &[Doc], indent: usize) {
    for item in items {
        pad(out, indent);
        match item {
            Doc::Map(map) if !map.is_empty() => {
                out.push_str("- ");
                write_map(out, map, indent + 2, true);
            }
            Doc::Seq(inner) if !inner.is_empty() => {
                out.push_str("-\n");
                write_seq(out, inner, indent + 2);
            }
            scalar => {
                out.push_str("- ");
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
    }
}

/// Writes the value of a map entry: inline after "key:" for scalars and empty collections,
/// on the following lines, indented, otherwise.
fn write_child(out: &mut String, value: &Doc, indent: usize) {
    match value {
        Doc::Map(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2, false);
        }
        Doc::Seq(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent + 2);
        }
        scalar => {
            out.push(' ');
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// Scalars and empty collections on one line.
fn inline(doc: &Doc) -> String {
    match doc {
        Doc::Scalar(Value::Null) => "null".to_string(),
        Doc::Scalar(Value::Bool(b)) => b.to_string(),
        Doc::Scalar(Value::Number(n)) => n.to_string(),
        Doc::Scalar(Value::String(s)) => scalar_string(s),
        // Not produced by From<Value>, but a Scalar may hold anything: JSON flow style is
        // valid YAML.
        Doc::Scalar(other) => other.to_string(),
        Doc::Seq(_) => "[]".to_string(),
        Doc::Map(_) => "{}".to_string(),
    }
}

/// Words that YAML 1.1 readers turn into booleans or null.
const RESERVED: [&str; 12] = [
    "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "nan", "inf",
];

/// A string as a YAML scalar: plain if unambiguous, else double-quoted.
fn scalar_string(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_string()
    } else {
        // JSON string syntax is valid YAML double-quoted syntax.
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
    }
}

/// Plain only for strings that start with a letter, contain nothing but letters, digits and
/// `_ - . /`, and are not a reserved word: such a string cannot be read as a number, a
/// boolean, null, a date, an anchor, a tag, a comment or a mapping key.
fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    first.is_ascii_alphabetic()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(id: &str, extra: Vec<(&str, Doc)>) -> Doc {
        let mut entries = vec![("id", Doc::str(id))];
        entries.extend(extra);
        Doc::map(entries)
    }

    #[test]
    fn list_of_nodes_keeps_field_order() {
        let doc = Doc::Seq(vec![
            node(
                "metropolis-abc",
                vec![
                    ("address", Doc::str("127.89.1.1")),
                    (
                        "roles",
                        Doc::Seq(vec![
                            Doc::str("ConsensusMember"),
                            Doc::str("KubernetesController"),
                        ]),
                    ),
                    ("labels", Doc::Map(vec![])),
                    ("time_since_heartbeat_seconds", Doc::Scalar(json!(3.5))),
                    ("running_curator", Doc::Scalar(json!(true))),
                    ("health", Doc::Scalar(Value::Null)),
                ],
            ),
            node("metropolis-def", vec![("roles", Doc::Seq(vec![]))]),
        ]);
        let expected = "\
- id: metropolis-abc
  address: \"127.89.1.1\"
  roles:
    - ConsensusMember
    - KubernetesController
  labels: {}
  time_since_heartbeat_seconds: 3.5
  running_curator: true
  health: null
- id: metropolis-def
  roles: []
";
        assert_eq!(to_yaml(&doc), expected);
        assert_eq!(
            doc.to_json(),
            "[{\"id\":\"metropolis-abc\",\"address\":\"127.89.1.1\",\"roles\":[\"ConsensusMember\",\
             \"KubernetesController\"],\"labels\":{},\"time_since_heartbeat_seconds\":3.5,\
             \"running_curator\":true,\"health\":null},{\"id\":\"metropolis-def\",\"roles\":[]}]"
        );
    }

    #[test]
    fn nested_maps_and_sequences() {
        let v = json!({"a": {"b": "c", "d": ["e"]}, "f": [["g", "h"], []], "i": [{"j": 1, "k": {"l": "m"}}]});
        let expected = "\
a:
  b: c
  d:
    - e
f:
  -
    - g
    - h
  - []
i:
  - j: 1
    k:
      l: m
";
        assert_eq!(to_yaml(&Doc::from(v)), expected);
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "",
            "yes",
            "No",
            "ON",
            "null",
            "~",
            "1",
            "1.5",
            "0x10",
            "127.0.0.1",
            "2024-05-01",
            "a: b",
            "a #b",
            "-x",
            "*ref",
            "&anchor",
            "!tag",
            "[x]",
            "{x}",
            "'q'",
            "\"q\"",
            "line\nbreak",
            "tab\there",
            " lead",
            "trail ",
            "é",
            "@at",
            "%pct",
            "`tick",
            "key:",
            ":x",
        ] {
            assert!(!is_plain_safe(s), "{s:?} must be quoted");
            let quoted = scalar_string(s);
            assert!(quoted.starts_with('"') && quoted.ends_with('"'), "{quoted}");
            // What we wrote reads back (JSON's string syntax is YAML's double-quoted style).
            assert_eq!(
                serde_json::from_str::<String>(&quoted).ok().as_deref(),
                Some(s)
            );
        }
    }

    #[test]
    fn harmless_strings_stay_plain() {
        for s in [
            "metropolis-0123abcd",
            "UP",
            "HEARTBEAT_TIMEOUT",
            "ConsensusMember",
            "example.com/role",
            "v1.2",
        ] {
            assert_eq!(scalar_string(s), s);
        }
    }

    #[test]
    fn scalars_and_empties_at_top_level() {
        assert_eq!(to_yaml(&Doc::from(json!([]))), "[]\n");
        assert_eq!(to_yaml(&Doc::from(json!({}))), "{}\n");
        assert_eq!(to_yaml(&Doc::from(json!("x"))), "x\n");
        assert_eq!(to_yaml(&Doc::from(json!(["a"]))), "- a\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        let quoted = scalar_string("a\u{1b}[31mred");
        assert!(!quoted.contains('\u{1b}'), "{quoted}");
        assert!(quoted.contains("\\u001b"), "{quoted}");
    }
}
