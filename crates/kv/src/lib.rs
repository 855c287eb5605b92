//! kv: the etcd client every control-plane component talks through.
//!
//! A Metropolis node's etcd member serves clients only on a unix socket, so
//! [`connect_unix`] builds an `etcd_client::Client` over one. Components never share raw keys:
//! upstream wraps the root client into keyspaces named `namespaced:<a>:<b>/`, e.g.
//! `namespaced:curator/` for the curator and `namespaced:etcd-pki/` for the etcd peer PKI.
//! [`Namespaced`] is that wrapper: keys passed to it are relative to its prefix and keys it
//! returns have the prefix stripped.

#![forbid(unsafe_code)]

mod connect;
mod error;
mod namespaced;
pub mod process;
mod watch;

pub use connect::connect_unix;
pub use error::{Error, NO_SPACE_MESSAGE, Result, is_no_space, mentions_no_space};
pub use namespaced::{NAMESPACE_PREFIX, Namespaced};
pub use watch::{Event, EventKind, WatchBatch, WatchStream};

/// Re-exported so users build options, compares and transactions against the same version.
pub use etcd_client;
