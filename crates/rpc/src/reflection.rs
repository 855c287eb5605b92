//! gRPC server reflection over the full descriptor set, in both protocol versions: many
//! deployed tools (grpcurl, older grpc_cli) still speak only v1alpha.

use tonic_reflection::server::{v1, v1alpha};

/// The v1 reflection service for every proto of this project.
pub fn v1() -> v1::ServerReflectionServer<impl v1::ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set is generated at build time and always decodes")
}

/// The v1alpha reflection service for every proto of this project.
pub fn v1alpha() -> v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the descriptor set is generated at build time and always decodes")
}
