//! identity: who is who in a Metropolis cluster.
//!
//! Ed25519 keys and their on-disk forms ([`keys`]), node IDs derived from node keys
//! ([`mod@node_id`]), the certificates the cluster issues ([`templates`]), the checks that turn a
//! presented certificate into "node X" or "user Y" ([`verify`]) and the node credential
//! directory ([`credentials`]). It sits just above `proto`: the rpc crate classifies TLS peers
//! with it, the pki crate issues and stores certificates with it, and node and metroctl keep
//! their keys with it. Nothing here does I/O beyond reading and writing key/cert files.

#![forbid(unsafe_code)]

pub mod credentials;
pub mod error;
pub mod files;
pub mod keys;
pub mod node_id;
pub mod templates;
pub mod verify;

pub use credentials::NodeCredentials;
pub use error::{Error, Result};
pub use keys::{PublicKey, SigningKey};
pub use node_id::{is_valid_node_id, node_id, parse_node_id};

#[cfg(test)]
mod cert_tests;
