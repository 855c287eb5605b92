//! The config directory: owner key, owner certificate, pinned cluster CA and default
//! endpoints, in upstream's file names and formats so an upstream metroctl config works here
//! and the other way round; ours besides: the endpoints file and a cache of the cluster CRL.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use identity::SigningKey;
use identity::files::{self, PRIVATE_MODE, PUBLIC_MODE};

use crate::error::{Error, Result};

/// Owner private key (PEM "METROPOLIS INITIAL OWNER PRIVATE KEY", 64 raw bytes, 0600).
pub const OWNER_KEY_FILE: &str = "owner-key.pem";
/// Owner certificate (PEM CERTIFICATE).
pub const OWNER_CERT_FILE: &str = "owner.pem";
/// The owner key again, as standard PKCS#8 PEM, for tools that present the owner certificate
/// themselves (Prometheus scraping the nodes' metrics, grpcurl).
pub const OWNER_PKCS8_KEY_FILE: &str = "owner.key";
/// Pinned cluster CA (PEM CERTIFICATE).
pub const CA_FILE: &str = "ca.pem";
/// Default endpoints, one per line (ours).
pub const ENDPOINTS_FILE: &str = "endpoints";
/// The newest cluster CRL seen (DER; ours). Only a cache: every session fetches the CRL from
/// the cluster again, and a CRL is only used if it verifies against the pinned CA.
pub const CRL_FILE: &str = "cluster-crl.der";

/// A metroctl config directory.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    dir: PathBuf,
}

impl ConfigDir {
    /// `explicit`, else `$XDG_CONFIG_HOME/metroctl`, else `$HOME/.config/metroctl`.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Self> {
        if let Some(dir) = explicit {
            return Ok(ConfigDir { dir });
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".config"))
            })
            .ok_or_else(|| {
                Error::usage(
                    "cannot find a config directory: set --config, XDG_CONFIG_HOME or HOME",
                )
            })?;
        Ok(ConfigDir {
            dir: base.join("metroctl"),
        })
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ensure_dir(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            Error::local(format!(
                "creating config directory {}: {e}",
                self.dir.display()
            ))
        })?;
        // The directory holds the owner key: keep others out of it (best effort: an existing
        // directory the user shares on purpose is theirs to manage).
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        Ok(())
    }

    /// The owner key, if the file exists. Warns if others can read it.
    pub fn owner_key(&self) -> Result<Option<SigningKey>> {
        let path = self.path(OWNER_KEY_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::local(format!("reading {}: {e}", path.display()))),
        };
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} is readable by other users; restrict it with chmod 600",
                path.display()
            );
        }
        SigningKey::from_owner_key_pem(data)
            .map(Some)
            .map_err(|e| Error::local(format!("{} is not an owner key: {e}", path.display())))
    }

    /// The owner key, or advice on where it comes from.
    pub fn require_owner_key(&self) -> Result<SigningKey> {
        self.owner_key()?.ok_or_else(|| {
            Error::local(format!(
                "no owner key at {}: the owner key is the one the cluster was bootstrapped with. \
                 Use the --config directory launch-cluster printed, or the one you ran \
                 `metroctl cluster bootstrap-params` with.",
                self.path(OWNER_KEY_FILE).display()
            ))
        })
    }

    /// Creates an owner key unless one exists; returns it and whether it was created.
    pub fn owner_key_or_create(&self) -> Result<(SigningKey, bool)> {
        if let Some(key) = self.owner_key()? {
            return Ok((key, false));
        }
        self.ensure_dir()?;
        let key = SigningKey::generate()?;
        let path = self.path(OWNER_KEY_FILE);
        files::write_atomic(&path, key.to_owner_key_pem().as_bytes(), PRIVATE_MODE)
            .map_err(|e| Error::local(format!("writing {}: {e}", path.display())))?;
        Ok((key, true))
    }

    /// Writes the owner key as PKCS#8 PEM ([`OWNER_PKCS8_KEY_FILE`]).
    pub fn save_owner_pkcs8_key(&self, key: &SigningKey) -> Result<()> {
        let path = self.path(OWNER_PKCS8_KEY_FILE);
        files::write_atomic(&path, key.to_pkcs8_pem().as_bytes(), PRIVATE_MODE)
            .map_err(|e| Error::local(format!("writing {}: {e}", path.display())))
    }

    /// The owner certificate (DER), if present.
    pub fn owner_cert(&self) -> Result<Option<Vec<u8>>> {
        self.load_cert(OWNER_CERT_FILE)
    }

    /// Saves the owner certificate.
    pub fn save_owner_cert(&self, der: &[u8]) -> Result<()> {
        self.save_cert(OWNER_CERT_FILE, der)
    }

    /// The pinned CA (DER), if present.
    pub fn ca(&self) -> Result<Option<Vec<u8>>> {
        self.load_cert(CA_FILE)
    }

    /// Pins the CA.
    pub fn save_ca(&self, der: &[u8]) -> Result<()> {
        self.save_cert(CA_FILE, der)
    }

    fn load_cert(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(data) => files::certificate_from_pem(data).map(Some).map_err(|e| {
                Error::local(format!(
                    "{} is not a PEM certificate ({e}); delete it to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::local(format!("reading {}: {e}", path.display()))),
        }
    }

    fn save_cert(&self, name: &str, der: &[u8]) -> Result<()> {
        self.ensure_dir()?;
        let path = self.path(name);
        files::write_atomic(
            &path,
            files::certificate_to_pem(der).as_bytes(),
            PUBLIC_MODE,
        )
        .map_err(|e| Error::local(format!("writing {}: {e}", path.display())))
    }

    /// The saved default endpoints (empty if none).
    pub fn endpoints(&self) -> Result<Vec<String>> {
        let path = self.path(ENDPOINTS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::local(format!("reading {}: {e}", path.display()))),
        }
    }

    /// The cached cluster CRL (unverified), if any.
    pub fn crl(&self) -> Result<Option<Vec<u8>>> {
        let path = self.path(CRL_FILE);
        match std::fs::read(&path) {
            Ok(der) => Ok(Some(der)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::local(format!("reading {}: {e}", path.display()))),
        }
    }

    /// Caches the cluster CRL.
    pub fn save_crl(&self, der: &[u8]) -> Result<()> {
        self.ensure_dir()?;
        let path = self.path(CRL_FILE);
        files::write_atomic(&path, der, PUBLIC_MODE)
            .map_err(|e| Error::local(format!("writing {}: {e}", path.display())))
    }

    /// Saves the default endpoints.
    pub fn save_endpoints(&self, endpoints: &[String]) -> Result<()> {
        self.ensure_dir()?;
        let path = self.path(ENDPOINTS_FILE);
        let mut text = endpoints.join("\n");
        text.push('\n');
        files::write_atomic(&path, text.as_bytes(), PUBLIC_MODE)
            .map_err(|e| Error::local(format!("writing {}: {e}", path.display())))
    }
}

/// Normalizes an endpoint to `host:port` with the curator port as default; IPv6 literals get
/// brackets.
pub fn normalize_endpoint(raw: &str, default_port: u16) -> Result<String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(Error::usage("empty endpoint in --endpoints"));
    }
    let bad = |why: &str| Error::usage(format!("invalid endpoint {raw:?}: {why}"));
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        return match after {
            "" => Ok(format!("[{host}]:{default_port}")),
            port => {
                let port = port
                    .strip_prefix(':')
                    .ok_or_else(|| bad("expected :PORT after ']'"))?;
                check_port(port).map_err(|_| bad("invalid port"))?;
                Ok(format!("[{host}]:{port}"))
            }
        };
    }
    match s.matches(':').count() {
        0 => Ok(format!("{s}:{default_port}")),
        1 => {
            let (host, port) = s.split_once(':').ok_or_else(|| bad("invalid"))?;
            if host.is_empty() {
                return Err(bad("missing host"));
            }
            check_port(port).map_err(|_| bad("invalid port"))?;
            Ok(s.to_string())
        }
        // A bare IPv6 address.
        _ => Ok(format!("[{s}]:{default_port}")),
    }
}

fn check_port(port: &str) -> std::result::Result<(), ()> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_default_port() {
        assert_eq!(
            normalize_endpoint("10.0.0.1", 7835).ok().as_deref(),
            Some("10.0.0.1:7835")
        );
        assert_eq!(
            normalize_endpoint("10.0.0.1:1234", 7835).ok().as_deref(),
            Some("10.0.0.1:1234")
        );
        assert_eq!(
            normalize_endpoint("fd00::1", 7835).ok().as_deref(),
            Some("[fd00::1]:7835")
        );
        assert_eq!(
            normalize_endpoint("[fd00::1]", 7835).ok().as_deref(),
            Some("[fd00::1]:7835")
        );
        assert_eq!(
            normalize_endpoint("[fd00::1]:99", 7835).ok().as_deref(),
            Some("[fd00::1]:99")
        );
        assert_eq!(
            normalize_endpoint(" node ", 7835).ok().as_deref(),
            Some("node:7835")
        );
    }

    #[test]
    fn bad_endpoints_are_usage_errors() {
        for bad in ["", ":1", "a:0", "a:x", "a:70000", "[fd00::1", "[::1]x"] {
            let e = normalize_endpoint(bad, 7835).expect_err(bad);
            assert_eq!(e.kind, crate::error::Kind::Usage, "{bad}");
        }
    }

    #[test]
    fn owner_key_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ConfigDir::locate(Some(dir.path().join("cfg"))).expect("config");
        assert!(cfg.owner_key().expect("read").is_none());
        let (key, created) = cfg.owner_key_or_create().expect("create");
        assert!(created);
        let (again, created) = cfg.owner_key_or_create().expect("load");
        assert!(!created);
        assert_eq!(key, again);
        let mode = std::fs::metadata(cfg.path(OWNER_KEY_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(cfg.path(OWNER_KEY_FILE)).expect("read");
        assert!(text.starts_with("-----BEGIN METROPOLIS INITIAL OWNER PRIVATE KEY-----"));
    }

    #[test]
    fn missing_owner_key_gives_advice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ConfigDir::locate(Some(dir.path().to_path_buf())).expect("config");
        let e = cfg.require_owner_key().expect_err("missing");
        assert!(e.message.contains("owner-key.pem"), "{}", e.message);
    }

    #[test]
    fn endpoints_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ConfigDir::locate(Some(dir.path().to_path_buf())).expect("config");
        assert!(cfg.endpoints().expect("none").is_empty());
        cfg.save_endpoints(&["a:1".into(), "b:2".into()])
            .expect("save");
        assert_eq!(cfg.endpoints().expect("read"), vec!["a:1", "b:2"]);
    }

    #[test]
    fn broken_certificate_file_says_which() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ConfigDir::locate(Some(dir.path().to_path_buf())).expect("config");
        std::fs::write(cfg.path(CA_FILE), "garbage").expect("write");
        let e = cfg.ca().expect_err("broken");
        assert!(e.message.contains("ca.pem"), "{}", e.message);
    }
}
