//! Replays the checked-in fuzz corpora (`fuzz/corpus/<target>/`) through the target bodies on
//! stable Rust, so every input libFuzzer once kept, including former crashes, stays a test.

use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs `target` over every file of its corpus; the corpus must not be empty.
fn replay(target: &str) {
    let run = fuzz_targets::target(target).expect("known target");
    let dir = corpus(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("corpus file");
        // Name the input that fails: the panic of the target itself says what broke.
        eprintln!("replaying {}", file.display());
        run(&data);
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        /// Every target has a replay test above, and every corpus directory a target.
        #[test]
        fn every_target_is_replayed() {
            let tested = [$(stringify!($name)),*];
            let targets: Vec<&str> = fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(targets, tested);
            let mut dirs: Vec<String> = std::fs::read_dir(corpus(""))
                .expect("corpora")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            dirs.sort();
            let mut sorted = targets.clone();
            sorted.sort();
            assert_eq!(dirs, sorted, "corpus directories and targets differ");
        }
    };
}

replay_tests!(
    cert_verify,
    crl,
    pkcs8,
    crypt_open,
    node_params,
    logtree_dn,
    logtree_read,
    etcd_log_line,
    smbios,
    hwreport_text,
    clusternet,
    filter,
    authz,
    node_record,
    watch_event,
);
