//! CEL filters of `Management.GetNodes`.
//!
//! A filter is a CEL expression over a variable `node` shaped like `metropolis.proto.api.Node`,
//! with integer constants for the node states (`NODE_STATE_UP`, …), the health values
//! (`HEALTHY`, `HEALTH_HEALTHY`, …) and the TPM usages in scope. A node is returned iff the
//! expression yields `true`.
//!
//! Upstream evaluates against the protobuf message with cel-go. The `cel` crate has no protobuf
//! support, so `node` is built from a serde mirror of the emitted `api::Node` (field names as in
//! the proto). The mirror skips unset message fields instead of writing nulls, so
//! `has(node.roles.kubernetes_worker)` and `has(node.status)` report presence truthfully.
//! Enums are ints (as cel-go compares enum fields with ints), durations and timestamps are CEL
//! `duration`/`timestamp` values, bytes are `bytes`.
//!
//! The program is compiled once per call; every node is evaluated in its own scope on top of one
//! root context holding the constants.

use std::sync::{Arc, LazyLock};

use cel::{Context, Env, ExecutionError, Program, Value};
use proto::api;
use proto::api::node::Health;
use proto::common::{NodeState, NodeTpmUsage};
use serde::Serialize;
use tonic::Status;

/// The standard CEL environment, built once: it only holds the standard library.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// Fields the mirror leaves out when unset. Selecting one of them on a node that lacks it is
/// not a mistake in the expression, only a node without that data (see [`Outcome`]).
const OPTIONAL_FIELDS: &[&str] = &[
    "status",
    "running_curator",
    "timestamp",
    "roles",
    "time_since_heartbeat",
    "labels",
    "kubernetes_worker",
    "consensus_member",
    "kubernetes_controller",
];

/// A compiled GetNodes filter; the empty filter matches every node.
#[derive(Debug)]
pub struct NodeFilter {
    program: Option<Program>,
}

impl NodeFilter {
    /// Compiles `source`. A syntax error is the caller's: InvalidArgument with the parser's
    /// message.
    pub fn compile(source: &str) -> Result<Self, Status> {
        if source.trim().is_empty() {
            return Ok(Self { program: None });
        }
        let program = ENV
            .compile(source)
            .map_err(|e| Status::invalid_argument(format!("invalid filter {source:?}: {e}")))?;
        Ok(Self {
            program: Some(program),
        })
    }

    /// The nodes the filter selects, in their order. Fails on the first node whose evaluation
    /// is an error (see [`classify`]) or not a boolean.
    pub fn select(&self, nodes: Vec<api::Node>) -> Result<Vec<api::Node>, Status> {
        let Some(program) = &self.program else {
            return Ok(nodes);
        };
        let root = root_context();
        let mut selected = Vec::with_capacity(nodes.len());
        for node in nodes {
            if matches(program, &root, &node)? {
                selected.push(node);
            }
        }
        Ok(selected)
    }
}

/// The root scope: the standard library and the enum constants.
fn root_context() -> Context<'static, 'static> {
    let mut ctx = Context::with_env(ENV.clone());
    for (name, value) in constants() {
        ctx.add_variable_from_value(name, value);
    }
    ctx
}

/// Integer constants for every enum value a filter compares with. NodeState and Health are
/// upstream's (Health both bare, as at baseline, and `HEALTH_`-prefixed, as in later upstream
/// Monogon); the TPM usages (baseline `NODE_TPM_*` and later upstream `NODE_TPM_USAGE_*` names) are
/// ours, for `node.tpm_usage == NODE_TPM_PRESENT_AND_USED`.
fn constants() -> Vec<(String, i64)> {
    let mut out = Vec::new();
    // Walk the numbers rather than listing names, so added states (ours: DECOMMISSION_REQUESTED,
    // DECOMMISSIONING) get a constant without touching this code. Enum numbers are small.
    for n in 0..64 {
        if let Ok(s) = NodeState::try_from(n) {
            out.push((s.as_str_name().to_string(), i64::from(n)));
        }
        if let Ok(h) = Health::try_from(n) {
            out.push((h.as_str_name().to_string(), i64::from(n)));
            out.push((format!("HEALTH_{}", h.as_str_name()), i64::from(n)));
        }
        if let Ok(t) = NodeTpmUsage::try_from(n) {
            let name = t.as_str_name();
            out.push((name.to_string(), i64::from(n)));
            if let Some(rest) = name.strip_prefix("NODE_TPM_") {
                out.push((format!("NODE_TPM_USAGE_{rest}"), i64::from(n)));
            }
        }
    }
    out
}

/// Evaluates the program for one node.
fn matches(program: &Program, root: &Context<'_, '_>, node: &api::Node) -> Result<bool, Status> {
    let value = cel::to_value(CelNode::from(node)).map_err(|e| {
        Status::unavailable(format!(
            "building the filter input for node {}: {e}",
            node.id
        ))
    })?;
    let mut scope = root.new_inner_scope();
    scope.add_variable_from_value("node", value);
    match program.execute(&scope) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(Status::invalid_argument(format!(
            "filter must evaluate to a boolean, got {} for node {}",
            other.type_of(),
            node.id
        ))),
        Err(e) => match classify(&e) {
            Outcome::NoMatch => Ok(false),
            Outcome::Fail(status) => Err(status),
        },
    }
}

/// What an evaluation error means for the call.
#[derive(Debug)]
enum Outcome {
    /// The node lacks a field the expression reads (e.g. `node.status.external_address` on a
    /// node that never reported a status): it does not match. cel-go would read the protobuf
    /// default instead; this differs only for expressions that match the default (`== ""`,
    /// `!=`), which can test `has(node.status)` explicitly.
    NoMatch,
    /// The call fails with this status.
    Fail(Status),
}

/// Classifies an evaluation error. The input is built by us and well-formed, so an error
/// comes from the expression: an unknown variable, field or function, or operands of the
/// wrong type — what cel-go's type checker rejects before evaluating (upstream:
/// InvalidArgument) and what the `cel` crate, which does not type-check, only finds while
/// evaluating. Those are InvalidArgument, so the caller learns to fix the filter. Only an
/// interpreter-internal error is ours: Unavailable, as upstream answers evaluation errors.
fn classify(e: &ExecutionError) -> Outcome {
    match e {
        ExecutionError::NoSuchKey(field) if OPTIONAL_FIELDS.contains(&field.as_str()) => {
            Outcome::NoMatch
        }
        ExecutionError::InternalError(_) => {
            Outcome::Fail(Status::unavailable(format!("evaluating filter: {e}")))
        }
        _ => Outcome::Fail(Status::invalid_argument(format!("invalid filter: {e}"))),
    }
}

/// `node`: a mirror of `api::Node` with proto field names.
#[derive(Serialize)]
struct CelNode<'a> {
    pubkey: Bytes<'a>,
    id: &'a str,
    state: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<CelStatus<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<CelRoles>,
    health: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_since_heartbeat: Option<cel::Duration>,
    tpm_usage: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<CelLabels<'a>>,
}

/// `node.status` (common.NodeStatus).
#[derive(Serialize)]
struct CelStatus<'a> {
    external_address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    running_curator: Option<CelRunningCurator>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<cel::Timestamp>,
    boot_id: Bytes<'a>,
}

/// `node.status.running_curator`.
#[derive(Serialize)]
struct CelRunningCurator {
    port: i64,
}

/// `node.roles`: presence markers only, as GetNodes emits them.
#[derive(Serialize)]
struct CelRoles {
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes_worker: Option<Marker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consensus_member: Option<Marker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes_controller: Option<Marker>,
}

/// An empty message: present or not.
#[derive(Serialize)]
struct Marker {}

/// `node.labels` (common.NodeLabels).
#[derive(Serialize)]
struct CelLabels<'a> {
    pairs: Vec<CelPair<'a>>,
}

/// `node.labels.pairs[i]`.
#[derive(Serialize)]
struct CelPair<'a> {
    key: &'a str,
    value: &'a str,
}

/// Bytes serialised as CEL `bytes` (serde would make a list of ints of a `Vec<u8>`).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'a> From<&'a api::Node> for CelNode<'a> {
    fn from(n: &'a api::Node) -> Self {
        CelNode {
            pubkey: Bytes(&n.pubkey),
            id: &n.id,
            state: i64::from(n.state),
            status: n.status.as_ref().map(|s| CelStatus {
                external_address: &s.external_address,
                running_curator: s.running_curator.as_ref().map(|c| CelRunningCurator {
                    port: i64::from(c.port),
                }),
                timestamp: s.timestamp.as_ref().and_then(timestamp),
                boot_id: Bytes(&s.boot_id),
            }),
            roles: n.roles.as_ref().map(|r| CelRoles {
                kubernetes_worker: r.kubernetes_worker.as_ref().map(|_| Marker {}),
                consensus_member: r.consensus_member.as_ref().map(|_| Marker {}),
                kubernetes_controller: r.kubernetes_controller.as_ref().map(|_| Marker {}),
            }),
            health: i64::from(n.health),
            time_since_heartbeat: n.time_since_heartbeat.as_ref().and_then(duration),
            tpm_usage: i64::from(n.tpm_usage),
            labels: n.labels.as_ref().map(|l| CelLabels {
                pairs: l
                    .pairs
                    .iter()
                    .map(|p| CelPair {
                        key: &p.key,
                        value: &p.value,
                    })
                    .collect(),
            }),
        }
    }
}

/// protobuf Duration → CEL duration; None if out of chrono's range (then the field is absent).
fn duration(d: &prost_types::Duration) -> Option<cel::Duration> {
    let secs = chrono::Duration::try_seconds(d.seconds)?;
    secs.checked_add(&chrono::Duration::nanoseconds(i64::from(d.nanos)))
        .map(cel::Duration)
}

/// protobuf Timestamp → CEL timestamp; None if out of range.
fn timestamp(t: &prost_types::Timestamp) -> Option<cel::Timestamp> {
    let nanos = u32::try_from(t.nanos).ok()?;
    chrono::DateTime::from_timestamp(t.seconds, nanos).map(|d| cel::Timestamp(d.fixed_offset()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::node_roles::KubernetesWorker;
    use proto::common::{NodeRoles, NodeStatus};

    fn node(
        id: &str,
        state: NodeState,
        address: Option<&str>,
        worker: bool,
        since_secs: i64,
    ) -> api::Node {
        api::Node {
            pubkey: vec![1; 32],
            id: id.to_string(),
            state: state as i32,
            status: address.map(|a| NodeStatus {
                external_address: a.to_string(),
                ..Default::default()
            }),
            roles: Some(NodeRoles {
                kubernetes_worker: worker.then_some(KubernetesWorker {}),
                ..Default::default()
            }),
            health: Health::Healthy as i32,
            time_since_heartbeat: Some(prost_types::Duration {
                seconds: since_secs,
                nanos: 0,
            }),
            tpm_usage: NodeTpmUsage::NodeTpmNotPresent as i32,
            labels: None,
        }
    }

    fn ids(filter: &str, nodes: &[api::Node]) -> Result<Vec<String>, Status> {
        let f = NodeFilter::compile(filter)?;
        Ok(f.select(nodes.to_vec())?
            .into_iter()
            .map(|n| n.id)
            .collect())
    }

    fn sample() -> Vec<api::Node> {
        vec![
            node("a", NodeState::Up, Some("10.1.0.3"), true, 5),
            node("b", NodeState::New, None, false, 20),
            node(
                "c",
                NodeState::DecommissionRequested,
                Some("10.1.0.4"),
                false,
                1,
            ),
        ]
    }

    #[test]
    fn filters_select_nodes() {
        let n = sample();
        let cases: &[(&str, &[&str])] = &[
            ("", &["a", "b", "c"]),
            ("node.state == NODE_STATE_UP", &["a"]),
            ("node.state == NODE_STATE_DECOMMISSION_REQUESTED", &["c"]),
            ("has(node.roles.kubernetes_worker)", &["a"]),
            ("!has(node.status)", &["b"]),
            ("node.id == \"b\"", &["b"]),
            ("node.status.external_address == \"10.1.0.3\"", &["a"]),
            (
                "node.time_since_heartbeat < duration('6s') && node.time_since_heartbeat > duration('4s')",
                &["a"],
            ),
            (
                "node.health == HEALTHY && node.health == HEALTH_HEALTHY",
                &["a", "b", "c"],
            ),
            (
                "node.tpm_usage == NODE_TPM_NOT_PRESENT && size(node.pubkey) == 32",
                &["a", "b", "c"],
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(ids(filter, &n).expect(filter), *want, "{filter}");
        }
    }

    #[test]
    fn bad_filters_are_invalid_arguments() {
        let n = sample();
        for filter in [
            "node.state ==",
            "node.state",
            "nod.state == 1",
            "node.stat == 1",
            "node.id == 1 + 'x'",
        ] {
            let e = ids(filter, &n).expect_err(filter);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{filter}: {e:?}");
        }
    }
}
