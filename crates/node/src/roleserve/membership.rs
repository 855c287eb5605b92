//! [`Membership`]: what an enrolled node has (credentials, unlocked data, join key) and its
//! one shared channel to the curator leader, plus the check whether the cluster still knows
//! the node.
//!
//! The leader channel accepts only curators that pass the node's leader checks (not revoked
//! by the cluster CRL the membership holds, and holding the ConsensusMember role, see
//! [`super::trust`]).
//!
//! Workers see a deleted node as odd failures: NotFound from UpdateNodeStatus or Heartbeat,
//! Unauthenticated once the curator revoked its certificate, a tombstone on Watch. Before the
//! node gives up for good (exit code 3), [`Membership::confirm_gone`] has that confirmed
//! independently of the curator that answered ([`super::confirm`]): in the end JoinNode with
//! the node's join key must answer NotFound, which it does only if no node holds that key any
//! more. A transient or ambiguous failure, or a curator lying about it, therefore never makes
//! a node wipe or stop.

use std::collections::HashMap;

use identity::{NodeCredentials, SigningKey};
use proto::curator_api::curator_client::CuratorClient;
use rpc::retry::{DEFAULT_BACKOFF, RetryPolicy};
use rpc::{ClientCredentials, ClusterCrl, LeaderChannel, LeaderOptions};
use tonic::{Code, Status};

use super::Roleserve;
use super::confirm::{Confirmer, Order};
use crate::storage::{DataDir, contents};

/// How the workers' one-shot calls through the leader channel are retried on a follower or a
/// lost leadership: five attempts, each bounded, before the worker gives up (and is restarted
/// by its supervisor).
pub const CALL_POLICY: RetryPolicy = RetryPolicy::forever(DEFAULT_BACKOFF).with_attempts(Some(5));

/// An enrolled node's credentials, data and curator connection.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The node credentials.
    pub credentials: NodeCredentials,
    /// The unlocked data directory.
    pub data: DataDir,
    /// The join key (to confirm membership, see the module documentation).
    pub join_key: SigningKey,
    /// The cluster CRL this node holds (persisted by the `crl` worker).
    pub crl: ClusterCrl,
    /// The channel to the curator leader, authenticated with the node certificate.
    pub curator: LeaderChannel,
}

impl Membership {
    /// Builds the membership and its leader channel, seeded with `seeds` (`host:7835`). The
    /// node's own ID maps to its own curator address, for a leader that has not reported an
    /// address yet (upstream maps it to loopback). `crl` (of the node's cluster CA) is
    /// brought up to date with the CRL persisted in the data directory first.
    pub fn new(
        rs: &Roleserve,
        credentials: NodeCredentials,
        data: DataDir,
        join_key: SigningKey,
        seeds: Vec<String>,
        crl: ClusterCrl,
    ) -> Result<Self, rpc::Error> {
        match contents::load_crl(&data) {
            Ok(Some(der)) => {
                if let Err(e) = crl.update(&der) {
                    tracing::warn!("ignoring the persisted cluster CRL: {e}");
                }
            }
            Ok(None) => {}
            // Not fatal: the CRL is fetched from the cluster again.
            Err(e) => tracing::warn!("cannot read the persisted cluster CRL: {e}"),
        }
        let options = LeaderOptions {
            local_overrides: HashMap::from([(credentials.node_id(), rs.env.curator_endpoint())]),
            crl: Some(crl.clone()),
            leader_check: Some(rs.leader_check()),
            ..LeaderOptions::default()
        };
        let curator = LeaderChannel::new(
            seeds,
            ClientCredentials::Authenticated {
                certificate: credentials.certificate().to_vec(),
                key: credentials.key().clone(),
            },
            credentials.ca().to_vec(),
            options,
        )?;
        Ok(Self {
            credentials,
            data,
            join_key,
            crl,
            curator,
        })
    }

    /// The node's ID.
    pub fn node_id(&self) -> String {
        self.credentials.node_id()
    }

    /// A Curator client on the current leader.
    pub async fn client(&self) -> Result<CuratorClient<tonic::transport::Channel>, Status> {
        Ok(CuratorClient::new(self.curator.channel().await?))
    }

    /// A Curator client on the current leader, and that leader's node ID: for workers that
    /// act on what the leader says and must be able to name it.
    pub async fn client_of_leader(
        &self,
    ) -> Result<(String, CuratorClient<tonic::transport::Channel>), Status> {
        let (info, channel) = self.curator.leader().await?;
        Ok((info.node_id, CuratorClient::new(channel)))
    }

    /// If `status` (from a call made with the node certificate) may mean the node was removed,
    /// has that confirmed (see the module documentation); returns why the node is gone if it
    /// is.
    pub async fn confirm_gone(&self, rs: &Roleserve, status: &Status) -> Option<String> {
        if !matches!(
            status.code(),
            Code::NotFound | Code::Unauthenticated | Code::PermissionDenied
        ) {
            return None;
        }
        let by = self
            .curator
            .current_leader()
            .map(|l| l.node_id)
            .unwrap_or_else(|| "(unknown)".to_string());
        Confirmer::new(rs, self)
            .confirm(&Order::Deleted, &by)
            .await
            .ok()
            .map(|()| {
                format!(
                    "the cluster no longer knows this node (it was deleted): {}",
                    status.message()
                )
            })
    }
}
