//! Generated protobuf types and gRPC stubs for the Metropolis and BMaaS APIs, plus the
//! authorization table read from each method's `(metropolis.proto.ext.authorization)` option.
//!
//! The `.proto` sources live in `proto/` at the repository root, laid out by their upstream
//! package path so that clients built from the upstream protos talk to us unchanged. Modules
//! mirror the protobuf packages (`metropolis::proto::api`, …); short aliases are re-exported at
//! the crate root for the packages every other crate uses.

#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)] // Generated code: lint the generator, not its output.

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

pub mod authz;
pub mod semver;

/// Encoded `FileDescriptorSet` of every proto, with custom options and source info, for gRPC
/// server reflection and for reading method options at run time.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

pub use metropolis::node::core::curator::proto::api as curator_api;
pub use metropolis::node::core::curator::proto::private as curator_private;
pub use metropolis::proto::api;
pub use metropolis::proto::common;
pub use metropolis::proto::ext;
pub use metropolis::proto::private;
pub use version::spec::Version;
