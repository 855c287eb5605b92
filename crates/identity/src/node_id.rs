//! Node IDs: the stable, human-readable name of a node, derived from its node public key.
//!
//! The ID is `metropolis-` followed by the lowercase hex of the first 16 bytes of the Ed25519
//! public key. It is the node's etcd key, its certificate CN and DNS SAN, and its DNS name
//! inside the cluster, so its format is fixed by upstream and must not change.

use crate::error::{Error, Result};
use crate::keys::PublicKey;

/// Prefix of every node ID.
pub const NODE_ID_PREFIX: &str = "metropolis-";

/// How many public key bytes the ID encodes. 128 bits is collision-free in practice and keeps
/// the ID short enough for a DNS label.
pub const NODE_ID_KEY_BYTES: usize = 16;

/// The node ID of a node public key.
pub fn node_id(public_key: &PublicKey) -> String {
    format!(
        "{NODE_ID_PREFIX}{}",
        hex::encode(&public_key.as_bytes()[..NODE_ID_KEY_BYTES])
    )
}

/// Whether `id` has the node ID shape the resolver accepts: `metropolis-[a-f0-9]+`.
pub fn is_valid_node_id(id: &str) -> bool {
    // Deliberately the resolver's (loose) rule, not "exactly 32 hex digits": IDs coming from
    // other implementations are accepted as long as they have the shape.
    match id.strip_prefix(NODE_ID_PREFIX) {
        Some(hex) => !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'a'..=b'f' | b'0'..=b'9')),
        None => false,
    }
}

/// Returns `id` unchanged if it is a valid node ID, a typed error otherwise.
pub fn parse_node_id(id: &str) -> Result<&str> {
    if is_valid_node_id(id) {
        Ok(id)
    } else {
        Err(Error::InvalidNodeId { id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    #[test]
    fn id_is_the_first_16_key_bytes_in_hex() {
        // Only the first 16 bytes of the key count; the rest (0xee here) is not in the ID.
        let mut key = [0u8; 32];
        let prefix = hex::decode("c556e31c3fa2bf0a36e9ccb9fd5d6056").expect("hex");
        key[..16].copy_from_slice(&prefix);
        key[16..].fill(0xee);
        assert_eq!(
            node_id(&PublicKey::from_bytes(key)),
            "metropolis-c556e31c3fa2bf0a36e9ccb9fd5d6056"
        );
    }

    #[test]
    fn format_of_generated_ids() {
        for _ in 0..8 {
            let pk = SigningKey::generate().expect("key").public_key();
            let id = node_id(&pk);
            assert_eq!(id.len(), NODE_ID_PREFIX.len() + 32);
            assert!(is_valid_node_id(&id));
            assert_eq!(parse_node_id(&id).expect("valid"), id);
            assert_eq!(pk.node_id(), id);
        }
    }

    #[test]
    fn validation() {
        for good in ["metropolis-a", "metropolis-0123456789abcdef"] {
            assert!(is_valid_node_id(good), "{good}");
        }
        for bad in [
            "",
            "metropolis-",
            "metropolis-ABCDEF",
            "metropolis-abcg",
            "Metropolis-abc",
            "node-abc",
            "metropolis-abc ",
            "metropolis-abc.example",
        ] {
            assert!(!is_valid_node_id(bad), "{bad}");
            assert!(matches!(
                parse_node_id(bad),
                Err(Error::InvalidNodeId { id }) if id == bad
            ));
        }
    }
}
