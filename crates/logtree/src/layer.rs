//! A `tracing_subscriber` layer that files `tracing` events into the log tree, under the DN
//! of the innermost enclosing span that carries a `dn` field (the supervisor wraps every
//! runnable in such a span).

use std::fmt::{self, Write as _};

use chrono::Utc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::entry::basename;
use crate::{Dn, LeveledPayload, LogTree, Payload, Severity};

/// Name of the span field that carries the DN.
const DN_FIELD: &str = "dn";

/// Files tracing events as leveled log tree entries.
#[derive(Debug, Clone)]
pub struct LogTreeLayer {
    tree: LogTree,
    default_dn: Dn,
    max_level: Level,
}

/// The DN stored in a span's extensions when the span (or a later `record`) sets `dn`.
struct SpanDn(Dn);

impl LogTreeLayer {
    /// A layer filing events outside any `dn` span under `root`, dropping DEBUG and TRACE.
    pub fn new(tree: LogTree) -> LogTreeLayer {
        LogTreeLayer {
            tree,
            // Cannot fail: "root" is a valid DN.
            default_dn: Dn::new("root").unwrap_or_default(),
            max_level: Level::INFO,
        }
    }

    /// Sets the DN for events that are not inside a span with a `dn` field.
    pub fn with_default_dn(mut self, dn: Dn) -> LogTreeLayer {
        self.default_dn = dn;
        self
    }

    /// Sets the most verbose level that is kept (default INFO).
    pub fn with_max_level(mut self, level: Level) -> LogTreeLayer {
        self.max_level = level;
        self
    }
}

fn severity(level: &Level) -> Severity {
    match *level {
        Level::ERROR => Severity::Error,
        Level::WARN => Severity::Warning,
        _ => Severity::Info,
    }
}

impl<S> Layer<S> for LogTreeLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = DnVisitor(None);
        attrs.record(&mut visitor);
        if let (Some(dn), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().insert(SpanDn(dn));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut visitor = DnVisitor(None);
        values.record(&mut visitor);
        if let (Some(dn), Some(span)) = (visitor.0, ctx.span(id)) {
            span.extensions_mut().replace(SpanDn(dn));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Filtering here rather than in `enabled`: a layer's `enabled` would also silence
        // every other layer stacked with this one (e.g. a stderr fmt layer).
        if *meta.level() > self.max_level {
            return;
        }
        let dn = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .into_iter()
                    .find_map(|span| span.extensions().get::<SpanDn>().map(|d| d.0.clone()))
            })
            .unwrap_or_else(|| self.default_dn.clone());
        let location = match (meta.file(), meta.line()) {
            (Some(file), Some(line)) => format!("{}:{line}", basename(file)),
            _ => meta.target().to_string(),
        };
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let payload = LeveledPayload::new(
            Utc::now(),
            severity(meta.level()),
            location,
            &visitor.finish(),
        );
        self.tree.publish(dn, Payload::Leveled(payload));
    }
}

/// Extracts a valid `dn` field; invalid DNs are ignored so the event falls back to an outer
/// span or the default rather than being lost.
struct DnVisitor(Option<Dn>);

impl Visit for DnVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == DN_FIELD {
            self.0 = Dn::new(value).ok();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == DN_FIELD {
            // `dn = %x` arrives here already Display-formatted; `dn = ?x` adds quotes.
            let s = format!("{value:?}");
            self.0 = Dn::new(s.trim_matches('"')).ok();
        }
    }
}

/// Builds `message key=value key=value` from an event's fields.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl MessageVisitor {
    fn finish(self) -> String {
        let mut out = self.message;
        out.push_str(&self.fields);
        out
    }
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else if !field.name().starts_with("log.") {
            // `log.*` fields are tracing-log bookkeeping already reflected in the metadata.
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::{Backlog, ReadOptions};

    fn dn(s: &str) -> Dn {
        Dn::new(s).expect("valid dn")
    }

    fn all(tree: &LogTree, at: &str) -> Vec<crate::LogEntry> {
        tree.read(
            &dn(at),
            ReadOptions {
                backlog: Backlog::All,
                ..Default::default()
            },
        )
        .expect("read")
        .backlog
    }

    #[test]
    fn events_land_under_innermost_span_dn() {
        let tree = LogTree::new();
        let subscriber = tracing_subscriber::registry().with(LogTreeLayer::new(tree.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let outer = tracing::info_span!("runnable", dn = "root.a");
            let _o = outer.enter();
            tracing::warn!(count = 3, name = "x", "in a");
            {
                // A span without `dn` does not hide the enclosing runnable's DN.
                let plain = tracing::info_span!("work", step = 1);
                let _p = plain.enter();
                tracing::error!("in a, nested");
                let inner = tracing::info_span!("runnable", dn = %dn("root.a.b"));
                let _i = inner.enter();
                tracing::info!("in b");
            }
            tracing::debug!("dropped by default");
        });

        let root = all(&tree, "root");
        assert_eq!(root.len(), 1);
        assert_eq!(
            root[0].leveled().map(|l| l.lines.clone()),
            Some(vec!["outside".to_string()])
        );

        let a = all(&tree, "root.a");
        assert_eq!(a.len(), 2, "{a:?}");
        let first = a[0].leveled().expect("leveled");
        assert_eq!(first.severity, Severity::Warning);
        assert_eq!(first.lines, vec!["in a count=3 name=x"]);
        assert!(
            first.location.starts_with("layer.rs:"),
            "{}",
            first.location
        );
        assert_eq!(a[1].leveled().map(|l| l.severity), Some(Severity::Error));

        let b = all(&tree, "root.a.b");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].leveled().map(|l| l.lines[0].as_str()), Some("in b"));
    }

    #[test]
    fn max_level_and_default_dn() {
        let tree = LogTree::new();
        let layer = LogTreeLayer::new(tree.clone())
            .with_default_dn(dn("init"))
            .with_max_level(Level::DEBUG);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!("kept");
            tracing::trace!("dropped");
            tracing::info!("multi\nline");
        });
        let init = all(&tree, "init");
        assert_eq!(init.len(), 2);
        assert_eq!(init[0].leveled().map(|l| l.severity), Some(Severity::Info));
        assert_eq!(
            init[1].leveled().map(|l| l.lines.clone()),
            Some(vec!["multi".to_string(), "line".to_string()])
        );
    }
}
