//! The generated method → policy table (from the `metropolis.proto.ext.authorization` options
//! in the protos) matches, row by row, the permissions upstream Monogon's protos give each
//! method: the baseline's methods, the ones later upstream added and our own additions, each
//! named here. A change to an option in a `.proto` file has to be made here too, on purpose.

use proto::authz::{METHOD_POLICIES, policy_for};
use proto::ext::Permission as P;

const MGMT: &str = "metropolis.proto.api.Management";
const NODE_MGMT: &str = "metropolis.proto.api.NodeManagement";
const AAA: &str = "metropolis.proto.api.AAA";
const CURATOR: &str = "metropolis.node.core.curator.proto.api.Curator";
const CURATOR_LOCAL: &str = "metropolis.node.core.curator.proto.api.CuratorLocal";

/// (service, method, allow_unauthenticated, need).
fn expected_rows() -> Vec<(&'static str, &'static str, bool, Vec<P>)> {
    vec![
        (MGMT, "GetRegisterTicket", false, vec![P::GetRegisterTicket]),
        (MGMT, "GetClusterInfo", false, vec![P::ReadClusterStatus]),
        (MGMT, "GetNodes", false, vec![P::ReadClusterStatus]),
        (MGMT, "ApproveNode", false, vec![P::ApproveNode]),
        (MGMT, "UpdateNodeRoles", false, vec![P::UpdateNodeRoles]),
        (MGMT, "DecommissionNode", false, vec![P::DecommissionNode]),
        (MGMT, "DeleteNode", false, vec![P::DeleteNode]),
        // Added by later upstream Monogon (not in the baseline).
        (MGMT, "UpdateNodeLabels", false, vec![P::UpdateNodeLabels]),
        // Ours: rotating the ticket is guarded like reading it.
        (
            MGMT,
            "RotateRegisterTicket",
            false,
            vec![P::GetRegisterTicket],
        ),
        (NODE_MGMT, "Logs", false, vec![P::ReadNodeLogs]),
        (NODE_MGMT, "UpdateNode", false, vec![P::UpdateNode]),
        (NODE_MGMT, "Reboot", false, vec![P::NodePowerManagement]),
        (AAA, "Escrow", true, vec![]),
        (CURATOR, "Watch", false, vec![P::ReadClusterStatus]),
        (CURATOR, "UpdateNodeStatus", false, vec![P::UpdateNodeSelf]),
        (CURATOR, "Heartbeat", false, vec![P::UpdateNodeSelf]),
        (CURATOR, "RegisterNode", true, vec![]),
        (CURATOR, "CommitNode", true, vec![]),
        (CURATOR, "JoinNode", true, vec![]),
        // Any authenticated caller; the handler insists on a KubernetesWorker node.
        (CURATOR, "IssueCertificate", false, vec![]),
        (
            CURATOR,
            "UpdateNodeClusterNetworking",
            false,
            vec![P::UpdateNodeSelf],
        ),
        // Added by later upstream Monogon (not in the baseline).
        (
            CURATOR,
            "GetConsensusStatus",
            false,
            vec![P::ReadClusterStatus],
        ),
        // Ours: the node reports decommissioning progress about itself.
        (
            CURATOR,
            "ReportDecommission",
            false,
            vec![P::UpdateNodeSelf],
        ),
        // Ours: every node follows what the cluster revoked.
        (
            CURATOR,
            "WatchRevocations",
            false,
            vec![P::ReadClusterStatus],
        ),
        (CURATOR_LOCAL, "GetCurrentLeader", true, vec![]),
        // Added by later upstream Monogon (not in the baseline).
        (CURATOR_LOCAL, "GetCACertificate", true, vec![]),
        // Ours: the cluster CRL, public and signed by the cluster CA.
        (CURATOR_LOCAL, "GetClusterCRL", true, vec![]),
    ]
}

#[test]
fn table_matches_expected_rows() {
    let rows = expected_rows();
    for (service, method, allow_unauthenticated, need) in &rows {
        let path = format!("/{service}/{method}");
        let policy = policy_for(&path).unwrap_or_else(|| panic!("{path} missing from the table"));
        assert_eq!(
            policy.allow_unauthenticated, *allow_unauthenticated,
            "{path}: allow_unauthenticated"
        );
        assert_eq!(policy.need, need.as_slice(), "{path}: need");
    }
    assert_eq!(
        METHOD_POLICIES.len(),
        rows.len(),
        "the table has rows this test does not list"
    );
}

#[test]
fn unauthenticated_means_allow_and_no_need() {
    for policy in METHOD_POLICIES {
        assert_eq!(
            policy.is_unauthenticated(),
            policy.allow_unauthenticated && policy.need.is_empty()
        );
    }
    assert!(policy_for("/metropolis.proto.api.Management/Nope").is_none());
    assert!(policy_for("/cloud.bmaas.server.api.AgentCallback/Heartbeat").is_none());
}

#[test]
fn table_is_sorted_for_binary_search() {
    assert!(METHOD_POLICIES.windows(2).all(|w| w[0].path < w[1].path));
}

#[test]
fn descriptor_set_keeps_the_custom_options() {
    let pool = prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    assert!(
        pool.get_extension_by_name("metropolis.proto.ext.authorization")
            .is_some()
    );
    assert!(
        pool.get_service_by_name("cloud.bmaas.server.api.AgentCallback")
            .is_some()
    );
}
