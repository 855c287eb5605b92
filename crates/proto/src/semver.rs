//! The SemVer 2.0.0 form of `version.spec.Version`, as metroctl and logs show it:
//! `MAJOR.MINOR.PATCH`, then each prerelease label, `dev<N>` when the build is N commits past
//! its release, `g<commit>` and `dirty`, every label after a `-` (`0.1.0-g1a2b3c4d-dirty`).

use std::fmt;

use crate::version::spec::Version;
use crate::version::spec::version::git_information::BuildTreeState;

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let release = self.release.clone().unwrap_or_default();
        write!(f, "{}.{}.{}", release.major, release.minor, release.patch)?;
        for label in &release.prerelease {
            write!(f, "-{label}")?;
        }
        if let Some(git) = &self.git_information {
            if git.commits_since_release > 0 {
                write!(f, "-dev{}", git.commits_since_release)?;
            }
            if !git.commit_hash.is_empty() {
                write!(f, "-g{}", git.commit_hash)?;
            }
            if git.build_tree_state == BuildTreeState::Dirty as i32 {
                write!(f, "-dirty")?;
            }
        }
        Ok(())
    }
}

/// Most prerelease labels in a version (`rc1`, …; builds carry none or one). The curator
/// refuses node statuses whose version breaks these bounds, so a node must never run as such
/// a version (it could not report its status, nor confirm an update).
pub const MAX_VERSION_PRERELEASES: usize = 8;

/// Longest prerelease label or commit hash in a version (a full SHA-256 commit hash has 64
/// hex digits).
pub const MAX_VERSION_LABEL_CHARS: usize = 64;

impl Version {
    /// Checks the bounds a node's version must keep ([`MAX_VERSION_PRERELEASES`],
    /// [`MAX_VERSION_LABEL_CHARS`]); the error says which one is broken (`has 9 prerelease
    /// labels, …`), to be prefixed with what the version is.
    pub fn check_bounds(&self) -> Result<(), String> {
        let prerelease = self
            .release
            .as_ref()
            .map(|r| &r.prerelease[..])
            .unwrap_or(&[]);
        if prerelease.len() > MAX_VERSION_PRERELEASES {
            return Err(format!(
                "has {} prerelease labels, at most {MAX_VERSION_PRERELEASES} are allowed",
                prerelease.len()
            ));
        }
        let commit = self
            .git_information
            .as_ref()
            .map(|g| g.commit_hash.as_str());
        if let Some(long) = prerelease
            .iter()
            .map(String::as_str)
            .chain(commit)
            .find(|l| l.len() > MAX_VERSION_LABEL_CHARS)
        {
            return Err(format!(
                "has a label of {} bytes, at most {MAX_VERSION_LABEL_CHARS} are allowed",
                long.len()
            ));
        }
        Ok(())
    }

    /// Parses the form [`Display`](fmt::Display) writes. Labels other than `dev<N>`,
    /// `g<hex>` and `dirty` are prerelease labels; build metadata (`+…`) is not supported.
    pub fn parse_semver(text: &str) -> Option<Version> {
        use crate::version::spec::version::{GitInformation, Release};

        let mut parts = text.trim().split('-');
        let mut numbers = parts.next()?.split('.').map(|n| n.parse::<i64>().ok());
        let (major, minor, patch) = (numbers.next()??, numbers.next()??, numbers.next()??);
        if numbers.next().is_some() || major < 0 || minor < 0 || patch < 0 {
            return None;
        }
        let mut release = Release {
            major,
            minor,
            patch,
            prerelease: Vec::new(),
        };
        let mut git: Option<GitInformation> = None;
        for label in parts {
            let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
            let dev = label
                .strip_prefix("dev")
                .and_then(|n| n.parse::<u64>().ok());
            if label.is_empty() || label.contains('+') {
                return None;
            } else if label == "dirty" {
                git.get_or_insert_with(Default::default).build_tree_state =
                    BuildTreeState::Dirty as i32;
            } else if let Some(n) = dev {
                git.get_or_insert_with(Default::default)
                    .commits_since_release = n;
            } else if let Some(hash) = label.strip_prefix('g').filter(|h| is_hex(h)) {
                git.get_or_insert_with(Default::default).commit_hash = hash.to_string();
            } else if git.is_none() {
                release.prerelease.push(label.to_string());
            } else {
                return None;
            }
        }
        if let Some(g) = git.as_mut()
            && g.build_tree_state != BuildTreeState::Dirty as i32
            && !g.commit_hash.is_empty()
        {
            g.build_tree_state = BuildTreeState::Clean as i32;
        }
        Some(Version {
            release: Some(release),
            git_information: git,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::version::spec::version::{GitInformation, Release};

    use super::*;

    #[test]
    fn renders_semver() {
        let mut v = Version {
            release: Some(Release {
                major: 0,
                minor: 1,
                patch: 0,
                prerelease: vec![],
            }),
            git_information: Some(GitInformation {
                commit_hash: "1a2b3c4d".into(),
                commits_since_release: 0,
                build_tree_state: BuildTreeState::Clean as i32,
            }),
        };
        assert_eq!(v.to_string(), "0.1.0-g1a2b3c4d");
        if let Some(g) = v.git_information.as_mut() {
            g.build_tree_state = BuildTreeState::Dirty as i32;
            g.commits_since_release = 3;
        }
        if let Some(r) = v.release.as_mut() {
            r.prerelease.push("rc1".into());
        }
        assert_eq!(v.to_string(), "0.1.0-rc1-dev3-g1a2b3c4d-dirty");
        assert_eq!(Version::default().to_string(), "0.0.0");
    }

    #[test]
    fn parses_what_it_renders() {
        for text in [
            "0.1.0",
            "0.1.0-g1a2b3c4d",
            "0.1.0-g1a2b3c4d-dirty",
            "1.2.3-rc1-dev3-g1a2b3c4d-dirty",
        ] {
            let v = Version::parse_semver(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(v.to_string(), text);
        }
        let v = Version::parse_semver("0.2.0-gabc").expect("parse");
        let git = v.git_information.expect("git");
        assert_eq!(git.commit_hash, "abc");
        assert_eq!(git.build_tree_state, BuildTreeState::Clean as i32);
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "a.b.c",
            "1.2.3-",
            "1.2.3-gabc-rc1",
            "1.2.3+meta",
        ] {
            assert!(Version::parse_semver(bad).is_none(), "{bad}");
        }
    }
}
