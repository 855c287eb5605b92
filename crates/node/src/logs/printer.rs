//! [`Printer`]: copies every logtree entry to stdout as rendered text lines, so whoever runs
//! the node (the launcher, an operator) sees its logs without calling Logs.
//!
//! It runs on its own OS thread: writing to a pipe can block when the reader is slow, and that
//! must stall neither the runtime nor the loggers. Its subscription holds 128 entries (logtree
//! semantics); if the printer falls further behind, entries are dropped and a line says how
//! many.

use std::io::Write;
use std::thread::JoinHandle;

use logtree::{Backlog, Dn, LogTree, ReadOptions, Subscription};
use tokio::sync::oneshot;

/// The running printer.
#[derive(Debug)]
pub struct Printer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Printer {
    /// Starts printing everything logged into `tree` (including what is already there).
    pub fn start(tree: &LogTree) -> std::io::Result<Self> {
        let options = ReadOptions {
            with_children: true,
            backlog: Backlog::All,
            stream: true,
            ..Default::default()
        };
        let reader = tree
            .read(&Dn::root(), options)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let sub = reader
            .stream
            .ok_or_else(|| std::io::Error::other("no subscription"))?;
        let (stop, stopped) = oneshot::channel();
        let backlog = reader.backlog;
        let thread = std::thread::Builder::new()
            .name("log-printer".to_string())
            .spawn(move || {
                for e in &backlog {
                    print(&e.to_string());
                }
                run(sub, stopped);
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Prints what is still queued and stops.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(mut sub: Subscription, mut stopped: oneshot::Receiver<()>) {
    let mut missed = 0;
    loop {
        // tokio's channels do not need a runtime, so a blocking executor is enough here.
        let next = futures::executor::block_on(async {
            tokio::select! {
                e = sub.next() => e,
                _ = &mut stopped => None,
            }
        });
        let Some(entry) = next else { break };
        report_missed(&sub, &mut missed);
        print(&entry.to_string());
    }
    while let Some(entry) = sub.try_next() {
        print(&entry.to_string());
    }
    report_missed(&sub, &mut missed);
}

fn report_missed(sub: &Subscription, reported: &mut u64) {
    let now = sub.missed();
    if now > *reported {
        print(&format!(
            "(log printer fell behind: {} log entries not printed; they are still in the logtree)",
            now - *reported
        ));
        *reported = now;
    }
}

/// Writes one line to stdout. Unlike `println!`, a closed or broken stdout (the launcher
/// went away) is not a panic: the line is dropped, the node keeps running.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
