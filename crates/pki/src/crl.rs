//! Certificate revocation lists of CAs: reading, revoking (compare-and-swap) and watching.
//!
//! Upstream never revokes anything from the curator, and etcd reads its peer CRL only once, when
//! the member's PKI is bootstrapped; the operations exist for completeness and so a later
//! NodeManagement or consensus change can use them.

use std::collections::VecDeque;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use futures::stream::BoxStream;
use identity::templates;
use kv::{EventKind, Namespaced};

use crate::certificate::{Certificate, INITIAL_CRL_NUMBER, issued_path};
use crate::error::{Error, Result};
use crate::store::{self, corrupt, raw_key};

/// How many compare-and-swap rounds a revocation tries before giving up with
/// [`Error::Conflict`]. Every round lets at least one concurrent revoker through, so this only
/// runs out with more than this many revocations at the same moment.
const REVOKE_ATTEMPTS: usize = 16;

/// A CA's CRL as stored in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    /// The DER-encoded CRL, signed by the CA.
    pub der: Vec<u8>,
    /// etcd ModRevision of the CRL key: changes with every update.
    pub revision: i64,
}

impl Certificate {
    fn require_ca(&self) -> Result<()> {
        if self.is_ca() {
            Ok(())
        } else {
            Err(Error::NotCa {
                name: self.name.clone(),
            })
        }
    }

    /// The stored CA certificate. Revocation must not create a CA as a side effect: a CA that
    /// was never ensured has issued nothing that could need revoking.
    async fn stored_ca(&self, kv: &Namespaced) -> Result<Vec<u8>> {
        self.get(kv).await?.ok_or_else(|| Error::NotFound {
            what: format!(
                "CA certificate {:?} at {:?} (the CA was never ensured)",
                self.name,
                raw_key(kv, &self.cert_path())
            ),
        })
    }

    /// The CA's current CRL.
    pub async fn crl(&self, kv: &Namespaced) -> Result<Crl> {
        self.require_ca()?;
        let path = self.crl_path();
        match store::get(kv, &path).await?.0 {
            Some(s) => Ok(Crl {
                der: s.value,
                revision: s.mod_revision,
            }),
            None => Err(self.crl_missing(kv)),
        }
    }

    fn crl_missing(&self, kv: &Namespaced) -> Error {
        Error::NotFound {
            what: format!(
                "CRL of CA {:?} at {:?} (the CA was never ensured)",
                self.name,
                raw_key(kv, &self.crl_path())
            ),
        }
    }

    /// Adds `serial` (big-endian, leading zeros ignored) to the CA's CRL and re-signs it with
    /// the next CRL number. Already revoked serials are left alone. Concurrent revocations
    /// all land: the write is a compare-and-swap on the CRL's revision, retried when lost.
    pub async fn revoke_serial(&self, kv: &Namespaced, serial: &[u8]) -> Result<()> {
        self.require_ca()?;
        let serial = strip_zeros(serial);
        let ca_der = self.stored_ca(kv).await?;
        let ca_key = self.key(kv).await?;
        let path = self.crl_path();
        for _ in 0..REVOKE_ATTEMPTS {
            let current = self.crl(kv).await?;
            let info = identity::verify::inspect_crl(&current.der, &ca_der)
                .map_err(|e| corrupt(kv, &path, e))?;
            if info
                .revoked_serials
                .iter()
                .any(|s| strip_zeros(s) == serial)
            {
                return Ok(());
            }
            let mut serials = info.revoked_serials;
            // A zero serial has no magnitude bytes; DER still needs one.
            serials.push(if serial.is_empty() {
                vec![0]
            } else {
                serial.to_vec()
            });
            let number = info.crl_number.unwrap_or(INITIAL_CRL_NUMBER) + 1;
            let der = templates::crl(&ca_key, &ca_der, &serials, number)?;
            let swap = Txn::new()
                .when([Compare::mod_revision(
                    path.as_str(),
                    CompareOp::Equal,
                    current.revision,
                )])
                .and_then([TxnOp::put(path.as_str(), der, None)]);
            if kv.txn(swap).await?.succeeded() {
                tracing::info!(ca = %self.name, serial = %hex(serial), "revoked certificate");
                return Ok(());
            }
            tracing::debug!(ca = %self.name, "CRL changed underneath a revocation; retrying");
        }
        Err(Error::Conflict {
            key: raw_key(kv, &path),
        })
    }

    /// Revokes the issued certificate `issued_name` of this CA's namespace by its serial.
    pub async fn revoke_certificate(&self, kv: &Namespaced, issued_name: &str) -> Result<()> {
        self.require_ca()?;
        let path = issued_path(&self.namespace, issued_name);
        let der = store::get_value(kv, &path)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!(
                    "issued certificate {issued_name:?} at {:?}",
                    raw_key(kv, &path)
                ),
            })?;
        let ca_der = self.stored_ca(kv).await?;
        // Revoking in the wrong CA's CRL would look done while revoking nothing.
        identity::verify::check_in_cluster(&der, &ca_der).map_err(|e| Error::Invalid {
            name: issued_name.to_string(),
            reason: format!("not a certificate issued by CA {:?}: {e}", self.name),
        })?;
        let serial = identity::verify::cert_serial(&der).map_err(|e| corrupt(kv, &path, e))?;
        self.revoke_serial(kv, &serial).await
    }

    /// Upstream's `Revoke(hostname)`: revokes every certificate of this CA's namespace whose
    /// DNS SANs contain `dns_name`. Returns how many were revoked; none is [`Error::NotFound`].
    pub async fn revoke_dns_name(&self, kv: &Namespaced, dns_name: &str) -> Result<usize> {
        self.require_ca()?;
        let ca_der = self.stored_ca(kv).await?;
        let prefix = format!("{}issued/", self.namespace);
        let mut serials = Vec::new();
        for entry in kv.get_prefix(prefix.as_str()).await?.kvs() {
            let key = String::from_utf8_lossy(entry.key()).into_owned();
            let info =
                identity::verify::inspect(entry.value()).map_err(|e| corrupt(kv, &key, e))?;
            if info.dns_names.iter().any(|n| n == dns_name)
                && identity::verify::check_in_cluster(entry.value(), &ca_der).is_ok()
            {
                serials.push(info.serial);
            }
        }
        if serials.is_empty() {
            return Err(Error::NotFound {
                what: format!(
                    "certificate of CA {:?} for DNS name {dns_name:?}",
                    self.name
                ),
            });
        }
        for serial in &serials {
            self.revoke_serial(kv, serial).await?;
        }
        Ok(serials.len())
    }

    /// The current CRL, then every new version of it.
    ///
    /// The watch starts right after the revision of the initial read, so no update between
    /// read and watch is lost. The stream ends after its first error (etcd unreachable, watch
    /// compacted away); call again to resume.
    pub fn watch_crl(&self, kv: &Namespaced) -> BoxStream<'static, Result<Crl>> {
        let state = CrlWatch {
            kv: kv.clone(),
            ca: self.clone(),
            watch: None,
            pending: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed()
    }
}

/// State of a [`Certificate::watch_crl`] stream.
struct CrlWatch {
    kv: Namespaced,
    ca: Certificate,
    watch: Option<kv::WatchStream>,
    pending: VecDeque<Result<Crl>>,
    done: bool,
}

impl CrlWatch {
    async fn next(&mut self) -> Option<Result<Crl>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let Some(watch) = self.watch.as_mut() else {
                let first = self.start().await;
                self.done = first.is_err();
                return Some(first);
            };
            match watch.next().await {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok(batch)) => {
                    for event in batch.events {
                        self.pending.push_back(match event.kind {
                            EventKind::Put => Ok(Crl {
                                der: event.value,
                                revision: event.mod_revision,
                            }),
                            EventKind::Delete => Err(self.ca.crl_missing(&self.kv)),
                        });
                    }
                }
            }
        }
    }

    /// Reads the CRL and starts watching right after the read's revision.
    async fn start(&mut self) -> Result<Crl> {
        self.ca.require_ca()?;
        let path = self.ca.crl_path();
        let (stored, revision) = store::get(&self.kv, &path).await?;
        let stored = stored.ok_or_else(|| self.ca.crl_missing(&self.kv))?;
        let options = WatchOptions::new().with_start_revision(revision + 1);
        self.watch = Some(self.kv.watch(path.as_str(), Some(options)).await?);
        Ok(Crl {
            der: stored.value,
            revision: stored.mod_revision,
        })
    }
}

/// The serials a CRL lists (big-endian, no leading zeros, like
/// `identity::verify::cert_serial`). Does not check the signature; use
/// `identity::verify::inspect_crl` for that.
pub fn revoked_serials(crl_der: &[u8]) -> Result<Vec<Vec<u8>>> {
    let (rest, crl) =
        x509_parser::parse_x509_crl(crl_der).map_err(|e| Error::InvalidCrl(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::InvalidCrl("trailing bytes after the CRL".into()));
    }
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| strip_zeros(r.raw_serial()).to_vec())
        .collect())
}

fn strip_zeros(serial: &[u8]) -> &[u8] {
    let first = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
    &serial[first..]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
