//! UpdateNodeClusterNetworking: a node announces its WireGuard key and the
//! prefixes it routes, which other nodes pick up through Watch to build the mesh.
//!
//! Upstream keeps a leader-local key→node cache; we scan all records instead (one range read
//! under `clusternet_lock`, which makes the key check and the write one step for every other
//! claim), which needs no invalidation when nodes are deleted and costs little at the rate
//! nodes change their networking.

use std::net::{IpAddr, Ipv4Addr};

use proto::common::NodeClusterNetworking;
use proto::common::node_cluster_networking::Prefix;
use proto::curator_api::{UpdateNodeClusterNetworkingRequest, UpdateNodeClusterNetworkingResponse};
use rpc::PeerInfo;
use tonic::Status;

use crate::leader::{Leader, limits, optimistic};
use crate::state::node;

/// The cluster (pod) network every announced prefix must lie in, unless it is the node's own
/// external address (upstream hardcodes it too).
const CLUSTER_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 192, 0, 0), 11);

/// Length of a WireGuard public key.
const WIREGUARD_KEY_LEN: usize = 32;

/// UpdateNodeClusterNetworking: validates and replaces the caller's clusternet state.
pub(super) async fn update_node_cluster_networking(
    leader: &Leader,
    peer: &PeerInfo,
    req: UpdateNodeClusterNetworkingRequest,
) -> Result<UpdateNodeClusterNetworkingResponse, Status> {
    let caller = peer.require_node()?;
    let cn = req
        .clusternet
        .ok_or_else(|| Status::invalid_argument("clusternet must be set"))?;
    limits::check_clusternet(&cn)?;
    if cn.wireguard_pubkey.is_empty() {
        return Err(Status::invalid_argument(
            "clusternet.wireguard_pubkey must be set",
        ));
    }
    let key = parse_wireguard_key(&cn.wireguard_pubkey).ok_or_else(|| {
        Status::invalid_argument("clusternet.wireguard_pubkey must be a valid WireGuard public key")
    })?;

    let l = &leader.leadership;
    let _claims = leader.clusternet_lock.lock().await;
    let (caller, cn) = (caller.id.as_str(), &cn);
    optimistic("UpdateNodeClusterNetworking", move || async move {
        save(l, caller, cn, key).await
    })
    .await?;
    Ok(UpdateNodeClusterNetworkingResponse {})
}

/// One attempt: checks the key against every other node and writes the caller's record;
/// Conflict if the record changed meanwhile (the node's own status update).
async fn save(
    l: &crate::election::Leadership,
    caller: &str,
    cn: &NodeClusterNetworking,
    key: [u8; WIREGUARD_KEY_LEN],
) -> Result<(), Status> {
    let nodes = node::load_all(l).await?;
    if nodes
        .iter()
        .any(|n| n.id != caller && wireguard_key_of(n.node.clusternet.as_ref()) == Some(key))
    {
        return Err(Status::invalid_argument(
            "public key already used by another node",
        ));
    }
    let mut record = nodes
        .into_iter()
        .find(|n| n.id == caller)
        .ok_or_else(|| Status::not_found(format!("node {caller} not found")))?;
    let external = record
        .node
        .status
        .as_ref()
        .map(|s| s.external_address.clone())
        .ok_or_else(|| {
            Status::failed_precondition("node needs to submit at least one status update")
        })?;
    let prefixes = cn
        .prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            check_prefix(&p.cidr, &external)
                .map_err(|e| Status::invalid_argument(format!("clusternet.prefixes[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Stored in canonical base64, so keys compare as strings for anyone reading records.
    record.node.clusternet = Some(NodeClusterNetworking {
        wireguard_pubkey: base64_encode(&key),
        prefixes,
    });
    node::update(l, &mut record).await?;
    Ok(())
}

/// The decoded WireGuard key of a stored record, if it has a valid one.
fn wireguard_key_of(cn: Option<&NodeClusterNetworking>) -> Option<[u8; WIREGUARD_KEY_LEN]> {
    cn.and_then(|c| parse_wireguard_key(&c.wireguard_pubkey))
}

/// A WireGuard key: standard base64 (with padding) of 32 bytes, as `wg` prints it.
pub fn parse_wireguard_key(s: &str) -> Option<[u8; WIREGUARD_KEY_LEN]> {
    base64_decode(s)?.try_into().ok()
}

/// Checks one announced prefix: canonical (no host bits), and inside the cluster network
/// with a length of at least its own, or exactly the /32 of the node's external address.
/// Only IPv4 exists in the cluster network; an IPv6 external address cannot be announced
/// (upstream compares the /32 case textually, which an IPv6 prefix never matches either).
pub fn check_prefix(cidr: &str, external_address: &str) -> Result<Prefix, String> {
    let (addr, len) =
        parse_ipv4_prefix(cidr).ok_or_else(|| format!("{cidr:?} is not an IPv4 prefix"))?;
    if mask(addr, len) != addr {
        return Err(format!(
            "{cidr} must be in canonical form (all host bits zero)"
        ));
    }
    let (net, net_len) = CLUSTER_NET;
    let in_cluster_net = len >= net_len && mask(addr, net_len) == net;
    let is_external =
        len == 32 && external_address.parse::<IpAddr>().ok() == Some(IpAddr::V4(addr));
    if !in_cluster_net && !is_external {
        return Err(format!(
            "{cidr} must be within the cluster network {net}/{net_len} or be the node's external address {external_address}/32"
        ));
    }
    Ok(Prefix {
        cidr: format!("{addr}/{len}"),
    })
}

/// Parses `a.b.c.d/len`.
fn parse_ipv4_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    // Digits only: `u8::from_str` would also take a leading `+`.
    if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((addr.parse().ok()?, len))
}

/// `addr` with all bits after the first `len` cleared.
fn mask(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let bits = u32::from(addr);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding. The crate has no base64 dependency, and a WireGuard key is
/// the only base64 the curator handles.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(
                    BASE64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 with padding; `None` for anything malformed. Like Go's
/// (non-strict) decoder, nonzero unused bits in the last character are accepted.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index == bytes.len() / 4 - 1;
        let pad = if last { padding } else { 0 };
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                u32::from(base64_value(c)?)
            };
            n = (n << 6) | v;
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

fn base64_value(c: u8) -> Option<u8> {
    BASE64_ALPHABET
        .iter()
        .position(|&a| a == c)
        .and_then(|p| u8::try_from(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let enc = base64_encode(&data);
            if len > 0 {
                assert_eq!(base64_decode(&enc).expect("decodes"), data, "{enc}");
            }
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8=").expect("ok"), b"fo");
        for bad in ["", "Zm8", "Zm8==", "Z===", "Zm9v!mFy", "Zm=v"] {
            assert!(base64_decode(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn wireguard_keys() {
        let key = [7u8; 32];
        assert_eq!(parse_wireguard_key(&base64_encode(&key)), Some(key));
        assert_eq!(parse_wireguard_key(&base64_encode(&[7u8; 31])), None);
        assert_eq!(parse_wireguard_key("not a key"), None);
    }

    #[test]
    fn prefixes() {
        let ext = "203.0.113.7";
        for ok in [
            "10.192.0.0/11",
            "10.192.1.0/24",
            "10.223.255.255/32",
            "203.0.113.7/32",
        ] {
            assert_eq!(
                check_prefix(ok, ext).map(|p| p.cidr),
                Ok(ok.to_string()),
                "{ok}"
            );
        }
        for bad in [
            "10.192.0.0/10",  // wider than the cluster network
            "10.192.1.1/24",  // host bits set
            "10.224.0.0/16",  // outside
            "203.0.113.0/24", // external network, not the /32
            "203.0.113.8/32", // someone else's address
            "fd00::/64",      // IPv6
            "10.192.0.0",     // no length
            "10.192.0.0/33",  // too long
            "10.192.0.0/+16", // not canonical text
            "010.192.0.0/16", // leading zero
        ] {
            assert!(check_prefix(bad, ext).is_err(), "{bad}");
        }
        assert!(check_prefix("0.0.0.0/0", ext).is_err());
    }
}
