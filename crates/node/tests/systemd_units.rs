//! The systemd units under deploy/systemd: `systemd-analyze verify` accepts them without a
//! single complaint, and the node's unit restarts exactly as the node's exit codes ask.
//!
//! The units start binaries from /usr/local/bin, which verify requires to exist; the test
//! verifies copies that name the binaries of this build (target/<profile>/) instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use node::exit::ExitCode;

/// The unit files and the binaries they start.
const UNITS: &[(&str, &str)] = &[
    ("metropolis-node.service", "metropolis-node"),
    ("bmaas-server.service", "bmaas-server"),
    ("bmaas-agent.service", "bmaas-agent"),
];

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd")
}

/// target/<profile>/, where `cargo build --workspace --bins` put the binaries: the test
/// executable runs from its deps/ subdirectory.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let deps = exe.parent().expect("the test's directory");
    deps.parent().expect("the profile directory").to_path_buf()
}

fn read_unit(name: &str) -> String {
    std::fs::read_to_string(units_dir().join(name))
        .unwrap_or_else(|e| panic!("reading deploy/systemd/{name}: {e}"))
}

/// Copies of the units naming this build's binaries, in a fresh directory.
fn units_with_built_binaries() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (unit, binary) in UNITS {
        let text = read_unit(unit);
        let installed = format!("/usr/local/bin/{binary}");
        assert!(
            text.contains(&format!("ExecStart={installed} ")),
            "{unit} starts {installed}"
        );
        let built = bin_dir().join(binary);
        assert!(
            built.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first",
            built.display()
        );
        let text = text.replace(&installed, &built.display().to_string());
        std::fs::write(dir.path().join(unit), text).expect("writing a unit copy");
    }
    dir
}

/// Runs `systemd-analyze verify` on `units`; returns (success, everything it printed).
fn verify(units: &[PathBuf]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
        .expect("running systemd-analyze (Debian package systemd)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[test]
fn units_verify_cleanly() {
    let dir = units_with_built_binaries();
    let units: Vec<PathBuf> = UNITS.iter().map(|(u, _)| dir.path().join(u)).collect();
    let (ok, printed) = verify(&units);
    // verify exits 0 on unknown keys and unparsable values (it only warns), so any output
    // at all is a failure.
    assert!(
        ok && printed.trim().is_empty(),
        "systemd-analyze verify:\n{printed}"
    );
}

/// The strictness above is what catches mistakes: a misspelt key and a bad value are
/// reported, though verify still exits 0.
#[test]
fn verify_reports_mistakes() {
    let dir = units_with_built_binaries();
    let unit = dir.path().join("bmaas-agent.service");
    let text = std::fs::read_to_string(&unit).expect("reading the copy");
    let broken = text
        .replace("RestartSec=", "RestartSecs=")
        .replace("Restart=always", "Restart=sometimes");
    std::fs::write(&unit, broken).expect("writing the broken copy");
    let (_, printed) = verify(&[unit]);
    assert!(printed.contains("RestartSecs"), "{printed}");
    assert!(printed.contains("sometimes"), "{printed}");
}

/// Values of `key=` lines in the [Service] section.
fn service_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .take_while(|l| l.trim() != "[Install]")
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn node_unit_follows_the_exit_codes() {
    let unit = read_unit("metropolis-node.service");
    // Deleted or decommissioned: never again.
    assert_eq!(
        service_values(&unit, "RestartPreventExitStatus"),
        vec![ExitCode::Gone.code().to_string()]
    );
    // A reboot was requested: always, whatever Restart= says.
    assert_eq!(
        service_values(&unit, "RestartForceExitStatus"),
        vec![ExitCode::Reboot.code().to_string()]
    );
    // A fatal error is restarted (after RestartSec), a clean stop is not.
    assert_eq!(service_values(&unit, "Restart"), vec!["on-failure"]);
    assert_eq!(
        service_values(&unit, "StateDirectory"),
        vec!["metropolis-node"]
    );
    let exec = unit
        .split("ExecStart=")
        .nth(1)
        .expect("ExecStart")
        .replace("\\\n", " ");
    assert!(
        exec.contains("--state-dir /var/lib/metropolis-node "),
        "{exec}"
    );
}
