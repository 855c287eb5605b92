//! Writers: a leveled logger for messages with severity and location, and a raw logger (plus
//! an `io::Write` adaptor) for line-oriented byte streams.

use std::io;

use chrono::{DateTime, Utc};

use crate::entry::{RAW_LINE_LIMIT, truncate_at_char_boundary};
use crate::{Dn, LeveledPayload, LogTree, Payload, RawPayload, Severity};

/// Writes leveled entries to one DN.
#[derive(Debug, Clone)]
pub struct LeveledLogger {
    tree: LogTree,
    dn: Dn,
}

impl LeveledLogger {
    pub(crate) fn new(tree: LogTree, dn: Dn) -> LeveledLogger {
        LeveledLogger { tree, dn }
    }

    /// The DN this logger writes to.
    pub fn dn(&self) -> &Dn {
        &self.dn
    }

    /// Logs an Info message; `message` may span several lines.
    pub fn info(&self, location: &str, message: impl AsRef<str>) {
        self.log(Severity::Info, location, message);
    }

    /// Logs a Warning message.
    pub fn warning(&self, location: &str, message: impl AsRef<str>) {
        self.log(Severity::Warning, location, message);
    }

    /// Logs an Error message.
    pub fn error(&self, location: &str, message: impl AsRef<str>) {
        self.log(Severity::Error, location, message);
    }

    /// Logs a Fatal message (it is only recorded; nothing is terminated).
    pub fn fatal(&self, location: &str, message: impl AsRef<str>) {
        self.log(Severity::Fatal, location, message);
    }

    /// Logs a message at `severity`, timestamped now.
    pub fn log(&self, severity: Severity, location: &str, message: impl AsRef<str>) {
        self.log_at(Utc::now(), severity, location, message);
    }

    /// Logs a message with an explicit timestamp (for ingested logs that carry their own).
    pub fn log_at(
        &self,
        timestamp: DateTime<Utc>,
        severity: Severity,
        location: &str,
        message: impl AsRef<str>,
    ) {
        self.log_payload(LeveledPayload::new(
            timestamp,
            severity,
            location,
            message.as_ref(),
        ));
    }

    /// Files a prepared payload as one atomic entry.
    pub fn log_payload(&self, payload: LeveledPayload) {
        self.tree
            .publish(self.dn.clone(), Payload::Leveled(payload));
    }
}

/// Writes raw lines to one DN.
#[derive(Debug, Clone)]
pub struct RawLogger {
    tree: LogTree,
    dn: Dn,
}

impl RawLogger {
    pub(crate) fn new(tree: LogTree, dn: Dn) -> RawLogger {
        RawLogger { tree, dn }
    }

    /// The DN this logger writes to.
    pub fn dn(&self) -> &Dn {
        &self.dn
    }

    /// Logs one line; embedded newlines split it into several entries since a raw entry is
    /// by definition a single line.
    pub fn write_line(&self, line: &str) {
        for part in line.split('\n') {
            self.tree
                .publish(self.dn.clone(), Payload::Raw(RawPayload::new(part)));
        }
    }

    /// An `io::Write` adaptor that splits a byte stream into lines.
    pub fn writer(&self) -> RawWriter {
        RawWriter {
            logger: self.clone(),
            buf: Vec::new(),
            line_len: 0,
        }
    }

    fn write_truncated(&self, data: String, original_length: usize) {
        self.tree.publish(
            self.dn.clone(),
            Payload::Raw(RawPayload {
                data,
                original_length,
            }),
        );
    }
}

/// Line-splitting `io::Write` adaptor for a [`RawLogger`]. Partial lines are buffered until
/// their newline; a pending partial line is flushed as an entry on drop.
#[derive(Debug)]
pub struct RawWriter {
    logger: RawLogger,
    /// Start of the current line, capped a little above the limit.
    buf: Vec<u8>,
    /// Full byte length of the current line so far.
    line_len: usize,
}

/// Bytes kept per line: the limit plus room for one whole UTF-8 char, so the cut can be made
/// at a char boundary after decoding without buffering an unbounded line.
const KEEP_BYTES: usize = RAW_LINE_LIMIT + 4;

impl RawWriter {
    fn push(&mut self, bytes: &[u8]) {
        let room = KEEP_BYTES.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.line_len += bytes.len();
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let data = truncate_at_char_boundary(&text, RAW_LINE_LIMIT).to_string();
        self.logger.write_truncated(data, self.line_len);
        self.buf.clear();
        self.line_len = 0;
    }
}

impl io::Write for RawWriter {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.push(&data[..nl]);
            self.emit();
            data = &data[nl + 1..];
        }
        self.push(data);
        Ok(total)
    }

    /// Does not emit a pending partial line: writers flush mid-line all the time, and
    /// splitting lines there would garble the log.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for RawWriter {
    fn drop(&mut self) {
        if self.line_len > 0 {
            self.emit();
        }
    }
}
