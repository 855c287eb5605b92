//! Files holding keys and certificates: atomic writes with a fixed mode, and PEM certificates.
//!
//! Credentials must never be observed half-written (a crash mid-write would otherwise leave a
//! node unable to join) and private keys must never exist on disk with loose permissions, not
//! even for an instant: so files are written to a temporary sibling created with the final mode,
//! fsynced, then renamed over the destination.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// PEM label of X.509 certificates.
pub const CERTIFICATE_PEM_TAG: &str = "CERTIFICATE";

/// Mode for files holding private keys.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode for files holding public material (certificates).
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes `contents` to `path` atomically, the file having `mode` from the moment it exists.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"),
            )
        })?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), nonce()?));

    let write = || -> std::io::Result<()> {
        // create_new: never follow a symlink planted at the temporary name. mode() applies at
        // open(2), so the key is never readable by others, whatever the umask allows.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Persist the rename itself; without this a power cut can resurrect the old file (or none),
    // so a failure here is the caller's to know: the new contents may not survive.
    sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// fsyncs the directory `dir` (persists the entries renamed into it).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // Armed with the directory's path as argument (`return(<dir>)`) it fails only there, so a
    // test can break one directory's fsync while other writes in the process go on.
    #[cfg(feature = "failpoints")]
    if let Some(arg) = fail::eval("identity::files::sync_dir", |arg| arg)
        && arg.is_none_or(|d| Path::new(&d) == dir)
    {
        return Err(std::io::Error::other("failpoint identity::files::sync_dir"));
    }
    fs::File::open(dir)?.sync_all()
}

/// Reads a whole file, with the path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Encodes DER as a PEM block labelled `tag` with Unix line endings.
pub fn to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Decodes the first PEM block of `data`, requiring the label `tag`.
pub fn from_pem(tag: &'static str, data: impl AsRef<[u8]>) -> Result<Vec<u8>> {
    let p = pem::parse(data)?;
    if p.tag() != tag {
        return Err(Error::PemType {
            expected: tag,
            got: p.tag().to_string(),
        });
    }
    Ok(p.into_contents())
}

/// Encodes a DER certificate as PEM `CERTIFICATE`.
pub fn certificate_to_pem(der: &[u8]) -> String {
    to_pem(CERTIFICATE_PEM_TAG, der)
}

/// Decodes a PEM `CERTIFICATE` into DER.
pub fn certificate_from_pem(data: impl AsRef<[u8]>) -> Result<Vec<u8>> {
    from_pem(CERTIFICATE_PEM_TAG, data)
}

/// Writes a DER certificate to `path` as PEM (mode 0644, atomically).
pub fn save_certificate(path: &Path, der: &[u8]) -> Result<()> {
    write_atomic(path, certificate_to_pem(der).as_bytes(), PUBLIC_MODE)
}

/// Reads a PEM certificate file into DER.
pub fn load_certificate(path: &Path) -> Result<Vec<u8>> {
    let data = read(path)?;
    certificate_from_pem(data).map_err(|e| with_path(path, e))
}

/// Adds the file name to decode errors, so an operator knows which file is broken.
pub(crate) fn with_path(path: &Path, e: Error) -> Error {
    match e {
        Error::Io { .. } | Error::InFile { .. } => e,
        other => Error::InFile {
            path: path.to_path_buf(),
            error: Box::new(other),
        },
    }
}

/// A random suffix so concurrent writers never share a temporary file.
fn nonce() -> Result<String> {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Error::Rng)?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o600)?;
        write_atomic(&p, b"two", 0o600)?;
        assert_eq!(read(&p)?, b"two");
        let mode = fs::metadata(&p)
            .map_err(|e| Error::io(&p, e))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary files are left behind.
        let entries = fs::read_dir(dir.path()).map_err(|e| Error::io(dir.path(), e))?;
        assert_eq!(entries.count(), 1);
        Ok(())
    }

    /// A failed directory fsync means the rename may not survive a power cut: the caller
    /// must hear of it rather than believe the file is safely on disk.
    #[cfg(feature = "failpoints")]
    #[test]
    fn directory_fsync_failure_reaches_the_caller() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let arg = dir.path().display().to_string();
        fail::cfg("identity::files::sync_dir", &format!("return({arg})")).expect("failpoint");
        let result = write_atomic(&p, b"one", 0o600);
        fail::remove("identity::files::sync_dir");
        match result {
            Err(Error::Io { path, source }) => {
                assert_eq!(path, dir.path());
                assert!(source.to_string().contains("sync_dir"), "{source}");
            }
            other => panic!("expected the directory fsync error, got {other:?}"),
        }
        // Another directory's fsync is not affected by the targeted failpoint.
        let other = tempfile::tempdir().expect("tempdir");
        fail::cfg("identity::files::sync_dir", &format!("return({arg})")).expect("failpoint");
        let unaffected = write_atomic(&other.path().join("g"), b"two", 0o600);
        fail::remove("identity::files::sync_dir");
        assert!(unaffected.is_ok(), "{unaffected:?}");
    }

    #[test]
    fn wrong_pem_label_is_typed() {
        let pem = to_pem("PRIVATE KEY", b"abc");
        assert!(matches!(
            certificate_from_pem(pem),
            Err(Error::PemType {
                expected: "CERTIFICATE",
                ..
            })
        ));
        assert!(matches!(
            certificate_from_pem("garbage"),
            Err(Error::Pem(_))
        ));
    }

    #[test]
    fn missing_file_is_io_error_with_path() {
        let err = load_certificate(Path::new("/nonexistent/ca.pem"));
        match err {
            Err(Error::Io { path, .. }) => assert_eq!(path, Path::new("/nonexistent/ca.pem")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
