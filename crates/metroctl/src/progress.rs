//! Visible progress while metroctl waits (upstream prints nothing): a single status line on
//! standard error, rewritten in place on a terminal, printed once per change otherwise.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::time::Instant;

/// How long an operation may take before a waiting line appears.
const QUIET_PERIOD: Duration = Duration::from_secs(2);

/// A status line on standard error.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    last: Option<String>,
    shown: bool,
}

impl Progress {
    /// A status line; rewritten in place if standard error is a terminal.
    pub fn new() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            shown: false,
        }
    }

    /// Shows `text`. On a terminal the line is replaced every time; otherwise only changed
    /// text is printed, as a new line, so logs of scripted runs stay short.
    pub fn update(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[K{text}");
            let _ = err.flush();
            self.shown = true;
        } else if self.last.as_deref() != Some(text) {
            let _ = writeln!(err, "{text}");
        }
        self.last = Some(text.to_string());
    }

    /// Like [`Progress::update`], but on a non-terminal prints only when `key` (the part that
    /// matters, e.g. a state) changed, not when only the elapsed time did.
    pub fn update_keyed(&mut self, key: &str, text: &str) {
        if self.terminal {
            self.update(text);
        } else if self.last.as_deref() != Some(key) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
            self.last = Some(key.to_string());
        }
    }

    /// Removes the line (on a terminal) so the final message starts on a clean line.
    pub fn finish(&mut self) {
        if self.terminal && self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Runs `fut`; if it takes longer than a moment, shows `what` with the elapsed seconds.
pub async fn waiting<F: Future>(what: &str, fut: F) -> F::Output {
    let start = Instant::now();
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => return out,
        _ = tokio::time::sleep(QUIET_PERIOD) => {}
    }
    let mut progress = Progress::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            out = &mut fut => {
                progress.finish();
                return out;
            }
            _ = tick.tick() => {
                let secs = start.elapsed().as_secs();
                progress.update_keyed(what, &format!("{what}… ({secs}s)"));
            }
        }
    }
}

/// `1m05s` / `42s`.
pub fn format_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_formatting() {
        assert_eq!(format_elapsed(Duration::from_secs(42)), "42s");
        assert_eq!(format_elapsed(Duration::from_secs(65)), "1m05s");
    }

    #[tokio::test(start_paused = true)]
    async fn fast_operations_print_nothing_and_return_their_value() {
        assert_eq!(waiting("x", async { 7 }).await, 7);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            8
        };
        assert_eq!(waiting("slow", slow).await, 8);
    }
}
