//! Rendering log entries received from NodeManagement.Logs exactly as the node's own logtree
//! renders them (`logtree::render`): the wire entry is converted to a logtree entry where it
//! can be; entries logtree cannot represent (an empty or malformed DN, an unknown severity)
//! are rendered by a fallback in the same format. Node log text is untrusted: control
//! characters are replaced so a log line cannot drive the terminal.

use chrono::{DateTime, Utc};
use proto::common::{LeveledLogSeverity, LogEntry, log_entry};

use crate::output::sanitize;

/// DN column width, as logtree/upstream.
const DN_WIDTH: usize = 32;

/// Renders one entry (possibly several lines for a multi-line leveled entry), no trailing
/// newline.
pub fn render(entry: &LogEntry, concise: bool) -> String {
    let text = match to_logtree(entry) {
        Some(converted) => logtree::render(&converted, concise),
        None => fallback(entry),
    };
    text.lines().map(sanitize).collect::<Vec<_>>().join("\n")
}

/// The logtree form of a wire entry, if it has one.
fn to_logtree(entry: &LogEntry) -> Option<logtree::LogEntry> {
    let dn = logtree::Dn::new(entry.dn.clone()).ok()?;
    let payload = match entry.kind.as_ref()? {
        log_entry::Kind::Leveled(l) => logtree::Payload::Leveled(logtree::LeveledPayload {
            timestamp: timestamp(l.timestamp.as_ref()),
            severity: severity(l.severity)?,
            location: l.location.clone(),
            lines: l.lines.clone(),
        }),
        log_entry::Kind::Raw(r) => logtree::Payload::Raw(logtree::RawPayload {
            data: r.data.clone(),
            original_length: usize::try_from(r.original_length).unwrap_or(0),
        }),
    };
    Some(logtree::LogEntry {
        dn,
        seq: 0,
        payload,
    })
}

fn severity(s: i32) -> Option<logtree::Severity> {
    match LeveledLogSeverity::try_from(s).ok()? {
        LeveledLogSeverity::Info => Some(logtree::Severity::Info),
        LeveledLogSeverity::Warning => Some(logtree::Severity::Warning),
        LeveledLogSeverity::Error => Some(logtree::Severity::Error),
        LeveledLogSeverity::Fatal => Some(logtree::Severity::Fatal),
        LeveledLogSeverity::Invalid => None,
    }
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_default()
}

/// The same format for entries logtree cannot hold: severity `?` when unknown.
fn fallback(entry: &LogEntry) -> String {
    let dn = &entry.dn;
    match entry.kind.as_ref() {
        Some(log_entry::Kind::Leveled(l)) => {
            let letter = severity(l.severity).map_or('?', |s| s.letter());
            let ts = timestamp(l.timestamp.as_ref()).format("%m%d %H:%M:%S%.6f");
            let lines: Vec<String> = if l.lines.is_empty() {
                vec![String::new()]
            } else {
                l.lines.clone()
            };
            lines
                .iter()
                .map(|line| format!("{dn:<DN_WIDTH$} {letter}{ts} {}] {line}", l.location))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Some(log_entry::Kind::Raw(r)) => format!("{dn:<DN_WIDTH$} R {}", r.data),
        None => format!("{dn:<DN_WIDTH$} ? (empty entry)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::log_entry::{Leveled, Raw};

    fn leveled(dn: &str, severity: LeveledLogSeverity, lines: &[&str]) -> LogEntry {
        LogEntry {
            dn: dn.to_string(),
            kind: Some(log_entry::Kind::Leveled(Leveled {
                lines: lines.iter().map(|l| l.to_string()).collect(),
                // 2024-05-01 12:03:04.000056 UTC
                timestamp: Some(prost_types::Timestamp {
                    seconds: 1_714_564_984,
                    nanos: 56_000,
                }),
                severity: severity as i32,
                location: "enrolment.rs:42".to_string(),
            })),
        }
    }

    #[test]
    fn leveled_lines_like_upstream() {
        let e = leveled(
            "root",
            LeveledLogSeverity::Info,
            &["Cluster enrolment done."],
        );
        assert_eq!(
            render(&e, false),
            format!(
                "root{} I0501 12:03:04.000056 enrolment.rs:42] Cluster enrolment done.",
                " ".repeat(28)
            )
        );
    }

    #[test]
    fn multi_line_entries_repeat_the_prefix() {
        let e = leveled("root.role", LeveledLogSeverity::Error, &["a", "b"]);
        let out = render(&e, false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("E0501 12:03:04.000056 enrolment.rs:42] a"));
        assert!(lines[1].ends_with("E0501 12:03:04.000056 enrolment.rs:42] b"));
    }

    #[test]
    fn raw_lines() {
        let e = LogEntry {
            dn: "root.etcd".to_string(),
            kind: Some(log_entry::Kind::Raw(Raw {
                data: "hello".to_string(),
                original_length: 5,
            })),
        };
        assert_eq!(
            render(&e, false),
            format!("root.etcd{} R hello", " ".repeat(23))
        );
    }

    #[test]
    fn concise_shortens_dns() {
        let e = leveled(
            "root.role.controlplane.curator",
            LeveledLogSeverity::Warning,
            &["x"],
        );
        assert!(
            render(&e, true).starts_with("..controlplane.curator W0501"),
            "{}",
            render(&e, true)
        );
    }

    #[test]
    fn matches_logtree_for_every_severity() {
        for (sev, letter) in [
            (LeveledLogSeverity::Info, 'I'),
            (LeveledLogSeverity::Warning, 'W'),
            (LeveledLogSeverity::Error, 'E'),
            (LeveledLogSeverity::Fatal, 'F'),
        ] {
            let e = leveled("root", sev, &["m"]);
            // The fallback and logtree agree on the format.
            assert_eq!(render(&e, false), fallback(&e));
            assert!(render(&e, false).contains(&format!(" {letter}0501 ")));
        }
    }

    #[test]
    fn unknown_severity_and_odd_dns_still_render() {
        let e = leveled("a..b", LeveledLogSeverity::Invalid, &["m"]);
        assert!(render(&e, false).starts_with(&format!("a..b{} ?0501", " ".repeat(28))));
        let empty = LogEntry {
            dn: String::new(),
            kind: None,
        };
        assert!(render(&empty, false).contains("(empty entry)"));
    }

    #[test]
    fn escape_sequences_are_neutralized() {
        let e = LogEntry {
            dn: "root".to_string(),
            kind: Some(log_entry::Kind::Raw(Raw {
                data: "\u{1b}]0;pwned\u{7}".to_string(),
                original_length: 9,
            })),
        };
        let out = render(&e, false);
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    }
}
