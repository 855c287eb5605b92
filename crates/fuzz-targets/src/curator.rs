//! The curator's handling of hostile input: GetNodes filters (CEL, from any node), cluster-
//! networking prefixes and WireGuard keys, and node records and watch events read from etcd.

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use curator::leader::curator::clusternet;
use curator::leader::filter::{FILTER_THREAD_STACK, MAX_COST_PER_NODE, NodeFilter};
use curator::state::NodeRecord;
use curator::state::node::{self, NodeChange};
use prost::Message;
use proto::api;
use proto::common::node_labels::Pair;
use proto::common::node_status::RunningCurator;
use proto::common::{NodeLabels, NodeRoles, NodeState, NodeStatus, NodeTpmUsage};
use proto::curator_private::Node;

/// Sample nodes a filter selects from: one with labels, status and roles, one bare, one
/// decommissioned with a heartbeat timestamp.
fn sample_nodes() -> &'static [api::Node] {
    static NODES: LazyLock<Vec<api::Node>> = LazyLock::new(|| {
        let labelled = api::Node {
            pubkey: vec![1; 32],
            id: "metropolis-a".into(),
            state: NodeState::Up as i32,
            status: Some(NodeStatus {
                external_address: "10.1.0.3".into(),
                running_curator: Some(RunningCurator { port: 7835 }),
                timestamp: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                ..Default::default()
            }),
            roles: Some(NodeRoles {
                kubernetes_worker: Some(Default::default()),
                consensus_member: Some(Default::default()),
                ..Default::default()
            }),
            health: api::node::Health::Healthy as i32,
            time_since_heartbeat: Some(prost_types::Duration {
                seconds: 3,
                nanos: 500,
            }),
            tpm_usage: NodeTpmUsage::NodeTpmNotPresent as i32,
            labels: Some(NodeLabels {
                pairs: (0..8)
                    .map(|i| Pair {
                        key: format!("example.com/key-{i}"),
                        value: format!("value-{i}"),
                    })
                    .collect(),
            }),
        };
        let bare = api::Node {
            pubkey: vec![2; 32],
            id: "metropolis-b".into(),
            state: NodeState::New as i32,
            ..Default::default()
        };
        let decommissioned = api::Node {
            pubkey: vec![3; 32],
            id: "metropolis-c".into(),
            state: NodeState::DecommissionRequested as i32,
            health: api::node::Health::HeartbeatTimeout as i32,
            time_since_heartbeat: Some(prost_types::Duration {
                seconds: -1,
                nanos: -999_999_999,
            }),
            roles: Some(NodeRoles::default()),
            ..Default::default()
        };
        vec![labelled, bare, decommissioned]
    });
    &NODES
}

/// GetNodes filters: `NodeFilter::compile`, then `select` over the sample nodes, on a thread
/// with the stack of the curator's filter threads (libFuzzer's
/// `-timeout` and `-rss_limit_mb` bound the time and memory one filter may take). Properties:
/// an accepted filter is within the per-node cost limit; a selection is a subsequence of the
/// nodes, in order; refusals are InvalidArgument.
pub fn filter(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    // On a thread like the curator's filter threads: the parser's recursion is bounded by
    // their stack, not by a test thread's or libFuzzer's main thread's.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(FILTER_THREAD_STACK)
            .spawn_scoped(s, || compile_and_select(source))
            .expect("filter thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    });
}

fn compile_and_select(source: &str) {
    let compiled = match NodeFilter::compile(source) {
        Ok(f) => f,
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            return;
        }
    };
    assert!(
        compiled.cost() <= MAX_COST_PER_NODE,
        "cost {}",
        compiled.cost()
    );
    let nodes = sample_nodes();
    if let Ok(selected) = compiled.select(nodes.to_vec()) {
        let mut rest = nodes.iter();
        for s in &selected {
            assert!(
                rest.any(|n| n == s),
                "selection is not a subsequence of the nodes"
            );
        }
    }
}

/// A stored node record: `NodeRecord::decode` under an ID from the input (first byte even) or
/// the ID of the record's own key (odd), so inputs reach past the ID check. Properties: a
/// decoded record is stored under its ID's key, holds the key of that ID and decodes again
/// from its own encoding to the same record.
pub fn node_record(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (id, bytes) = if mode % 2 == 0 {
        let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        (
            String::from_utf8_lossy(&rest[..split]).into_owned(),
            rest.get(split + 1..).unwrap_or_default(),
        )
    } else {
        let id = Node::decode(rest)
            .ok()
            .and_then(|n| identity::PublicKey::from_slice(&n.public_key).ok())
            .map(|k| identity::node_id(&k))
            .unwrap_or_default();
        (id, rest)
    };
    let Ok(record) = NodeRecord::decode(&id, bytes) else {
        return;
    };
    assert_eq!(node::node_key(&id).ok(), Some(record.key()));
    let key = record.public_key().expect("a decoded record has a key");
    assert_eq!(identity::node_id(&key), id);
    let _ = (record.state(), record.roles(), record.has_roles());
    let again = NodeRecord::decode(&id, &record.node.encode_to_vec()).expect("re-encoded record");
    assert_eq!(again, record);
}

/// One etcd watch event, as the target builds it.
#[derive(Debug, Arbitrary)]
struct WatchEvent {
    put: bool,
    key: Vec<u8>,
    value: Vec<u8>,
    own_id: bool,
}

/// Watch events of the node keyspace: `node::batch_changes` (the watch behind WatchNodes and
/// the node cache) and the tombstone keys of `node::deleted_id`. Puts under the ID of the
/// record's own key are built on request, so inputs reach past the ID check. Properties: a put
/// is a change only for a node record stored under its own ID; a delete is a tombstone of the
/// ID in its key; other keys are skipped.
pub fn watch_event(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut events = Vec::new();
    while !u.is_empty() && events.len() < 16 {
        let Ok(e) = u.arbitrary::<WatchEvent>() else {
            break;
        };
        let _ = node::deleted_id(&e.key);
        let mut key = e.key;
        if e.own_id
            && let Some(k) = Node::decode(e.value.as_slice())
                .ok()
                .and_then(|n| identity::PublicKey::from_slice(&n.public_key).ok())
        {
            key = format!("{}{}", node::NODES_PREFIX, identity::node_id(&k)).into_bytes();
        }
        events.push(kv::Event {
            kind: if e.put {
                kv::EventKind::Put
            } else {
                kv::EventKind::Delete
            },
            key,
            value: e.value,
            create_revision: 1,
            mod_revision: 2,
            version: 1,
            prev_value: None,
        });
    }
    let changes = node::batch_changes(Ok(kv::WatchBatch {
        revision: 2,
        events: events.clone(),
    }));
    assert!(changes.len() <= events.len());
    let mut pending = events.iter();
    for change in changes {
        let change = change.expect("a watch batch yields no errors");
        // Changes come in event order, each from the first remaining event that yields it.
        let matched = pending.any(|e| {
            let key = String::from_utf8_lossy(&e.key);
            let Some(id) = key.strip_prefix(node::NODES_PREFIX) else {
                return false;
            };
            match (&change, e.kind) {
                (NodeChange::Put(r), kv::EventKind::Put) => {
                    r.id == id && NodeRecord::decode(id, &e.value).as_ref() == Ok(r)
                }
                (NodeChange::Deleted(d), kv::EventKind::Delete) => d == id,
                _ => false,
            }
        });
        assert!(matched, "change {change:?} matches no event");
    }
}

/// Cluster-networking checks: announced prefixes, WireGuard keys and the base64 they are
/// stored in. Properties: an accepted prefix is canonical and accepted again as it was stored;
/// base64 round-trips; a key is accepted exactly when it decodes to 32 bytes.
pub fn clusternet(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(cidr), Ok(external), Ok(key)) = (
        u.arbitrary::<String>(),
        u.arbitrary::<String>(),
        u.arbitrary::<String>(),
    ) else {
        return;
    };
    let bytes = u.take_rest();

    if let Ok(prefix) = clusternet::check_prefix(&cidr, &external) {
        assert_eq!(
            clusternet::check_prefix(&prefix.cidr, &external).as_ref(),
            Ok(&prefix),
            "stored prefix of {cidr:?} is not accepted as is"
        );
    }

    let encoded = clusternet::base64_encode(bytes);
    assert_eq!(encoded.len(), bytes.len().div_ceil(3) * 4);
    if bytes.is_empty() {
        assert_eq!(clusternet::base64_decode(&encoded), None);
    } else {
        assert_eq!(clusternet::base64_decode(&encoded).as_deref(), Some(bytes));
    }

    let decoded = clusternet::base64_decode(&key);
    if let Some(d) = &decoded {
        assert_eq!(
            clusternet::base64_decode(&clusternet::base64_encode(d)).as_ref(),
            Some(d)
        );
    }
    let parsed = clusternet::parse_wireguard_key(&key);
    assert_eq!(
        parsed.map(Vec::from),
        decoded.filter(|d| d.len() == 32),
        "WireGuard key {key:?}"
    );
}
