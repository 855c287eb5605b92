//! A node's TLS credentials: node key, node certificate and cluster CA.
//!
//! They live in `/data/node/credentials/` as `ca.pem`, `cert.pem` and `cert-key.pem`; the node
//! reads them after its data partition is unlocked and serves with them. Construction always
//! verifies that the certificate is a node certificate under the CA and is for the key, so a
//! `NodeCredentials` value is known to be coherent.

use std::fmt;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::files;
use crate::keys::{PublicKey, SigningKey};
use crate::node_id::node_id;
use crate::verify;

/// File name of the cluster CA certificate.
pub const CA_FILE: &str = "ca.pem";
/// File name of the node certificate.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the node private key.
pub const KEY_FILE: &str = "cert-key.pem";

/// Node key, node certificate (DER) and cluster CA certificate (DER), checked to belong together.
#[derive(Clone)]
pub struct NodeCredentials {
    key: SigningKey,
    certificate: Vec<u8>,
    ca: Vec<u8>,
}

impl NodeCredentials {
    /// Bundles the parts, failing unless `certificate` is a valid node certificate under `ca`
    /// for `key`'s public key.
    pub fn new(key: SigningKey, certificate: Vec<u8>, ca: Vec<u8>) -> Result<Self> {
        let cert_key = verify::verify_node_cert(&certificate, &ca)?;
        if cert_key != key.public_key() {
            return Err(Error::CertKeyMismatch {
                cert_key: cert_key.to_string(),
                key: key.public_key().to_string(),
            });
        }
        Ok(NodeCredentials {
            key,
            certificate,
            ca,
        })
    }

    /// The node's ID.
    pub fn node_id(&self) -> String {
        node_id(&self.key.public_key())
    }

    /// The node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// The node's private key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The node certificate, DER.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// The cluster CA certificate, DER.
    pub fn ca(&self) -> &[u8] {
        &self.ca
    }

    /// Writes `ca.pem`, `cert.pem` and `cert-key.pem` (0600) into `dir`, creating it (0700).
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        // Key first: a crash in between leaves a key without a certificate (retry issues one)
        // rather than a certificate whose key is missing.
        self.key.save(&dir.join(KEY_FILE))?;
        files::save_certificate(&dir.join(CERT_FILE), &self.certificate)?;
        files::save_certificate(&dir.join(CA_FILE), &self.ca)?;
        Ok(())
    }

    /// Reads and verifies the three files from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let key = SigningKey::load(&dir.join(KEY_FILE))?;
        let certificate = files::load_certificate(&dir.join(CERT_FILE))?;
        let ca = files::load_certificate(&dir.join(CA_FILE))?;
        Self::new(key, certificate, ca)
    }
}

impl fmt::Debug for NodeCredentials {
    // The key's Debug is redacted anyway; certificates are summarised to keep logs readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("node_id", &self.node_id())
            .field("certificate_len", &self.certificate.len())
            .field("ca_len", &self.ca.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates;
    use std::os::unix::fs::PermissionsExt;

    fn ca() -> (SigningKey, Vec<u8>) {
        let k = SigningKey::generate().expect("ca key");
        let c = templates::cluster_ca(&k).expect("ca cert");
        (k, c)
    }

    #[test]
    fn new_accepts_matching_parts() {
        let (ca_key, ca_cert) = ca();
        let key = SigningKey::generate().expect("key");
        let cert = templates::node_cert(&ca_key, &ca_cert, &key.public_key()).expect("cert");
        let creds = NodeCredentials::new(key.clone(), cert, ca_cert).expect("valid");
        assert_eq!(creds.public_key(), key.public_key());
        assert_eq!(creds.node_id(), node_id(&key.public_key()));
        let dbg = format!("{creds:?}");
        assert!(dbg.contains(&creds.node_id()));
        assert!(!dbg.contains(&hex::encode(key.seed())));
    }

    #[test]
    fn new_rejects_wrong_key_wrong_ca_and_user_cert() {
        let (ca_key, ca_cert) = ca();
        let key = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("other");
        let cert = templates::node_cert(&ca_key, &ca_cert, &key.public_key()).expect("cert");
        assert!(matches!(
            NodeCredentials::new(other, cert.clone(), ca_cert.clone()),
            Err(Error::CertKeyMismatch { .. })
        ));
        let (_, other_ca) = ca();
        assert!(matches!(
            NodeCredentials::new(key.clone(), cert, other_ca),
            Err(Error::SignatureInvalid(_))
        ));
        let user =
            templates::user_cert(&ca_key, &ca_cert, &key.public_key(), "owner").expect("user cert");
        assert!(matches!(
            NodeCredentials::new(key, user, ca_cert),
            Err(Error::WrongEku { .. })
        ));
    }

    #[test]
    fn save_load_round_trip() {
        let (ca_key, ca_cert) = ca();
        let key = SigningKey::generate().expect("key");
        let cert = templates::node_cert(&ca_key, &ca_cert, &key.public_key()).expect("cert");
        let creds = NodeCredentials::new(key, cert, ca_cert).expect("valid");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node/credentials");
        creds.save(&path).expect("save");
        for f in [CA_FILE, CERT_FILE, KEY_FILE] {
            assert!(path.join(f).is_file(), "{f} missing");
        }
        let mode = fs::metadata(path.join(KEY_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let ca_pem = fs::read_to_string(path.join(CA_FILE)).expect("read");
        assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        let back = NodeCredentials::load(&path).expect("load");
        assert_eq!(back.certificate(), creds.certificate());
        assert_eq!(back.ca(), creds.ca());
        assert_eq!(back.key(), creds.key());

        // A corrupt file is reported with its path.
        fs::write(path.join(CERT_FILE), "garbage").expect("write");
        match NodeCredentials::load(&path) {
            Err(e @ Error::InFile { .. }) => {
                assert!(matches!(e.root(), Error::Pem(_)));
                assert!(e.to_string().contains(CERT_FILE), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // So is a key file holding a foreign key type, keeping the typed cause.
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        fs::write(path.join(KEY_FILE), ec.serialize_pem()).expect("write");
        match SigningKey::load(&path.join(KEY_FILE)) {
            Err(e) => assert!(matches!(e.root(), Error::NotEd25519 { .. }), "{e}"),
            Ok(_) => panic!("ECDSA key accepted"),
        }
    }
}
