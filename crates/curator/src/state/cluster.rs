//! Cluster-wide values: the register ticket, the initial owner key and the cluster
//! configuration with its policy rules.

use kv::etcd_client::{Compare, CompareOp, Txn, TxnOp};
use prost::Message;
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use proto::common::{ClusterConfiguration, NodeState, NodeStorageSecurity, NodeTpmUsage};
use proto::curator_private::{InitialOwner, RegisterTicket};

use super::guard::nth_value;
use super::{NodeRecord, StateError};
use crate::election::Leadership;

/// Key of the register ticket.
pub const REGISTER_TICKET_KEY: &str = "/global/register_ticket";
/// Key of the initial owner's public key.
pub const INITIAL_OWNER_KEY: &str = "/global/initial_owner";
/// Key of the cluster configuration.
pub const CONFIGURATION_KEY: &str = "/cluster/configuration";

/// Random bytes in a register ticket.
const TICKET_BYTES: usize = 32;

/// What the cluster policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The cluster requires a TPM and the node has none.
    #[error("TPM required by the cluster but not available on the node")]
    TpmRequired,
    /// The node's storage security does not satisfy the cluster's policy.
    #[error("storage security {chosen} does not satisfy the cluster policy {policy}")]
    StorageNotAllowed {
        /// What the node chose.
        chosen: &'static str,
        /// The policy.
        policy: &'static str,
    },
    /// The stored configuration holds a value this build does not know.
    #[error("invalid {0} in the cluster configuration")]
    InvalidConfiguration(&'static str),
}

/// A fresh ticket: the serialized `RegisterTicket` (34 bytes), which is exactly what clients
/// receive and present (upstream compares against these bytes).
fn new_ticket() -> Result<Vec<u8>, StateError> {
    let mut opaque = vec![0u8; TICKET_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut opaque)
        .map_err(|_| StateError::Internal("no randomness for the register ticket".into()))?;
    Ok(RegisterTicket { opaque }.encode_to_vec())
}

/// The register ticket, if one was ever issued. A plain read: what RegisterNode compares
/// with, so an unauthenticated caller costs one read and never a write.
pub async fn register_ticket(l: &Leadership) -> Result<Option<Vec<u8>>, StateError> {
    l.get(REGISTER_TICKET_KEY).await
}

/// The register ticket, created on first use. The creation is conditional on there being no
/// ticket yet, so two first calls cannot hand out two different tickets even without the
/// caller's lock (upstream: `muRegisterTicket`).
pub async fn ensure_register_ticket(l: &Leadership) -> Result<Vec<u8>, StateError> {
    if let Some(t) = l.get(REGISTER_TICKET_KEY).await? {
        return Ok(t);
    }
    let ticket = new_ticket()?;
    let r = l
        .txn_if(
            vec![Compare::create_revision(
                REGISTER_TICKET_KEY,
                CompareOp::Equal,
                0,
            )],
            vec![TxnOp::put(REGISTER_TICKET_KEY, ticket.clone(), None)],
            vec![TxnOp::get(REGISTER_TICKET_KEY, None)],
        )
        .await?;
    if r.succeeded {
        return Ok(ticket);
    }
    nth_value(&r.responses, 0)
        .ok_or_else(|| StateError::Unavailable("the register ticket changed concurrently".into()))
}

/// Replaces the register ticket with a fresh one (ours: upstream cannot rotate it); the old
/// ticket stops working at once.
pub async fn rotate_register_ticket(l: &Leadership) -> Result<Vec<u8>, StateError> {
    let ticket = new_ticket()?;
    l.txn(vec![TxnOp::put(REGISTER_TICKET_KEY, ticket.clone(), None)])
        .await?;
    Ok(ticket)
}

/// The initial owner's public key; `None` if there is none.
pub async fn initial_owner(l: &Leadership) -> Result<Option<Vec<u8>>, StateError> {
    let Some(bytes) = l.get(INITIAL_OWNER_KEY).await? else {
        return Ok(None);
    };
    let owner = InitialOwner::decode(bytes.as_slice())
        .map_err(|e| StateError::corrupt(INITIAL_OWNER_KEY, e))?;
    Ok(Some(owner.public_key))
}

/// The cluster configuration; NotFound if missing (bootstrap always writes one).
pub async fn configuration(l: &Leadership) -> Result<ClusterConfiguration, StateError> {
    let bytes = l
        .get(CONFIGURATION_KEY)
        .await?
        .ok_or_else(|| StateError::not_found("cluster configuration"))?;
    let config = ClusterConfiguration::decode(bytes.as_slice())
        .map_err(|e| StateError::corrupt(CONFIGURATION_KEY, e))?;
    validate_configuration(&config).map_err(|e| StateError::corrupt(CONFIGURATION_KEY, e))?;
    Ok(config)
}

/// Writes the initial cluster state into a fresh keyspace, without leadership (no
/// curator runs yet): the first node's record (UP: nobody is there to approve it) and its
/// join-key index entry, the initial owner and the configuration, in one transaction that
/// only runs if none of them exists. Returns whether it wrote anything; a re-run after a crash
/// writes nothing and still succeeds.
pub async fn initialize(
    ns: &kv::Namespaced,
    mut first_node: NodeRecord,
    owner_key: &[u8],
    configuration: &ClusterConfiguration,
) -> Result<bool, StateError> {
    validate_configuration(configuration).map_err(StateError::InvalidArgument)?;
    super::node::enter_initial(&mut first_node, NodeState::Up)?;
    if first_node.node.join_key.is_empty() {
        return Err(StateError::InvalidArgument(
            "the first node needs a join key".into(),
        ));
    }
    let mut puts = first_node.put_ops();
    puts.push(TxnOp::put(
        INITIAL_OWNER_KEY,
        InitialOwner {
            public_key: owner_key.to_vec(),
        }
        .encode_to_vec(),
        None,
    ));
    puts.push(TxnOp::put(
        CONFIGURATION_KEY,
        configuration.encode_to_vec(),
        None,
    ));
    let keys = [
        first_node.key(),
        INITIAL_OWNER_KEY.to_string(),
        super::node::join_key_index(&first_node.node.join_key),
        CONFIGURATION_KEY.to_string(),
    ];
    let absent: Vec<Compare> = keys
        .iter()
        .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
        .collect();
    let resp = ns
        .txn(Txn::new().when(absent).and_then(puts))
        .await
        .map_err(StateError::etcd)?;
    Ok(resp.succeeded())
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

/// Rejects invalid enum values.
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

/// The TPM usage of a node that has (or lacks) a TPM, under the cluster's TPM mode.
pub fn tpm_usage(c: &ClusterConfiguration, have_tpm: bool) -> Result<NodeTpmUsage, PolicyError> {
    let use_tpm = match TpmMode::try_from(c.tpm_mode) {
        Ok(TpmMode::Disabled) => false,
        Ok(TpmMode::Required) if !have_tpm => return Err(PolicyError::TpmRequired),
        Ok(TpmMode::Required) => true,
        Ok(TpmMode::BestEffort) => have_tpm,
        _ => return Err(PolicyError::InvalidConfiguration("TPM mode")),
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

/// Checks a node's chosen storage security against the policy.
pub fn validate_storage(
    c: &ClusterConfiguration,
    s: NodeStorageSecurity,
) -> Result<(), PolicyError> {
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
            return Err(PolicyError::InvalidConfiguration("storage security policy"));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(PolicyError::StorageNotAllowed {
            chosen: s.as_str_name(),
            policy: StorageSecurityPolicy::try_from(c.storage_security_policy)
                .map(|p| p.as_str_name())
                .unwrap_or("?"),
        })
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
        assert_eq!(tpm_usage(&c, false), Err(PolicyError::TpmRequired));
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
                    assert!(matches!(e, PolicyError::StorageNotAllowed { .. }), "{e}");
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
