//! Tests of the tree's read semantics: filters, retention, ordering and subscriptions.

use std::io::Write as _;

use crate::{
    Backlog, Dn, Error, LogEntry, LogTree, RETENTION_PER_DN, ReadOptions, SUBSCRIBER_BUFFER,
    Severity,
};

fn dn(s: &str) -> Dn {
    Dn::new(s).expect("valid dn")
}

fn all() -> ReadOptions {
    ReadOptions {
        backlog: Backlog::All,
        ..Default::default()
    }
}

fn read(tree: &LogTree, at: &str, opts: ReadOptions) -> Vec<LogEntry> {
    tree.read(&dn(at), opts).expect("read").backlog
}

/// First message line (leveled) or data (raw) of every entry.
fn texts(entries: &[LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match (e.leveled(), e.raw()) {
            (Some(l), _) => l.lines[0].clone(),
            (_, Some(r)) => r.data.clone(),
            _ => unreachable!(),
        })
        .collect()
}

/// A tree with leveled and raw entries at a few DNs, in a known global order.
fn populated() -> LogTree {
    let tree = LogTree::new();
    let foo = tree.leveled(dn("foo"));
    let bar = tree.leveled(dn("foo.bar"));
    let baz = tree.leveled(dn("foo.bar.baz"));
    let barr = tree.leveled(dn("foo.barr"));
    foo.info("a.rs:1", "foo info");
    bar.info("a.rs:2", "bar info");
    tree.raw(dn("foo.bar")).write_line("bar raw");
    baz.warning("a.rs:3", "baz warning");
    barr.error("a.rs:4", "barr error");
    bar.error("a.rs:5", "bar error");
    bar.fatal("a.rs:6", "bar fatal");
    tree
}

#[test]
fn exact_dn_is_default() {
    let tree = populated();
    assert_eq!(
        texts(&read(&tree, "foo.bar", all())),
        vec!["bar info", "bar raw", "bar error", "bar fatal"]
    );
    // Logging to a child does not log to the parent.
    assert_eq!(texts(&read(&tree, "foo", all())), vec!["foo info"]);
    assert!(read(&tree, "nothing.here", all()).is_empty());
}

#[test]
fn with_children_uses_component_prefix() {
    let tree = populated();
    let opts = ReadOptions {
        with_children: true,
        ..all()
    };
    assert_eq!(
        texts(&read(&tree, "foo.bar", opts.clone())),
        vec![
            "bar info",
            "bar raw",
            "baz warning",
            "bar error",
            "bar fatal"
        ],
        "foo.bar matches foo.bar.baz but not foo.barr"
    );
    assert_eq!(read(&tree, "", opts.clone()).len(), 7, "root matches all");
    assert_eq!(read(&tree, "foo", opts).len(), 7);
}

#[test]
fn only_raw_and_only_leveled() {
    let tree = populated();
    let raw = ReadOptions {
        only_raw: true,
        with_children: true,
        ..all()
    };
    assert_eq!(texts(&read(&tree, "", raw)), vec!["bar raw"]);
    let leveled = ReadOptions {
        only_leveled: true,
        ..all()
    };
    assert_eq!(
        texts(&read(&tree, "foo.bar", leveled)),
        vec!["bar info", "bar error", "bar fatal"]
    );
}

#[test]
fn min_severity_drops_lower_and_raw() {
    let tree = populated();
    let opts = ReadOptions {
        with_children: true,
        min_severity: Some(Severity::Error),
        ..all()
    };
    assert_eq!(
        texts(&read(&tree, "", opts)),
        vec!["barr error", "bar error", "bar fatal"]
    );
    let warn = ReadOptions {
        with_children: true,
        min_severity: Some(Severity::Warning),
        ..all()
    };
    assert_eq!(
        texts(&read(&tree, "foo.bar", warn)),
        vec!["baz warning", "bar error", "bar fatal"]
    );
}

#[test]
fn raw_and_leveled_together_is_an_error() {
    let tree = populated();
    let opts = ReadOptions {
        only_raw: true,
        only_leveled: true,
        ..all()
    };
    assert_eq!(
        tree.read(&dn("foo"), opts).err(),
        Some(Error::RawAndLeveled)
    );
}

#[test]
fn backlog_none_and_newest_across_subtree() {
    let tree = populated();
    assert!(read(&tree, "foo", ReadOptions::default()).is_empty());
    let newest = ReadOptions {
        with_children: true,
        backlog: Backlog::Newest(3),
        ..Default::default()
    };
    let got = read(&tree, "foo", newest);
    assert_eq!(texts(&got), vec!["barr error", "bar error", "bar fatal"]);
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");

    let many = ReadOptions {
        with_children: true,
        backlog: Backlog::Newest(100),
        ..Default::default()
    };
    assert_eq!(read(&tree, "foo", many).len(), 7);
}

#[test]
fn newest_interleaves_dns_by_seq() {
    let tree = LogTree::new();
    let a = tree.leveled(dn("x.a"));
    let b = tree.leveled(dn("x.b"));
    for i in 0..10 {
        a.info("t.rs:1", format!("a{i}"));
        b.info("t.rs:1", format!("b{i}"));
    }
    let opts = ReadOptions {
        with_children: true,
        backlog: Backlog::Newest(4),
        ..Default::default()
    };
    assert_eq!(texts(&read(&tree, "x", opts)), vec!["a8", "b8", "a9", "b9"]);
}

#[test]
fn retention_evicts_oldest_per_dn() {
    let tree = LogTree::new();
    let log = tree.leveled(dn("busy"));
    tree.leveled(dn("quiet")).info("t.rs:1", "kept");
    for i in 0..=RETENTION_PER_DN {
        log.info("t.rs:1", format!("{i}"));
    }
    let got = read(&tree, "busy", all());
    assert_eq!(got.len(), RETENTION_PER_DN);
    assert_eq!(texts(&got[..1]), vec!["1"], "entry 0 was evicted");
    assert_eq!(
        texts(&got[RETENTION_PER_DN - 1..]),
        vec![RETENTION_PER_DN.to_string()]
    );
    // Retention is per DN: the quiet DN keeps its single entry.
    assert_eq!(texts(&read(&tree, "quiet", all())), vec!["kept"]);
}

#[test]
fn multi_line_leveled_is_one_entry() {
    let tree = LogTree::new();
    tree.leveled(dn("m"))
        .error("t.rs:9", "line one\nline two\nline three");
    let got = read(&tree, "m", all());
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].leveled().map(|l| l.lines.clone()),
        Some(vec![
            "line one".to_string(),
            "line two".to_string(),
            "line three".to_string()
        ])
    );
}

#[test]
fn raw_writer_splits_buffers_and_truncates() {
    let tree = LogTree::new();
    {
        let mut w = tree.raw(dn("r")).writer();
        w.write_all(b"par").expect("write");
        w.write_all(b"tial\nsecond\nthi").expect("write");
        w.flush().expect("flush");
        let long = "é".repeat(1000); // 2000 bytes, 2-byte chars
        w.write_all(long.as_bytes()).expect("write");
        w.write_all(b"\nend").expect("write");
        // `end` has no newline; dropping the writer files it.
    }
    let got = read(&tree, "r", all());
    let raws: Vec<_> = got.iter().filter_map(|e| e.raw()).collect();
    assert_eq!(raws.len(), 4);
    assert_eq!(raws[0].data, "partial");
    assert_eq!(raws[1].data, "second");
    assert_eq!(raws[2].original_length, 3 + 2000);
    assert_eq!(
        raws[2].data.len(),
        1023,
        "cut before the char straddling 1024"
    );
    assert!(raws[2].data.starts_with("thié"));
    assert_eq!(raws[3].data, "end");
}

#[test]
fn raw_write_line_truncates_and_splits() {
    let tree = LogTree::new();
    let raw = tree.raw(dn("r"));
    raw.write_line(&"z".repeat(5000));
    raw.write_line("a\nb");
    let got = read(&tree, "r", all());
    let raws: Vec<_> = got.iter().filter_map(|e| e.raw()).collect();
    assert_eq!(raws[0].data.len(), 1024);
    assert_eq!(raws[0].original_length, 5000);
    assert_eq!(raws[1].data, "a");
    assert_eq!(raws[2].data, "b");
}

#[tokio::test]
async fn stream_receives_matching_new_entries() {
    let tree = populated();
    let mut reader = tree
        .read(
            &dn("foo.bar"),
            ReadOptions {
                with_children: true,
                stream: true,
                only_leveled: true,
                ..Default::default()
            },
        )
        .expect("read");
    assert!(reader.backlog.is_empty());
    let stream = reader.stream.as_mut().expect("stream");
    tree.leveled(dn("foo.barr"))
        .info("t.rs:1", "not in subtree");
    tree.raw(dn("foo.bar")).write_line("raw filtered");
    tree.leveled(dn("foo.bar.baz")).info("t.rs:1", "wanted");
    let got = stream.next().await.expect("entry");
    assert_eq!(texts(&[got]), vec!["wanted"]);
    assert!(stream.try_next().is_none());
    assert_eq!(stream.missed(), 0);
}

#[tokio::test]
async fn subscriber_overflow_counts_missed() {
    let tree = LogTree::new();
    let mut reader = tree
        .read(
            &dn("x"),
            ReadOptions {
                stream: true,
                ..Default::default()
            },
        )
        .expect("read");
    let log = tree.leveled(dn("x"));
    for i in 0..SUBSCRIBER_BUFFER + 10 {
        log.info("t.rs:1", format!("{i}"));
    }
    let stream = reader.stream.as_mut().expect("stream");
    assert_eq!(stream.missed(), 10);
    let mut got = Vec::new();
    while let Some(e) = stream.try_next() {
        got.push(e);
    }
    assert_eq!(got.len(), SUBSCRIBER_BUFFER);
    assert_eq!(
        texts(&got[..1]),
        vec!["0"],
        "the oldest are kept, new ones dropped"
    );
}

#[test]
fn dropped_subscription_is_pruned() {
    let tree = LogTree::new();
    let reader = tree
        .read(
            &dn("x"),
            ReadOptions {
                stream: true,
                ..Default::default()
            },
        )
        .expect("read");
    assert_eq!(tree.subscriber_count(), 1);
    drop(reader);
    assert_eq!(tree.subscriber_count(), 0);
    tree.leveled(dn("y")).info("t.rs:1", "prunes");
    assert_eq!(tree.inner.lock().expect("lock").subscribers.len(), 0);
}

#[test]
fn backlog_and_stream_have_no_gap_and_no_duplicate() {
    let tree = LogTree::new();
    const TOTAL: u64 = 5000;
    let writer = {
        let tree = tree.clone();
        std::thread::spawn(move || {
            let log = tree.leveled(dn("race"));
            for i in 0..TOTAL {
                log.info("t.rs:1", format!("{i}"));
            }
        })
    };
    // Subscribe while the writer is running.
    while read(&tree, "race", all()).is_empty() {
        std::thread::yield_now();
    }
    let mut reader = tree
        .read(
            &dn("race"),
            ReadOptions {
                backlog: Backlog::All,
                stream: true,
                ..Default::default()
            },
        )
        .expect("read");
    writer.join().expect("writer");

    let backlog: Vec<u64> = reader.backlog.iter().map(|e| e.seq).collect();
    let k = backlog.len() as u64;
    assert_eq!(backlog, (0..k).collect::<Vec<_>>());
    // The stream was not drained while the writer ran, so it holds the entries right after
    // the snapshot and overflow only dropped the tail: the boundary is exact.
    let stream = reader.stream.as_mut().expect("stream");
    let mut streamed = Vec::new();
    while let Some(e) = stream.try_next() {
        streamed.push(e.seq);
    }
    let n = streamed.len() as u64;
    assert_eq!(streamed, (k..k + n).collect::<Vec<_>>());
    assert_eq!(n + stream.missed(), TOTAL - k);
}
