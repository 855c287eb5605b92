//! The node's log tree: DN parsing, read filters and the reader (backlog and live
//! subscriptions), and the parser of etcd's zap JSON log lines.

use arbitrary::{Arbitrary, Unstructured};
use chrono::{DateTime, TimeZone, Utc};
use logtree::{
    Backlog, Dn, LeveledPayload, LogEntry, LogTree, Payload, RawPayload, ReadOptions, Severity,
};

/// DN parsing and navigation. Properties: a DN keeps its text; its components rebuild it; it
/// is within its parent and every ancestor; a child of it is within it and has it as parent.
pub fn logtree_dn(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (first, second) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(dn) = Dn::new(first) else {
        assert!(
            first.split('.').any(str::is_empty),
            "valid DN {first:?} refused"
        );
        return;
    };
    assert_eq!(dn.as_str(), first);
    assert_eq!(dn.components().collect::<Vec<_>>().join("."), first);
    assert!(dn.is_within(&Dn::root()));
    let mut ancestor = dn.parent();
    while let Some(a) = ancestor {
        assert!(dn.is_within(&a), "{dn} not within its ancestor {a}");
        assert!(!a.is_within(&dn), "ancestor {a} within {dn}");
        ancestor = a.parent();
    }
    match dn.child(second) {
        Ok(child) => {
            assert!(child.is_within(&dn));
            assert_eq!(child.parent().as_ref(), Some(&dn));
            assert_eq!(Dn::new(child.as_str()).as_ref(), Ok(&child));
        }
        Err(_) => assert!(second.is_empty() || second.contains('.')),
    }
    if let Ok(other) = Dn::new(second) {
        // Within is component-wise: a string prefix that ends mid-component does not count.
        let expected = other.is_root()
            || dn == other
            || dn
                .as_str()
                .strip_prefix(other.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
        assert_eq!(dn.is_within(&other), expected, "{dn} within {other}");
    }
}

/// One step of a [`logtree_read`] run.
#[derive(Debug, Arbitrary)]
enum Op {
    Leveled {
        dn: String,
        severity: u8,
        location: String,
        message: String,
    },
    Raw {
        dn: String,
        line: String,
    },
    Read {
        dn: String,
        with_children: bool,
        backlog: u8,
        newest: u8,
        stream: bool,
        only_raw: bool,
        only_leveled: bool,
        min_severity: Option<u8>,
    },
}

fn severity(n: u8) -> Severity {
    [
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Fatal,
    ][usize::from(n % 4)]
}

/// What a read should return, computed from the read options alone.
fn wanted(dn: &Dn, opts: &ReadOptions, entry: &(Dn, Payload)) -> bool {
    let (at, payload) = entry;
    let dn_ok = if opts.with_children {
        dn.is_root()
            || at == dn
            || at
                .as_str()
                .strip_prefix(dn.as_str())
                .is_some_and(|r| r.starts_with('.'))
    } else {
        at == dn
    };
    let kind_ok = match payload {
        Payload::Raw(_) => !opts.only_leveled && opts.min_severity.is_none(),
        Payload::Leveled(l) => !opts.only_raw && opts.min_severity.is_none_or(|m| l.severity >= m),
    };
    dn_ok && kind_ok
}

/// Upper bound of entries a run logs: below the per-DN retention and a subscriber's buffer, so
/// the model needs neither.
const MAX_ENTRIES: usize = 100;

fn timestamp() -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000, 0)
        .single()
        .unwrap_or_default()
}

/// A log tree driven by a sequence of writes and reads (backlog and streaming), checked
/// against a model. Properties: the backlog is exactly the newest matching entries in logging
/// order, every subscription gets exactly the matching entries logged after it, sequence
/// numbers increase, reads asking for raw-only and leveled-only at once fail.
pub fn logtree_read(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let tree = LogTree::new();
    let mut logged: Vec<(Dn, Payload)> = Vec::new();
    let mut subscriptions = Vec::new();
    while !u.is_empty() {
        let Ok(op) = u.arbitrary::<Op>() else {
            break;
        };
        match op {
            Op::Leveled {
                dn,
                severity: s,
                location,
                message,
            } => {
                let Ok(dn) = Dn::new(dn) else { continue };
                if logged.len() >= MAX_ENTRIES {
                    continue;
                }
                tree.leveled(dn.clone())
                    .log_at(timestamp(), severity(s), &location, &message);
                let payload = LeveledPayload::new(timestamp(), severity(s), location, &message);
                logged.push((dn, Payload::Leveled(payload)));
            }
            Op::Raw { dn, line } => {
                let Ok(dn) = Dn::new(dn) else { continue };
                if logged.len() + line.split('\n').count() > MAX_ENTRIES {
                    continue;
                }
                tree.raw(dn.clone()).write_line(&line);
                for part in line.split('\n') {
                    logged.push((dn.clone(), Payload::Raw(RawPayload::new(part))));
                }
            }
            Op::Read {
                dn,
                with_children,
                backlog,
                newest,
                stream,
                only_raw,
                only_leveled,
                min_severity,
            } => {
                let Ok(dn) = Dn::new(dn) else { continue };
                let opts = ReadOptions {
                    with_children,
                    backlog: match backlog % 3 {
                        0 => Backlog::None,
                        1 => Backlog::All,
                        _ => Backlog::Newest(usize::from(newest)),
                    },
                    stream,
                    only_raw,
                    only_leveled,
                    min_severity: min_severity.map(severity),
                };
                let reader = match tree.read(&dn, opts.clone()) {
                    Ok(r) => r,
                    Err(_) => {
                        assert!(only_raw && only_leveled, "read refused: {opts:?}");
                        continue;
                    }
                };
                assert!(!(only_raw && only_leveled), "contradictory read accepted");
                let matching: Vec<_> = logged.iter().filter(|e| wanted(&dn, &opts, e)).collect();
                let expected = match opts.backlog {
                    Backlog::None => &matching[..0],
                    Backlog::All => &matching[..],
                    Backlog::Newest(n) => &matching[matching.len().saturating_sub(n)..],
                };
                check(&reader.backlog, expected);
                if let Some(sub) = reader.stream {
                    subscriptions.push((sub, dn, opts, logged.len()));
                }
            }
        }
    }
    for (mut sub, dn, opts, from) in subscriptions {
        let mut got = Vec::new();
        while let Some(e) = sub.try_next() {
            got.push(e);
        }
        let expected: Vec<_> = logged[from..]
            .iter()
            .filter(|e| wanted(&dn, &opts, e))
            .collect();
        check(&got, &expected);
        assert_eq!(sub.missed(), 0);
    }
}

fn check(got: &[LogEntry], expected: &[&(Dn, Payload)]) {
    let got_view: Vec<_> = got.iter().map(|e| (&e.dn, &e.payload)).collect();
    let expected_view: Vec<_> = expected.iter().map(|(d, p)| (d, p)).collect();
    assert_eq!(got_view, expected_view);
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "out of order");
    for e in got {
        let _ = logtree::render(e, false);
        let _ = logtree::render(e, true);
    }
}

/// etcd's zap JSON lines. Properties: a line is parsed exactly when it is a JSON object; the
/// etcd sink files it as one leveled entry, or else as one raw entry per line.
pub fn etcd_log_line(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let now = timestamp();
    let parsed = logtree::etcd::parse_line_at(&line, now);
    let is_object = matches!(
        serde_json::from_str::<serde_json::Value>(line.trim()),
        Ok(serde_json::Value::Object(_))
    );
    assert_eq!(parsed.is_some(), is_object, "parsed {parsed:?}");
    if let Some(p) = &parsed {
        assert!(!p.lines.is_empty());
    }
    let tree = LogTree::new();
    let dn = Dn::new("etcd").expect("dn");
    let mut sink = logtree::etcd_sink(&tree, dn.clone());
    sink(&line);
    let read = tree
        .read(
            &dn,
            ReadOptions {
                backlog: Backlog::All,
                ..Default::default()
            },
        )
        .expect("read");
    let expected = if is_object {
        1
    } else {
        line.split('\n').count()
    };
    assert_eq!(read.backlog.len(), expected);
    for e in &read.backlog {
        let _ = logtree::render(e, false);
    }
}
