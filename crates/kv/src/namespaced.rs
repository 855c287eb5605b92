//! [`Namespaced`]: an etcd client confined to one keyspace.

use std::fmt;

use etcd_client::{
    Client, Compare, DeleteOptions, DeleteResponse, GetOptions, GetResponse, KvClientPrefix,
    PutOptions, PutResponse, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};

use crate::error::{Error, Result};
use crate::watch::WatchStream;

/// What every namespace prefix starts with; fixed by upstream, so raw keys stay compatible.
pub const NAMESPACE_PREFIX: &str = "namespaced:";

/// Separates the path elements of nested namespaces, which is why names must not contain it.
const PATH_SEPARATOR: char = ':';

/// An etcd client whose keys are relative to the prefix `namespaced:<a>:<b>:…/`.
///
/// [`Namespaced::root`] is the raw keyspace (empty prefix); [`Namespaced::sub`] descends.
/// Cloning is cheap (the client is a handle on a shared channel), so pass clones around.
///
/// Keys in requests are prefixed and keys in responses stripped, including inside
/// transactions (build the [`Txn`] with relative keys). Range requests must use `with_prefix`
/// or `with_range`: etcd-client does not translate `with_from_key`/`with_all_keys`, which
/// would therefore reach past the namespace. Watches drop events outside the namespace.
///
/// A [`Namespaced::guarded`] client makes every write (put, delete, transaction) conditional
/// on one compare, e.g. a leader's election key: code that only knows how to write (the PKI)
/// then writes only while its caller's condition holds.
#[derive(Clone)]
pub struct Namespaced {
    client: Client,
    path: Vec<String>,
    prefix: String,
    /// The condition every write is made under, if any (a relative key).
    guard: Option<Compare>,
}

impl Namespaced {
    /// The raw keyspace of `client`.
    pub fn root(client: Client) -> Self {
        Namespaced {
            client,
            path: Vec::new(),
            prefix: String::new(),
            guard: None,
        }
    }

    /// The sub-namespace `name` of this one: `root.sub("curator")` has prefix
    /// `namespaced:curator/`, `root.sub("a")?.sub("b")` has `namespaced:a:b/`.
    pub fn sub(&self, name: &str) -> Result<Self> {
        validate_name(name)?;
        let mut path = self.path.clone();
        path.push(name.to_string());
        Ok(Namespaced {
            client: self.client.clone(),
            prefix: prefix_for(&path),
            path,
            guard: None,
        })
    }

    /// This namespace with every write made under `guard` (a compare on a key of this
    /// namespace): a write whose guard does not hold fails with [`Error::GuardFailed`] and
    /// changes nothing. Reads and watches are not affected. Sub-namespaces do not inherit it.
    pub fn guarded(&self, guard: Compare) -> Self {
        Namespaced {
            guard: Some(guard),
            ..self.clone()
        }
    }

    /// Runs `op` under the guard; its own response.
    async fn guarded_op(&self, guard: &Compare, op: TxnOp) -> Result<TxnOpResponse> {
        let resp = self
            .kv()
            .txn(Txn::new().when([guard.clone()]).and_then([op]))
            .await?;
        if !resp.succeeded() {
            return Err(Error::GuardFailed);
        }
        resp.op_responses()
            .into_iter()
            .next()
            .ok_or(Error::MissingResponse)
    }

    /// The raw key prefix of this namespace (empty for the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace names from the root down (empty for the root).
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// The underlying client, for calls that are not key-value (member list, status, leases).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The raw etcd key of the relative key `key`.
    pub fn key(&self, key: impl AsRef<[u8]>) -> Vec<u8> {
        let key = key.as_ref();
        let mut raw = Vec::with_capacity(self.prefix.len() + key.len());
        raw.extend_from_slice(self.prefix.as_bytes());
        raw.extend_from_slice(key);
        raw
    }

    /// The relative key of the raw etcd key `raw`, or `None` if it lies outside the namespace.
    pub fn strip<'a>(&self, raw: &'a [u8]) -> Option<&'a [u8]> {
        raw.strip_prefix(self.prefix.as_bytes())
    }

    fn kv(&self) -> KvClientPrefix {
        KvClientPrefix::new(self.client.kv_client(), self.prefix.as_bytes().to_vec())
    }

    /// Reads `key` (or a range, see the type docs about options).
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse> {
        Ok(self.kv().get(key, options).await?)
    }

    /// Reads every key starting with `prefix` (relative; empty means the whole namespace).
    pub async fn get_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<GetResponse> {
        self.get(prefix, Some(GetOptions::new().with_prefix()))
            .await
    }

    /// Writes `value` at `key`.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse> {
        let Some(guard) = &self.guard else {
            return Ok(self.kv().put(key, value, options).await?);
        };
        match self
            .guarded_op(guard, TxnOp::put(key, value, options))
            .await?
        {
            TxnOpResponse::Put(r) => Ok(r),
            _ => Err(Error::MissingResponse),
        }
    }

    /// Deletes `key` (or a range, see the type docs about options).
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteResponse> {
        let Some(guard) = &self.guard else {
            return Ok(self.kv().delete(key, options).await?);
        };
        match self.guarded_op(guard, TxnOp::delete(key, options)).await? {
            TxnOpResponse::Delete(r) => Ok(r),
            _ => Err(Error::MissingResponse),
        }
    }

    /// Deletes every key starting with `prefix` (relative).
    pub async fn delete_prefix(&self, prefix: impl Into<Vec<u8>>) -> Result<DeleteResponse> {
        self.delete(prefix, Some(DeleteOptions::new().with_prefix()))
            .await
    }

    /// Runs a transaction whose compares and operations use relative keys; keys in the
    /// response are relative too.
    /// Under a guard, the transaction runs nested inside one that checks the guard, and the
    /// response is the nested transaction's.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let Some(guard) = &self.guard else {
            return Ok(self.kv().txn(txn).await?);
        };
        match self.guarded_op(guard, TxnOp::txn(txn)).await? {
            TxnOpResponse::Txn(r) => Ok(r),
            _ => Err(Error::MissingResponse),
        }
    }

    /// Watches `key` (with `with_prefix` in `options`: every key under it). Event keys are
    /// relative. Dropping the stream cancels the watch.
    pub async fn watch(
        &self,
        key: impl AsRef<[u8]>,
        options: Option<WatchOptions>,
    ) -> Result<WatchStream> {
        let inner = self
            .client
            .watch_client()
            .watch(self.key(key), options)
            .await?;
        Ok(WatchStream::new(inner, self.prefix.as_bytes().to_vec()))
    }
}

impl fmt::Debug for Namespaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namespaced")
            .field("prefix", &self.prefix)
            .field("guarded", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

/// Checks a sub-namespace name: non-empty (an empty element, giving `namespaced:/` or
/// `namespaced:a::b/`, is always a caller bug) and free of the path separator, which would make
/// `sub("a:b")` collide with `sub("a").sub("b")`.
fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "namespace names must not be empty"
    } else if name.contains(PATH_SEPARATOR) {
        "namespace names must not contain ':' (it separates nested namespaces)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidNamespace {
        name: name.to_string(),
        reason,
    })
}

/// The raw prefix of the namespace at `path`: `namespaced:` + path joined by `:` + `/`.
fn prefix_for(path: &[String]) -> String {
    if path.is_empty() {
        return String::new();
    }
    format!("{NAMESPACE_PREFIX}{}/", path.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefixes_match_upstream() {
        assert_eq!(prefix_for(&[]), "");
        assert_eq!(prefix_for(&path(&["curator"])), "namespaced:curator/");
        assert_eq!(prefix_for(&path(&["a", "b"])), "namespaced:a:b/");
        assert_eq!(prefix_for(&path(&["etcd-pki"])), "namespaced:etcd-pki/");
    }

    #[test]
    fn names_are_validated() {
        validate_name("curator").expect("valid");
        validate_name("kube/pki").expect("slashes are fine upstream");
        for bad in ["", "a:b", ":"] {
            match validate_name(bad) {
                Err(Error::InvalidNamespace { name, .. }) => assert_eq!(name, bad),
                other => panic!("{bad:?}: unexpected {other:?}"),
            }
        }
    }
}
