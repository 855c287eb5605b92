//! Text rendering of entries in the glog-like format metroctl prints.

use std::fmt;
use std::fmt::Write as _;

use crate::{Dn, LogEntry, Payload};

/// Column width of the DN in full mode, as upstream's metroctl.
const DN_WIDTH: usize = 32;
/// Column width of the shortened DN in concise mode.
const CONCISE_DN_WIDTH: usize = 20;
/// Trailing DN components kept in concise mode: enough to tell `consensus` from `curator`.
const CONCISE_COMPONENTS: usize = 2;

/// Renders an entry: leveled as `<DN> I0501 12:00:00.000000 file:line] msg` (one output line
/// per message line), raw as `<DN> R <line>`. Concise mode shortens the DN to its last
/// components.
pub fn render(entry: &LogEntry, concise: bool) -> String {
    let (dn, width) = if concise {
        (concise_dn(&entry.dn), CONCISE_DN_WIDTH)
    } else {
        (entry.dn.to_string(), DN_WIDTH)
    };
    let mut out = String::new();
    match &entry.payload {
        Payload::Leveled(l) => {
            let ts = l.timestamp.format("%m%d %H:%M:%S%.6f");
            for (i, line) in l.lines.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                let _ = write!(
                    out,
                    "{dn:<width$} {}{ts} {}] {line}",
                    l.severity.letter(),
                    l.location
                );
            }
        }
        Payload::Raw(r) => {
            let _ = write!(out, "{dn:<width$} R {}", r.data);
        }
    }
    out
}

/// `root.role.controlplane.curator` → `..controlplane.curator`; short DNs stay as they are.
fn concise_dn(dn: &Dn) -> String {
    let parts: Vec<&str> = dn.components().collect();
    if parts.len() <= CONCISE_COMPONENTS {
        return dn.to_string();
    }
    format!("..{}", parts[parts.len() - CONCISE_COMPONENTS..].join("."))
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(self, false))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::{LeveledPayload, RawPayload, Severity};

    fn dn(s: &str) -> Dn {
        Dn::new(s).expect("valid dn")
    }

    #[test]
    fn leveled_format() {
        let ts = Utc
            .with_ymd_and_hms(2024, 5, 1, 12, 3, 4)
            .single()
            .expect("valid time")
            + chrono::Duration::microseconds(56);
        let entry = LogEntry {
            dn: dn("root.role.curator"),
            seq: 0,
            payload: Payload::Leveled(LeveledPayload::new(
                ts,
                Severity::Warning,
                "main.rs:12",
                "first\nsecond",
            )),
        };
        let pad = " ".repeat(32 - "root.role.curator".len());
        assert_eq!(
            entry.to_string(),
            format!(
                "root.role.curator{pad} W0501 12:03:04.000056 main.rs:12] first\n\
                 root.role.curator{pad} W0501 12:03:04.000056 main.rs:12] second"
            )
        );
        assert_eq!(
            render(&entry, true).lines().next(),
            Some("..role.curator       W0501 12:03:04.000056 main.rs:12] first")
        );
    }

    #[test]
    fn raw_format() {
        let entry = LogEntry {
            dn: dn("root.etcd"),
            seq: 0,
            payload: Payload::Raw(RawPayload::new("hello world")),
        };
        assert_eq!(
            render(&entry, false),
            format!("root.etcd{} R hello world", " ".repeat(32 - 9))
        );
        assert_eq!(
            render(&entry, true),
            format!("root.etcd{} R hello world", " ".repeat(20 - 9))
        );
    }
}
