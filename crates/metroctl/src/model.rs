//! What metroctl shows about a node: [`NodeView`], built from `metropolis.proto.api.Node`,
//! serialized as is for JSON/YAML and cut into columns for tables.

use std::collections::BTreeMap;

use proto::api;
use proto::common::{NodeState, NodeTpmUsage};
use serde::Serialize;

use crate::roles::Role;

/// Heartbeat ages beyond this mean "never": the curator reports the saturated maximum
/// duration (~292 years) for nodes that never sent a heartbeat.
const NEVER_HEARTBEAT_SECONDS: i64 = 100 * 365 * 24 * 3600;

/// One node, as metroctl prints it. Field names are the stable JSON/YAML schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    /// Node ID (`metropolis-…`).
    pub id: String,
    /// Hex of the node's Ed25519 public key.
    pub pubkey: String,
    /// Lifecycle state without the `NODE_STATE_` prefix: NEW, STANDBY, UP, …
    pub state: String,
    /// The address the node reported, if it reported one.
    pub address: Option<String>,
    /// UNKNOWN, HEALTHY or HEARTBEAT_TIMEOUT.
    pub health: String,
    /// Roles, sorted by name.
    pub roles: Vec<String>,
    /// TPM use without the `NODE_TPM_` prefix: NOT_PRESENT, PRESENT_BUT_UNUSED,
    /// PRESENT_AND_USED, INVALID.
    pub tpm_usage: String,
    /// Seconds since the last heartbeat the leader saw; null if it saw none.
    pub time_since_heartbeat_seconds: Option<f64>,
    /// Whether the node runs a curator (reported in its status).
    pub running_curator: bool,
    /// The version the node reported running (`0.1.0-g1a2b3c4d`), if it reported one.
    pub version: Option<String>,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
}

impl NodeView {
    /// Converts a node from GetNodes.
    pub fn from_api(node: &api::Node) -> Self {
        let status = node.status.as_ref();
        let address = status
            .map(|s| s.external_address.clone())
            .filter(|a| !a.is_empty());
        let labels = node
            .labels
            .as_ref()
            .map(|l| {
                l.pairs
                    .iter()
                    .map(|p| (p.key.clone(), p.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        NodeView {
            id: node_id_of(node),
            pubkey: hex::encode(&node.pubkey),
            state: state_name(node.state),
            address,
            health: health_name(node.health),
            roles: Role::list(node.roles.as_ref())
                .into_iter()
                .map(|r| r.name().to_string())
                .collect(),
            tpm_usage: tpm_name(node.tpm_usage),
            time_since_heartbeat_seconds: heartbeat_seconds(node.time_since_heartbeat.as_ref()),
            running_curator: status.is_some_and(|s| s.running_curator.is_some()),
            version: status
                .and_then(|s| s.version.as_ref())
                .map(|v| v.to_string()),
            labels,
        }
    }
}

/// The node's ID: the `id` field, or (from servers that leave it empty) derived from the key.
pub fn node_id_of(node: &api::Node) -> String {
    if !node.id.is_empty() {
        return node.id.clone();
    }
    identity::PublicKey::from_slice(&node.pubkey)
        .map(|k| k.node_id())
        .unwrap_or_else(|_| "(invalid key)".to_string())
}

/// `NODE_STATE_UP` → `UP`; unknown numbers as `UNKNOWN(<n>)`.
pub fn state_name(state: i32) -> String {
    match NodeState::try_from(state) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("NODE_STATE_")
            .to_string(),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

/// Health without prefix (tolerating the `HEALTH_` prefix of later upstream Monogon).
pub fn health_name(health: i32) -> String {
    match api::node::Health::try_from(health) {
        Ok(h) => h.as_str_name().trim_start_matches("HEALTH_").to_string(),
        Err(_) => format!("UNKNOWN({health})"),
    }
}

/// `NODE_TPM_PRESENT_AND_USED` → `PRESENT_AND_USED`.
pub fn tpm_name(usage: i32) -> String {
    match NodeTpmUsage::try_from(usage) {
        Ok(u) => u
            .as_str_name()
            .trim_start_matches("NODE_TPM_USAGE_")
            .trim_start_matches("NODE_TPM_")
            .to_string(),
        Err(_) => format!("UNKNOWN({usage})"),
    }
}

/// The TPM column of upstream's table: yes / unused / no / unk.
pub fn tpm_short(tpm_usage: &str) -> &'static str {
    match tpm_usage {
        "PRESENT_AND_USED" => "yes",
        "PRESENT_BUT_UNUSED" => "unused",
        "NOT_PRESENT" => "no",
        _ => "unk",
    }
}

/// Seconds of a protobuf duration, or None when absent or saturated ("never").
pub fn heartbeat_seconds(d: Option<&prost_types::Duration>) -> Option<f64> {
    let d = d?;
    if d.seconds >= NEVER_HEARTBEAT_SECONDS || d.seconds < 0 {
        return None;
    }
    // Three decimals are plenty for a heartbeat age and keep JSON readable.
    let secs = d.seconds as f64 + f64::from(d.nanos) / 1e9;
    Some((secs * 1000.0).round() / 1000.0)
}

/// SHA256 fingerprint of a DER certificate as shown to users: `SHA256:<hex>`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    format!("SHA256:{}", hex::encode(digest.as_ref()))
}

/// Normalizes a user-typed fingerprint (`SHA256:` prefix optional, colons and case ignored)
/// for comparison with [`fingerprint`].
pub fn normalize_fingerprint(input: &str) -> String {
    let s = input.trim();
    let s = s
        .strip_prefix("SHA256:")
        .or_else(|| s.strip_prefix("sha256:"))
        .unwrap_or(s);
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("SHA256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::node_roles::{ConsensusMember, KubernetesController};
    use proto::common::{NodeRoles, NodeStatus, node_status::RunningCurator};

    pub(crate) fn sample() -> api::Node {
        let key = identity::PublicKey::from_bytes([7; 32]);
        api::Node {
            pubkey: key.as_ref().to_vec(),
            id: key.node_id(),
            state: NodeState::Up as i32,
            status: Some(NodeStatus {
                external_address: "127.89.1.1".to_string(),
                running_curator: Some(RunningCurator { port: 7835 }),
                version: Some(proto::Version {
                    release: Some(proto::version::spec::version::Release {
                        major: 0,
                        minor: 1,
                        patch: 0,
                        prerelease: vec![],
                    }),
                    git_information: Some(proto::version::spec::version::GitInformation {
                        commit_hash: "1a2b3c4d".to_string(),
                        commits_since_release: 0,
                        build_tree_state: 2,
                    }),
                }),
                ..Default::default()
            }),
            roles: Some(NodeRoles {
                kubernetes_controller: Some(KubernetesController {}),
                consensus_member: Some(ConsensusMember::default()),
                kubernetes_worker: None,
            }),
            health: api::node::Health::Healthy as i32,
            time_since_heartbeat: Some(prost_types::Duration {
                seconds: 3,
                nanos: 250_000_000,
            }),
            tpm_usage: NodeTpmUsage::NodeTpmNotPresent as i32,
            labels: None,
        }
    }

    #[test]
    fn view_of_a_bootstrap_node() {
        let v = NodeView::from_api(&sample());
        assert!(v.id.starts_with("metropolis-"));
        assert_eq!(v.state, "UP");
        assert_eq!(v.address.as_deref(), Some("127.89.1.1"));
        assert_eq!(v.health, "HEALTHY");
        assert_eq!(v.roles, vec!["ConsensusMember", "KubernetesController"]);
        assert_eq!(v.tpm_usage, "NOT_PRESENT");
        assert_eq!(v.time_since_heartbeat_seconds, Some(3.25));
        assert!(v.running_curator);
        assert_eq!(v.version.as_deref(), Some("0.1.0-g1a2b3c4d-dirty"));
        assert_eq!(v.pubkey, hex::encode([7u8; 32]));
    }

    #[test]
    fn empty_status_means_no_address() {
        let mut n = sample();
        n.status = None;
        n.id.clear();
        let v = NodeView::from_api(&n);
        assert_eq!(v.address, None);
        assert!(!v.running_curator);
        assert_eq!(v.version, None);
        // The ID is derived from the key when the server leaves it out.
        assert_eq!(v.id, identity::PublicKey::from_bytes([7; 32]).node_id());
    }

    #[test]
    fn saturated_heartbeat_is_never() {
        let max = prost_types::Duration {
            seconds: i64::MAX / 1_000_000_000,
            nanos: 0,
        };
        assert_eq!(heartbeat_seconds(Some(&max)), None);
        assert_eq!(heartbeat_seconds(None), None);
    }

    #[test]
    fn enum_names_lose_their_prefix() {
        assert_eq!(state_name(NodeState::New as i32), "NEW");
        assert_eq!(
            state_name(NodeState::DecommissionRequested as i32),
            "DECOMMISSION_REQUESTED"
        );
        assert_eq!(state_name(99), "UNKNOWN(99)");
        assert_eq!(
            health_name(api::node::Health::HeartbeatTimeout as i32),
            "HEARTBEAT_TIMEOUT"
        );
        assert_eq!(
            tpm_name(NodeTpmUsage::NodeTpmPresentAndUsed as i32),
            "PRESENT_AND_USED"
        );
    }

    #[test]
    fn tpm_column_values() {
        assert_eq!(tpm_short("PRESENT_AND_USED"), "yes");
        assert_eq!(tpm_short("PRESENT_BUT_UNUSED"), "unused");
        assert_eq!(tpm_short("NOT_PRESENT"), "no");
        assert_eq!(tpm_short("INVALID"), "unk");
    }

    #[test]
    fn fingerprints_compare_loosely() {
        let fp = fingerprint(b"abc");
        assert_eq!(
            fp,
            "SHA256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(normalize_fingerprint(&fp), fp);
        assert_eq!(
            normalize_fingerprint(&fp.trim_start_matches("SHA256:").to_uppercase()),
            fp
        );
        assert_eq!(normalize_fingerprint("sha256:BA:78"), "SHA256:ba78");
    }
}
