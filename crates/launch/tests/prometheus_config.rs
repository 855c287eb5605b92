//! The Prometheus scrape configuration example the README points operators at
//! (`deploy/prometheus/metropolis.yml`) is one Prometheus accepts: `promtool check config`.

use std::path::Path;

#[test]
fn example_scrape_config_is_valid() {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/metropolis.yml");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("metropolis.yml");
    std::fs::copy(&example, &config).expect("copying the example");
    // promtool checks that the files the configuration names exist (relative to it).
    std::fs::create_dir(dir.path().join("metropolis")).expect("mkdir");
    for file in ["owner.pem", "owner.key"] {
        std::fs::write(dir.path().join("metropolis").join(file), "").expect("placeholder");
    }
    let out = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool check config {}:\n{}{}",
        example.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
