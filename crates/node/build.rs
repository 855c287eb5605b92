//! Stamps the node's version into the binary: the release (major/minor/patch) is the crate
//! version, the git commit and tree state come from the checkout being built. A build outside
//! a git checkout (a source tarball) still builds and says so: its commit is empty and its
//! tree state unknown (BUILD_TREE_STATE_INVALID), so it shows as a bare `0.1.0`.
//!
//! The tree state is computed when this script runs, which cargo does when HEAD moves or the
//! index changes (every commit and every `git add`); an edit that is neither committed nor
//! staged may keep an earlier "clean" until then.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=build.rs");

    let (commit, state) = match git(&manifest, &["rev-parse", "--short=8", "HEAD"]) {
        Some(commit) => {
            watch_git(&manifest);
            let dirty = git(
                &manifest,
                &["status", "--porcelain", "--untracked-files=no"],
            )
            .map(|out| !out.is_empty());
            let state = match dirty {
                Some(true) => "dirty",
                Some(false) => "clean",
                None => "unknown",
            };
            (commit, state)
        }
        None => {
            println!(
                "cargo:warning=not built from a git checkout: the node's version has no commit"
            );
            (String::new(), "unknown")
        }
    };
    println!("cargo:rustc-env=METROPOLIS_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=METROPOLIS_GIT_TREE_STATE={state}");
}

/// Runs git in `dir`; its trimmed stdout on success, `None` when git is missing or fails (no
/// checkout).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Reruns this script when HEAD, the branch it names or the index changes.
fn watch_git(dir: &Path) {
    let Some(git_dir) = git(dir, &["rev-parse", "--absolute-git-dir"]) else {
        return;
    };
    let git_dir = PathBuf::from(git_dir);
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    println!("cargo:rerun-if-changed={}", git_dir.join("index").display());
    let common = git(dir, &["rev-parse", "--git-common-dir"])
        .map(|c| {
            let c = PathBuf::from(c);
            if c.is_absolute() { c } else { dir.join(c) }
        })
        .unwrap_or(git_dir);
    println!(
        "cargo:rerun-if-changed={}",
        common.join("packed-refs").display()
    );
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", common.join(branch).display());
    }
}
