//! The tail of a test etcd member's stderr, kept for the message of a failed start.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

/// How many stderr lines a start failure shows; etcd's fatal error is in the last few.
const TAIL_LINES: usize = 40;

/// The last lines a child wrote to a pipe, shared with the task that reads them.
#[derive(Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    /// Reads `pipe` line by line until EOF, keeping the last lines and logging each at debug.
    /// The task ends at EOF, i.e. when the child has exited.
    pub(crate) fn collect(
        &self,
        pipe: impl AsyncRead + Unpin + Send + 'static,
        name: String,
    ) -> JoinHandle<()> {
        let tail = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "test_support::etcd", etcd = %name, "{line}");
                tail.push(line);
            }
        })
    }

    fn push(&self, line: String) {
        // A poisoned lock only means a reader panicked mid-format; the lines are still fine.
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The collected lines, joined.
    pub(crate) fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}
