//! logtree: the node's in-memory, DN-addressed log store.
//!
//! Every log line of a node lands here, filed under a dot-delimited distinguished name (DN)
//! such as `root.role.curator`. Writers are leveled loggers (glog-style severity, source
//! location, possibly multi-line messages), raw line loggers for unstructured byte streams of
//! child processes, a `tracing` layer that files events under the DN of the enclosing
//! supervisor runnable, and an etcd zap-JSON parser. Readers (the NodeManagement `Logs` RPC,
//! tests) take a backlog snapshot and optionally subscribe to new entries, filtered by DN
//! subtree, kind and severity.
#![forbid(unsafe_code)]

mod dn;
mod entry;
mod error;
pub mod etcd;
mod layer;
mod logger;
mod pipe;
mod read;
mod render;
mod tree;

pub use dn::Dn;
pub use entry::{
    LeveledPayload, LogEntry, Payload, RAW_LINE_LIMIT, RawPayload, Severity, caller_location,
};
pub use error::Error;
pub use layer::LogTreeLayer;
pub use logger::{LeveledLogger, RawLogger, RawWriter};
pub use pipe::{etcd_sink, pipe_lines, raw_sink};
pub use read::{Backlog, ReadOptions, Reader, SUBSCRIBER_BUFFER, Subscription};
pub use render::render;
pub use tree::{LogTree, RETENTION_PER_DN};
