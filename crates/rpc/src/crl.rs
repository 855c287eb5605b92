//! The cluster CRL on the client side: which curator certificates a client refuses.
//!
//! Upstream clients accept any node certificate of the cluster CA as a curator, so a deleted
//! node (or whoever holds its key) can pose as one for ever. Here DeleteNode revokes the node
//! certificate in the cluster CA's CRL, curators hand that CRL out
//! (`CuratorLocal.GetClusterCRL`), and a client holding a [`ClusterCrl`] refuses every server
//! whose certificate it lists ([`crate::ServerVerification::Cluster`]).
//!
//! A CRL is self-authenticating, so it does not matter who delivers it: [`ClusterCrl::update`]
//! accepts only a CRL whose signature verifies against the cluster CA, and only if its CRL
//! number is higher than that of the CRL held. The cluster's CRL only ever grows (revocations
//! are appended, never withdrawn), so the newest CRL is also the most complete, and a server
//! replaying an old one cannot make a client forget a revocation. What a stale CRL cannot
//! tell is a revocation the client has not heard of yet; callers therefore fetch it from every
//! curator they know ([`refresh`]) and keep it (nodes persist it in their data directory,
//! metroctl next to its configuration).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use proto::curator_api::GetClusterCrlRequest;
use proto::curator_api::curator_local_client::CuratorLocalClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::Error;
use crate::client_tls::{self, ClientCredentials, ServerVerification};
use crate::error::error_chain;

/// How long fetching the CRL from one curator (connecting included) may take. Curators
/// answer from their local etcd member at once; an endpoint that takes longer is down or
/// partitioned, and nothing waits for it.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The newest cluster CRL a client has seen; cheap to clone (shared). See the module
/// documentation.
#[derive(Clone)]
pub struct ClusterCrl {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Vec<u8>,
    current: RwLock<Current>,
    /// Counts installed CRLs, so holders can follow changes.
    installed: watch::Sender<u64>,
}

#[derive(Default)]
struct Current {
    der: Option<Vec<u8>>,
    number: Option<u64>,
    serials: HashSet<Vec<u8>>,
}

impl std::fmt::Debug for ClusterCrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.read();
        f.debug_struct("ClusterCrl")
            .field("number", &current.number)
            .field("revoked", &current.serials.len())
            .finish()
    }
}

impl ClusterCrl {
    /// An empty CRL (nothing revoked yet) of the cluster whose CA certificate (DER) is `ca`.
    pub fn new(ca: Vec<u8>) -> Self {
        Self {
            inner: Arc::new(Inner {
                ca,
                current: RwLock::new(Current::default()),
                installed: watch::Sender::new(0),
            }),
        }
    }

    /// The cluster CA certificate (DER) CRLs must be signed by.
    pub fn ca(&self) -> &[u8] {
        &self.inner.ca
    }

    /// Installs `der` if it is a CRL signed by the cluster CA and newer (higher CRL number)
    /// than the one held; returns whether it was installed. A CRL that does not verify, or has
    /// no CRL number to order it by, is an error and changes nothing.
    pub fn update(&self, der: &[u8]) -> Result<bool, Error> {
        let info = identity::verify::inspect_crl(der, &self.inner.ca).map_err(|e| Error::Crl {
            reason: e.to_string(),
        })?;
        let number = info.crl_number.ok_or_else(|| Error::Crl {
            reason: "the CRL has no CRL number, so it cannot be ordered".to_string(),
        })?;
        {
            let mut current = self.write();
            if current.number.is_some_and(|held| held >= number) {
                return Ok(false);
            }
            *current = Current {
                der: Some(der.to_vec()),
                number: Some(number),
                serials: info
                    .revoked_serials
                    .into_iter()
                    .map(|s| strip_zeros(&s).to_vec())
                    .collect(),
            };
        }
        self.inner.installed.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// Whether the certificate (DER) is revoked. A certificate whose serial cannot be read
    /// counts as revoked: this is only asked about certificates that already passed the
    /// cluster check, so that cannot happen by accident.
    pub fn is_revoked(&self, cert_der: &[u8]) -> bool {
        match identity::verify::cert_serial(cert_der) {
            Ok(serial) => self.is_serial_revoked(&serial),
            Err(_) => true,
        }
    }

    /// Whether the certificate serial (big-endian, leading zeros ignored) is revoked.
    pub fn is_serial_revoked(&self, serial: &[u8]) -> bool {
        self.read().serials.contains(strip_zeros(serial))
    }

    /// The CRL number of the CRL held, if any.
    pub fn number(&self) -> Option<u64> {
        self.read().number
    }

    /// The CRL held (DER), if any.
    pub fn der(&self) -> Option<Vec<u8>> {
        self.read().der.clone()
    }

    /// The serials the CRL held revokes (big-endian, no leading zeros).
    pub fn revoked_serials(&self) -> Vec<Vec<u8>> {
        self.read().serials.iter().cloned().collect()
    }

    /// How many certificates the CRL held revokes.
    pub fn revoked(&self) -> usize {
        self.read().serials.len()
    }

    /// Follows installations: the value changes whenever a newer CRL was installed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.installed.subscribe()
    }

    // A poisoned lock only means a writer panicked between plain assignments; the value is
    // still a whole CRL (the old or the new one).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.inner.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Current> {
        self.inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Asks a curator for the cluster CRL on an established channel and installs it if it is
/// newer; returns whether it was. A CRL that does not verify is logged as a security warning
/// naming `endpoint` (only a server holding a cluster certificate gets this far).
pub async fn fetch_on(crl: &ClusterCrl, channel: Channel, endpoint: &str) -> Result<bool, String> {
    let mut client = CuratorLocalClient::new(channel);
    let call = client.get_cluster_crl(GetClusterCrlRequest {});
    let response = match tokio::time::timeout(FETCH_TIMEOUT, call).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            return Err(format!(
                "GetClusterCRL: {:?}: {}",
                status.code(),
                status.message()
            ));
        }
        Err(_) => {
            return Err(format!(
                "no answer to GetClusterCRL within {FETCH_TIMEOUT:?}"
            ));
        }
    };
    crl.update(&response.crl).map_err(|e| {
        tracing::warn!(
            %endpoint,
            "SECURITY: the curator at {endpoint} served a cluster CRL that is not valid: {e}"
        );
        e.to_string()
    })
}

/// What [`refresh`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refresh {
    /// Endpoints that answered with a valid CRL (newer or not).
    pub answered: Vec<String>,
    /// Why the others did not (`endpoint: reason`).
    pub failed: Vec<String>,
    /// Whether a newer CRL was installed.
    pub updated: bool,
}

/// Fetches the CRL from all `endpoints` at once (each within [`FETCH_TIMEOUT`]) and installs
/// the newest valid one. Servers are verified as nodes of the cluster that `crl` revokes
/// nothing of.
pub async fn refresh(crl: &ClusterCrl, creds: &ClientCredentials, endpoints: &[String]) -> Refresh {
    let verification = ServerVerification::Cluster {
        ca: crl.ca().to_vec(),
        node_id: None,
        crl: Some(crl.clone()),
    };
    let config = match client_tls::client_config(creds, verification) {
        Ok(config) => config,
        Err(e) => {
            return Refresh {
                failed: endpoints
                    .iter()
                    .map(|endpoint| format!("{endpoint}: {}", error_chain(&e)))
                    .collect(),
                ..Refresh::default()
            };
        }
    };
    let fetches = endpoints.iter().map(|endpoint| {
        let config = config.clone();
        async move {
            let connect = client_tls::connect(endpoint, config);
            let channel = match tokio::time::timeout(FETCH_TIMEOUT, connect).await {
                Ok(Ok(channel)) => channel,
                Ok(Err(e)) => return (endpoint, Err(error_chain(&e))),
                Err(_) => {
                    return (
                        endpoint,
                        Err(format!("no connection within {FETCH_TIMEOUT:?}")),
                    );
                }
            };
            (endpoint, fetch_on(crl, channel, endpoint).await)
        }
    });
    let mut refresh = Refresh::default();
    for (endpoint, result) in futures::future::join_all(fetches).await {
        match result {
            Ok(updated) => {
                refresh.answered.push(endpoint.clone());
                refresh.updated |= updated;
            }
            Err(why) => refresh.failed.push(format!("{endpoint}: {why}")),
        }
    }
    if refresh.updated {
        tracing::info!(
            number = ?crl.number(),
            "cluster CRL updated: {} certificate(s) revoked",
            crl.revoked()
        );
    }
    refresh
}

/// DER integers may carry a leading zero byte to stay positive; compare magnitudes only.
fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

#[cfg(test)]
mod tests {
    use identity::SigningKey;

    use super::*;

    fn ca() -> (SigningKey, Vec<u8>) {
        let key = SigningKey::generate().expect("key");
        let cert = identity::templates::ca(&key, "Test CA").expect("CA");
        (key, cert)
    }

    #[test]
    fn only_newer_crls_of_the_cluster_ca_are_installed() {
        let (key, cert) = ca();
        let crl = ClusterCrl::new(cert.clone());
        let mut changes = crl.subscribe();
        assert!(!crl.is_serial_revoked(&[1, 2]));
        let first = identity::templates::crl(&key, &cert, &[vec![1, 2]], 2).expect("crl");
        assert!(crl.update(&first).expect("valid"));
        assert!(changes.has_changed().expect("sender alive"));
        changes.mark_unchanged();
        assert!(crl.is_serial_revoked(&[0, 1, 2]), "leading zeros ignored");
        assert_eq!(crl.number(), Some(2));

        // An older or equal CRL changes nothing, even if it lists less.
        let older = identity::templates::crl(&key, &cert, &[], 1).expect("crl");
        assert!(!crl.update(&older).expect("valid"));
        assert!(!crl.update(&first).expect("valid"));
        assert!(crl.is_serial_revoked(&[1, 2]));
        assert!(!changes.has_changed().expect("sender alive"));

        let newer = identity::templates::crl(&key, &cert, &[vec![1, 2], vec![3]], 3).expect("crl");
        assert!(crl.update(&newer).expect("valid"));
        assert_eq!(crl.revoked(), 2);
        assert_eq!(crl.der(), Some(newer));

        // A CRL of another CA is refused, whatever its number.
        let (other_key, other_cert) = ca();
        let forged = identity::templates::crl(&other_key, &other_cert, &[], 99).expect("crl");
        let err = crl.update(&forged).expect_err("foreign CRL");
        assert!(matches!(err, Error::Crl { .. }), "{err}");
        assert_eq!(crl.number(), Some(3));
        assert!(crl.update(b"not a CRL").is_err());
    }
}
