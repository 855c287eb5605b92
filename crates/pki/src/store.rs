//! The few etcd access patterns the crate uses: read one key, create-only transactions.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponse};
use kv::Namespaced;

use crate::error::{Error, Result};

/// A value read from etcd with its modification revision (for compare-and-swap).
pub(crate) struct Stored {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// Reads `key`; also returns the store revision of the read (to watch from right after it).
pub(crate) async fn get(kv: &Namespaced, key: &str) -> Result<(Option<Stored>, i64)> {
    let resp = kv.get(key, None).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let stored = resp.kvs().first().map(|kv| Stored {
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    });
    Ok((stored, revision))
}

/// Reads the value of `key`, if any.
pub(crate) async fn get_value(kv: &Namespaced, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(get(kv, key).await?.0.map(|s| s.value))
}

/// Compare: `key` does not exist.
pub(crate) fn absent(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

/// A nested transaction writing `value` at `key` only if it does not exist yet, so one
/// create-only write can ride along in another transaction without making it fail.
pub(crate) fn put_if_absent(key: &str, value: Vec<u8>) -> TxnOp {
    TxnOp::txn(
        Txn::new()
            .when([absent(key)])
            .and_then([TxnOp::put(key, value, None)]),
    )
}

/// The value the first `get` operation of a transaction's response found, if any.
pub(crate) fn first_get_value(resp: &TxnResponse) -> Option<Vec<u8>> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    })
}

/// The raw etcd key of `key`, for error messages operators can look up with etcdctl.
pub(crate) fn raw_key(kv: &Namespaced, key: &str) -> String {
    format!("{}{key}", kv.prefix())
}

/// A [`Error::Corrupt`] for `key`.
pub(crate) fn corrupt(kv: &Namespaced, key: &str, reason: impl ToString) -> Error {
    Error::Corrupt {
        key: raw_key(kv, key),
        reason: reason.to_string(),
    }
}
