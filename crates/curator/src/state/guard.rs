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
    }
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

    /// Reads `key` (or, with `prefix`, every key under it) under the guard, with the store
    /// revision of the read (from which a watch continues without gaps).
    pub(crate) async fn range(
        &self,
        key: &str,
        prefix: bool,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64), StateError> {
        let options = prefix.then(|| GetOptions::new().with_prefix());
        let resp = self.txn(vec![TxnOp::get(key, options)]).await?;
        Ok((resp.first_range(), resp.revision))
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

/// The (key, value) pairs of the first range response among `responses`.
fn first_range(responses: &[TxnOpResponse]) -> Vec<(String, Vec<u8>)> {
    responses
        .iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(
                g.kvs()
                    .iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(kv.key()).into_owned(),
                            kv.value().to_vec(),
                        )
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
