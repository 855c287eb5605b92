//! Register Flow and Join Flow: upstream TestRegistration, TestJoin and
//! TestClusterTPMModeSetting, plus every refusal of RegisterNode, CommitNode and JoinNode.

mod curator_support;

use curator::state::node;
use curator::testing::TestLeader;
use curator_support::*;
use identity::SigningKey;
use proto::api::ApproveNodeRequest;
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use proto::common::{ClusterConfiguration, NodeState, NodeStorageSecurity, NodeTpmUsage};
use proto::curator_api::{
    CommitNodeRequest, JoinNodeRequest, RegisterNodeRequest, RegisterNodeResponse,
};
use rpc::ClientCredentials;
use tonic::{Code, Status};

fn register_request(ticket: &[u8], join_key: &SigningKey, tpm: bool) -> RegisterNodeRequest {
    RegisterNodeRequest {
        register_ticket: ticket.to_vec(),
        join_key: join_key.public_key().as_bytes().to_vec(),
        have_local_tpm: tpm,
        labels: None,
    }
}

fn commit_request(cuk: &[u8], security: NodeStorageSecurity) -> CommitNodeRequest {
    CommitNodeRequest {
        cluster_unlock_key: cuk.to_vec(),
        storage_security: security as i32,
    }
}

async fn register(
    t: &TestLeader,
    node_key: &SigningKey,
    req: RegisterNodeRequest,
) -> Result<RegisterNodeResponse, Status> {
    curator(t.ephemeral(node_key))
        .register_node(req)
        .await
        .map(|r| r.into_inner())
}

async fn commit(
    t: &TestLeader,
    node_key: &SigningKey,
    req: CommitNodeRequest,
) -> Result<proto::curator_api::CommitNodeResponse, Status> {
    curator(t.ephemeral(node_key))
        .commit_node(req)
        .await
        .map(|r| r.into_inner())
}

async fn join_node(t: &TestLeader, join_key: &SigningKey, sealed: bool) -> Result<Vec<u8>, Status> {
    curator(t.ephemeral(join_key))
        .join_node(JoinNodeRequest {
            using_sealed_configuration: sealed,
        })
        .await
        .map(|r| r.into_inner().cluster_unlock_key)
}

async fn approve(t: &TestLeader, node_key: &SigningKey) -> Result<(), Status> {
    let req = ApproveNodeRequest {
        pubkey: node_key.public_key().as_bytes().to_vec(),
    };
    management(t.owner().await)
        .approve_node(req)
        .await
        .map(|_| ())
}

/// Register → approve → commit; returns (node key, join key).
async fn full_registration(
    t: &TestLeader,
    tpm: bool,
    cuk: &[u8],
    security: NodeStorageSecurity,
) -> (SigningKey, SigningKey) {
    let ticket = register_ticket(t).await;
    let (node_key, join_key) = (key(), key());
    register(t, &node_key, register_request(&ticket, &join_key, tpm))
        .await
        .expect("RegisterNode");
    approve(t, &node_key).await.expect("ApproveNode");
    commit(t, &node_key, commit_request(cuk, security))
        .await
        .expect("CommitNode");
    (node_key, join_key)
}

fn config(tpm: TpmMode, storage: StorageSecurityPolicy) -> ClusterConfiguration {
    ClusterConfiguration {
        tpm_mode: tpm as i32,
        storage_security_policy: storage as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration() {
    let t = TestLeader::start().await;
    let ticket = register_ticket(&t).await;
    assert_eq!(register_ticket(&t).await, ticket, "the ticket is stable");
    assert_eq!(ticket.len(), 34);

    let (node_key, join_key) = (key(), key());
    let id = id_of(&node_key);
    let first = register(&t, &node_key, register_request(&ticket, &join_key, false))
        .await
        .expect("RegisterNode");
    assert!(first.cluster_configuration.is_some());
    assert_eq!(first.tpm_usage, NodeTpmUsage::NodeTpmNotPresent as i32);
    assert_eq!(
        first.recommended_node_storage_security,
        NodeStorageSecurity::AuthenticatedEncrypted as i32
    );
    let record = load(&t, &id).await;
    assert_eq!(record.state(), NodeState::New);
    assert_eq!(record.node.join_key, join_key.public_key().as_bytes());

    // A repeated RegisterNode of a NEW node gets the same full answer (upstream: empty).
    let again = register(&t, &node_key, register_request(&ticket, &join_key, false))
        .await
        .expect("again");
    assert_eq!(again, first);

    // Not approved yet: CommitNode is refused until a manager approves.
    let cuk = [9u8; 32];
    assert_eq!(
        code(
            commit(
                &t,
                &node_key,
                commit_request(&cuk, NodeStorageSecurity::AuthenticatedEncrypted)
            )
            .await
        ),
        Code::PermissionDenied
    );

    // Approve → STANDBY, idempotent.
    approve(&t, &node_key).await.expect("approve");
    approve(&t, &node_key).await.expect("approve twice");
    assert_eq!(load(&t, &id).await.state(), NodeState::Standby);

    // Commit refusals that change nothing.
    assert_eq!(
        code(
            commit(
                &t,
                &node_key,
                commit_request(&cuk, NodeStorageSecurity::Invalid)
            )
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            commit(
                &t,
                &node_key,
                commit_request(&cuk[..31], NodeStorageSecurity::Encrypted)
            )
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(load(&t, &id).await.state(), NodeState::Standby);

    // Commit → UP with a node certificate of the cluster.
    let resp = commit(
        &t,
        &node_key,
        commit_request(&cuk, NodeStorageSecurity::AuthenticatedEncrypted),
    )
    .await
    .expect("commit");
    assert_eq!(resp.ca_certificate, t.ca);
    let certified = identity::verify::verify_node_cert(&resp.node_certificate, &t.ca)
        .expect("a valid node certificate");
    assert_eq!(certified, node_key.public_key());
    let record = load(&t, &id).await;
    assert_eq!(record.state(), NodeState::Up);
    assert_eq!(record.node.cluster_unlock_key, cuk);

    // UP is final for the Register Flow: only a repeat of the same commit (its reply was
    // lost) is answered, with the same certificate; another cluster unlock key is refused.
    assert_eq!(
        commit(
            &t,
            &node_key,
            commit_request(&cuk, NodeStorageSecurity::AuthenticatedEncrypted)
        )
        .await
        .expect("repeated commit"),
        resp
    );
    assert_eq!(
        code(
            commit(
                &t,
                &node_key,
                commit_request(&[1u8; 32], NodeStorageSecurity::AuthenticatedEncrypted)
            )
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(register(&t, &node_key, register_request(&ticket, &join_key, false)).await),
        Code::FailedPrecondition
    );

    // The new certificate authenticates the node.
    let mut as_node = curator(t.channel(ClientCredentials::Authenticated {
        certificate: resp.node_certificate,
        key: node_key.clone(),
    }));
    let req = proto::curator_api::UpdateNodeStatusRequest {
        node_id: id.clone(),
        status: Some(status("10.1.0.9")),
    };
    as_node
        .update_node_status(req)
        .await
        .expect("the committed node can call node RPCs");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refusals() {
    let t = TestLeader::start().await;
    let ticket = register_ticket(&t).await;
    let (node_key, join_key) = (key(), key());

    // Wrong ticket.
    let mut bad = ticket.clone();
    bad[5] ^= 1;
    assert_eq!(
        code(register(&t, &node_key, register_request(&bad, &join_key, false)).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(register(&t, &node_key, register_request(&[], &join_key, false)).await),
        Code::PermissionDenied
    );
    // No self-signed certificate: Unauthenticated, for RegisterNode and CommitNode.
    let mut anon = curator(t.channel(ClientCredentials::None));
    assert_eq!(
        code(
            anon.register_node(register_request(&ticket, &join_key, false))
                .await
        ),
        Code::Unauthenticated
    );
    let commit_req = commit_request(&[1; 32], NodeStorageSecurity::Encrypted);
    assert_eq!(
        code(anon.commit_node(commit_req.clone()).await),
        Code::Unauthenticated
    );
    // A cluster certificate is no self-signed certificate either.
    let mut owner = curator(t.owner().await);
    assert_eq!(
        code(
            owner
                .register_node(register_request(&ticket, &join_key, false))
                .await
        ),
        Code::Unauthenticated
    );
    // Join key of the wrong length.
    let mut req = register_request(&ticket, &join_key, false);
    req.join_key.pop();
    assert_eq!(
        code(register(&t, &node_key, req).await),
        Code::InvalidArgument
    );
    // CommitNode of a node that never registered.
    assert_eq!(code(commit(&t, &key(), commit_req).await), Code::NotFound);
    // Nothing was created by the refused calls.
    assert!(
        node::load(&t.leader.leadership, &id_of(&node_key))
            .await
            .is_err()
    );

    // Ours: a join key another node uses is refused (upstream would re-point the index).
    assert_eq!(
        code(register(&t, &node_key, register_request(&ticket, &t.join_key, false)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        node::id_by_join_key(&t.leader.leadership, t.join_key.public_key().as_bytes())
            .await
            .expect("index"),
        t.node_id()
    );

    // Ours: a NEW node re-registering with another join key moves its index entry.
    register(&t, &node_key, register_request(&ticket, &join_key, false))
        .await
        .expect("register");
    let new_join_key = key();
    register(
        &t,
        &node_key,
        register_request(&ticket, &new_join_key, false),
    )
    .await
    .expect("re-register");
    let l = &t.leader.leadership;
    assert_eq!(
        node::id_by_join_key(l, new_join_key.public_key().as_bytes())
            .await
            .expect("new index"),
        id_of(&node_key)
    );
    assert_eq!(
        code(
            node::id_by_join_key(l, join_key.public_key().as_bytes())
                .await
                .map_err(tonic::Status::from)
        ),
        Code::NotFound
    );
    assert_eq!(
        load(&t, &id_of(&node_key)).await.node.join_key,
        new_join_key.public_key().as_bytes()
    );

    // Decommissioned nodes cannot commit.
    let (gone, _) = add_node(&t, NodeState::Decommissioned, &[]).await;
    assert_eq!(
        code(
            commit(
                &t,
                &gone,
                commit_request(&[1; 32], NodeStorageSecurity::Encrypted)
            )
            .await
        ),
        Code::FailedPrecondition
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_flow() {
    let t = TestLeader::start().await;
    // Upstream TestJoin: an UP node written into etcd gets its CUK back with its join key.
    let cuk = b"fakefakefakefakefakefakefakefake".to_vec();
    let (_, join_key) = add_node(&t, NodeState::Up, &cuk).await;
    assert_eq!(
        join_node(&t, &join_key, false).await.expect("JoinNode"),
        cuk
    );
    assert_eq!(
        join_node(&t, &join_key, false)
            .await
            .expect("JoinNode is idempotent"),
        cuk
    );

    // The bootstrap node joins too.
    assert_eq!(
        join_node(&t, &t.join_key, false)
            .await
            .expect("bootstrap node joins"),
        vec![7; 32]
    );

    // Through the whole Register Flow, with an INSECURE node (empty CUK).
    let (_, jk) = full_registration(&t, false, &[], NodeStorageSecurity::Insecure).await;
    assert_eq!(
        join_node(&t, &jk, false).await.expect("join"),
        Vec::<u8>::new()
    );

    // Unknown join key.
    assert_eq!(code(join_node(&t, &key(), false).await), Code::NotFound);
    // Without a self-signed certificate: PermissionDenied (not Unauthenticated).
    let mut anon = curator(t.channel(ClientCredentials::None));
    assert_eq!(
        code(anon.join_node(JoinNodeRequest::default()).await),
        Code::PermissionDenied
    );
    // The node key is not the join key.
    let (node_key, _) = add_node(&t, NodeState::Up, &cuk).await;
    assert_eq!(code(join_node(&t, &node_key, false).await), Code::NotFound);
    // A node that is not UP.
    for state in [
        NodeState::New,
        NodeState::Standby,
        NodeState::Decommissioned,
    ] {
        let (_, jk) = add_node(&t, state, &cuk).await;
        assert_eq!(
            code(join_node(&t, &jk, false).await),
            Code::FailedPrecondition,
            "{state:?}"
        );
    }
    // A sealed configuration on a node that registered without a TPM.
    assert_eq!(
        code(join_node(&t, &join_key, true).await),
        Code::PermissionDenied
    );
    t.stop().await;
}

/// Upstream TestClusterTPMModeSetting, one cluster per mode: which nodes may register, the
/// TPM usage they get, and which seal state JoinNode accepts afterwards.
async fn tpm_mode(mode: TpmMode, cases: &[(bool, Option<NodeTpmUsage>)]) {
    let t = TestLeader::start_with(config(mode, StorageSecurityPolicy::Permissive)).await;
    let ticket = register_ticket(&t).await;
    for &(have_tpm, expected) in cases {
        let (node_key, join_key) = (key(), key());
        let result = register(
            &t,
            &node_key,
            register_request(&ticket, &join_key, have_tpm),
        )
        .await;
        let Some(usage) = expected else {
            assert_eq!(
                code(result),
                Code::PermissionDenied,
                "{mode:?} tpm={have_tpm}"
            );
            continue;
        };
        assert_eq!(
            result.expect("RegisterNode").tpm_usage,
            usage as i32,
            "{mode:?} tpm={have_tpm}"
        );
        approve(&t, &node_key).await.expect("approve");
        commit(
            &t,
            &node_key,
            commit_request(&[3; 32], NodeStorageSecurity::Encrypted),
        )
        .await
        .expect("commit");
        let sealed = usage == NodeTpmUsage::NodeTpmPresentAndUsed;
        assert_eq!(
            join_node(&t, &join_key, sealed)
                .await
                .expect("join with the matching seal state"),
            vec![3; 32]
        );
        assert_eq!(
            code(join_node(&t, &join_key, !sealed).await),
            Code::PermissionDenied,
            "{mode:?} tpm={have_tpm}"
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_mode_required() {
    use NodeTpmUsage as U;
    tpm_mode(
        TpmMode::Required,
        &[(false, None), (true, Some(U::NodeTpmPresentAndUsed))],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_mode_best_effort() {
    use NodeTpmUsage as U;
    tpm_mode(
        TpmMode::BestEffort,
        &[
            (false, Some(U::NodeTpmNotPresent)),
            (true, Some(U::NodeTpmPresentAndUsed)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_mode_disabled() {
    use NodeTpmUsage as U;
    tpm_mode(
        TpmMode::Disabled,
        &[
            (false, Some(U::NodeTpmNotPresent)),
            (true, Some(U::NodeTpmPresentButUnused)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_storage_policy() {
    let t = TestLeader::start_with(config(
        TpmMode::Disabled,
        StorageSecurityPolicy::NeedsEncryption,
    ))
    .await;
    let ticket = register_ticket(&t).await;
    let (node_key, join_key) = (key(), key());
    let resp = register(&t, &node_key, register_request(&ticket, &join_key, false))
        .await
        .expect("register");
    assert_eq!(
        resp.recommended_node_storage_security,
        NodeStorageSecurity::Encrypted as i32
    );
    approve(&t, &node_key).await.expect("approve");
    // INSECURE violates NEEDS_ENCRYPTION.
    assert_eq!(
        code(
            commit(
                &t,
                &node_key,
                commit_request(&[], NodeStorageSecurity::Insecure)
            )
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        load(&t, &id_of(&node_key)).await.state(),
        NodeState::Standby
    );
    commit(
        &t,
        &node_key,
        commit_request(&[5; 32], NodeStorageSecurity::AuthenticatedEncrypted),
    )
    .await
    .expect("commit");
    t.stop().await;
}

/// RegisterNode and UpdateNodeLabels apply the same label rules: what registration drops,
/// UpdateNodeLabels refuses, and what one keeps the other accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_labels_follow_the_label_rules() {
    use proto::api::{UpdateNodeLabelsRequest, update_node_labels_request};
    use proto::common::NodeLabels;
    use proto::common::node_labels::Pair;

    let t = TestLeader::start().await;
    let pair = |k: &str, v: &str| Pair {
        key: k.to_string(),
        value: v.to_string(),
    };
    let ticket = register_ticket(&t).await;
    let (node_key, join_key) = (key(), key());
    let mut req = register_request(&ticket, &join_key, false);
    req.labels = Some(NodeLabels {
        pairs: vec![
            pair("rack", "r1"),
            pair("example.com/zone", ""),
            pair("Example.com/x", "v"),
            pair("1.2.3.4/ip", "v"),
            pair("rack", "again"),
            pair("bad", "a b"),
        ],
    });
    register(&t, &node_key, req)
        .await
        .expect("registration is not refused for invalid labels");
    let stored = load(&t, &id_of(&node_key)).await;
    assert_eq!(
        stored.node.labels.expect("labels").pairs,
        vec![pair("rack", "r1"), pair("example.com/zone", "")],
        "invalid and repeated labels are dropped, the rest kept in order"
    );

    let mut mgmt = management(t.owner().await);
    let update = |upsert: Vec<Pair>| UpdateNodeLabelsRequest {
        node: Some(update_node_labels_request::Node::Id(id_of(&node_key))),
        upsert,
        delete: Vec::new(),
    };
    for dropped in [
        pair("Example.com/x", "v"),
        pair("1.2.3.4/ip", "v"),
        pair("bad", "a b"),
    ] {
        assert_eq!(
            code(mgmt.update_node_labels(update(vec![dropped.clone()])).await),
            Code::InvalidArgument,
            "{dropped:?}"
        );
    }
    mgmt.update_node_labels(update(vec![pair("example.com/zone", "z1")]))
        .await
        .expect("a label registration keeps is accepted");
    assert_eq!(
        load(&t, &id_of(&node_key))
            .await
            .node
            .labels
            .expect("labels")
            .pairs,
        vec![pair("example.com/zone", "z1"), pair("rack", "r1")]
    );
    t.stop().await;
}

/// Registrations run side by side (no leader-wide lock): sixteen nodes registering,
/// approved and committing at once all end UP, each with its own join key; repeated
/// RegisterNode and CommitNode calls of one node racing each other are answered as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations() {
    let t = TestLeader::start().await;
    let cuk = [7u8; 32];
    let nodes = futures::future::join_all(
        (0..16).map(|_| full_registration(&t, false, &cuk, NodeStorageSecurity::Encrypted)),
    )
    .await;
    for (node_key, join_key) in &nodes {
        let record = load(&t, &id_of(node_key)).await;
        assert_eq!(record.state(), NodeState::Up);
        assert_eq!(
            node::id_by_join_key(&t.leader.leadership, join_key.public_key().as_bytes())
                .await
                .as_deref(),
            Ok(id_of(node_key).as_str())
        );
    }

    // One node, its calls repeated concurrently (a client retrying while the first call is
    // still in flight): every RegisterNode succeeds, every CommitNode gets the same answer.
    let ticket = register_ticket(&t).await;
    let (node_key, join_key) = (key(), key());
    let registered = futures::future::join_all(
        (0..4).map(|_| register(&t, &node_key, register_request(&ticket, &join_key, false))),
    )
    .await;
    assert!(registered.iter().all(Result::is_ok), "{registered:?}");
    approve(&t, &node_key).await.expect("ApproveNode");
    let committed = futures::future::join_all((0..4).map(|_| {
        commit(
            &t,
            &node_key,
            commit_request(&cuk, NodeStorageSecurity::Encrypted),
        )
    }))
    .await;
    let first = committed[0].as_ref().expect("CommitNode").clone();
    for c in &committed {
        assert_eq!(c.as_ref().ok(), Some(&first), "{c:?}");
    }
    assert_eq!(load(&t, &id_of(&node_key)).await.state(), NodeState::Up);

    t.stop().await;
}

/// Concurrent read-modify-writes of one record lose nothing: each of several label updates
/// racing on one node is retried on conflict until it lands on the current record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_node_all_land() {
    use proto::api::{UpdateNodeLabelsRequest, update_node_labels_request};
    use proto::common::node_labels::Pair;
    let t = TestLeader::start().await;
    let id = t.node_id();
    let mgmt = management(t.owner().await);
    let updates = futures::future::join_all((0..6).map(|i| {
        let mut mgmt = mgmt.clone();
        let id = id.clone();
        async move {
            mgmt.update_node_labels(UpdateNodeLabelsRequest {
                node: Some(update_node_labels_request::Node::Id(id)),
                upsert: vec![Pair {
                    key: format!("k{i}"),
                    value: "v".into(),
                }],
                delete: Vec::new(),
            })
            .await
        }
    }))
    .await;
    assert!(updates.iter().all(Result::is_ok), "{updates:?}");
    let labels = load(&t, &id).await.node.labels.unwrap_or_default().pairs;
    let keys: Vec<&str> = labels.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4", "k5"]);
    t.stop().await;
}
