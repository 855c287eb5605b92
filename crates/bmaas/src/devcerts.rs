//! Component certificates (upstream's `cloud/lib/component`): the certificate and key a
//! component serves with, and the CA its peers are verified against.
//!
//! With `--srv-dev-certs` they come from a self-made development CA in a directory
//! (default `$XDG_CONFIG_HOME/monogon-dev-certs`): `ca.crt`/`ca.key` (CommonName
//! "monogon dev certs CA (<host>)") and `<component>.crt`/`<component>.key` (CommonName
//! `<component>`, DNS name `<component>.local`, ServerAuth + ClientAuth so components can also
//! call each other). Missing files are created, existing ones reused, so every component
//! started against the same directory shares the CA. Keys are written with mode 0600.
//! Certificates are PEM, keys PKCS#8 v1 PEM (what OpenSSL and Go read).

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use identity::SigningKey;
use identity::templates::{CertificateTemplate, ExtKeyUsage, KeyUsage};

use crate::{Error, Result};

/// A component's TLS material.
#[derive(Clone)]
pub struct ComponentTls {
    /// The CA certificate (DER) peers are verified against.
    pub ca: Vec<u8>,
    /// The component's certificate (DER), issued by `ca`.
    pub certificate: Vec<u8>,
    /// The component's key.
    pub key: SigningKey,
}

impl std::fmt::Debug for ComponentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ComponentTls")
            .field("public_key", &self.key.public_key())
            .finish_non_exhaustive()
    }
}

/// `$XDG_CONFIG_HOME/monogon-dev-certs`, or `~/.config/monogon-dev-certs`.
pub fn default_dev_certs_path() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("monogon-dev-certs")
}

/// Loads certificate, key and CA from PEM files.
pub fn load(certificate: &Path, key: &Path, ca: &Path) -> Result<ComponentTls> {
    let tls = ComponentTls {
        ca: identity::files::load_certificate(ca)?,
        certificate: identity::files::load_certificate(certificate)?,
        key: SigningKey::load(key)?,
    };
    check_pair(&tls)?;
    Ok(tls)
}

fn check_pair(tls: &ComponentTls) -> Result<()> {
    let cert_key = identity::verify::check_in_cluster(&tls.certificate, &tls.ca)?;
    if cert_key != tls.key.public_key() {
        return Err(Error::Config(
            "the component certificate does not belong to its key".into(),
        ));
    }
    Ok(())
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The component certificate template: CommonName `component`, DNS `<component>.local`.
pub fn component_template(component: &str) -> CertificateTemplate {
    CertificateTemplate {
        common_name: Some(component.to_string()),
        dns_names: vec![format!("{component}.local")],
        ip_addresses: Vec::new(),
        key_usage: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        ext_key_usage: vec![ExtKeyUsage::ServerAuth, ExtKeyUsage::ClientAuth],
        is_ca: false,
    }
}

/// The development certificates of `component` in `dir`, created as needed.
pub fn dev_certs(dir: &Path, component: &str) -> Result<ComponentTls> {
    if component.is_empty()
        || !component
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::Config(format!(
            "invalid component name {component:?}"
        )));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(dir, e))?;
    // Several components (or tests) may start against the same directory at once: only one
    // may create the CA.
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;

    let (ca_key, ca) = load_or_create(dir, "ca", |key| {
        Ok(identity::templates::ca(
            key,
            &format!("monogon dev certs CA ({})", hostname()),
        )?)
    })?;
    let issue = |key: &SigningKey| -> Result<Vec<u8>> {
        Ok(identity::templates::issue(
            &component_template(component),
            &key.public_key(),
            &ca_key,
            &ca,
        )?)
    };
    let (key, certificate) = load_or_create(dir, component, issue)?;
    let mut tls = ComponentTls {
        ca: ca.clone(),
        certificate,
        key,
    };
    if check_pair(&tls).is_err() {
        // E.g. the CA was regenerated after this certificate was issued: reissue it (same key).
        tracing::warn!("{component} dev certificate does not match the dev CA, reissuing");
        tls.certificate = issue(&tls.key)?;
        identity::files::save_certificate(&dir.join(format!("{component}.crt")), &tls.certificate)?;
        check_pair(&tls)?;
    }
    Ok(tls)
}

/// `<name>.key` and `<name>.crt` from `dir`, or a new key and `issue(key)` written there.
fn load_or_create(
    dir: &Path,
    name: &str,
    issue: impl FnOnce(&SigningKey) -> Result<Vec<u8>>,
) -> Result<(SigningKey, Vec<u8>)> {
    let key_path = dir.join(format!("{name}.key"));
    let cert_path = dir.join(format!("{name}.crt"));
    if key_path.exists() && cert_path.exists() {
        let key = SigningKey::load(&key_path)?;
        let cert = identity::files::load_certificate(&cert_path)?;
        if identity::verify::cert_public_key(&cert)? == key.public_key() {
            return Ok((key, cert));
        }
        tracing::warn!(
            "{} does not match {}, regenerating both",
            cert_path.display(),
            key_path.display()
        );
    }
    let key = if key_path.exists() && !cert_path.exists() {
        SigningKey::load(&key_path)?
    } else {
        let key = SigningKey::generate()?;
        key.save(&key_path)?;
        key
    };
    let cert = issue(&key)?;
    identity::files::save_certificate(&cert_path, &cert)?;
    Ok((key, cert))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn dev_certs_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dev_certs(dir.path(), "srv").unwrap();
        let b = dev_certs(dir.path(), "srv").unwrap();
        assert_eq!(a.certificate, b.certificate);
        assert_eq!(a.key, b.key);
        let op = dev_certs(dir.path(), "operator").unwrap();
        assert_eq!(op.ca, a.ca, "components share the CA");

        let info = identity::verify::inspect(&a.certificate).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("srv"));
        assert_eq!(info.dns_names, vec!["srv.local".to_string()]);
        assert!(info.server_auth && info.client_auth);
        let ca = identity::verify::inspect(&a.ca).unwrap();
        assert!(
            ca.common_name
                .unwrap()
                .starts_with("monogon dev certs CA (")
        );
        for key in ["ca.key", "srv.key", "operator.key"] {
            let mode = fs::metadata(dir.path().join(key)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let loaded = load(
            &dir.path().join("srv.crt"),
            &dir.path().join("srv.key"),
            &dir.path().join("ca.crt"),
        )
        .unwrap();
        assert_eq!(loaded.certificate, a.certificate);
    }
}
