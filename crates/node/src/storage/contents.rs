//! What the node keeps in its data directory, at upstream's paths: the node credentials in
//! `node/credentials/{ca.pem,cert.pem,cert-key.pem}` (same PEM contents as upstream, but each
//! file encrypted by [`DataDir`]) and the last known roles in `node/roles.pb`; ours besides:
//! the newest cluster CRL seen, `node/cluster-crl.der`, so a restarted node still refuses the
//! curators it knew to be revoked.

use identity::{NodeCredentials, SigningKey, credentials, files};
use prost::Message;
use proto::common::NodeRoles;

use super::{DataDir, Error};

/// Directory of the node credentials inside the data directory.
pub const CREDENTIALS_DIR: &str = "node/credentials";
/// The persisted roles.
pub const ROLES: &str = "node/roles.pb";
/// The persisted cluster CRL (DER).
pub const CRL: &str = "node/cluster-crl.der";

fn credential_path(name: &str) -> String {
    format!("{CREDENTIALS_DIR}/{name}")
}

/// Saves the node credentials (key first: a crash in between leaves a key without a
/// certificate rather than a certificate whose key is lost).
pub fn save_credentials(data: &DataDir, creds: &NodeCredentials) -> Result<(), Error> {
    data.write(
        &credential_path(credentials::KEY_FILE),
        creds.key().to_pkcs8_pem().as_bytes(),
    )?;
    data.write(
        &credential_path(credentials::CERT_FILE),
        files::certificate_to_pem(creds.certificate()).as_bytes(),
    )?;
    data.write(
        &credential_path(credentials::CA_FILE),
        files::certificate_to_pem(creds.ca()).as_bytes(),
    )
}

/// Loads and checks the node credentials.
pub fn load_credentials(data: &DataDir) -> Result<NodeCredentials, Error> {
    let read = |name: &str| -> Result<(std::path::PathBuf, Vec<u8>), Error> {
        let rel = credential_path(name);
        let path = data.root().join(&rel);
        match data.read(&rel)? {
            Some(b) => Ok((path, b)),
            None => Err(Error::Layout {
                path,
                reason: "node credentials are missing".to_string(),
            }),
        }
    };
    let identity_err = |path: std::path::PathBuf| move |error| Error::Identity { path, error };
    let (kp, key) = read(credentials::KEY_FILE)?;
    let key = SigningKey::from_pkcs8_pem(key).map_err(identity_err(kp))?;
    let (cp, cert) = read(credentials::CERT_FILE)?;
    let cert = files::certificate_from_pem(cert).map_err(identity_err(cp.clone()))?;
    let (ap, ca) = read(credentials::CA_FILE)?;
    let ca = files::certificate_from_pem(ca).map_err(identity_err(ap))?;
    NodeCredentials::new(key, cert, ca).map_err(identity_err(cp))
}

/// Persists the node's roles.
pub fn save_roles(data: &DataDir, roles: &NodeRoles) -> Result<(), Error> {
    data.write(ROLES, &roles.encode_to_vec())
}

/// The persisted roles, if any.
pub fn load_roles(data: &DataDir) -> Result<Option<NodeRoles>, Error> {
    let Some(bytes) = data.read(ROLES)? else {
        return Ok(None);
    };
    NodeRoles::decode(bytes.as_slice())
        .map(Some)
        .map_err(|source| Error::Decode {
            path: data.root().join(ROLES),
            what: "NodeRoles",
            source,
        })
}

/// Persists the cluster CRL (DER, as the cluster CA signed it).
pub fn save_crl(data: &DataDir, der: &[u8]) -> Result<(), Error> {
    data.write(CRL, der)
}

/// The persisted cluster CRL, if any. Not verified here: it is installed only if it verifies
/// against the cluster CA (`rpc::ClusterCrl::update`).
pub fn load_crl(data: &DataDir) -> Result<Option<Vec<u8>>, Error> {
    data.read(CRL)
}
