//! Cluster-wide values: the register ticket, the initial owner key and the cluster
//! configuration with its policy rules (spec 4.5).

use kv::etcd_client::TxnOp;
use prost::Message;
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use proto::common::{ClusterConfiguration, NodeStorageSecurity, NodeTpmUsage};
use proto::curator_private::{InitialOwner, RegisterTicket};
use tonic::Status;

use crate::election::Leadership;

/// Key of the register ticket.
pub const REGISTER_TICKET_KEY: &str = "/global/register_ticket";
/// Key of the initial owner's public key.
pub const INITIAL_OWNER_KEY: &str = "/global/initial_owner";
/// Key of the cluster configuration.
pub const CONFIGURATION_KEY: &str = "/cluster/configuration";

/// Random bytes in a register ticket.
const TICKET_BYTES: usize = 32;

/// A fresh ticket: the serialized `RegisterTicket` (34 bytes), which is exactly what clients
/// receive and present (upstream compares against these bytes).
fn new_ticket() -> Result<Vec<u8>, Status> {
    let mut opaque = vec![0u8; TICKET_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut opaque)
        .map_err(|_| Status::internal("no randomness for the register ticket"))?;
    Ok(RegisterTicket { opaque }.encode_to_vec())
}

/// The register ticket, created on first use. Callers serialise access (upstream:
/// `muRegisterTicket`).
pub async fn ensure_register_ticket(l: &Leadership) -> Result<Vec<u8>, Status> {
    if let Some(t) = l.get(REGISTER_TICKET_KEY).await? {
        return Ok(t);
    }
    let ticket = new_ticket()?;
    l.txn(vec![TxnOp::put(REGISTER_TICKET_KEY, ticket.clone(), None)])
        .await?;
    Ok(ticket)
}

/// Replaces the register ticket with a fresh one (ours: upstream cannot rotate it); the old
/// ticket stops working at once.
pub async fn rotate_register_ticket(l: &Leadership) -> Result<Vec<u8>, Status> {
    let ticket = new_ticket()?;
    l.txn(vec![TxnOp::put(REGISTER_TICKET_KEY, ticket.clone(), None)])
        .await?;
    Ok(ticket)
}

/// The initial owner's public key; FailedPrecondition if missing or invalid.
pub async fn initial_owner(l: &Leadership) -> Result<Vec<u8>, Status> {
    let bytes = l
        .get(INITIAL_OWNER_KEY)
        .await?
        .ok_or_else(|| Status::failed_precondition("cluster has no initial owner"))?;
    let owner = InitialOwner::decode(bytes.as_slice())
        .map_err(|_| Status::failed_precondition("initial owner record is invalid"))?;
    Ok(owner.public_key)
}

/// The cluster configuration. Missing → NotFound (an upstream quirk kept for compatibility:
/// bootstrap always writes one).
pub async fn configuration(l: &Leadership) -> Result<ClusterConfiguration, Status> {
    let bytes = l
        .get(CONFIGURATION_KEY)
        .await?
        .ok_or_else(|| Status::not_found("cluster configuration not found"))?;
    let config = ClusterConfiguration::decode(bytes.as_slice())
        .map_err(|e| Status::unavailable(format!("cluster configuration is invalid: {e}")))?;
    validate_configuration(&config).map_err(Status::unavailable)?;
    Ok(config)
}

/// The configuration used when bootstrap supplies none: TPM required, storage encrypted and
/// authenticated.
pub fn default_configuration() -> ClusterConfiguration {
    ClusterConfiguration {
        tpm_mode: TpmMode::Required as i32,
        storage_security_policy: StorageSecurityPolicy::NeedsEncryptionAndAuthentication as i32,
        ..Default::default()
    }
}

/// Rejects invalid enum values (spec 4.5).
pub fn validate_configuration(c: &ClusterConfiguration) -> Result<(), String> {
    match TpmMode::try_from(c.tpm_mode) {
        Ok(TpmMode::Invalid) | Err(_) => return Err(format!("invalid TPM mode {}", c.tpm_mode)),
        Ok(_) => {}
    }
    match StorageSecurityPolicy::try_from(c.storage_security_policy) {
        Ok(StorageSecurityPolicy::Invalid) | Err(_) => {
            return Err(format!(
                "invalid storage security policy {}",
                c.storage_security_policy
            ));
        }
        Ok(_) => {}
    }
    Ok(())
}

/// The TPM usage of a node that has (or lacks) a TPM, under the cluster's TPM mode;
/// PermissionDenied when the mode requires a TPM the node lacks.
pub fn tpm_usage(c: &ClusterConfiguration, have_tpm: bool) -> Result<NodeTpmUsage, Status> {
    let use_tpm = match TpmMode::try_from(c.tpm_mode) {
        Ok(TpmMode::Disabled) => false,
        Ok(TpmMode::Required) if !have_tpm => {
            return Err(Status::permission_denied(
                "TPM required by the cluster but not available on the node",
            ));
        }
        Ok(TpmMode::Required) => true,
        Ok(TpmMode::BestEffort) => have_tpm,
        _ => {
            return Err(Status::internal(
                "invalid TPM mode in cluster configuration",
            ));
        }
    };
    Ok(match (have_tpm, use_tpm) {
        (true, true) => NodeTpmUsage::NodeTpmPresentAndUsed,
        (true, false) => NodeTpmUsage::NodeTpmPresentButUnused,
        (false, _) => NodeTpmUsage::NodeTpmNotPresent,
    })
}

/// The storage security a node should use under the cluster policy.
pub fn recommended_storage(c: &ClusterConfiguration) -> NodeStorageSecurity {
    match StorageSecurityPolicy::try_from(c.storage_security_policy) {
        Ok(StorageSecurityPolicy::NeedsEncryption) => NodeStorageSecurity::Encrypted,
        Ok(StorageSecurityPolicy::NeedsInsecure) => NodeStorageSecurity::Insecure,
        _ => NodeStorageSecurity::AuthenticatedEncrypted,
    }
}

/// Checks a node's chosen storage security against the policy: FailedPrecondition if it does
/// not satisfy it, Internal for an unknown policy.
pub fn validate_storage(c: &ClusterConfiguration, s: NodeStorageSecurity) -> Result<(), Status> {
    use NodeStorageSecurity as S;
    let ok = match StorageSecurityPolicy::try_from(c.storage_security_policy) {
        Ok(StorageSecurityPolicy::Permissive) => true,
        Ok(StorageSecurityPolicy::NeedsInsecure) => s == S::Insecure,
        Ok(StorageSecurityPolicy::NeedsEncryption) => {
            matches!(s, S::Encrypted | S::AuthenticatedEncrypted)
        }
        Ok(StorageSecurityPolicy::NeedsEncryptionAndAuthentication) => {
            s == S::AuthenticatedEncrypted
        }
        _ => {
            return Err(Status::internal(
                "invalid storage security policy in cluster configuration",
            ));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "storage security {} does not satisfy the cluster policy {}",
            s.as_str_name(),
            StorageSecurityPolicy::try_from(c.storage_security_policy)
                .map(|p| p.as_str_name())
                .unwrap_or("?")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tpm: TpmMode, storage: StorageSecurityPolicy) -> ClusterConfiguration {
        ClusterConfiguration {
            tpm_mode: tpm as i32,
            storage_security_policy: storage as i32,
            ..Default::default()
        }
    }

    #[test]
    fn tpm_usage_rules() {
        let c = config(TpmMode::Required, StorageSecurityPolicy::Permissive);
        assert_eq!(
            tpm_usage(&c, false).expect_err("required").code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            tpm_usage(&c, true).expect("ok"),
            NodeTpmUsage::NodeTpmPresentAndUsed
        );
        let c = config(TpmMode::BestEffort, StorageSecurityPolicy::Permissive);
        assert_eq!(
            tpm_usage(&c, true).expect("ok"),
            NodeTpmUsage::NodeTpmPresentAndUsed
        );
        assert_eq!(
            tpm_usage(&c, false).expect("ok"),
            NodeTpmUsage::NodeTpmNotPresent
        );
        let c = config(TpmMode::Disabled, StorageSecurityPolicy::Permissive);
        assert_eq!(
            tpm_usage(&c, true).expect("ok"),
            NodeTpmUsage::NodeTpmPresentButUnused
        );
        assert_eq!(
            tpm_usage(&c, false).expect("ok"),
            NodeTpmUsage::NodeTpmNotPresent
        );
    }

    #[test]
    fn storage_rules() {
        use NodeStorageSecurity as S;
        use StorageSecurityPolicy as P;
        let cases = [
            (P::Permissive, S::AuthenticatedEncrypted, [true, true, true]),
            (P::NeedsInsecure, S::Insecure, [true, false, false]),
            (P::NeedsEncryption, S::Encrypted, [false, true, true]),
            (
                P::NeedsEncryptionAndAuthentication,
                S::AuthenticatedEncrypted,
                [false, false, true],
            ),
        ];
        for (policy, recommended, accepts) in cases {
            let c = config(TpmMode::Disabled, policy);
            assert_eq!(recommended_storage(&c), recommended);
            for (s, ok) in [S::Insecure, S::Encrypted, S::AuthenticatedEncrypted]
                .into_iter()
                .zip(accepts)
            {
                let r = validate_storage(&c, s);
                assert_eq!(r.is_ok(), ok, "{policy:?} {s:?}");
                if let Err(e) = r {
                    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
                }
            }
        }
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        assert!(validate_configuration(&default_configuration()).is_ok());
        assert!(validate_configuration(&ClusterConfiguration::default()).is_err());
        assert!(
            validate_configuration(&ClusterConfiguration {
                tpm_mode: 9,
                ..default_configuration()
            })
            .is_err()
        );
    }
}
