//! Parser for etcd's zap JSON log lines (`--logger zap`), turning them into leveled entries
//! so etcd's output reads like the rest of the node's logs.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::{LeveledPayload, Severity};

/// Parses one zap JSON line; `None` if it is not a JSON object (callers log it raw).
pub fn parse_line(line: &str) -> Option<LeveledPayload> {
    parse_line_at(line, Utc::now())
}

/// Like [`parse_line`], using `now` when the line carries no usable timestamp.
pub fn parse_line_at(line: &str, now: DateTime<Utc>) -> Option<LeveledPayload> {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line.trim()) else {
        return None;
    };
    let severity = obj
        .remove("level")
        .as_ref()
        .and_then(Value::as_str)
        .map(parse_level)
        .unwrap_or(Severity::Info);
    let timestamp = obj.remove("ts").and_then(|v| parse_ts(&v)).unwrap_or(now);
    let location = match obj.remove("caller") {
        Some(Value::String(c)) => c,
        _ => "etcd:0".to_string(),
    };
    let mut message = match obj.remove("msg") {
        Some(Value::String(m)) => m,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    append_fields(&mut message, obj);
    Some(LeveledPayload::new(timestamp, severity, location, &message))
}

/// zap level names to severities; unknown levels are treated as Info rather than dropped.
fn parse_level(level: &str) -> Severity {
    match level.to_ascii_lowercase().as_str() {
        "warn" | "warning" => Severity::Warning,
        "error" | "dpanic" => Severity::Error,
        "panic" | "fatal" => Severity::Fatal,
        _ => Severity::Info,
    }
}

/// zap writes ISO8601 (`…T10:00:00.123Z` or `…+0100`) or epoch seconds as a float.
fn parse_ts(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|t| Utc.from_utc_datetime(&t))
            }),
        Value::Number(n) => {
            let secs = n.as_f64()?;
            if !secs.is_finite() || secs < 0.0 {
                return None;
            }
            let whole = secs.trunc();
            let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0);
            // Float-to-int `as` saturates; the range was checked above.
            DateTime::from_timestamp(whole as i64, nanos as u32)
        }
        _ => None,
    }
}

/// Appends the remaining fields as ` key=value`, sorted so output is deterministic whatever
/// the JSON map's ordering.
fn append_fields(message: &mut String, fields: Map<String, Value>) {
    let mut fields: Vec<(String, Value)> = fields.into_iter().collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in fields {
        message.push(' ');
        message.push_str(&key);
        message.push('=');
        match value {
            // Bare strings read best; quote the ones that would be ambiguous or break the
            // line (zap's `stacktrace` field contains newlines).
            Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => {
                message.push_str(&s)
            }
            other => message.push_str(&other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("valid time")
    }

    #[test]
    fn info_line_with_array_field() {
        let line = r#"{"level":"info","ts":"2024-05-01T12:00:00.000Z","caller":"embed/etcd.go:117","msg":"configuring peer listeners","listen-peer-urls":["https://127.0.0.1:7834"]}"#;
        let p = parse_line_at(line, now()).expect("parsed");
        assert_eq!(p.severity, Severity::Info);
        assert_eq!(p.location, "embed/etcd.go:117");
        assert_eq!(
            p.timestamp,
            DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z").expect("ts")
        );
        assert_eq!(
            p.lines,
            vec![r#"configuring peer listeners listen-peer-urls=["https://127.0.0.1:7834"]"#]
        );
    }

    #[test]
    fn levels() {
        for (level, want) in [
            ("debug", Severity::Info),
            ("info", Severity::Info),
            ("warn", Severity::Warning),
            ("error", Severity::Error),
            ("dpanic", Severity::Error),
            ("panic", Severity::Fatal),
            ("fatal", Severity::Fatal),
        ] {
            let line = format!(r#"{{"level":"{level}","msg":"m"}}"#);
            assert_eq!(parse_line_at(&line, now()).map(|p| p.severity), Some(want));
        }
    }

    #[test]
    fn fields_sorted_and_quoted() {
        let line = r#"{"level":"warn","ts":"2023-01-01T10:00:00.123Z","caller":"etcdserver/server.go:123","msg":"some message","zeta":"value","alpha":1,"took":"1.2s","detail":"has spaces","ok":true}"#;
        let p = parse_line_at(line, now()).expect("parsed");
        assert_eq!(p.severity, Severity::Warning);
        assert_eq!(
            p.lines,
            vec![r#"some message alpha=1 detail="has spaces" ok=true took=1.2s zeta=value"#]
        );
        assert_eq!(p.timestamp.timestamp_subsec_millis(), 123);
    }

    #[test]
    fn etcd34_timestamp_with_numeric_offset() {
        // etcd 3.4 uses zap's ISO8601 encoder, which writes `+0100` without a colon.
        let line = r#"{"level":"info","ts":"2024-05-01T13:00:00.250+0100","caller":"etcdserver/raft.go:1","msg":"x"}"#;
        let p = parse_line_at(line, now()).expect("parsed");
        let want = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.250Z").expect("ts");
        assert_eq!(p.timestamp, want);
    }

    #[test]
    fn float_timestamp_and_defaults() {
        let p = parse_line_at(r#"{"ts":1714564800.5,"msg":"m"}"#, now()).expect("parsed");
        assert_eq!(p.timestamp.timestamp(), 1_714_564_800);
        assert_eq!(p.timestamp.timestamp_subsec_millis(), 500);
        assert_eq!(p.severity, Severity::Info);

        let p = parse_line_at(r#"{"level":"info"}"#, now()).expect("parsed");
        assert_eq!(p.timestamp, now());
        assert_eq!(p.location, "etcd:0");
        assert_eq!(p.lines, vec![""]);
    }

    #[test]
    fn error_with_stacktrace_stays_one_line() {
        let line = r#"{"level":"error","ts":"2024-05-01T12:00:00.000Z","caller":"rafthttp/peer.go:9","msg":"failed to dial","error":"connection refused","stacktrace":"go.etcd.io/etcd/a\n\tfoo.go:1"}"#;
        let p = parse_line_at(line, now()).expect("parsed");
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.lines.len(), 1);
        assert!(
            p.lines[0].starts_with(r#"failed to dial error="connection refused" stacktrace="#),
            "{}",
            p.lines[0]
        );
    }

    #[test]
    fn non_json_is_rejected() {
        assert!(parse_line_at("2024-05-01 12:00:00 I | etcdmain: plain text", now()).is_none());
        assert!(parse_line_at("[1,2]", now()).is_none());
        assert!(parse_line_at("", now()).is_none());
        assert!(parse_line_at("{\"level\":", now()).is_none());
    }
}
