//! Rendering data for people and scripts: node columns, aligned tables, JSON/YAML documents,
//! and where output goes (standard output or `--output FILE`).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli::Format;
use crate::error::{Error, Result};
use crate::model::{NodeView, tpm_short};
use crate::yaml::{self, Doc};

/// A node field: a table column and a JSON/YAML key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Id,
    Pubkey,
    State,
    Address,
    Health,
    Roles,
    Tpm,
    Heartbeat,
    Curator,
    Version,
    Labels,
}

impl Column {
    /// Every field, in the order of the JSON/YAML schema.
    pub const ALL: [Column; 11] = [
        Column::Id,
        Column::Pubkey,
        Column::State,
        Column::Address,
        Column::Health,
        Column::Roles,
        Column::Tpm,
        Column::Heartbeat,
        Column::Curator,
        Column::Version,
        Column::Labels,
    ];

    /// The columns of `node describe` (upstream's table).
    pub const DESCRIBE: [Column; 8] = [
        Column::Id,
        Column::State,
        Column::Address,
        Column::Health,
        Column::Roles,
        Column::Tpm,
        Column::Heartbeat,
        Column::Version,
    ];

    /// The name accepted by `--columns`.
    pub fn name(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::Pubkey => "pubkey",
            Column::State => "state",
            Column::Address => "address",
            Column::Health => "health",
            Column::Roles => "roles",
            Column::Tpm => "tpm",
            Column::Heartbeat => "heartbeat",
            Column::Curator => "curator",
            Column::Version => "version",
            Column::Labels => "labels",
        }
    }

    /// The table header.
    pub fn header(self) -> &'static str {
        match self {
            Column::Id => "NODE ID",
            Column::Pubkey => "PUBKEY",
            Column::State => "STATE",
            Column::Address => "ADDRESS",
            Column::Health => "HEALTH",
            Column::Roles => "ROLES",
            Column::Tpm => "TPM",
            Column::Heartbeat => "HEARTBEAT",
            Column::Curator => "CURATOR",
            Column::Version => "VERSION",
            Column::Labels => "LABELS",
        }
    }

    /// The JSON/YAML key (the [`NodeView`] field name).
    pub fn key(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::Pubkey => "pubkey",
            Column::State => "state",
            Column::Address => "address",
            Column::Health => "health",
            Column::Roles => "roles",
            Column::Tpm => "tpm_usage",
            Column::Heartbeat => "time_since_heartbeat_seconds",
            Column::Curator => "running_curator",
            Column::Version => "version",
            Column::Labels => "labels",
        }
    }

    /// The table cell of a node.
    pub fn cell(self, n: &NodeView) -> String {
        match self {
            Column::Id => n.id.clone(),
            Column::Pubkey => n.pubkey.clone(),
            Column::State => n.state.clone(),
            Column::Address => n.address.clone().unwrap_or_else(|| "unknown".to_string()),
            Column::Health => n.health.clone(),
            Column::Roles => dash_if_empty(n.roles.join(",")),
            Column::Tpm => tpm_short(&n.tpm_usage).to_string(),
            Column::Heartbeat => match n.time_since_heartbeat_seconds {
                // Whole seconds, as upstream.
                Some(s) => format!("{}s", s.trunc() as i64),
                None => "never".to_string(),
            },
            Column::Curator => if n.running_curator { "yes" } else { "no" }.to_string(),
            Column::Version => n.version.clone().unwrap_or_else(|| "unknown".to_string()),
            Column::Labels => dash_if_empty(
                n.labels
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        }
    }

    /// The JSON/YAML value of a node.
    pub fn value(self, n: &NodeView) -> Doc {
        let s = |v: &str| Doc::str(v);
        match self {
            Column::Id => s(&n.id),
            Column::Pubkey => s(&n.pubkey),
            Column::State => s(&n.state),
            Column::Address => n.address.as_deref().map_or(Doc::Scalar(Value::Null), s),
            Column::Health => s(&n.health),
            Column::Roles => Doc::Seq(n.roles.iter().map(|r| s(r)).collect()),
            Column::Tpm => s(&n.tpm_usage),
            Column::Heartbeat => Doc::Scalar(
                n.time_since_heartbeat_seconds
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number),
            ),
            Column::Curator => Doc::Scalar(Value::Bool(n.running_curator)),
            Column::Version => n.version.as_deref().map_or(Doc::Scalar(Value::Null), s),
            Column::Labels => Doc::map(n.labels.iter().map(|(k, v)| (k.clone(), s(v)))),
        }
    }
}

fn dash_if_empty(s: String) -> String {
    if s.is_empty() { "-".to_string() } else { s }
}

/// Parses `--columns` (names or headers, any case; `node_id`/`node id` for the ID).
pub fn parse_columns(names: &[String]) -> Result<Vec<Column>> {
    let mut columns = Vec::new();
    for raw in names {
        let wanted = raw.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        if wanted.is_empty() {
            continue;
        }
        let column = Column::ALL
            .into_iter()
            .find(|c| {
                wanted == c.name()
                    || wanted == c.key()
                    || wanted == c.header().to_ascii_lowercase().replace(' ', "_")
            })
            .ok_or_else(|| {
                let valid: Vec<&str> = Column::ALL.iter().map(|c| c.name()).collect();
                Error::usage(format!(
                    "unknown column {raw:?}; columns are {}",
                    valid.join(", ")
                ))
            })?;
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    Ok(columns)
}

/// Nodes as a table with these columns.
pub fn nodes_table(nodes: &[NodeView], columns: &[Column]) -> String {
    let headers: Vec<&str> = columns.iter().map(|c| c.header()).collect();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| columns.iter().map(|c| c.cell(n)).collect())
        .collect();
    table(&headers, &rows)
}

/// Nodes as a document: a sequence of maps with these fields, in this order.
pub fn nodes_doc(nodes: &[NodeView], columns: &[Column]) -> Doc {
    Doc::Seq(
        nodes
            .iter()
            .map(|n| Doc::map(columns.iter().map(|c| (c.key(), c.value(n)))))
            .collect(),
    )
}

/// A plain aligned table (the shared renderer): upper-case header, left-aligned columns two
/// spaces apart, no trailing whitespace. Cells are sanitized, so node-reported text cannot move
/// the cursor.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    tabular::render(headers, rows)
}

pub use tabular::sanitize;

/// A document in the chosen format (`table` is the caller's; this handles JSON and YAML).
pub fn render_doc(format: Format, doc: &Doc, table_text: impl FnOnce() -> String) -> String {
    match format {
        Format::Table => table_text(),
        Format::Json => {
            let mut s = doc.to_json_pretty();
            s.push('\n');
            s
        }
        Format::Yaml => yaml::to_yaml(doc),
    }
}

/// Where command output goes.
#[derive(Debug, Clone)]
pub struct Output {
    path: Option<PathBuf>,
}

impl Output {
    /// Standard output, or `path` if given.
    pub fn new(path: Option<PathBuf>) -> Self {
        Output { path }
    }

    /// Whether output goes to a file.
    pub fn is_file(&self) -> bool {
        self.path.is_some()
    }

    /// Writes a complete document: to standard output, or replacing the file atomically.
    pub fn write_document(&self, text: &str) -> Result<()> {
        match &self.path {
            None => write_stdout(text),
            Some(path) => identity::files::write_atomic(path, text.as_bytes(), 0o644)
                .map_err(|e| Error::local(format!("writing {}: {e}", path.display()))),
        }
    }

    /// Opens a stream (log lines): standard output, or the file, truncated.
    pub fn stream(&self) -> Result<Stream> {
        match &self.path {
            None => Ok(Stream::Stdout(io::stdout())),
            Some(path) => File::create(path)
                .map(|f| Stream::File(f, path.clone()))
                .map_err(|e| io_error(path, e)),
        }
    }
}

/// An open output stream.
#[derive(Debug)]
pub enum Stream {
    Stdout(io::Stdout),
    File(File, PathBuf),
}

impl Stream {
    /// Writes `text` and flushes, so followers of a log see every line at once.
    pub fn write(&mut self, text: &str) -> Result<()> {
        match self {
            Stream::Stdout(out) => {
                let mut lock = out.lock();
                lock.write_all(text.as_bytes())
                    .and_then(|_| lock.flush())
                    .map_err(stdout_error)
            }
            Stream::File(f, path) => f
                .write_all(text.as_bytes())
                .and_then(|_| f.flush())
                .map_err(|e| io_error(path, e)),
        }
    }
}

fn write_stdout(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(stdout_error)
}

fn stdout_error(e: io::Error) -> Error {
    Error::local(format!("writing to standard output: {e}"))
}

fn io_error(path: &Path, e: io::Error) -> Error {
    Error::local(format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn view(id: &str, address: Option<&str>, roles: &[&str]) -> NodeView {
        NodeView {
            id: id.to_string(),
            pubkey: "00ff".to_string(),
            state: "UP".to_string(),
            address: address.map(str::to_string),
            health: "HEALTHY".to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            tpm_usage: "NOT_PRESENT".to_string(),
            time_since_heartbeat_seconds: Some(4.9),
            running_curator: true,
            version: Some("0.1.0-g1a2b3c4d".to_string()),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        }
    }

    #[test]
    fn describe_table_matches_upstream_layout() {
        let nodes = [
            view(
                "metropolis-aaaa",
                Some("127.89.1.1"),
                &["ConsensusMember", "KubernetesController"],
            ),
            NodeView {
                version: None,
                ..view("metropolis-bb", None, &[])
            },
        ];
        let expected = "\
NODE ID          STATE  ADDRESS     HEALTH   ROLES                                 TPM  HEARTBEAT  VERSION
metropolis-aaaa  UP     127.89.1.1  HEALTHY  ConsensusMember,KubernetesController  no   4s         0.1.0-g1a2b3c4d
metropolis-bb    UP     unknown     HEALTHY  -                                     no   4s         unknown
";
        assert_eq!(nodes_table(&nodes, &Column::DESCRIBE), expected);
    }

    #[test]
    fn empty_table_is_just_the_header() {
        assert_eq!(nodes_table(&[], &[Column::Id]), "NODE ID\n");
    }

    #[test]
    fn rows_have_no_trailing_whitespace() {
        let t = table(&["A", "B"], &[vec!["long value".into(), "".into()]]);
        assert!(t.lines().all(|l| !l.ends_with(' ')), "{t:?}");
    }

    #[test]
    fn cells_cannot_inject_escape_sequences() {
        let t = table(&["A"], &[vec!["x\u{1b}[2Jy\nz".into()]]);
        assert!(!t.contains('\u{1b}'));
        assert_eq!(t.lines().count(), 2);
    }

    #[test]
    fn columns_parse_by_name_key_or_header() {
        let cols = parse_columns(&[
            "ID".into(),
            "node id".into(),
            "tpm_usage".into(),
            "Heartbeat".into(),
            " roles ".into(),
        ])
        .expect("valid");
        assert_eq!(
            cols,
            vec![Column::Id, Column::Tpm, Column::Heartbeat, Column::Roles]
        );
        let err = parse_columns(&["colour".into()]).expect_err("invalid");
        assert_eq!(err.kind, crate::error::Kind::Usage);
        assert!(err.message.contains("address"), "{}", err.message);
    }

    #[test]
    fn json_has_every_field_in_schema_order() {
        let doc = nodes_doc(
            &[view("metropolis-aaaa", None, &["KubernetesWorker"])],
            &Column::ALL,
        );
        let json = render_doc(Format::Json, &doc, String::new);
        let parsed: Value = serde_json::from_str(&json).expect("valid JSON");
        let node = &parsed[0];
        assert_eq!(node["id"], "metropolis-aaaa");
        assert_eq!(node["address"], Value::Null);
        assert_eq!(node["roles"], serde_json::json!(["KubernetesWorker"]));
        assert_eq!(node["tpm_usage"], "NOT_PRESENT");
        assert_eq!(node["time_since_heartbeat_seconds"], 4.9);
        assert_eq!(node["running_curator"], true);
        assert_eq!(node["labels"]["zone"], "a");
        // id first, as in the table.
        assert!(
            json.trim_start().starts_with("[\n  {\n    \"id\""),
            "{json}"
        );
    }

    #[test]
    fn selected_columns_select_fields() {
        let doc = nodes_doc(
            &[view("metropolis-aaaa", Some("10.0.0.1"), &[])],
            &[Column::Id, Column::Address],
        );
        assert_eq!(
            doc.to_json(),
            "[{\"id\":\"metropolis-aaaa\",\"address\":\"10.0.0.1\"}]"
        );
        assert_eq!(
            render_doc(Format::Yaml, &doc, String::new),
            "- id: metropolis-aaaa\n  address: \"10.0.0.1\"\n"
        );
    }

    #[test]
    fn yaml_of_a_full_node() {
        let doc = nodes_doc(
            &[view(
                "metropolis-aaaa",
                Some("10.0.0.1"),
                &["ConsensusMember"],
            )],
            &Column::ALL,
        );
        let expected = "\
- id: metropolis-aaaa
  pubkey: \"00ff\"
  state: UP
  address: \"10.0.0.1\"
  health: HEALTHY
  roles:
    - ConsensusMember
  tpm_usage: NOT_PRESENT
  time_since_heartbeat_seconds: 4.9
  running_curator: true
  version: \"0.1.0-g1a2b3c4d\"
  labels:
    zone: a
";
        assert_eq!(yaml::to_yaml(&doc), expected);
    }

    #[test]
    fn heartbeat_and_label_cells() {
        let mut n = view("metropolis-aaaa", None, &[]);
        n.time_since_heartbeat_seconds = None;
        assert_eq!(Column::Heartbeat.cell(&n), "never");
        assert_eq!(Column::Labels.cell(&n), "zone:a");
        n.labels.clear();
        assert_eq!(Column::Labels.cell(&n), "-");
        assert_eq!(Column::Curator.cell(&n), "yes");
    }

    #[test]
    fn documents_replace_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.json");
        let out = Output::new(Some(path.clone()));
        out.write_document("one\n").expect("write");
        out.write_document("two\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
    }
}
