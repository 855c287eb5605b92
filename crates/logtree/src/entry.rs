//! The entries stored in the log tree: leveled (glog-style) and raw (one line of a byte
//! stream).

use std::fmt;

use chrono::{DateTime, Utc};

use crate::Dn;

/// Maximum stored length of a raw line in bytes. Matches upstream so that a runaway child
/// process printing megabyte lines cannot blow up the per-DN retention buffer.
pub const RAW_LINE_LIMIT: usize = 1024;

/// Severity of a leveled entry, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Informational.
    Info,
    /// Something looks wrong but work continues.
    Warning,
    /// An operation failed.
    Error,
    /// The component cannot continue.
    Fatal,
}

impl Severity {
    /// The glog letter used when rendering (`I`, `W`, `E`, `F`).
    pub fn letter(self) -> char {
        match self {
            Severity::Info => 'I',
            Severity::Warning => 'W',
            Severity::Error => 'E',
            Severity::Fatal => 'F',
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        })
    }
}

/// A leveled entry: one log call, possibly spanning several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeveledPayload {
    /// When the message was logged.
    pub timestamp: DateTime<Utc>,
    /// How severe it is.
    pub severity: Severity,
    /// Source location as `file:line`.
    pub location: String,
    /// The message, split on newlines; kept together so readers never see half a message.
    pub lines: Vec<String>,
}

impl LeveledPayload {
    /// Builds a payload, splitting `message` on `'\n'`.
    pub fn new(
        timestamp: DateTime<Utc>,
        severity: Severity,
        location: impl Into<String>,
        message: &str,
    ) -> LeveledPayload {
        LeveledPayload {
            timestamp,
            severity,
            location: location.into(),
            lines: message.split('\n').map(str::to_string).collect(),
        }
    }
}

/// A raw entry: one line of an unstructured stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPayload {
    /// The line without its newline, truncated to [`RAW_LINE_LIMIT`] bytes.
    pub data: String,
    /// Length in bytes of the line before truncation.
    pub original_length: usize,
}

impl RawPayload {
    /// Builds a payload from one line, truncating it at a char boundary.
    pub fn new(line: &str) -> RawPayload {
        RawPayload {
            data: truncate_at_char_boundary(line, RAW_LINE_LIMIT).to_string(),
            original_length: line.len(),
        }
    }
}

/// The content of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A leveled message.
    Leveled(LeveledPayload),
    /// A raw line.
    Raw(RawPayload),
}

/// One entry of the log tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The DN the entry was logged at.
    pub dn: Dn,
    /// Tree-wide sequence number, strictly increasing in logging order, so entries of
    /// different DNs can be merged in order.
    pub seq: u64,
    /// The content.
    pub payload: Payload,
}

impl LogEntry {
    /// The leveled payload, if this is a leveled entry.
    pub fn leveled(&self) -> Option<&LeveledPayload> {
        match &self.payload {
            Payload::Leveled(l) => Some(l),
            Payload::Raw(_) => None,
        }
    }

    /// The raw payload, if this is a raw entry.
    pub fn raw(&self) -> Option<&RawPayload> {
        match &self.payload {
            Payload::Raw(r) => Some(r),
            Payload::Leveled(_) => None,
        }
    }
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `file:line` of the caller, with the file reduced to its basename, for leveled loggers.
#[track_caller]
pub fn caller_location() -> String {
    let loc = std::panic::Location::caller();
    format!("{}:{}", basename(loc.file()), loc.line())
}

/// The last path component, accepting both separators since `file!()` may use either.
pub(crate) fn basename(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_short_line_is_kept() {
        let p = RawPayload::new("hello");
        assert_eq!(p.data, "hello");
        assert_eq!(p.original_length, 5);
    }

    #[test]
    fn raw_truncation_at_limit() {
        let line = "x".repeat(RAW_LINE_LIMIT + 500);
        let p = RawPayload::new(&line);
        assert_eq!(p.data.len(), RAW_LINE_LIMIT);
        assert_eq!(p.original_length, RAW_LINE_LIMIT + 500);

        let exact = "y".repeat(RAW_LINE_LIMIT);
        let p = RawPayload::new(&exact);
        assert_eq!(p.data, exact);
        assert_eq!(p.original_length, RAW_LINE_LIMIT);
    }

    #[test]
    fn raw_truncation_respects_utf8() {
        // 1023 ASCII bytes then a 3-byte char straddling the limit: the char must go whole.
        let line = format!("{}€tail", "a".repeat(RAW_LINE_LIMIT - 1));
        let p = RawPayload::new(&line);
        assert_eq!(p.data, "a".repeat(RAW_LINE_LIMIT - 1));
        assert_eq!(p.original_length, line.len());

        let emoji = "😀".repeat(300); // 4 bytes each, 1200 bytes
        let p = RawPayload::new(&emoji);
        assert_eq!(p.data.len(), 1024);
        assert_eq!(p.data, "😀".repeat(256));
    }

    #[test]
    fn severity_order_and_letters() {
        assert!(Severity::Info < Severity::Warning);
        assert!(Severity::Warning < Severity::Error);
        assert!(Severity::Error < Severity::Fatal);
        let letters: String = [
            Severity::Info,
            Severity::Warning,
            Severity::Error,
            Severity::Fatal,
        ]
        .iter()
        .map(|s| s.letter())
        .collect();
        assert_eq!(letters, "IWEF");
    }

    #[test]
    fn leveled_splits_lines() {
        let p = LeveledPayload::new(Utc::now(), Severity::Info, "a.rs:1", "one\ntwo\nthree");
        assert_eq!(p.lines, vec!["one", "two", "three"]);
    }

    #[test]
    fn caller_location_is_basename() {
        let loc = caller_location();
        assert!(loc.starts_with("entry.rs:"), "{loc}");
    }
}
