//! The one place where state-layer errors become gRPC statuses, with the codes upstream's curator
//! returns. Handlers use it through `?`; where an RPC needs a different code for the same condition
//! (Escrow's missing owner, IssueCertificate's "every failure is Unavailable"), the handler maps
//! that case itself before it gets here.

use tonic::Status;

use crate::state::{PolicyError, StateError};

impl From<StateError> for Status {
    fn from(e: StateError) -> Self {
        let message = e.to_string();
        match e {
            StateError::NotFound { .. } => Status::not_found(message),
            // Upstream answers a record that does not decode with Unavailable ("could not
            // unmarshal node"); kept, so clients treat it like any other store failure.
            StateError::Corrupt { .. } => Status::unavailable(message),
            StateError::InvalidArgument(_) => Status::invalid_argument(message),
            StateError::InvalidTransition { .. } => Status::failed_precondition(message),
            // RegisterNode: "already exists, state X" is FailedPrecondition, as upstream.
            StateError::NodeExists { .. } => Status::failed_precondition(message),
            // As for a WireGuard key used by another node: the request carries a
            // key it may not use.
            StateError::JoinKeyInUse { .. } => Status::invalid_argument(message),
            StateError::CertificateKeyMismatch { .. } => Status::failed_precondition(message),
            StateError::Policy(PolicyError::TpmRequired) => Status::permission_denied(message),
            StateError::Policy(PolicyError::StorageNotAllowed { .. }) => {
                Status::failed_precondition(message)
            }
            StateError::Policy(PolicyError::InvalidConfiguration(_)) => Status::internal(message),
            // As upstream: the guard failing is Unavailable "lost leadership"; clients re-resolve
            // the leader and retry.
            StateError::LostLeadership => Status::unavailable(message),
            StateError::Unavailable(_) => Status::unavailable(message),
            // Only what is left once the handler's own retries ([`super::optimistic`]) gave
            // up: the caller may try again.
            StateError::Conflict { .. } => Status::aborted(message),
            // Not Unavailable: retrying does not help until the alarm is cleared, and the
            // operator should see what is wrong rather than a generic store failure.
            StateError::StoreFull(_) => Status::resource_exhausted(message),
            StateError::Internal(_) => Status::internal(message),
        }
    }
}

impl From<PolicyError> for Status {
    fn from(e: PolicyError) -> Self {
        StateError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use proto::common::NodeState;
    use tonic::Code;

    use super::*;

    #[test]
    fn codes() {
        let cases = [
            (StateError::not_found("node x"), Code::NotFound),
            (StateError::corrupt("/nodes/x", "bad"), Code::Unavailable),
            (
                StateError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (
                StateError::InvalidTransition {
                    id: "x".into(),
                    from: Some(NodeState::Up),
                    to: NodeState::New,
                },
                Code::FailedPrecondition,
            ),
            (
                StateError::NodeExists { id: "x".into() },
                Code::FailedPrecondition,
            ),
            (
                StateError::JoinKeyInUse { owner: "y".into() },
                Code::InvalidArgument,
            ),
            (
                StateError::CertificateKeyMismatch {
                    what: "owner".into(),
                },
                Code::FailedPrecondition,
            ),
            (PolicyError::TpmRequired.into(), Code::PermissionDenied),
            (
                PolicyError::StorageNotAllowed {
                    chosen: "INSECURE",
                    policy: "NEEDS_ENCRYPTION",
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                PolicyError::InvalidConfiguration("TPM mode").into(),
                Code::Internal,
            ),
            (StateError::LostLeadership, Code::Unavailable),
            (StateError::etcd("connection reset"), Code::Unavailable),
            (
                StateError::etcd(
                    "etcd request failed: grpc request error: status: ResourceExhausted, \
                     message: \"etcdserver: mvcc: database space exceeded\"",
                ),
                Code::ResourceExhausted,
            ),
            (StateError::Internal("x".into()), Code::Internal),
            (
                StateError::Conflict {
                    key: "/nodes/x".into(),
                },
                Code::Aborted,
            ),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let status = Status::from(e);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
        let full = Status::from(StateError::etcd(format!(
            "etcdserver: mvcc: {}",
            kv::NO_SPACE_MESSAGE
        )));
        assert!(full.message().contains("cluster store is full"), "{full:?}");
        assert!(full.message().contains("NOSPACE"), "{full:?}");
        // The join-key owner is not disclosed to a registering node.
        assert!(
            !Status::from(StateError::JoinKeyInUse {
                owner: "metropolis-secret".into()
            })
            .message()
            .contains("metropolis-secret")
        );
    }
}
