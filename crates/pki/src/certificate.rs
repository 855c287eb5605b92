//! [`Certificate`]: a named certificate in a PKI namespace, issued once and stored in etcd.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use etcd_client::{Txn, TxnOp};
use identity::templates::{self, CertificateTemplate};
use identity::{PublicKey, SigningKey};
use kv::Namespaced;

use crate::error::{Error, Result};
use crate::store::{self, absent, corrupt, first_get_value, put_if_absent, raw_key};

/// How often [`Certificate::ensure`] starts over when a racing writer's data vanished before it
/// could be read back (only possible if someone deletes certificates concurrently).
const ENSURE_ATTEMPTS: usize = 3;

/// The future of one [`Certificate::ensure`] round.
type EnsureFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>>> + Send + 'a>>;

/// CRLNumber of the empty CRL a CA starts with; every revocation increments it.
pub(crate) const INITIAL_CRL_NUMBER: u64 = 1;

/// Who signs a certificate.
#[derive(Clone, Debug)]
pub enum Issuer {
    /// The certificate signs itself (CAs); needs [`Mode::Managed`].
    SelfSigned,
    /// A managed CA in etcd signs it; the CA is ensured first.
    Ca(Arc<Certificate>),
}

/// Where the private key lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Generated on first use and stored in etcd next to the certificate (CAs).
    Managed,
    /// Held by the subject, who supplied this public key (nodes, users, etcd members).
    External(PublicKey),
}

/// Which `identity` template the certificate follows. Subject-dependent templates
/// take the node ID from the certificate's own public key, so name and key cannot disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Template {
    /// A self-signed CA with this CommonName (cluster CA, etcd peer CA).
    Ca {
        /// Subject CommonName.
        common_name: String,
    },
    /// A node certificate: CN and DNS SAN = node ID, ServerAuth.
    Node,
    /// A user certificate naming `identity`, ClientAuth.
    User {
        /// The user identity (CN), e.g. `owner`.
        identity: String,
    },
    /// An etcd peer certificate: DNS SANs `extra_names` then the node ID, IP SANs `ips`.
    EtcdPeer {
        /// DNS names before the node ID (tests use them for extra host names).
        extra_names: Vec<String>,
        /// IP SANs.
        ips: Vec<IpAddr>,
    },
    /// Any other template (e.g. the Kubernetes PKI).
    Custom(CertificateTemplate),
}

impl Template {
    fn build(&self, subject: &PublicKey) -> CertificateTemplate {
        match self {
            Template::Ca { common_name } => CertificateTemplate::ca(common_name),
            Template::Node => CertificateTemplate::node(subject),
            Template::User { identity } => CertificateTemplate::user(identity),
            Template::EtcdPeer { extra_names, ips } => {
                CertificateTemplate::etcd_peer(subject, extra_names, ips)
            }
            Template::Custom(t) => t.clone(),
        }
    }

    fn is_ca(&self) -> bool {
        match self {
            Template::Ca { .. } => true,
            Template::Custom(t) => t.is_ca,
            _ => false,
        }
    }
}

/// A certificate named `name` in the PKI namespace `namespace` (a key prefix ending in `/`).
///
/// Storage, relative to the [`Namespaced`] keyspace given to each call: private key of a
/// managed certificate at `<namespace>keys/<name>-privkey.bin` (64 bytes, seed || public key),
/// the certificate at `<namespace>issued/<name>-cert.der`, a CA's CRL at
/// `<namespace><name>-crl.der`.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// PKI namespace, e.g. `/cluster-pki/`.
    pub namespace: String,
    /// Certificate name, unique within the namespace.
    pub name: String,
    /// Who signs it.
    pub issuer: Issuer,
    /// What goes into it.
    pub template: Template,
    /// Where its private key lives.
    pub mode: Mode,
}

impl Certificate {
    /// A self-signed, managed CA.
    pub fn self_signed_ca(namespace: &str, name: &str, common_name: &str) -> Self {
        Certificate {
            namespace: namespace.to_string(),
            name: name.to_string(),
            issuer: Issuer::SelfSigned,
            template: Template::Ca {
                common_name: common_name.to_string(),
            },
            mode: Mode::Managed,
        }
    }

    /// The cluster CA: `cluster-ca` in `/cluster-pki/`.
    pub fn cluster_ca() -> Self {
        Self::self_signed_ca(
            crate::CLUSTER_PKI_NAMESPACE,
            crate::CLUSTER_CA_NAME,
            templates::CLUSTER_CA_CN,
        )
    }

    /// The etcd peer CA: `CA` in `/pki/`.
    pub fn etcd_ca() -> Self {
        Self::self_signed_ca(
            crate::ETCD_PKI_NAMESPACE,
            crate::ETCD_CA_NAME,
            templates::ETCD_CA_CN,
        )
    }

    /// A certificate issued by `ca`, stored in the CA's namespace.
    pub fn issued_by(ca: &Arc<Certificate>, name: &str, template: Template, mode: Mode) -> Self {
        Certificate {
            namespace: ca.namespace.clone(),
            name: name.to_string(),
            issuer: Issuer::Ca(ca.clone()),
            template,
            mode,
        }
    }

    /// The node certificate of `node_key`: `node-<node ID>`, external.
    pub fn node(ca: &Arc<Certificate>, node_key: PublicKey) -> Self {
        let name = format!("node-{}", node_key.node_id());
        Self::issued_by(ca, &name, Template::Node, Mode::External(node_key))
    }

    /// A user certificate named `name` for `identity` (the owner: name and identity `owner`).
    pub fn user(ca: &Arc<Certificate>, name: &str, identity: &str, key: PublicKey) -> Self {
        let template = Template::User {
            identity: identity.to_string(),
        };
        Self::issued_by(ca, name, template, Mode::External(key))
    }

    /// The etcd member certificate of `node_key`, named by its node ID, external.
    pub fn etcd_peer(
        ca: &Arc<Certificate>,
        node_key: PublicKey,
        extra_names: Vec<String>,
        ips: Vec<IpAddr>,
    ) -> Self {
        let template = Template::EtcdPeer { extra_names, ips };
        Self::issued_by(ca, &node_key.node_id(), template, Mode::External(node_key))
    }

    /// Key of the managed private key, relative to the keyspace.
    pub fn key_path(&self) -> String {
        format!("{}keys/{}-privkey.bin", self.namespace, self.name)
    }

    /// Key of the certificate, relative to the keyspace.
    pub fn cert_path(&self) -> String {
        issued_path(&self.namespace, &self.name)
    }

    /// Key of the CRL (CAs only), relative to the keyspace.
    pub fn crl_path(&self) -> String {
        format!("{}{}-crl.der", self.namespace, self.name)
    }

    /// Whether this is a CA that owns a CRL: self-signed with a CA template.
    pub fn is_ca(&self) -> bool {
        matches!(self.issuer, Issuer::SelfSigned) && self.template.is_ca()
    }

    /// Returns the certificate (DER), issuing and storing it first if it does not exist.
    ///
    /// Idempotent and create-only: once stored, a certificate is never replaced. For external
    /// certificates a stored certificate for another public key is [`Error::KeyMismatch`].
    /// Racing callers all get the certificate of whichever write landed first. A new CA is
    /// stored together with its key and an empty CRL in one transaction.
    pub async fn ensure(&self, kv: &Namespaced) -> Result<Vec<u8>> {
        for _ in 0..ENSURE_ATTEMPTS {
            if let Some(der) = self.ensure_once(kv).await? {
                return Ok(der);
            }
        }
        Err(Error::Conflict {
            key: raw_key(kv, &self.cert_path()),
        })
    }

    /// One round of [`Certificate::ensure`]; `None` means "start over". Boxed with an explicit
    /// `Send` because `ensure` recurses through the issuer chain, and the compiler cannot
    /// infer auto traits of a recursive future by itself.
    fn ensure_once<'a>(&'a self, kv: &'a Namespaced) -> EnsureFuture<'a> {
        Box::pin(self.ensure_once_inner(kv))
    }

    async fn ensure_once_inner(&self, kv: &Namespaced) -> Result<Option<Vec<u8>>> {
        let cert_path = self.cert_path();
        if let Some(der) = store::get_value(kv, &cert_path).await? {
            return self.accept_stored(kv, der).map(Some);
        }

        // A managed key may predate the certificate (written by another implementation, or
        // by hand); reuse it rather than orphaning it.
        let (key, new_key, subject) = match self.mode {
            Mode::Managed => {
                let (key, new_key) = match self.load_key(kv).await? {
                    Some(key) => (key, false),
                    None => (SigningKey::generate()?, true),
                };
                let subject = key.public_key();
                (Some(key), new_key, subject)
            }
            Mode::External(public) => (None, false, public),
        };
        let template = self.template.build(&subject);
        let der = match &self.issuer {
            Issuer::SelfSigned => {
                let key = key.as_ref().ok_or_else(|| Error::Invalid {
                    name: self.name.clone(),
                    reason: "a self-signed certificate needs a managed key".into(),
                })?;
                templates::self_sign(&template, key)?
            }
            Issuer::Ca(ca) => {
                let ca_der = ca.ensure(kv).await?;
                let ca_key = ca.key(kv).await?;
                templates::issue(&template, &subject, &ca_key, &ca_der)?
            }
        };

        let mut when = vec![absent(&cert_path)];
        let mut then = vec![TxnOp::put(cert_path.as_str(), der.clone(), None)];
        if let (true, Some(key)) = (new_key, &key) {
            let key_path = self.key_path();
            when.push(absent(&key_path));
            then.push(TxnOp::put(key_path, key.to_keypair_bytes().to_vec(), None));
        }
        if let (true, Some(key)) = (self.is_ca(), &key) {
            let crl = templates::crl(key, &der, &[], INITIAL_CRL_NUMBER)?;
            then.push(put_if_absent(&self.crl_path(), crl));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(then)
            .or_else([TxnOp::get(cert_path.as_str(), None)]);
        let resp = kv.txn(txn).await?;
        if resp.succeeded() {
            tracing::info!(
                namespace = %self.namespace,
                name = %self.name,
                public_key = %subject,
                "issued certificate"
            );
            return Ok(Some(der));
        }
        // Lost a race: the winner's certificate is the one everybody gets.
        match first_get_value(&resp) {
            Some(der) => self.accept_stored(kv, der).map(Some),
            None => Ok(None),
        }
    }

    /// Checks a stored certificate against the requested external key.
    fn accept_stored(&self, kv: &Namespaced, der: Vec<u8>) -> Result<Vec<u8>> {
        if let Mode::External(requested) = self.mode {
            let stored = identity::verify::cert_public_key(&der)
                .map_err(|e| corrupt(kv, &self.cert_path(), e))?;
            if stored != requested {
                return Err(Error::KeyMismatch {
                    name: self.name.clone(),
                    stored,
                    requested,
                });
            }
        }
        Ok(der)
    }

    /// The stored certificate, without issuing it.
    pub async fn get(&self, kv: &Namespaced) -> Result<Option<Vec<u8>>> {
        store::get_value(kv, &self.cert_path()).await
    }

    /// The private key of a managed certificate (stored by [`Certificate::ensure`]).
    pub async fn key(&self, kv: &Namespaced) -> Result<SigningKey> {
        if let Mode::External(_) = self.mode {
            return Err(Error::NotManaged {
                name: self.name.clone(),
            });
        }
        self.load_key(kv).await?.ok_or_else(|| Error::NotFound {
            what: format!(
                "private key of {:?} at {:?} (the certificate was never ensured)",
                self.name,
                raw_key(kv, &self.key_path())
            ),
        })
    }

    async fn load_key(&self, kv: &Namespaced) -> Result<Option<SigningKey>> {
        let path = self.key_path();
        store::get_value(kv, &path)
            .await?
            .map(|bytes| SigningKey::from_keypair_bytes(&bytes).map_err(|e| corrupt(kv, &path, e)))
            .transpose()
    }

    /// Deletes the issued certificate `name` of this namespace (e.g. of a deleted node), so
    /// the name can be issued again. Returns whether there was one.
    pub async fn delete_issued(&self, kv: &Namespaced, name: &str) -> Result<bool> {
        let deleted = kv.delete(issued_path(&self.namespace, name), None).await?;
        Ok(deleted.deleted() > 0)
    }
}

/// Key of the issued certificate `name` in `namespace`.
pub(crate) fn issued_path(namespace: &str, name: &str) -> String {
    format!("{namespace}issued/{name}-cert.der")
}
