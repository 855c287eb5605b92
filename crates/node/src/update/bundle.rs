//! Bundles: what UpdateNode installs. A bundle is one uncompressed tar file holding
//! `manifest.json` first, then every file the manifest lists (today exactly one,
//! `metropolis-node`). The manifest names the version the bundle's binary reports and the
//! size and SHA-256 of every file.
//!
//! A bundle comes from the network, so reading one trusts nothing in it: entries must be
//! regular files with plain names (no directories, links, `..` or `/`), at most
//! [`Limits::max_entries`] of them, each within [`Limits::max_entry_bytes`] and all within
//! [`Limits::max_total_bytes`]; every file must be listed in the manifest with its exact size
//! and digest, and every listed file must be present. Files are streamed into a directory the
//! caller chose and only count as installed once [`read_into`] returned `Ok`.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use proto::Version;
use proto::version::spec::version::git_information::BuildTreeState;
use proto::version::spec::version::{GitInformation, Release};
use serde::{Deserialize, Serialize};

/// Name of the manifest entry (always the first entry).
pub const MANIFEST: &str = "manifest.json";
/// Name of the node binary in a bundle.
pub const NODE_BINARY: &str = "metropolis-node";
/// Largest manifest accepted: a handful of files need well under 4 KiB.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 10;

/// Bounds for reading a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries, the manifest included.
    pub max_entries: usize,
    /// Largest file.
    pub max_entry_bytes: u64,
    /// Largest sum of all files.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    /// A debug build of the node is about 70 MiB; releases are far smaller.
    fn default() -> Self {
        Limits {
            max_entries: 16,
            max_entry_bytes: 512 << 20,
            max_total_bytes: 1 << 30,
        }
    }
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle: {0}")]
    Invalid(String),
    #[error("bundle: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BundleError {
    fn invalid(msg: impl Into<String>) -> Self {
        BundleError::Invalid(msg.into())
    }
    fn io(path: &Path, source: io::Error) -> Self {
        BundleError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The version the bundle's node binary reports.
    pub version: ManifestVersion,
    /// Every file of the bundle but the manifest.
    pub files: Vec<ManifestFile>,
}

/// `version.spec.Version` in the manifest's JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestVersion {
    pub major: i64,
    pub minor: i64,
    pub patch: i64,
    #[serde(default)]
    pub prerelease: Vec<String>,
    /// Short git commit hash; empty for a build outside git.
    #[serde(default)]
    pub commit: String,
    #[serde(default)]
    pub commits_since_release: u64,
    /// `clean`, `dirty` or `unknown`.
    pub tree: String,
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Plain file name (no directories).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the contents.
    pub sha256: String,
}

impl ManifestVersion {
    /// The manifest form of a version.
    pub fn from_proto(v: &Version) -> Self {
        let release = v.release.clone().unwrap_or_default();
        let git = v.git_information.clone().unwrap_or_default();
        let tree = match BuildTreeState::try_from(git.build_tree_state) {
            Ok(BuildTreeState::Clean) => "clean",
            Ok(BuildTreeState::Dirty) => "dirty",
            _ => "unknown",
        };
        ManifestVersion {
            major: release.major,
            minor: release.minor,
            patch: release.patch,
            prerelease: release.prerelease,
            commit: git.commit_hash,
            commits_since_release: git.commits_since_release,
            tree: tree.to_string(),
        }
    }

    /// The version as NodeStatus carries it.
    pub fn to_proto(&self) -> Version {
        let state = match self.tree.as_str() {
            "clean" => BuildTreeState::Clean,
            "dirty" => BuildTreeState::Dirty,
            _ => BuildTreeState::Invalid,
        };
        Version {
            release: Some(Release {
                major: self.major,
                minor: self.minor,
                patch: self.patch,
                prerelease: self.prerelease.clone(),
            }),
            git_information: (!self.commit.is_empty() || state != BuildTreeState::Invalid).then(
                || GitInformation {
                    commit_hash: self.commit.clone(),
                    commits_since_release: self.commits_since_release,
                    build_tree_state: state as i32,
                },
            ),
        }
    }
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Writes a bundle of `version` holding `files` (name, contents, Unix mode) to `out`.
pub fn write(
    out: impl Write,
    version: &Version,
    files: &[(&str, &[u8], u32)],
) -> Result<(), BundleError> {
    version
        .check_bounds()
        .map_err(|e| BundleError::invalid(format!("the version {version} {e}")))?;
    let manifest = Manifest {
        version: ManifestVersion::from_proto(version),
        files: files
            .iter()
            .map(|(name, data, _)| ManifestFile {
                path: (*name).to_string(),
                size: data.len() as u64,
                sha256: sha256_hex(data),
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BundleError::invalid(format!("encoding the manifest: {e}")))?;
    let mut tar = tar::Builder::new(out);
    let mut append = |name: &str, data: &[u8], mode: u32| -> io::Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, name, data)
    };
    let output = Path::new("(bundle output)");
    append(MANIFEST, &json, 0o644).map_err(|e| BundleError::io(output, e))?;
    for (name, data, mode) in files {
        check_name(name)?;
        append(name, data, *mode).map_err(|e| BundleError::io(output, e))?;
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| BundleError::io(output, e))
}

/// Reads a bundle from `input` into the existing directory `dir` (one file per manifest entry,
/// executable) and returns its manifest once every file was read in full and matched its
/// size and digest. On an error, files already written to `dir` are incomplete or unverified:
/// the caller discards the directory.
pub fn read_into(input: impl Read, dir: &Path, limits: &Limits) -> Result<Manifest, BundleError> {
    let mut archive = tar::Archive::new(input);
    // Raw entries: tar would otherwise read GNU long-name/long-link and pax headers (of any
    // size) into memory before we see an entry. Bundles are plain ustar with short names, so
    // such headers come through as entries of their own and are refused below.
    let entries = archive
        .entries()
        .map_err(|e| BundleError::invalid(format!("not a tar file: {e}")))?
        .raw(true);
    let mut manifest: Option<Manifest> = None;
    let mut seen = BTreeSet::new();
    let mut total: u64 = 0;
    for (index, entry) in entries.enumerate() {
        if index >= limits.max_entries {
            return Err(BundleError::invalid(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        let mut entry = entry.map_err(|e| BundleError::invalid(format!("entry {index}: {e}")))?;
        let name = entry_name(&entry)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BundleError::invalid(format!(
                "{name}: not a regular file ({:?})",
                entry.header().entry_type()
            )));
        }
        let size = entry.size();
        if size > limits.max_entry_bytes {
            return Err(BundleError::invalid(format!(
                "{name}: {size} bytes, at most {} are allowed",
                limits.max_entry_bytes
            )));
        }
        total = total.saturating_add(size);
        if total > limits.max_total_bytes {
            return Err(BundleError::invalid(format!(
                "more than {} bytes in all",
                limits.max_total_bytes
            )));
        }
        let Some(m) = &manifest else {
            if name != MANIFEST {
                return Err(BundleError::invalid(format!(
                    "the first entry is {name:?}, not {MANIFEST}"
                )));
            }
            manifest = Some(read_manifest(&mut entry, size)?);
            continue;
        };
        let Some(listed) = m.files.iter().find(|f| f.path == name) else {
            return Err(BundleError::invalid(format!(
                "{name} is not listed in the manifest"
            )));
        };
        if !seen.insert(name.clone()) {
            return Err(BundleError::invalid(format!("{name} appears twice")));
        }
        if listed.size != size {
            return Err(BundleError::invalid(format!(
                "{name}: {size} bytes, the manifest says {}",
                listed.size
            )));
        }
        let path = dir.join(&name);
        let digest = copy_hashing(&mut entry, &path, size)?;
        if digest != listed.sha256.to_ascii_lowercase() {
            return Err(BundleError::invalid(format!(
                "{name}: SHA-256 {digest} does not match the manifest's {}",
                listed.sha256
            )));
        }
    }
    let manifest = manifest.ok_or_else(|| BundleError::invalid("empty (no manifest)"))?;
    if let Some(missing) = manifest.files.iter().find(|f| !seen.contains(&f.path)) {
        return Err(BundleError::invalid(format!(
            "{} is listed in the manifest but missing",
            missing.path
        )));
    }
    if !seen.contains(NODE_BINARY) {
        return Err(BundleError::invalid(format!(
            "no {NODE_BINARY} in the bundle"
        )));
    }
    Ok(manifest)
}

/// The entry's name, which must be one plain file name.
fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, BundleError> {
    let raw = entry.path_bytes();
    let name = std::str::from_utf8(&raw)
        .map_err(|_| BundleError::invalid("an entry name is not UTF-8"))?
        .to_string();
    check_name(&name)?;
    Ok(name)
}

fn check_name(name: &str) -> Result<(), BundleError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && name.len() <= 100;
    if plain {
        Ok(())
    } else {
        Err(BundleError::invalid(format!(
            "entry name {:?} is not a plain file name",
            crate::update::clip(name)
        )))
    }
}

fn read_manifest(entry: &mut impl Read, size: u64) -> Result<Manifest, BundleError> {
    if size > MAX_MANIFEST_BYTES {
        return Err(BundleError::invalid(format!(
            "the manifest has {size} bytes, at most {MAX_MANIFEST_BYTES} are allowed"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| BundleError::invalid(format!("reading the manifest: {e}")))?;
    let manifest: Manifest = serde_json::from_slice(&buf)
        .map_err(|e| BundleError::invalid(format!("the manifest is not valid: {e}")))?;
    // A node running such a version could not report its status, so never confirm its boot.
    manifest
        .version
        .to_proto()
        .check_bounds()
        .map_err(|e| BundleError::invalid(format!("the manifest's version {e}")))?;
    for f in &manifest.files {
        check_name(&f.path)?;
        if f.path == MANIFEST {
            return Err(BundleError::invalid("the manifest lists itself"));
        }
    }
    Ok(manifest)
}

/// Copies exactly `size` bytes into a new executable file at `path`; returns their SHA-256.
fn copy_hashing(entry: &mut impl Read, path: &Path, size: u64) -> Result<String, BundleError> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .map_err(|e| BundleError::io(path, e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut limited = entry.take(size);
    let mut buf = vec![0u8; 64 << 10];
    let mut copied = 0u64;
    loop {
        let n = limited
            .read(&mut buf)
            .map_err(|e| BundleError::invalid(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| BundleError::io(path, e))?;
        copied += n as u64;
    }
    if copied != size {
        return Err(BundleError::invalid(format!(
            "{}: truncated ({copied} of {size} bytes)",
            path.display()
        )));
    }
    file.sync_all().map_err(|e| BundleError::io(path, e))?;
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// Removes a directory a failed [`read_into`] left behind, if any.
pub fn discard(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!("cannot remove {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> Version {
        ManifestVersion {
            major: 0,
            minor: 2,
            patch: 0,
            prerelease: vec![],
            commit: "1a2b3c4d".into(),
            commits_since_release: 0,
            tree: "clean".into(),
        }
        .to_proto()
    }

    fn bundle(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, &version(), files).expect("write bundle");
        out
    }

    fn read(data: &[u8], limits: &Limits) -> (tempfile::TempDir, Result<Manifest, BundleError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = read_into(data, dir.path(), limits);
        (dir, r)
    }

    fn err(r: Result<Manifest, BundleError>) -> String {
        match r {
            Ok(m) => panic!("accepted: {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// A raw tar entry with any name (tar::Builder refuses `..` and absolute names, which
    /// is exactly what a hostile bundle would not do).
    fn raw_entry(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn manifest_json(files: &[(&str, &[u8])]) -> Vec<u8> {
        serde_json::to_vec(&Manifest {
            version: ManifestVersion::from_proto(&version()),
            files: files
                .iter()
                .map(|(n, d)| ManifestFile {
                    path: (*n).into(),
                    size: d.len() as u64,
                    sha256: sha256_hex(d),
                })
                .collect(),
        })
        .expect("json")
    }

    #[test]
    fn round_trip() {
        let data = bundle(&[(NODE_BINARY, b"#!/bin/true\n", 0o755)]);
        let (dir, r) = read(&data, &Limits::default());
        let m = r.expect("valid bundle");
        assert_eq!(m.version.to_proto(), version());
        assert_eq!(m.files.len(), 1);
        assert_eq!(
            fs::read(dir.path().join(NODE_BINARY)).expect("read"),
            b"#!/bin/true\n"
        );
    }

    #[test]
    fn tampered_digest_is_refused() {
        let mut data = bundle(&[(NODE_BINARY, b"original contents", 0o755)]);
        let at = data
            .windows(8)
            .position(|w| w == b"original")
            .expect("contents in the tar");
        data[at] = b'O';
        let e = err(read(&data, &Limits::default()).1);
        assert!(e.contains("SHA-256") && e.contains("does not match"), "{e}");
    }

    #[test]
    fn oversized_entries_and_totals_are_refused() {
        let data = bundle(&[(NODE_BINARY, &[7u8; 4096], 0o755)]);
        let small = Limits {
            max_entry_bytes: 4095,
            ..Limits::default()
        };
        let e = err(read(&data, &small).1);
        assert!(e.contains("4096 bytes, at most 4095"), "{e}");
        let total = Limits {
            max_total_bytes: 4096,
            ..Limits::default()
        };
        let e = err(read(&data, &total).1);
        assert!(e.contains("in all"), "{e}");
        let few = Limits {
            max_entries: 2,
            ..Limits::default()
        };
        let three = bundle(&[(NODE_BINARY, b"a", 0o755), ("extra", b"b", 0o644)]);
        let e = err(read(&three, &few).1);
        assert!(e.contains("more than 2 entries"), "{e}");
        assert!(read(&three, &Limits::default()).1.is_ok());
    }

    #[test]
    fn path_traversal_is_refused() {
        for name in ["../metropolis-node", "/etc/passwd", "a/b", "..", "."] {
            let mut data = Vec::new();
            let binary: &[u8] = b"x";
            raw_entry(
                &mut data,
                MANIFEST,
                &manifest_json(&[(NODE_BINARY, binary)]),
            );
            raw_entry(&mut data, name, binary);
            data.extend_from_slice(&[0u8; 1024]);
            let (dir, r) = read(&data, &Limits::default());
            let e = err(r);
            assert!(e.contains("not a plain file name"), "{name}: {e}");
            assert!(
                !dir.path()
                    .parent()
                    .expect("parent")
                    .join("metropolis-node")
                    .exists()
            );
        }
    }

    #[test]
    fn manifest_and_contents_must_agree() {
        let binary: &[u8] = b"binary";
        // Not listed.
        let mut data = Vec::new();
        raw_entry(
            &mut data,
            MANIFEST,
            &manifest_json(&[(NODE_BINARY, binary)]),
        );
        raw_entry(&mut data, NODE_BINARY, binary);
        raw_entry(&mut data, "stowaway", b"x");
        data.extend_from_slice(&[0u8; 1024]);
        assert!(err(read(&data, &Limits::default()).1).contains("not listed"));
        // Listed but missing.
        let mut data = Vec::new();
        raw_entry(
            &mut data,
            MANIFEST,
            &manifest_json(&[(NODE_BINARY, binary), ("other", b"y")]),
        );
        raw_entry(&mut data, NODE_BINARY, binary);
        data.extend_from_slice(&[0u8; 1024]);
        assert!(err(read(&data, &Limits::default()).1).contains("missing"));
        // The manifest must come first.
        let mut data = Vec::new();
        raw_entry(&mut data, NODE_BINARY, binary);
        raw_entry(
            &mut data,
            MANIFEST,
            &manifest_json(&[(NODE_BINARY, binary)]),
        );
        data.extend_from_slice(&[0u8; 1024]);
        assert!(err(read(&data, &Limits::default()).1).contains("first entry"));
        // A size that differs from the manifest's.
        let mut data = Vec::new();
        raw_entry(
            &mut data,
            MANIFEST,
            &manifest_json(&[(NODE_BINARY, binary)]),
        );
        raw_entry(&mut data, NODE_BINARY, b"binary!");
        data.extend_from_slice(&[0u8; 1024]);
        assert!(err(read(&data, &Limits::default()).1).contains("the manifest says"));
        // Not a tar at all, and a tar without a node binary.
        assert!(read(b"garbage", &Limits::default()).1.is_err());
        let no_node = bundle(&[("other", b"x", 0o644)]);
        assert!(err(read(&no_node, &Limits::default()).1).contains("no metropolis-node"));
    }

    #[test]
    fn versions_out_of_the_curators_bounds_are_refused() {
        let long = format!(
            "0.2.0-{}",
            "x".repeat(proto::semver::MAX_VERSION_LABEL_CHARS + 1)
        );
        let v = Version::parse_semver(&long).expect("parse");
        let mut out = Vec::new();
        let e = write(&mut out, &v, &[(NODE_BINARY, b"x", 0o755)]).expect_err("refused");
        assert!(e.to_string().contains("at most"), "{e}");
        // A manifest written by something else is refused on reading.
        let binary: &[u8] = b"binary";
        let mut manifest: Manifest =
            serde_json::from_slice(&manifest_json(&[(NODE_BINARY, binary)])).expect("json");
        manifest.version = ManifestVersion::from_proto(&v);
        let mut data = Vec::new();
        raw_entry(
            &mut data,
            MANIFEST,
            &serde_json::to_vec(&manifest).expect("json"),
        );
        raw_entry(&mut data, NODE_BINARY, binary);
        data.extend_from_slice(&[0u8; 1024]);
        assert!(err(read(&data, &Limits::default()).1).contains("manifest's version"));
    }

    #[test]
    fn gnu_long_name_headers_are_refused() {
        // A GNU long-name header names the entry after it; tar would read its data (of any
        // size) into memory before we see an entry. The bundle is valid otherwise.
        let long_name = |out: &mut Vec<u8>, name: &str| {
            let mut header = tar::Header::new_gnu();
            header.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
            header.set_size(name.len() as u64 + 1);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::GNULongName);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.resize(out.len().div_ceil(512) * 512, 0);
        };
        let binary: &[u8] = b"binary";
        let mut data = Vec::new();
        long_name(&mut data, MANIFEST);
        raw_entry(&mut data, "x", &manifest_json(&[(NODE_BINARY, binary)]));
        raw_entry(&mut data, NODE_BINARY, binary);
        data.extend_from_slice(&[0u8; 1024]);
        let e = err(read(&data, &Limits::default()).1);
        assert!(
            e.contains("not a plain file name") || e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn links_are_refused() {
        let mut data = Vec::new();
        raw_entry(&mut data, MANIFEST, &manifest_json(&[(NODE_BINARY, b"")]));
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..NODE_BINARY.len()].copy_from_slice(NODE_BINARY.as_bytes());
        header.set_size(0);
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_link_name("/etc/passwd").expect("link name");
        header.set_cksum();
        data.extend_from_slice(header.as_bytes());
        data.extend_from_slice(&[0u8; 1024]);
        assert!(err(read(&data, &Limits::default()).1).contains("not a regular file"));
    }
}
