//! The curator's checks of what nodes send and store: cluster-networking prefixes and
//! WireGuard keys.

use arbitrary::Unstructured;
use curator::leader::curator::clusternet;

/// Cluster-networking checks: announced prefixes, WireGuard keys and the base64 they are
/// stored in. Properties: an accepted prefix is canonical and accepted again as it was stored;
/// base64 round-trips; a key is accepted exactly when it decodes to 32 bytes.
pub fn clusternet(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(cidr), Ok(external), Ok(key)) = (
        u.arbitrary::<String>(),
        u.arbitrary::<String>(),
        u.arbitrary::<String>(),
    ) else {
        return;
    };
    let bytes = u.take_rest();

    if let Ok(prefix) = clusternet::check_prefix(&cidr, &external) {
        assert_eq!(
            clusternet::check_prefix(&prefix.cidr, &external).as_ref(),
            Ok(&prefix),
            "stored prefix of {cidr:?} is not accepted as is"
        );
    }

    let encoded = clusternet::base64_encode(bytes);
    assert_eq!(encoded.len(), bytes.len().div_ceil(3) * 4);
    if bytes.is_empty() {
        assert_eq!(clusternet::base64_decode(&encoded), None);
    } else {
        assert_eq!(clusternet::base64_decode(&encoded).as_deref(), Some(bytes));
    }

    let decoded = clusternet::base64_decode(&key);
    if let Some(d) = &decoded {
        assert_eq!(
            clusternet::base64_decode(&clusternet::base64_encode(d)).as_ref(),
            Some(d)
        );
    }
    let parsed = clusternet::parse_wireguard_key(&key);
    assert_eq!(
        parsed.map(Vec::from),
        decoded.filter(|d| d.len() == 32),
        "WireGuard key {key:?}"
    );
}
