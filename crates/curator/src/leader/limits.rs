//! Size limits of what callers send the leader, in one place: the largest request each
//! service decodes, and bounds for the client-controlled fields the curator stores in node
//! records (which every Watch then sends to every node) or echoes in errors and logs.
//!
//! Fields whose content is checked elsewhere are bounded by that check: external addresses
//! must parse as IP addresses, keys and tickets have fixed lengths, labels follow the rules of
//! the `labels` crate (at most 128 per node, names of at most 63 characters). What is left is
//! bounded here.

use proto::common::{NodeClusterNetworking, NodeStatus};
use tonic::Status;

/// Largest Curator request. The largest real one is a RegisterNode with 128 labels of the
/// longest allowed keys and values (about 50 KiB).
pub const MAX_CURATOR_REQUEST_BYTES: usize = 256 << 10;

/// Largest Management request. The largest real ones are UpdateNodeLabels with every label of
/// a node and GetNodes with a long filter, each well under 64 KiB.
pub const MAX_MANAGEMENT_REQUEST_BYTES: usize = 256 << 10;

/// Largest AAA request (Escrow: a public key and the names of proofs).
pub const MAX_AAA_REQUEST_BYTES: usize = 64 << 10;

/// Largest CuratorLocal request (GetCurrentLeader has no fields).
pub const MAX_LOCAL_REQUEST_BYTES: usize = 64 << 10;

/// Longest boot ID. Nodes send the 16 bytes of the boot's UUID; the textual form (36
/// characters) is accepted too.
pub const MAX_BOOT_ID_BYTES: usize = 64;

/// Most prefixes a node may announce in UpdateNodeClusterNetworking. A node routes its pod
/// network prefixes and its own /32: a handful. Each one lands in the node's record and in
/// every other node's routing table.
pub const MAX_CLUSTERNET_PREFIXES: usize = 64;

/// Longest prefix text (`255.255.255.255/32` has 18 characters; IPv6 ones are refused later
/// anyway). Longer ones are refused before they are parsed or quoted in an error.
pub const MAX_PREFIX_CHARS: usize = 43;

/// Labels a registering node loses that are logged one by one; the rest are counted.
pub const MAX_LOGGED_LABEL_SKIPS: usize = 16;

/// Longest piece of caller input quoted in an error message or a log line.
pub const MAX_QUOTED_CHARS: usize = 80;

/// Checks the parts of a reported status that its other checks do not bound.
pub fn check_status(status: &NodeStatus) -> Result<(), Status> {
    if status.boot_id.len() > MAX_BOOT_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "status.boot_id has {} bytes, at most {MAX_BOOT_ID_BYTES} are allowed",
            status.boot_id.len()
        )));
    }
    if let Some(v) = &status.version {
        v.check_bounds()
            .map_err(|e| Status::invalid_argument(format!("status.version {e}")))?;
    }
    Ok(())
}

/// Checks the size of announced cluster networking before its content is looked at.
pub fn check_clusternet(cn: &NodeClusterNetworking) -> Result<(), Status> {
    if cn.prefixes.len() > MAX_CLUSTERNET_PREFIXES {
        return Err(Status::invalid_argument(format!(
            "clusternet.prefixes has {} entries, at most {MAX_CLUSTERNET_PREFIXES} are allowed",
            cn.prefixes.len()
        )));
    }
    if let Some((i, p)) = cn
        .prefixes
        .iter()
        .enumerate()
        .find(|(_, p)| p.cidr.len() > MAX_PREFIX_CHARS)
    {
        return Err(Status::invalid_argument(format!(
            "clusternet.prefixes[{i}] is {} characters long, not a prefix",
            p.cidr.len()
        )));
    }
    Ok(())
}

/// At most [`MAX_QUOTED_CHARS`] characters of `s`, marked when cut, for messages that quote
/// caller input.
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::node_cluster_networking::Prefix;
    use proto::semver::{MAX_VERSION_LABEL_CHARS, MAX_VERSION_PRERELEASES};

    #[test]
    fn boot_ids() {
        let with = |n: usize| NodeStatus {
            boot_id: vec![1; n],
            ..Default::default()
        };
        assert!(check_status(&with(0)).is_ok());
        assert!(check_status(&with(16)).is_ok());
        assert!(check_status(&with(36)).is_ok());
        assert!(check_status(&with(MAX_BOOT_ID_BYTES)).is_ok());
        let err = check_status(&with(MAX_BOOT_ID_BYTES + 1)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn versions() {
        use proto::version::spec::version::{GitInformation, Release};
        let with = |labels: usize, commit: usize| NodeStatus {
            version: Some(proto::Version {
                release: Some(Release {
                    prerelease: vec!["rc1".into(); labels],
                    ..Default::default()
                }),
                git_information: Some(GitInformation {
                    commit_hash: "a".repeat(commit),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        assert!(check_status(&with(1, 8)).is_ok());
        assert!(check_status(&with(MAX_VERSION_PRERELEASES, MAX_VERSION_LABEL_CHARS)).is_ok());
        assert!(check_status(&with(MAX_VERSION_PRERELEASES + 1, 8)).is_err());
        let err = check_status(&with(0, MAX_VERSION_LABEL_CHARS + 1)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn clusternet_sizes() {
        let with = |n: usize, cidr: &str| NodeClusterNetworking {
            wireguard_pubkey: String::new(),
            prefixes: vec![
                Prefix {
                    cidr: cidr.to_string()
                };
                n
            ],
        };
        assert!(check_clusternet(&with(MAX_CLUSTERNET_PREFIXES, "10.192.0.0/24")).is_ok());
        assert!(check_clusternet(&with(MAX_CLUSTERNET_PREFIXES + 1, "10.192.0.0/24")).is_err());
        assert!(check_clusternet(&with(1, "255.255.255.255/32")).is_ok());
        let long = "1".repeat(100_000);
        let err = check_clusternet(&with(1, &long)).unwrap_err();
        assert!(err.message().len() < 100, "{}", err.message());
    }

    #[test]
    fn clipping() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(200);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(clipped.ends_with('…'));
    }
}
