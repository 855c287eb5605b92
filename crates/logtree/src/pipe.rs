//! Ingestion of child-process output: read lines from a pipe and hand them to a sink that
//! files them in the log tree.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::{Dn, LogTree, etcd};

/// Reads `reader` to EOF, calling `sink` with every line (without its `\n` or `\r\n`).
/// A final line without newline is delivered too; invalid UTF-8 is replaced, not dropped.
/// A whole line is held in memory; truncation to the raw limit happens in the sink.
pub async fn pipe_lines<R, F>(reader: R, mut sink: F) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    F: FnMut(&str),
{
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).await? == 0 {
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        sink(&String::from_utf8_lossy(&buf));
    }
}

/// A sink filing every line as a raw entry at `dn`.
pub fn raw_sink(tree: &LogTree, dn: Dn) -> impl FnMut(&str) + Send + 'static {
    let raw = tree.raw(dn);
    move |line: &str| raw.write_line(line)
}

/// A sink parsing etcd zap JSON lines into leveled entries at `dn`; anything that does not
/// parse is filed as a raw entry at the same DN so that no output is ever lost.
pub fn etcd_sink(tree: &LogTree, dn: Dn) -> impl FnMut(&str) + Send + 'static {
    let leveled = tree.leveled(dn.clone());
    let raw = tree.raw(dn);
    move |line: &str| match etcd::parse_line(line) {
        Some(payload) => leveled.log_payload(payload),
        None => raw.write_line(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backlog, ReadOptions, Severity};

    fn backlog(tree: &LogTree, dn: &Dn) -> Vec<crate::LogEntry> {
        tree.read(
            dn,
            ReadOptions {
                backlog: Backlog::All,
                ..Default::default()
            },
        )
        .expect("read")
        .backlog
    }

    #[tokio::test]
    async fn pipes_lines_including_last_partial() {
        let mut lines = Vec::new();
        let input: &[u8] = b"one\r\ntwo\n\nthree";
        pipe_lines(input, |l| lines.push(l.to_string()))
            .await
            .expect("pipe");
        assert_eq!(lines, vec!["one", "two", "", "three"]);
    }

    #[tokio::test]
    async fn raw_sink_files_lines() {
        let tree = LogTree::new();
        let dn = Dn::new("root.child").expect("dn");
        let input: &[u8] = b"hello\nworld\n";
        pipe_lines(input, raw_sink(&tree, dn.clone()))
            .await
            .expect("pipe");
        let data: Vec<String> = backlog(&tree, &dn)
            .iter()
            .filter_map(|e| e.raw().map(|r| r.data.clone()))
            .collect();
        assert_eq!(data, vec!["hello", "world"]);
    }

    #[tokio::test]
    async fn etcd_sink_parses_or_falls_back_to_raw() {
        let tree = LogTree::new();
        let dn = Dn::new("root.consensus.etcd").expect("dn");
        let input: &[u8] = concat!(
            r#"{"level":"warn","ts":"2024-05-01T12:00:00.000Z","caller":"etcdserver/server.go:123","msg":"slow fdatasync","took":"1.5s"}"#,
            "\n",
            "panic: something not json\n",
        )
        .as_bytes();
        pipe_lines(input, etcd_sink(&tree, dn.clone()))
            .await
            .expect("pipe");
        let entries = backlog(&tree, &dn);
        assert_eq!(entries.len(), 2);
        let l = entries[0].leveled().expect("leveled");
        assert_eq!(l.severity, Severity::Warning);
        assert_eq!(l.location, "etcdserver/server.go:123");
        assert_eq!(l.lines, vec!["slow fdatasync took=1.5s"]);
        assert_eq!(
            entries[1].raw().map(|r| r.data.as_str()),
            Some("panic: something not json")
        );
    }
}
