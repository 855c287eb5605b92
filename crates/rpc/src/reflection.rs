//! gRPC server reflection over the full descriptor set, in both protocol versions: many
//! deployed tools (grpcurl, older grpc_cli) still speak only v1alpha.
//!
//! Each listener lists only the services it actually serves: the
//! descriptor set holds every proto of the project, and grpcurl users believe the listing.
//! Symbol and file lookups still resolve against the whole set, which is schema only.

use tonic_reflection::server::{Builder, v1, v1alpha};

/// Largest reflection request: a symbol or file name.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

fn builder(served: &[&str]) -> Builder<'static> {
    let mut builder =
        Builder::configure().register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET);
    for name in served {
        builder = builder.with_service_name(*name);
    }
    builder
}

/// The v1 reflection service, listing the `served` services (full names, e.g.
/// `metropolis.proto.api.Management`; the generated `SERVICE_NAME` constants).
pub fn v1(served: &[&str]) -> v1::ServerReflectionServer<impl v1::ServerReflection> {
    builder(served)
        .build_v1()
        .expect("the descriptor set is generated at build time and always decodes")
        .max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// The v1alpha reflection service, listing the `served` services.
pub fn v1alpha(served: &[&str]) -> v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection> {
    builder(served)
        .build_v1alpha()
        .expect("the descriptor set is generated at build time and always decodes")
        .max_decoding_message_size(MAX_REQUEST_BYTES)
}
