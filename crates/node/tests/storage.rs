//! The data directory's encryption at rest: round trips, wrong keys, INSECURE plain files,
//! tampering, mismatched setups, file modes, and the typed contents (credentials, roles).

use std::os::unix::fs::PermissionsExt;

use identity::{NodeCredentials, SigningKey, templates};
use node::storage::{CryptError, DataDir, Error, UnlockKeys, contents, keys};
use proto::common::node_roles::KubernetesWorker;
use proto::common::{NodeRoles, NodeStorageSecurity};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn encrypted_keys() -> (UnlockKeys, NodeStorageSecurity) {
    let s = NodeStorageSecurity::AuthenticatedEncrypted;
    (UnlockKeys::generate(s).expect("keys"), s)
}

fn credentials() -> NodeCredentials {
    let ca_key = SigningKey::generate().expect("ca key");
    let ca = templates::cluster_ca(&ca_key).expect("ca");
    let key = SigningKey::generate().expect("key");
    let cert = templates::node_cert(&ca_key, &ca, &key.public_key()).expect("cert");
    NodeCredentials::new(key, cert, ca).expect("creds")
}

#[test]
fn encrypted_round_trip_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    let (k, s) = encrypted_keys();
    let data = DataDir::create(&root, k.data_key(s).expect("key")).expect("create");
    assert!(data.is_encrypted());
    data.write("node/secret.bin", b"top secret payload")
        .expect("write");
    let raw = std::fs::read(root.join("node/secret.bin")).expect("raw");
    assert!(!raw.windows(10).any(|w| w == b"top secret"));
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("node")), 0o700);
    assert_eq!(mode(&root.join("node/secret.bin")), 0o600);

    // NUK ⊕ CUK again, from the halves as join would get them.
    let again = keys::data_key(s, &k.nuk, &k.cuk).expect("key");
    let reopened = DataDir::open(&root, again).expect("open");
    assert_eq!(
        reopened.read("node/secret.bin").expect("read"),
        Some(b"top secret payload".to_vec())
    );
    assert_eq!(reopened.read("node/missing").expect("read"), None);
    assert!(DataDir::create(&root, None).is_err(), "set up twice");
}

#[test]
fn wrong_key_is_reported_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    let (k, s) = encrypted_keys();
    DataDir::create(&root, k.data_key(s).expect("key")).expect("create");
    // The node's half with another cluster half: the cluster's key is needed.
    let wrong = keys::data_key(s, &k.nuk, &[7u8; 32]).expect("key");
    match DataDir::open(&root, wrong) {
        Err(e @ Error::Crypt { .. }) => {
            assert!(
                e.to_string()
                    .contains("data cannot be decrypted with this key"),
                "{e}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn insecure_storage_is_plain_and_mismatches_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain_root = dir.path().join("plain");
    let keys = UnlockKeys::generate(NodeStorageSecurity::Insecure).expect("keys");
    let key = keys.data_key(NodeStorageSecurity::Insecure).expect("key");
    assert!(key.is_none());
    let plain = DataDir::create(&plain_root, key).expect("create");
    plain.write("node/roles.pb", b"visible").expect("write");
    assert_eq!(
        std::fs::read(plain_root.join("node/roles.pb")).expect("raw"),
        b"visible"
    );
    assert_eq!(mode(&plain_root.join("node/roles.pb")), 0o600);

    let (k, s) = encrypted_keys();
    // Plain directory opened with a key, encrypted directory opened without one.
    assert!(matches!(
        DataDir::open(&plain_root, k.data_key(s).expect("key")),
        Err(Error::Layout { .. })
    ));
    let enc_root = dir.path().join("enc");
    DataDir::create(&enc_root, k.data_key(s).expect("key")).expect("create");
    assert!(matches!(
        DataDir::open(&enc_root, None),
        Err(Error::Layout { .. })
    ));
    // And a directory that was never set up.
    assert!(matches!(
        DataDir::open(&dir.path().join("nothing"), None),
        Err(Error::Layout { .. })
    ));
}

#[test]
fn tampering_and_moving_files_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    let (k, s) = encrypted_keys();
    let data = DataDir::create(&root, k.data_key(s).expect("key")).expect("create");
    data.write("node/a", b"alpha").expect("write");
    data.write("node/b", b"bravo").expect("write");

    let path = root.join("node/a");
    let mut raw = std::fs::read(&path).expect("raw");
    let last = raw.len() - 1;
    raw[last] ^= 0x80;
    std::fs::write(&path, &raw).expect("tamper");
    assert!(matches!(
        data.read("node/a"),
        Err(Error::Crypt {
            error: CryptError::Corrupt,
            ..
        })
    ));

    // A valid ciphertext under another name fails too (the path is authenticated).
    std::fs::copy(root.join("node/b"), &path).expect("copy");
    assert!(matches!(
        data.read("node/a"),
        Err(Error::Crypt {
            error: CryptError::Corrupt,
            ..
        })
    ));
    // A plaintext file slipped into an encrypted directory.
    std::fs::write(&path, b"plain").expect("write");
    assert!(matches!(
        data.read("node/a"),
        Err(Error::Crypt {
            error: CryptError::NotEncrypted,
            ..
        })
    ));
}

#[test]
fn credentials_and_roles_round_trip_encrypted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    let (k, s) = encrypted_keys();
    let data = DataDir::create(&root, k.data_key(s).expect("key")).expect("create");
    let creds = credentials();
    contents::save_credentials(&data, &creds).expect("save");
    for f in ["ca.pem", "cert.pem", "cert-key.pem"] {
        let p = root.join("node/credentials").join(f);
        let raw = std::fs::read(&p).expect("raw");
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("-----BEGIN"), "{f} is plaintext PEM");
        assert!(!raw.windows(32).any(|w| w == creds.key().seed()));
        assert_eq!(mode(&p), 0o600);
    }
    let back = contents::load_credentials(&data).expect("load");
    assert_eq!(back.node_id(), creds.node_id());
    assert_eq!(back.certificate(), creds.certificate());

    assert_eq!(contents::load_roles(&data).expect("roles"), None);
    let roles = NodeRoles {
        kubernetes_worker: Some(KubernetesWorker {}),
        ..Default::default()
    };
    contents::save_roles(&data, &roles).expect("save roles");
    assert_eq!(contents::load_roles(&data).expect("roles"), Some(roles));

    // With the wrong key nothing of it is readable.
    let wrong = keys::data_key(s, &[1; 32], &k.cuk).expect("key");
    assert!(DataDir::open(&root, wrong).is_err());
}
