//! Questions to the user on the terminal (CA pinning, destructive deletes). Never asked
//! without a terminal: scripts get an error naming the flag that answers the question.

use std::io::{BufRead, IsTerminal, Write};

use crate::error::{Error, Result};

/// Whether a person can be asked: standard input and standard error are terminals.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks `question (yes/no)? ` on standard error; only a typed `yes` is yes (as ssh).
pub fn ask_yes_no(question: &str) -> Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(err, "{question} (yes/no)? ")
        .and_then(|_| err.flush())
        .map_err(|e| Error::local(format!("writing to standard error: {e}")))?;
    drop(err);
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::local(format!("reading the answer: {e}")))?;
    Ok(is_yes(&answer))
}

fn is_yes(answer: &str) -> bool {
    answer.trim() == "yes"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_is_yes() {
        assert!(is_yes("yes\n"));
        assert!(is_yes("  yes "));
        for no in ["y", "Yes", "YES", "no", "", "yess"] {
            assert!(!is_yes(no), "{no}");
        }
    }
}
