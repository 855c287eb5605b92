//! CEL filters of `Management.GetNodes` (spec 4.8).
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
//!
//! Any node may call GetNodes (it needs only READ_CLUSTER_STATUS), so a filter is hostile
//! input: a 1.2 KB expression of four nested comprehensions over a 100-element list is 10^8
//! steps per node. Filters are therefore bounded before they run — in size
//! ([`MAX_FILTER_BYTES`]), AST nodes ([`MAX_FILTER_NODES`]) and depth ([`MAX_FILTER_DEPTH`]),
//! comprehension nesting ([`MAX_COMPREHENSION_DEPTH`]) and estimated work per node
//! ([`MAX_COST_PER_NODE`], see [`cost`]) and per call ([`MAX_COST_PER_CALL`]) — and
//! evaluated off the async runtime in a [`FilterPool`] of [`MAX_CONCURRENT_EVALUATIONS`]
//! threads, under a wall-clock budget ([`EVALUATION_BUDGET`]), stopping as soon as the caller
//! goes away.

mod cost;
mod native;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use cel::{Context, Env, ExecutionError, Program, Value};
use proto::api;
use proto::api::node::Health;
use proto::common::{NodeState, NodeTpmUsage};
use serde::Serialize;
use tokio::sync::Semaphore;
use tonic::Status;

/// Longest filter source. Real filters are a line (`node.state == NODE_STATE_UP &&
/// has(node.roles.kubernetes_worker)`); a list of a few dozen node IDs is about 2 KiB.
pub const MAX_FILTER_BYTES: usize = 4096;

/// Most AST nodes after macro expansion (each macro adds about half a dozen). Bounds the
/// memory of a compiled filter and the time to check it; a 4 KiB filter of literals has about
/// 2000, a real filter a few dozen.
pub const MAX_FILTER_NODES: usize = 1000;

/// Deepest AST. The checks below walk the AST recursively (as does the interpreter); this
/// keeps that far from any stack limit. Real filters are a dozen levels deep.
pub const MAX_FILTER_DEPTH: usize = 128;

/// Deepest nesting of comprehensions (`all`, `exists`, `exists_one`, `map`, `filter`) inside
/// each other's bodies. A node filter needs one (over the labels), rarely two; every level
/// multiplies the work by its range's size.
pub const MAX_COMPREHENSION_DEPTH: usize = 2;

/// Most estimated work ([`cost`]: AST node evaluations, and 64-byte units of what
/// comparisons and concatenations go over) per node. The estimate is an upper bound from the
/// node's largest possible shape (128 labels of the longest keys and values): a label lookup
/// (`node.labels.pairs.exists(p, p.key == 'rack' && p.value == 'r1')`) is about 4000, a
/// `map` or `filter` over the labels about 135 000, two nested comprehensions over
/// 100-element lists about 100 000 (50 ms per node in a debug build); the filter bomb is 10^8.
pub const MAX_COST_PER_NODE: u64 = 500_000;

/// Most estimated work per call, over all nodes: about two seconds of a core in a release
/// build at the costliest (AST evaluations; the weight part of the estimate is much cheaper
/// in practice). A label lookup passes for 25 000 nodes, a `map` over the labels for 700;
/// beyond that the call is refused (ResourceExhausted) before it occupies an evaluation
/// thread.
pub const MAX_COST_PER_CALL: u64 = 100_000_000;

/// Wall-clock budget of one evaluation. The static estimate bounds the work; this bounds the
/// time when the estimate is off or the machine is busy, so no call holds an evaluation
/// thread for long.
pub const EVALUATION_BUDGET: Duration = Duration::from_secs(5);

/// Filter evaluations running at once; more are refused (ResourceExhausted). Evaluation is
/// CPU-bound: with two, a small control-plane machine (two cores here) had both cores busy
/// evaluating under attack and answered other calls up to 200 ms late; one leaves a core to
/// the curator's runtime and to etcd, whatever the callers send. Evaluation threads also run
/// at a lower priority ([`EVALUATION_NICE`]).
pub const MAX_CONCURRENT_EVALUATIONS: usize = 1;

/// The nice value of evaluation (and parsing) threads: the kernel gives a runnable thread
/// of the curator's runtime about ten times their share of a busy core, so filters get what
/// the runtime leaves.
pub const EVALUATION_NICE: i32 = 10;

/// Filters parsed at once. Parsing a filter of [`MAX_FILTER_BYTES`] takes milliseconds (tens
/// in a debug build) — too long for the async runtime when many arrive together — so it runs
/// on low-priority threads too; callers beyond this wait their turn for up to
/// [`COMPILE_WAIT`].
pub const MAX_CONCURRENT_COMPILES: usize = 1;

/// How long a filter waits for its turn to be parsed before the call is refused
/// (ResourceExhausted): many times a parse, so only a flood of filters hits it.
pub const COMPILE_WAIT: Duration = Duration::from_secs(2);

/// Stack of the threads that parse and evaluate filters. cel's parser (ANTLR-generated)
/// recurses per token on malformed input past its own recursion limit: a 305-byte filter of
/// unbalanced `{`, `!` and `||` (found by fuzzing) needs over 512 KiB in a release build and
/// over 16 MiB in a debug build, where a thread's default 2 MiB aborts the whole process. The
/// stack is only reserved: untouched pages cost no memory.
pub const FILTER_THREAD_STACK: usize = 64 << 20;

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

/// A compiled GetNodes filter within the static limits; the empty filter matches every node.
#[derive(Debug, Clone)]
pub struct NodeFilter {
    program: Option<Arc<Program>>,
    /// Estimated work per node.
    cost: u64,
    /// The fields of `node` the program reads: only those are built for it (most of the
    /// cost of a simple filter was building the whole node as CEL values).
    fields: Fields,
    /// The program in native form, if it is one of the common filters ([`native`]): then
    /// CEL does not run at all.
    native: Option<Arc<native::Native>>,
}

/// Which top-level fields of `node` a filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    pubkey: bool,
    id: bool,
    state: bool,
    status: bool,
    roles: bool,
    health: bool,
    time_since_heartbeat: bool,
    tpm_usage: bool,
    labels: bool,
}

impl Fields {
    const ALL: Fields = Fields {
        pubkey: true,
        id: true,
        state: true,
        status: true,
        roles: true,
        health: true,
        time_since_heartbeat: true,
        tpm_usage: true,
        labels: true,
    };

    /// The fields named in `names` (`None`: all). Names that are no field of `node` are
    /// left to the evaluation, which reports them as before.
    fn of(names: Option<Vec<String>>) -> Self {
        let Some(names) = names else {
            return Self::ALL;
        };
        let has = |f: &str| names.iter().any(|n| n == f);
        Fields {
            pubkey: has("pubkey"),
            id: has("id"),
            state: has("state"),
            status: has("status"),
            roles: has("roles"),
            health: has("health"),
            time_since_heartbeat: has("time_since_heartbeat"),
            tpm_usage: has("tpm_usage"),
            labels: has("labels"),
        }
    }
}

impl NodeFilter {
    /// Compiles `source` and checks it against the static limits. A syntax error or a filter
    /// over a limit is the caller's: InvalidArgument naming the parser's message or the limit.
    pub fn compile(source: &str) -> Result<Self, Status> {
        if source.trim().is_empty() {
            return Ok(Self {
                program: None,
                cost: 0,
                fields: Fields::ALL,
                native: None,
            });
        }
        if source.len() > MAX_FILTER_BYTES {
            return Err(Status::invalid_argument(format!(
                "filter is {} bytes; the limit is {MAX_FILTER_BYTES} bytes",
                source.len()
            )));
        }
        let program = ENV
            .compile(source)
            .map_err(|e| Status::invalid_argument(format!("invalid filter {source:?}: {e}")))?;
        let measure = cost::measure(program.expression(), MAX_FILTER_NODES, MAX_FILTER_DEPTH)
            .map_err(|too_big| {
                Status::invalid_argument(match too_big {
                    cost::TooBig::Nodes(max) => format!(
                        "filter has more than {max} expression nodes (the limit on filter size)"
                    ),
                    cost::TooBig::Depth(max) => format!(
                        "filter nests more than {max} levels deep (the limit on expression depth)"
                    ),
                })
            })?;
        if measure.comprehension_depth > MAX_COMPREHENSION_DEPTH {
            return Err(Status::invalid_argument(format!(
                "filter nests {} comprehensions (all, exists, exists_one, map, filter) inside \
                 each other; the limit is {MAX_COMPREHENSION_DEPTH}",
                measure.comprehension_depth
            )));
        }
        if measure.cost > MAX_COST_PER_NODE {
            return Err(Status::invalid_argument(format!(
                "filter may take up to {} steps per node; the limit is {MAX_COST_PER_NODE} \
                 (comprehensions multiply by the size of what they iterate over)",
                measure.cost
            )));
        }
        let fields = Fields::of(cost::node_fields(program.expression()));
        let constants: std::collections::HashMap<String, i64> = constants().into_iter().collect();
        let native = native::compile(program.expression(), &constants).map(Arc::new);
        Ok(Self {
            program: Some(Arc::new(program)),
            cost: measure.cost,
            fields,
            native,
        })
    }

    /// The estimated work per node (0 for the empty filter).
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// The nodes the filter selects, in their order, on the calling thread, without budget
    /// (tests, and the pool's threads through [`evaluate`]).
    pub fn select(&self, nodes: Vec<api::Node>) -> Result<Vec<api::Node>, Status> {
        match &self.program {
            None => Ok(nodes),
            Some(program) => evaluate(
                program,
                self.native.as_deref(),
                self.fields,
                nodes,
                &AtomicBool::new(false),
                None,
            ),
        }
    }
}

/// Runs filters off the async runtime: at most a fixed number at once, each under a
/// wall-clock budget and stopped when its caller goes away.
#[derive(Debug)]
pub struct FilterPool {
    permits: Arc<Semaphore>,
    capacity: usize,
    budget: Duration,
    compiles: Arc<Semaphore>,
}

impl Default for FilterPool {
    fn default() -> Self {
        Self::new(MAX_CONCURRENT_EVALUATIONS, EVALUATION_BUDGET)
    }
}

impl FilterPool {
    /// A pool of `capacity` evaluations at once, each under `budget`.
    pub fn new(capacity: usize, budget: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            budget,
            compiles: Arc::new(Semaphore::new(MAX_CONCURRENT_COMPILES)),
        }
    }

    /// [`NodeFilter::compile`] on a blocking thread, at most [`MAX_CONCURRENT_COMPILES`] at
    /// once. The empty filter needs no thread.
    pub async fn compile(&self, source: String) -> Result<NodeFilter, Status> {
        if source.trim().is_empty() || source.len() > MAX_FILTER_BYTES {
            return NodeFilter::compile(&source);
        }
        let permit = tokio::time::timeout(COMPILE_WAIT, self.compiles.clone().acquire_owned())
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "too many filters are waiting to be parsed (the limit is \
                     {MAX_CONCURRENT_COMPILES} at a time); retry later"
                ))
            })?
            .map_err(|_| Status::unavailable("the filter pool is shut down"))?;
        off_runtime("curator-filter-parse", move || {
            let _permit = permit;
            NodeFilter::compile(&source)
        })
        .await
    }

    /// Evaluations that could start now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// The nodes `filter` selects, in their order. Fails with the first node whose
    /// evaluation is an error (see [`classify`]) or not a boolean; with ResourceExhausted if
    /// the call would exceed [`MAX_COST_PER_CALL`], the pool is busy, or the budget runs
    /// out. Dropping the returned future (the caller went away) stops the evaluation at the
    /// next node.
    pub async fn select(
        &self,
        filter: &NodeFilter,
        nodes: Vec<api::Node>,
    ) -> Result<Vec<api::Node>, Status> {
        let mut selection = self.selection(filter, nodes.len())?;
        selection.select(nodes).await
    }

    /// Starts the evaluation of `filter` over a call's `total` nodes, which come in batches
    /// ([`Selection::select`]), so that the call can stream each batch's matches while the
    /// next is read. ResourceExhausted if the call would exceed [`MAX_COST_PER_CALL`].
    pub fn selection(&self, filter: &NodeFilter, total: usize) -> Result<Selection, Status> {
        let work = filter.cost.saturating_mul(total as u64);
        if work > MAX_COST_PER_CALL {
            return Err(Status::resource_exhausted(format!(
                "filter may take up to {} steps per node, {work} for the {total} nodes of this \
                 cluster; the limit per call is {MAX_COST_PER_CALL}: simplify the filter",
                filter.cost,
            )));
        }
        Ok(Selection {
            program: filter.program.clone(),
            native: filter.native.clone(),
            fields: filter.fields,
            permits: self.permits.clone(),
            capacity: self.capacity,
            budget: self.budget,
            spent: Duration::ZERO,
            done: 0,
            total,
        })
    }
}

/// One call's evaluation of a filter, batch by batch. Each batch takes a turn of the pool
/// (the first is refused if none is free, as a whole call was; later ones wait for one
/// within what is left of the budget), so a call whose caller reads slowly holds no turn
/// while it waits. The wall-clock budget covers the evaluation of all batches together.
#[derive(Debug)]
pub struct Selection {
    program: Option<Arc<Program>>,
    native: Option<Arc<native::Native>>,
    fields: Fields,
    permits: Arc<Semaphore>,
    capacity: usize,
    budget: Duration,
    /// Evaluation time (and waits for a turn) so far.
    spent: Duration,
    /// Nodes evaluated so far.
    done: usize,
    /// Nodes of the call (for messages).
    total: usize,
}

impl Selection {
    /// The nodes of the next batch that the filter selects, in their order (see
    /// [`FilterPool::select`] for the errors). Dropping the future stops the evaluation at
    /// the next node.
    pub async fn select(&mut self, nodes: Vec<api::Node>) -> Result<Vec<api::Node>, Status> {
        let Some(program) = self.program.clone() else {
            self.done += nodes.len();
            return Ok(nodes);
        };
        if nodes.is_empty() {
            return Ok(nodes);
        }
        let started = std::time::Instant::now();
        let remaining = self.budget.saturating_sub(self.spent);
        let out_of_budget = |done: usize, total: usize, budget: Duration| {
            Status::resource_exhausted(format!(
                "filter evaluation ran out of its {budget:?} budget after {done} of {total} \
                 nodes; simplify the filter"
            ))
        };
        let busy = || {
            Status::resource_exhausted(format!(
                "the limit of {} concurrent filter evaluations is reached; retry later",
                self.capacity
            ))
        };
        let permit = if self.done == 0 {
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| busy())?
        } else {
            tokio::time::timeout(remaining, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| out_of_budget(self.done, self.total, self.budget))?
                .map_err(|_| Status::unavailable("the filter pool is shut down"))?
        };
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let stopped = stop.0.clone();
        // std's clock, not tokio's: the check runs on a blocking thread, outside the runtime.
        let deadline = started + remaining;
        let (budget, done, total, fields) = (self.budget, self.done, self.total, self.fields);
        let count = nodes.len();
        let limit = Deadline {
            at: deadline,
            budget,
            offset: done,
            total,
        };
        let native = self.native.clone();
        let selected = off_runtime("curator-filter-eval", move || {
            let _permit = permit;
            evaluate(
                &program,
                native.as_deref(),
                fields,
                nodes,
                &stopped,
                Some(limit),
            )
        })
        .await;
        self.spent += started.elapsed();
        self.done += count;
        selected
    }
}

/// Runs `job` on a thread of its own at [`EVALUATION_NICE`] (a thread per job: creating one
/// costs far less than any evaluation, and its lowered priority stays with it instead of
/// with a pool thread that later runs something else).
async fn off_runtime<T, F>(name: &str, job: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(FILTER_THREAD_STACK)
        .spawn(move || {
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(tid), EVALUATION_NICE) {
                tracing::debug!("cannot lower the priority of a filter thread: {e}");
            }
            let _ = tx.send(job());
        })
        .map_err(|e| Status::unavailable(format!("cannot start a filter thread: {e}")))?;
    rx.await
        .map_err(|_| Status::internal("the filter thread ended without a result"))?
}

/// Sets its flag when dropped: the evaluation of a call whose future was dropped stops.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// When an evaluation must end, for a batch of a call: `offset` nodes of `total` came before.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: std::time::Instant,
    budget: Duration,
    offset: usize,
    total: usize,
}

/// Evaluates `program` for every node, checking `stop` and the deadline between nodes (one
/// node's evaluation is bounded by [`MAX_COST_PER_NODE`]).
fn evaluate(
    program: &Program,
    native: Option<&native::Native>,
    fields: Fields,
    nodes: Vec<api::Node>,
    stop: &AtomicBool,
    deadline: Option<Deadline>,
) -> Result<Vec<api::Node>, Status> {
    // CEL's scope only where CEL runs.
    let root = native.is_none().then(root_context);
    let total = nodes.len();
    let mut selected = Vec::with_capacity(total);
    for (done, node) in nodes.into_iter().enumerate() {
        if stop.load(Ordering::Acquire) {
            return Err(Status::cancelled("the caller went away"));
        }
        if let Some(d) = deadline
            && std::time::Instant::now() > d.at
        {
            return Err(Status::resource_exhausted(format!(
                "filter evaluation ran out of its {:?} budget after {} of {} nodes; simplify \
                 the filter",
                d.budget,
                d.offset + done,
                d.total.max(total)
            )));
        }
        let matched = match (native, &root) {
            (Some(native), _) => native.matches(&node),
            (None, Some(root)) => matches(program, root, fields, &node)?,
            (None, None) => {
                return Err(Status::internal("filter evaluation without a scope"));
            }
        };
        if matched {
            selected.push(node);
        }
    }
    Ok(selected)
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
/// upstream's (Health both bare, as at baseline, and `HEALTH_`-prefixed, as at HEAD); the TPM
/// usages (baseline `NODE_TPM_*` and HEAD `NODE_TPM_USAGE_*` names) are ours, for
/// `node.tpm_usage == NODE_TPM_PRESENT_AND_USED`.
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
fn matches(
    program: &Program,
    root: &Context<'_, '_>,
    fields: Fields,
    node: &api::Node,
) -> Result<bool, Status> {
    let value = cel::to_value(CelNode::new(node, fields)).map_err(|e| {
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

/// `node`: a mirror of `api::Node` with proto field names, holding the fields the filter
/// reads (a field it does not read is left out: it cannot tell).
#[derive(Serialize)]
struct CelNode<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pubkey: Option<Bytes<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<CelStatus<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<CelRoles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_since_heartbeat: Option<cel::Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm_usage: Option<i64>,
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

impl<'a> CelNode<'a> {
    fn new(n: &'a api::Node, fields: Fields) -> Self {
        let f = fields;
        CelNode {
            pubkey: f.pubkey.then_some(Bytes(&n.pubkey)),
            id: f.id.then_some(n.id.as_str()),
            state: f.state.then_some(i64::from(n.state)),
            status: n.status.as_ref().filter(|_| f.status).map(|s| CelStatus {
                external_address: &s.external_address,
                running_curator: s.running_curator.as_ref().map(|c| CelRunningCurator {
                    port: i64::from(c.port),
                }),
                timestamp: s.timestamp.as_ref().and_then(timestamp),
                boot_id: Bytes(&s.boot_id),
            }),
            roles: n.roles.as_ref().filter(|_| f.roles).map(|r| CelRoles {
                kubernetes_worker: r.kubernetes_worker.as_ref().map(|_| Marker {}),
                consensus_member: r.consensus_member.as_ref().map(|_| Marker {}),
                kubernetes_controller: r.kubernetes_controller.as_ref().map(|_| Marker {}),
            }),
            health: f.health.then_some(i64::from(n.health)),
            time_since_heartbeat: n
                .time_since_heartbeat
                .as_ref()
                .filter(|_| f.time_since_heartbeat)
                .and_then(duration),
            tpm_usage: f.tpm_usage.then_some(i64::from(n.tpm_usage)),
            labels: n.labels.as_ref().filter(|_| f.labels).map(|l| CelLabels {
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

    /// A filter gets only the fields it reads, and selects exactly what it selects with the
    /// whole node (errors included); one that uses `node` otherwise gets everything.
    #[test]
    fn only_the_fields_read_are_built() {
        let mut n = sample();
        n[0].labels = Some(proto::common::NodeLabels {
            pairs: vec![proto::common::node_labels::Pair {
                key: "rack".into(),
                value: "r1".into(),
            }],
        });
        let filters = [
            "node.state == NODE_STATE_UP",
            "has(node.roles.kubernetes_worker) && node.state == NODE_STATE_UP",
            "!has(node.status)",
            "node.id == \"b\" || node.status.external_address == \"10.1.0.3\"",
            "node.time_since_heartbeat < duration('6s')",
            "has(node.labels) && node.labels.pairs.exists(p, p.key == 'rack' && p.value == 'r1')",
            "size(node.pubkey) == 32 && node.tpm_usage == NODE_TPM_NOT_PRESENT",
            "node.health == HEALTHY",
            "[node].exists(x, x.id == 'a')",
            "[1].exists(node, node == 1)",
            "node.stat == 1",
            "node.id == 1",
        ];
        for filter in filters {
            let f = NodeFilter::compile(filter).expect(filter);
            let program = f.program.clone().expect("a program");
            let pruned = evaluate(
                &program,
                None,
                f.fields,
                n.clone(),
                &AtomicBool::new(false),
                None,
            );
            let whole = evaluate(
                &program,
                None,
                Fields::ALL,
                n.clone(),
                &AtomicBool::new(false),
                None,
            );
            match (pruned, whole) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{filter}"),
                (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "{filter}"),
                (a, b) => panic!("{filter}: {a:?} against {b:?}"),
            }
        }
        let fields = |filter: &str| NodeFilter::compile(filter).expect(filter).fields;
        let state_only = fields("node.state == NODE_STATE_UP");
        assert!(state_only.state && !state_only.labels && !state_only.status);
        assert_eq!(fields("[node].size() == 1"), Fields::ALL);
        assert_eq!(fields("[1].exists(node, node == 1)"), Fields::ALL);
    }

    /// The common filters run natively, with CEL's results on every sample node (a node
    /// without roles included, where CEL fails on `has(node.roles.…)` unless the other side
    /// of `&&`/`||` decides); others stay with CEL.
    #[test]
    fn common_filters_run_natively_with_cels_results() {
        let mut n = sample();
        let mut bare = node("d", NodeState::Up, None, false, 1);
        bare.roles = None;
        n.push(bare);
        let native = [
            "node.state == NODE_STATE_UP && has(node.roles.kubernetes_worker)",
            "node.state == NODE_STATE_UP",
            "NODE_STATE_NEW == node.state || node.state != 3",
            "!has(node.roles.consensus_member)",
            "has(node.roles.kubernetes_controller) || node.id == 'd'",
            "node.state == NODE_STATE_UP && has(node.roles.kubernetes_worker) || node.id == \"d\"",
            "false || node.id != 'a'",
            "node.state == 1 && true",
        ];
        for filter in native {
            let f = NodeFilter::compile(filter).expect(filter);
            assert!(f.native.is_some(), "{filter} runs natively");
            let program = f.program.clone().expect("a program");
            let fast = evaluate(
                &program,
                f.native.as_deref(),
                f.fields,
                n.clone(),
                &AtomicBool::new(false),
                None,
            )
            .expect(filter);
            let slow = evaluate(
                &program,
                None,
                Fields::ALL,
                n.clone(),
                &AtomicBool::new(false),
                None,
            )
            .expect(filter);
            assert_eq!(fast, slow, "{filter}");
        }
        for filter in [
            "node.state == NODE_STATE_UNKNOWN_NAME",
            "node.state == 1u",
            "has(node.status)",
            "node.labels.pairs.exists(p, p.key == 'x')",
            "node.health == HEALTHY",
        ] {
            let native = NodeFilter::compile(filter).map(|f| f.native.is_some());
            assert_ne!(native.ok(), Some(true), "{filter} stays with CEL");
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

    fn list(n: usize) -> String {
        format!(
            "[{}]",
            (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
        )
    }

    /// The filter that took down launched clusters (1.2 KB, 10^8 steps per node).
    fn bomb() -> String {
        let l = list(100);
        format!("{l}.all(a, {l}.all(b, {l}.all(c, {l}.all(d, true))))")
    }

    /// Two nested comprehensions over 100-element lists: within the limits, but slow.
    fn heavy() -> String {
        let l = list(100);
        format!("{l}.all(a, {l}.all(b, a + b >= 0))")
    }

    fn refused(filter: &str) -> String {
        let started = std::time::Instant::now();
        let e = NodeFilter::compile(filter).expect_err("must be refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused only after {:?}",
            started.elapsed()
        );
        e.message().to_string()
    }

    fn labelled(id: &str, pairs: usize) -> api::Node {
        let mut n = node(id, NodeState::Up, Some("10.1.0.3"), true, 1);
        n.labels = Some(proto::common::NodeLabels {
            pairs: (0..pairs)
                .map(|i| proto::common::node_labels::Pair {
                    key: format!("example.com/key-{i}"),
                    value: format!("value-{i}"),
                })
                .collect(),
        });
        n
    }

    #[test]
    fn bombs_are_refused_at_once_naming_the_limit() {
        let bomb = bomb();
        assert!(bomb.len() > 1000 && bomb.len() < MAX_FILTER_BYTES);
        let m = refused(&bomb);
        assert!(
            m.contains("nests 4 comprehensions") && m.contains("limit is 2"),
            "{m}"
        );
        // Three levels: also over the nesting limit.
        let l = list(100);
        let m = refused(&format!("{l}.all(a, {l}.all(b, {l}.all(c, true)))"));
        assert!(m.contains("limit is 2"), "{m}");
        // Two levels over larger lists: over the work limit.
        let l = list(400);
        let m = refused(&format!("{l}.all(a, {l}.all(b, a == b || true))"));
        assert!(
            m.contains("steps per node") && m.contains("limit is 500000"),
            "{m}"
        );
        // Nested over the labels: 128 × 128.
        let m = refused(
            "node.labels.pairs.all(p, node.labels.pairs.all(q, node.labels.pairs.all(r, true)))",
        );
        assert!(m.contains("comprehensions"), "{m}");
    }

    #[test]
    fn size_and_shape_limits_name_the_limit() {
        let long = format!("node.id == '{}'", "a".repeat(MAX_FILTER_BYTES));
        assert!(refused(&long).contains("the limit is 4096 bytes"));
        let many = format!("node.state in [{}]", vec!["1"; 1100].join(","));
        assert!(many.len() <= MAX_FILTER_BYTES);
        let m = refused(&many);
        assert!(m.contains("more than 1000 expression nodes"), "{m}");
        // A long chain nests deeply (the parser may refuse it first; either way it is the
        // caller's error).
        let deep = vec!["1"; 400].join(" + ") + " > 0";
        refused(&deep);
    }

    #[test]
    fn values_that_double_at_every_level_are_refused() {
        // optMap binds a value without iterating; doubling a string thirty times would be
        // gigabytes, built in microseconds of AST.
        let mut f = "optional.of('aaaaaaaa')".to_string();
        for i in 0..30 {
            f = format!("{f}.optMap(v{i}, v{i} + v{i})");
        }
        let m = refused(&format!("{f}.value() == ''"));
        assert!(m.contains("steps per node"), "{m}");
        let mut f = "optional.of([1, 2, 3, 4])".to_string();
        for i in 0..30 {
            f = format!("{f}.optMap(v{i}, [v{i}, v{i}])");
        }
        let m = refused(&format!("{f}.value() == []"));
        assert!(m.contains("steps per node"), "{m}");
    }

    #[test]
    fn real_filters_stay_within_the_limits() {
        // Every filter of the tests above and of metroctl's help, and label filters over a
        // node with the most labels allowed.
        let real = [
            "node.state == NODE_STATE_UP",
            "has(node.roles.kubernetes_worker)",
            "node.id == \"metropolis-0123456789abcdef0123456789abcdef\"",
            "node.status.external_address == \"10.1.0.3\"",
            "node.time_since_heartbeat < duration('6s') && node.time_since_heartbeat > duration('4s')",
            "node.labels.pairs.exists(p, p.key == 'example.com/key-7' && p.value == 'value-7')",
            "node.labels.pairs.all(p, p.key.startsWith('example.com/')) && size(node.labels.pairs) > 100",
            "node.labels.pairs.map(p, p.key).exists(k, k == 'example.com/key-3')",
            "node.labels.pairs.filter(p, p.value.endsWith('-1')).size() == 1",
            "node.labels.pairs.exists(p, node.labels.pairs.exists(q, p.value == q.key))",
        ];
        let nodes: Vec<api::Node> = (0..3)
            .map(|i| labelled(&format!("n{i}"), labels::MAX_LABELS_PER_NODE))
            .collect();
        for f in real {
            let filter = NodeFilter::compile(f).unwrap_or_else(|e| panic!("{f}: {e:?}"));
            println!("cost {:>7} per node: {f}", filter.cost());
            assert!(filter.cost() <= MAX_COST_PER_NODE, "{f}");
            filter
                .select(nodes.clone())
                .unwrap_or_else(|e| panic!("{f}: {e:?}"));
        }
        // A label lookup stays affordable for clusters of many thousands of nodes.
        let lookup = NodeFilter::compile(real[5]).expect("label filter");
        assert!(
            lookup.cost() * 20_000 <= MAX_COST_PER_CALL,
            "a label filter costs {} per node",
            lookup.cost()
        );
        // And the heavy one is admitted, as the most a filter may do.
        let heavy = NodeFilter::compile(&heavy()).expect("heavy");
        println!(
            "cost {:>7} per node: two nested comprehensions over 100 elements",
            heavy.cost()
        );
    }

    fn nodes(n: usize) -> Vec<api::Node> {
        (0..n)
            .map(|i| node(&format!("n{i}"), NodeState::Up, None, false, 1))
            .collect()
    }

    /// Found by fuzzing: a malformed filter on which cel's parser recurses deeper than its
    /// recursion limit suggests. On a default 2 MiB thread (in a debug build) it overflowed the
    /// stack and aborted the process; on the pool's threads it is refused.
    #[tokio::test]
    async fn a_deeply_recursing_malformed_filter_is_refused() {
        const FILTER: &str = "noion('6s') ||{{!||{{!{{{{{) ||{ion('6s') |{{!{{{{{) ||{{!{{{{{{{{) \x1c\x00\x00\x00||{!{{{{{{{{) \x1c\x00\x00\x00||n('6s') ||{{!||{{!{{{{{) ||{ion('6s') |{{!{{_||_ ||{{!{{{{{{{{) \x1c\x00\x00\x00||{!{{{{{{{{) \x1c\x00\x00\x00||{{{{{) \x1c\x00\x00\x00||n('6s') ||{{!||{{!{{{{{) ||{ion('6s') |{{!{{_||_ ||{{!{{{{{{{{{) \x1c\x00\x00\x00) ||{{!||{{!{{{{{) ||{ion('2s')=-AOTp.TE\x0c_\x0b";
        let refused = FilterPool::default()
            .compile(FILTER.to_string())
            .await
            .expect_err("malformed");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_bounds_calls_and_time() {
        let heavy = NodeFilter::compile(&heavy()).expect("heavy");
        // Too much work for one call, refused before it starts.
        let too_many = (MAX_COST_PER_CALL / heavy.cost() + 1) as usize;
        let pool = FilterPool::new(1, Duration::from_secs(600));
        let e = pool
            .select(&heavy, nodes(too_many))
            .await
            .expect_err("over the per-call limit");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("limit per call"), "{e:?}");

        // One evaluation at a time: a second call is refused while the first runs.
        let pool = Arc::new(pool);
        let first = {
            let (pool, heavy) = (pool.clone(), heavy.clone());
            tokio::spawn(async move { pool.select(&heavy, nodes(40)).await })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pool.available() > 0 {
            assert!(std::time::Instant::now() < deadline, "never started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let e = pool
            .select(&heavy, nodes(1))
            .await
            .expect_err("the pool is busy");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("concurrent filter evaluations"),
            "{e:?}"
        );
        first.await.expect("task").expect("the first call finishes");
        assert_eq!(pool.available(), 1);

        // The wall-clock budget.
        let tight = FilterPool::new(1, Duration::from_millis(20));
        let e = tight
            .select(&heavy, nodes(100))
            .await
            .expect_err("over budget");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("budget"), "{e:?}");

        // The empty filter does not need the pool at all.
        let all = NodeFilter::compile("").expect("empty");
        assert_eq!(tight.select(&all, nodes(3)).await.expect("all").len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evaluation_stops_when_the_caller_goes_away() {
        let heavy = NodeFilter::compile(&heavy()).expect("heavy");
        let pool = Arc::new(FilterPool::new(1, Duration::from_secs(600)));
        // How long the whole evaluation takes here.
        let started = std::time::Instant::now();
        pool.select(&heavy, nodes(60)).await.expect("full run");
        let full = started.elapsed();

        let call = {
            let (pool, heavy) = (pool.clone(), heavy.clone());
            tokio::spawn(async move { pool.select(&heavy, nodes(60)).await })
        };
        while pool.available() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The caller goes away (tonic drops the handler's future).
        call.abort();
        let aborted = std::time::Instant::now();
        while pool.available() == 0 {
            assert!(
                aborted.elapsed() < full / 4,
                "the evaluation went on after its caller left (full run: {full:?})"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        println!(
            "full run {full:?}; stopped {:?} after the caller left",
            aborted.elapsed()
        );
    }
}
