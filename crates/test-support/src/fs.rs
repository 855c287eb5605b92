//! Walking a node's state directory, for tests that check what a node leaves on disk.

use std::path::{Path, PathBuf};

/// Every regular file below `dir`, sorted.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    files_below_except(dir, None)
}

/// Every regular file below `dir` but not below `skip`, sorted. Unreadable directories are
/// skipped: a test that cares reads the files it expects.
pub fn files_below_except(dir: &Path, skip: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if skip.is_some_and(|s| dir == s) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}
