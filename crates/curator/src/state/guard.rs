//! Guarded transactions: every read and write a leader makes is an etcd transaction under
//! `CreateRevision(lock key) == lock revision`, so a curator that has lost the
//! election can neither write nor serve stale reads. Only the state layer calls these.
//!
//! [`Leadership::txn_if`] nests a conditional transaction inside the guard. That is how the
//! state layer makes check-then-write sequences atomic (create a node only if it and its
//! join-key entry are absent) instead of relying on the leader's in-process locks alone;
//! later writers (a background reconciler, an idempotent CommitNode) build on it the same way.

use kv::etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};

use super::StateError;
use crate::election::Leadership;

/// What a guarded transaction returned.
#[derive(Debug)]
pub(crate) struct Guarded {
    /// Whether the transaction's own conditions held (always true without conditions).
    pub succeeded: bool,
    /// The responses of the branch that ran.
    pub responses: Vec<TxnOpResponse>,
    /// The store revision the transaction was answered at.
    pub revision: i64,
}

impl Guarded {
    /// The (key, value) pairs of the first range response.
    pub fn first_range(&self) -> Vec<(String, Vec<u8>)> {
        first_range(&self.responses)
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    }
}

/// One key as read, with the revision of its last write: what an optimistic writer compares
/// against (`mod_revision(key) == mod_revision`) so that its write lands only on the value
/// it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

impl Leadership {
    fn guard(&self) -> Compare {
        Compare::create_revision(self.lock_key.clone(), CompareOp::Equal, self.lock_rev)
    }

    /// The curator keyspace with every write under the guard: for code that writes through
    /// a plain [`kv::Namespaced`] (the PKI), so a deposed leader cannot issue or revoke
    /// certificates either. Its writes fail with `kv::Error::GuardFailed` once leadership
    /// is lost.
    pub(crate) fn guarded_namespace(&self) -> kv::Namespaced {
        self.namespace().guarded(self.guard())
    }

    /// Runs `ops` in one transaction under the guard; [`StateError::LostLeadership`] if
    /// another curator has taken over.
    pub(crate) async fn txn(&self, ops: Vec<TxnOp>) -> Result<Guarded, StateError> {
        let resp = self
            .run(Txn::new().when([self.guard()]).and_then(ops))
            .await?;
        Ok(Guarded {
            succeeded: true,
            revision: revision(&resp),
            responses: resp.op_responses(),
        })
    }

    /// Runs `then` if every compare in `when` holds and `otherwise` if not, in one
    /// transaction under the guard. `succeeded` says which branch ran.
    pub(crate) async fn txn_if(
        &self,
        when: Vec<Compare>,
        then: Vec<TxnOp>,
        otherwise: Vec<TxnOp>,
    ) -> Result<Guarded, StateError> {
        let inner = Txn::new().when(when).and_then(then).or_else(otherwise);
        let resp = self
            .run(
                Txn::new()
                    .when([self.guard()])
                    .and_then([TxnOp::txn(inner)]),
            )
            .await?;
        let revision = revision(&resp);
        match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Txn(inner)) => Ok(Guarded {
                succeeded: inner.succeeded(),
                responses: inner.op_responses(),
                revision,
            }),
            _ => Err(StateError::Internal(
                "etcd answered a nested transaction without its response".to_string(),
            )),
        }
    }

    /// Reads one key under the guard.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let resp = self.txn(vec![TxnOp::get(key, None)]).await?;
        Ok(resp.first_range().into_iter().next().map(|(_, v)| v))
    }

    /// Reads one key under the guard, with the revision of its last write.
    pub(crate) async fn get_kv(&self, key: &str) -> Result<Option<Kv>, StateError> {
        let resp = self.txn(vec![TxnOp::get(key, None)]).await?;
        Ok(first_range(&resp.responses).into_iter().next())
    }

    /// Reads `key` (or, with `prefix`, every key under it) under the guard, with the store
    /// revision of the read (from which a watch continues without gaps).
    pub(crate) async fn range(
        &self,
        key: &str,
        prefix: bool,
    ) -> Result<(Vec<Kv>, i64), StateError> {
        let options = prefix.then(|| GetOptions::new().with_prefix());
        let resp = self.txn(vec![TxnOp::get(key, options)]).await?;
        Ok((first_range(&resp.responses), resp.revision))
    }

    /// The keys under `prefix` (no values) under the guard, with the store revision of the
    /// read.
    pub(crate) async fn keys(&self, prefix: &str) -> Result<(Vec<String>, i64), StateError> {
        let options = GetOptions::new().with_prefix().with_keys_only();
        let resp = self.txn(vec![TxnOp::get(prefix, Some(options))]).await?;
        let keys = first_range(&resp.responses)
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        Ok((keys, resp.revision))
    }

    /// One page of a prefix read under the guard: at most `limit` keys from `from` (a key
    /// under `prefix`, inclusive) on, at store revision `revision` (0: the current one, which
    /// the answer names; later pages pass it back so that all pages are one snapshot).
    /// Returns the keys, the revision read at, whether more keys follow and how many keys the
    /// range from `from` holds in all.
    pub(crate) async fn range_page(
        &self,
        prefix: &str,
        from: &str,
        limit: i64,
        revision: i64,
    ) -> Result<(Vec<Kv>, i64, bool, i64), StateError> {
        let mut options = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(limit);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let resp = self.txn(vec![TxnOp::get(from, Some(options))]).await?;
        let (more, count) = resp
            .responses
            .iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => Some((g.more(), g.count())),
                _ => None,
            })
            .unwrap_or((false, 0));
        let revision = if revision > 0 {
            revision
        } else {
            resp.revision
        };
        Ok((first_range(&resp.responses), revision, more, count))
    }

    async fn run(&self, txn: Txn) -> Result<TxnResponse, StateError> {
        let resp = self.namespace().txn(txn).await.map_err(StateError::etcd)?;
        if !resp.succeeded() {
            return Err(StateError::LostLeadership);
        }
        Ok(resp)
    }
}

fn revision(resp: &TxnResponse) -> i64 {
    resp.header().map_or(0, |h| h.revision())
}

/// The end of the range of keys under `prefix` (etcd's `with_prefix` rule: the prefix with
/// its last byte incremented, trailing 0xff bytes dropped).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The keys of the first range response among `responses`.
fn first_range(responses: &[TxnOpResponse]) -> Vec<Kv> {
    responses
        .iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(
                g.kvs()
                    .iter()
                    .map(|kv| Kv {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// The value of the `n`th range response's single key, if it exists.
pub(crate) fn nth_value(responses: &[TxnOpResponse], n: usize) -> Option<Vec<u8>> {
    responses
        .iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .nth(n)
        .and_then(|g| g.kvs().first().map(|kv| kv.value().to_vec()))
}
