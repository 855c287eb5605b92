//! The version of this `metropolis-node` binary (`version.spec.Version`). It is stamped at
//! build time by `build.rs`: the release is the crate version, the git commit and tree state
//! those of the checkout it was built from. The node reports it in its status
//! (NodeStatus.version), so managers see which build every node runs.
//!
//! A built binary can also be re-stamped ([`stamp`]): a version trailer appended to the
//! executable file overrides the built-in one. This is how a release names a tested build
//! without rebuilding it, and how tests get a binary that really reports another version (the
//! same code as version X, reporting Y) to update a cluster from X to Y: the trailer is part of
//! the file, so the bundle digest covers it, and the node reads it from its own executable
//! (`/proc/self/exe`), so whatever runs that file reports that version.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::LazyLock;

use prost::Message;
use proto::Version;
use proto::version::spec::version::git_information::BuildTreeState;
use proto::version::spec::version::{GitInformation, Release};

/// Last bytes of a stamped binary.
pub const STAMP_MAGIC: &[u8; 8] = b"MNVSTAMP";
/// Largest encoded version in a stamp (a few dozen bytes in practice).
const MAX_STAMP_BYTES: usize = 1024;

static CURRENT: LazyLock<Version> = LazyLock::new(|| own_stamp().unwrap_or_else(built));
static TEXT: LazyLock<String> = LazyLock::new(|| CURRENT.to_string());

/// The version this process runs: its executable's stamp, else the build's.
pub fn current() -> &'static Version {
    &CURRENT
}

/// [`current`] in its SemVer form (`0.1.0-g1a2b3c4d`), for `--version` and logs.
pub fn text() -> &'static str {
    TEXT.as_str()
}

/// The version the build stamped in.
pub fn built() -> Version {
    let number = |s: &str| s.parse::<i64>().unwrap_or(0);
    let state = match env!("METROPOLIS_GIT_TREE_STATE") {
        "clean" => BuildTreeState::Clean,
        "dirty" => BuildTreeState::Dirty,
        // Not built from a git checkout, or git could not tell.
        _ => BuildTreeState::Invalid,
    };
    let commit = env!("METROPOLIS_GIT_COMMIT");
    Version {
        release: Some(Release {
            major: number(env!("CARGO_PKG_VERSION_MAJOR")),
            minor: number(env!("CARGO_PKG_VERSION_MINOR")),
            patch: number(env!("CARGO_PKG_VERSION_PATCH")),
            prerelease: Vec::new(),
        }),
        git_information: (!commit.is_empty() || state != BuildTreeState::Invalid).then(|| {
            GitInformation {
                commit_hash: commit.to_string(),
                commits_since_release: 0,
                build_tree_state: state as i32,
            }
        }),
    }
}

/// `binary` with its stamp (if any) replaced by one naming `version`.
pub fn stamp(binary: &[u8], version: &Version) -> Vec<u8> {
    let mut out = unstamped(binary).to_vec();
    let encoded = version.encode_to_vec();
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(STAMP_MAGIC);
    out
}

/// The version stamped at the end of `tail` (the last bytes of an executable), if any.
pub fn read_stamp(tail: &[u8]) -> Option<Version> {
    let (len, _) = stamp_bounds(tail)?;
    let end = tail.len() - STAMP_MAGIC.len() - 4;
    // A version the curator would refuse in every status report is no version to run as:
    // the node could never confirm its boot.
    Version::decode(&tail[end - len..end])
        .ok()
        .filter(|v| v.check_bounds().is_ok())
}

/// `binary` without its stamp.
fn unstamped(binary: &[u8]) -> &[u8] {
    match stamp_bounds(binary) {
        Some((_, total)) => &binary[..binary.len() - total],
        None => binary,
    }
}

/// (encoded length, whole trailer length) of the stamp ending `data`.
fn stamp_bounds(data: &[u8]) -> Option<(usize, usize)> {
    let rest = data.strip_suffix(STAMP_MAGIC.as_slice())?;
    let len_at = rest.len().checked_sub(4)?;
    let len = u32::from_le_bytes(rest[len_at..].try_into().ok()?) as usize;
    if len > MAX_STAMP_BYTES || len > len_at {
        return None;
    }
    Some((len, len + 4 + STAMP_MAGIC.len()))
}

/// The stamp of this process's executable. Only the file's last bytes are read.
fn own_stamp() -> Option<Version> {
    let mut file = File::open("/proc/self/exe").ok()?;
    let size = file.seek(SeekFrom::End(0)).ok()?;
    let window = (MAX_STAMP_BYTES + 4 + STAMP_MAGIC.len()) as u64;
    file.seek(SeekFrom::Start(size.saturating_sub(window)))
        .ok()?;
    let mut tail = Vec::new();
    file.take(window).read_to_end(&mut tail).ok()?;
    read_stamp(&tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_is_the_crate_version() {
        let v = built();
        let r = v.release.clone().unwrap_or_default();
        assert_eq!(
            format!("{}.{}.{}", r.major, r.minor, r.patch),
            env!("CARGO_PKG_VERSION")
        );
        assert!(v.to_string().starts_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn stamps_replace_each_other() {
        let binary = b"\x7fELF pretend binary".to_vec();
        assert_eq!(read_stamp(&binary), None);
        let y = Version::parse_semver("0.2.0-gabcdef12").expect("parse");
        let stamped = stamp(&binary, &y);
        assert!(stamped.starts_with(&binary));
        assert_eq!(read_stamp(&stamped), Some(y));
        let z = Version::parse_semver("0.3.0-rc1").expect("parse");
        let restamped = stamp(&stamped, &z);
        assert_eq!(read_stamp(&restamped), Some(z));
        assert_eq!(
            restamped.len(),
            stamped.len() - y_len(&stamped) + y_len(&restamped)
        );
        // A length pointing before the start is not a stamp.
        let mut bogus = vec![0u8; 2];
        bogus.extend_from_slice(&1000u32.to_le_bytes());
        bogus.extend_from_slice(STAMP_MAGIC);
        assert_eq!(read_stamp(&bogus), None);
    }

    #[test]
    fn stamps_out_of_the_curators_bounds_are_ignored() {
        let binary = b"\x7fELF pretend binary".to_vec();
        let long = format!(
            "0.2.0-{}",
            "x".repeat(proto::semver::MAX_VERSION_LABEL_CHARS + 1)
        );
        let v = Version::parse_semver(&long).expect("parse");
        assert_eq!(read_stamp(&stamp(&binary, &v)), None);
        let many = format!(
            "0.2.0{}",
            "-rc".repeat(proto::semver::MAX_VERSION_PRERELEASES + 1)
        );
        let v = Version::parse_semver(&many).expect("parse");
        assert_eq!(read_stamp(&stamp(&binary, &v)), None);
    }

    fn y_len(data: &[u8]) -> usize {
        stamp_bounds(data).map(|(_, t)| t).unwrap_or(0)
    }
}
