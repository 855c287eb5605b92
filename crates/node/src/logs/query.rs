//! Validation of a GetLogsRequest into a logtree read, and conversion of logtree
//! entries to their protobuf form.
//!
//! Rules: more than [`MAX_FILTERS`] filters, a DN with an empty component, backlog mode
//! INVALID (or unknown), COUNT with a count ≤ 0, OnlyRaw together with OnlyLeveled, and a
//! minimum severity of INVALID (or unknown) are InvalidArgument. A stream mode other than
//! UNBUFFERED means no streaming; INVALID is *not* rejected (upstream does not either). A
//! filter message with no filter set is ignored.

use logtree::{Backlog, Dn, LogEntry, Payload, ReadOptions, Severity};
use proto::api::GetLogsRequest;
use proto::api::get_logs_request::{BacklogMode, StreamMode};
use proto::common::log_filter::Filter;
use proto::common::{LeveledLogSeverity, log_entry};
use tonic::Status;

/// Most filters one request may carry.
pub const MAX_FILTERS: usize = 10;

/// A validated Logs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsQuery {
    /// The DN to read.
    pub dn: Dn,
    /// How to read it.
    pub options: ReadOptions,
}

/// Validates a request.
pub fn parse(req: &GetLogsRequest) -> Result<LogsQuery, Status> {
    if req.filters.len() > MAX_FILTERS {
        return Err(Status::invalid_argument(format!(
            "too many filters: {} (at most {MAX_FILTERS})",
            req.filters.len()
        )));
    }
    let dn = Dn::new(req.dn.clone()).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut options = ReadOptions::default();
    for f in &req.filters {
        match &f.filter {
            Some(Filter::WithChildren(_)) => options.with_children = true,
            Some(Filter::OnlyRaw(_)) => options.only_raw = true,
            Some(Filter::OnlyLeveled(_)) => options.only_leveled = true,
            Some(Filter::LeveledWithMinimumSeverity(m)) => {
                options.min_severity = Some(severity_from_proto(m.minimum)?);
            }
            None => {}
        }
    }
    if options.only_raw && options.only_leveled {
        return Err(Status::invalid_argument(
            "OnlyRaw and OnlyLeveled filters are mutually exclusive",
        ));
    }
    options.backlog = match BacklogMode::try_from(req.backlog_mode) {
        Ok(BacklogMode::BacklogDisable) => Backlog::None,
        Ok(BacklogMode::BacklogAll) => Backlog::All,
        Ok(BacklogMode::BacklogCount) => {
            if req.backlog_count <= 0 {
                return Err(Status::invalid_argument(
                    "backlog_count must be positive with BACKLOG_COUNT",
                ));
            }
            Backlog::Newest(usize::try_from(req.backlog_count).unwrap_or(usize::MAX))
        }
        Ok(BacklogMode::BacklogInvalid) | Err(_) => {
            return Err(Status::invalid_argument(
                "backlog_mode must be set (BACKLOG_DISABLE, BACKLOG_ALL or BACKLOG_COUNT)",
            ));
        }
    };
    options.stream = req.stream_mode == StreamMode::StreamUnbuffered as i32;
    Ok(LogsQuery { dn, options })
}

/// A wire severity as a logtree severity; INVALID and unknown values are InvalidArgument.
pub fn severity_from_proto(v: i32) -> Result<Severity, Status> {
    match LeveledLogSeverity::try_from(v) {
        Ok(LeveledLogSeverity::Info) => Ok(Severity::Info),
        Ok(LeveledLogSeverity::Warning) => Ok(Severity::Warning),
        Ok(LeveledLogSeverity::Error) => Ok(Severity::Error),
        Ok(LeveledLogSeverity::Fatal) => Ok(Severity::Fatal),
        Ok(LeveledLogSeverity::Invalid) | Err(_) => Err(Status::invalid_argument(format!(
            "invalid minimum severity {v}"
        ))),
    }
}

fn severity_to_proto(s: Severity) -> LeveledLogSeverity {
    match s {
        Severity::Info => LeveledLogSeverity::Info,
        Severity::Warning => LeveledLogSeverity::Warning,
        Severity::Error => LeveledLogSeverity::Error,
        Severity::Fatal => LeveledLogSeverity::Fatal,
    }
}

/// A logtree entry in its protobuf form.
pub fn entry_to_proto(e: &LogEntry) -> proto::common::LogEntry {
    let kind = match &e.payload {
        Payload::Leveled(l) => log_entry::Kind::Leveled(log_entry::Leveled {
            lines: l.lines.clone(),
            timestamp: Some(prost_types::Timestamp {
                seconds: l.timestamp.timestamp(),
                nanos: i32::try_from(l.timestamp.timestamp_subsec_nanos()).unwrap_or(0),
            }),
            severity: severity_to_proto(l.severity) as i32,
            location: l.location.clone(),
        }),
        Payload::Raw(r) => log_entry::Kind::Raw(log_entry::Raw {
            data: r.data.clone(),
            original_length: i64::try_from(r.original_length).unwrap_or(i64::MAX),
        }),
    };
    proto::common::LogEntry {
        dn: e.dn.to_string(),
        kind: Some(kind),
    }
}
