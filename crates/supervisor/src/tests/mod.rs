//! Supervisor behaviour tests, grouped by topic; shared helpers live here.

mod restart;
mod shutdown;
mod tree;

use std::time::Duration;

use logtree::{Backlog, Dn, LogEntry, LogTree, ReadOptions};
use tokio::sync::mpsc;

/// Generous deadline for anything the test waits on: virtual under paused time, and only
/// reached in real time when a test is about to fail anyway.
const DEADLINE: Duration = Duration::from_secs(60);

/// Receives the next event or fails the test at the deadline.
async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("event channel closed")
}

/// Everything logged at exactly `dn`.
fn logs(tree: &LogTree, dn: &str) -> Vec<LogEntry> {
    tree.read(
        &Dn::new(dn).expect("valid dn"),
        ReadOptions {
            backlog: Backlog::All,
            ..Default::default()
        },
    )
    .expect("read")
    .backlog
}

/// First lines of the leveled entries at `dn`.
fn log_lines(tree: &LogTree, dn: &str) -> Vec<String> {
    logs(tree, dn)
        .iter()
        .filter_map(|e| e.leveled().map(|l| l.lines.join("\n")))
        .collect()
}

/// Sets a flag when dropped, i.e. when the future owning it finished or was aborted.
struct DropFlag(mpsc::UnboundedSender<&'static str>, &'static str);

impl Drop for DropFlag {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}
