//! The node's own files: the encrypted data file format and the protobufs on the ESP
//! (NodeParameters, SealedConfiguration, ClusterDirectory), decoded and checked as the node
//! does at boot.

use std::net::SocketAddr;
use std::sync::LazyLock;

use arbitrary::Unstructured;
use identity::SigningKey;
use node::params;
use node::storage::{crypt, keys};
use prost::Message;
use proto::api::NodeParameters;
use proto::api::node_parameters::Cluster;
use proto::common::ClusterDirectory;
use proto::private::SealedConfiguration;
use ring::aead::{AES_256_GCM, NONCE_LEN};

fn data_key() -> crypt::DataKey {
    crypt::DataKey::from_bytes([0x42; crypt::KEY_LEN])
}

/// The part of every file sealed with [`data_key`] before the nonce (magic, version, key
/// check), so that inputs can get past the key check: a sealed empty file is that, the nonce
/// and the tag.
fn header_before_nonce() -> &'static [u8] {
    static HEADER: LazyLock<Vec<u8>> = LazyLock::new(|| {
        let sealed = crypt::seal(&data_key(), "", b"").expect("seal");
        sealed[..sealed.len() - NONCE_LEN - AES_256_GCM.tag_len()].to_vec()
    });
    &HEADER
}

/// `crypt::open` over arbitrary files, raw or behind a valid key check, and seal/open round
/// trips with one byte changed. Properties: no panic; what was sealed opens to the same
/// plaintext at the same path only; any changed byte makes it fail.
pub fn crypt_open(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(mode), Ok(path), Ok(position), Ok(xor)) = (
        u.arbitrary::<u8>(),
        u.arbitrary::<String>(),
        u.arbitrary::<usize>(),
        u.arbitrary::<u8>(),
    ) else {
        return;
    };
    let rest = u.take_rest();
    let key = data_key();
    match mode % 3 {
        0 => {
            let _ = crypt::open(&key, &path, rest);
        }
        1 => {
            let file = [header_before_nonce(), rest].concat();
            let _ = crypt::open(&key, &path, &file);
        }
        _ => {
            let mut sealed = crypt::seal(&key, &path, rest).expect("seal");
            assert!(crypt::is_encrypted(&sealed));
            assert_eq!(crypt::open(&key, &path, &sealed).as_deref(), Ok(rest));
            let other_path = format!("{path}/");
            assert!(
                crypt::open(&key, &other_path, &sealed).is_err(),
                "opened elsewhere"
            );
            let at = position % sealed.len();
            sealed[at] ^= xor.max(1);
            assert!(
                crypt::open(&key, &path, &sealed).is_err(),
                "tampered byte {at} accepted"
            );
        }
    }
}

/// NodeParameters, SealedConfiguration and ClusterDirectory from the ESP, decoded and checked
/// as at boot (`params::bootstrap`/`register`, the join path's checks of the sealed
/// configuration, the curator endpoints of the directory). Properties: no panic; accepted
/// parameters keep the owner key and give dialable curator endpoints.
pub fn node_params(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            let Ok(p) = NodeParameters::decode(bytes) else {
                return;
            };
            match &p.cluster {
                Some(Cluster::ClusterBootstrap(b)) => {
                    if let Ok(checked) = params::bootstrap(b) {
                        assert_eq!(checked.owner_key.as_ref(), b.owner_public_key.as_slice());
                    }
                }
                Some(Cluster::ClusterRegister(r)) => {
                    if let Ok(checked) = params::register(r) {
                        let seeds = params::curator_endpoints(&checked.directory);
                        assert!(!seeds.is_empty(), "registration without a curator");
                        for s in seeds {
                            s.parse::<SocketAddr>().expect("endpoint is an address");
                        }
                    }
                }
                None => {}
            }
        }
        1 => {
            let Ok(sealed) = SealedConfiguration::decode(bytes) else {
                return;
            };
            let _ = SigningKey::from_keypair_bytes(&sealed.join_key);
            let _ = identity::verify::check_ca(&sealed.cluster_ca);
            if let Ok(security) = keys::security_from_i32(sealed.storage_security) {
                let _ = keys::data_key(security, &sealed.node_unlock_key, &[0x17; crypt::KEY_LEN]);
            }
        }
        _ => {
            let Ok(directory) = ClusterDirectory::decode(bytes) else {
                return;
            };
            for s in params::curator_endpoints(&directory) {
                s.parse::<SocketAddr>().expect("endpoint is an address");
            }
        }
    }
}
