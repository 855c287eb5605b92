//! The two halves of the data key: the node unlock key (NUK, kept on the ESP in the
//! sealed configuration) and the cluster unlock key (CUK, kept only by the cluster in the
//! node's record and returned by JoinNode). The data key is NUK ⊕ CUK, so neither the ESP nor
//! the cluster alone can read the node's data.

use proto::common::NodeStorageSecurity;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::Error;
use super::crypt::{DataKey, KEY_LEN};

/// A fresh pair of unlock keys (both empty for INSECURE storage), wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKeys {
    /// The node's half.
    pub nuk: Zeroizing<Vec<u8>>,
    /// The cluster's half.
    pub cuk: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for UnlockKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UnlockKeys(nuk: {} bytes, cuk: {} bytes)",
            self.nuk.len(),
            self.cuk.len()
        )
    }
}

impl UnlockKeys {
    /// Generates the keys for a new data directory with this storage security: 32 random
    /// bytes each, or none for INSECURE (upstream: MountNew).
    pub fn generate(security: NodeStorageSecurity) -> Result<Self, Error> {
        match checked(security)? {
            NodeStorageSecurity::Insecure => Ok(Self {
                nuk: Zeroizing::new(Vec::new()),
                cuk: Zeroizing::new(Vec::new()),
            }),
            _ => {
                let rng = SystemRandom::new();
                let mut nuk = Zeroizing::new(vec![0u8; KEY_LEN]);
                let mut cuk = Zeroizing::new(vec![0u8; KEY_LEN]);
                rng.fill(&mut nuk).map_err(|_| Error::Rng)?;
                rng.fill(&mut cuk).map_err(|_| Error::Rng)?;
                Ok(Self { nuk, cuk })
            }
        }
    }

    /// The data key of these keys under `security`.
    pub fn data_key(&self, security: NodeStorageSecurity) -> Result<Option<DataKey>, Error> {
        data_key(security, &self.nuk, &self.cuk)
    }
}

/// The data key for `security` from its halves: `None` for INSECURE (which requires both
/// halves to be empty, as upstream's MountExisting), NUK ⊕ CUK otherwise (each must be 32
/// bytes).
pub fn data_key(
    security: NodeStorageSecurity,
    nuk: &[u8],
    cuk: &[u8],
) -> Result<Option<DataKey>, Error> {
    if checked(security)? == NodeStorageSecurity::Insecure {
        if !cuk.is_empty() {
            return Err(Error::BadKey(
                "storage is INSECURE, but the cluster returned a cluster unlock key".to_string(),
            ));
        }
        return Ok(None);
    }
    let len_ok = |what: &str, k: &[u8]| {
        if k.len() == KEY_LEN {
            Ok(())
        } else {
            Err(Error::BadKey(format!(
                "{what} must be {KEY_LEN} bytes, got {}",
                k.len()
            )))
        }
    };
    len_ok("node unlock key", nuk)?;
    len_ok("cluster unlock key", cuk)?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, b) in key.iter_mut().enumerate() {
        *b = nuk[i] ^ cuk[i];
    }
    Ok(Some(DataKey::from_bytes(*key)))
}

/// Rejects INVALID and unknown storage security values.
pub fn checked(security: NodeStorageSecurity) -> Result<NodeStorageSecurity, Error> {
    match security {
        NodeStorageSecurity::Invalid => {
            Err(Error::BadKey("storage security is INVALID".to_string()))
        }
        s => Ok(s),
    }
}

/// Converts the wire value, rejecting unknown numbers.
pub fn security_from_i32(v: i32) -> Result<NodeStorageSecurity, Error> {
    NodeStorageSecurity::try_from(v)
        .map_err(|_| Error::BadKey(format!("unknown storage security value {v}")))
        .and_then(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_and_derive() {
        let k = UnlockKeys::generate(NodeStorageSecurity::AuthenticatedEncrypted).expect("gen");
        assert_eq!((k.nuk.len(), k.cuk.len()), (32, 32));
        assert_ne!(k.nuk, k.cuk);
        assert!(
            k.data_key(NodeStorageSecurity::AuthenticatedEncrypted)
                .expect("key")
                .is_some()
        );
        assert!(!format!("{k:?}").contains(&format!("{:?}", k.nuk)));

        let i = UnlockKeys::generate(NodeStorageSecurity::Insecure).expect("gen");
        assert!(i.nuk.is_empty() && i.cuk.is_empty());
        assert!(
            i.data_key(NodeStorageSecurity::Insecure)
                .expect("key")
                .is_none()
        );
        assert!(UnlockKeys::generate(NodeStorageSecurity::Invalid).is_err());
    }

    #[test]
    fn xor_needs_both_halves() {
        let s = NodeStorageSecurity::Encrypted;
        let a = data_key(s, &[1; 32], &[2; 32]).expect("ok");
        let b = data_key(s, &[3; 32], &[0; 32]).expect("ok");
        assert_eq!(a, b, "1^2 == 3^0");
        assert!(data_key(s, &[1; 32], &[]).is_err());
        assert!(data_key(s, &[1; 31], &[2; 32]).is_err());
        assert!(data_key(NodeStorageSecurity::Insecure, &[], &[1; 32]).is_err());
        assert!(security_from_i32(99).is_err());
        assert!(security_from_i32(0).is_err());
    }
}
