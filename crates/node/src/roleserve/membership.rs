//! [`Membership`]: what an enrolled node has (credentials, unlocked data, join key) and its
//! one shared channel to the curator leader, plus the check whether the cluster still knows
//! the node.
//!
//! Workers see a deleted node as odd failures: NotFound from UpdateNodeStatus or Heartbeat,
//! Unauthenticated once the curator revoked its certificate, a tombstone on Watch. Before the
//! node gives up for good (exit code 3), [`Membership::confirm_gone`] asks the cluster
//! directly with the node's join key: JoinNode answers NotFound only if no node holds that
//! key any more. A transient or ambiguous failure therefore never makes a node wipe or stop.

use std::collections::HashMap;

use identity::{NodeCredentials, SigningKey};
use proto::curator_api::JoinNodeRequest;
use proto::curator_api::curator_client::CuratorClient;
use rpc::retry::{DEFAULT_BACKOFF, RetryPolicy};
use rpc::{ClientCredentials, LeaderChannel, LeaderOptions};
use tonic::{Code, Status};

use super::NodeEnv;
use crate::storage::DataDir;

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
    /// The channel to the curator leader, authenticated with the node certificate.
    pub curator: LeaderChannel,
}

impl Membership {
    /// Builds the membership and its leader channel, seeded with `seeds` (`host:7835`). The
    /// node's own ID maps to its own curator address, for a leader that has not reported an
    /// address yet (upstream maps it to loopback).
    pub fn new(
        env: &NodeEnv,
        credentials: NodeCredentials,
        data: DataDir,
        join_key: SigningKey,
        seeds: Vec<String>,
    ) -> Result<Self, rpc::Error> {
        let options = LeaderOptions {
            local_overrides: HashMap::from([(credentials.node_id(), env.curator_endpoint())]),
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

    /// If `status` (from a call made with the node certificate) may mean the node was removed,
    /// asks the cluster with the join key; returns why the node is gone if it is.
    pub async fn confirm_gone(&self, status: &Status) -> Option<String> {
        if !matches!(
            status.code(),
            Code::NotFound | Code::Unauthenticated | Code::PermissionDenied
        ) {
            return None;
        }
        let channel = match LeaderChannel::new(
            self.curator.endpoints(),
            ClientCredentials::Ephemeral(self.join_key.clone()),
            self.credentials.ca().to_vec(),
            LeaderOptions::default(),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot check membership: {e}");
                return None;
            }
        };
        let result = channel
            .call(&CALL_POLICY, |ch| async move {
                CuratorClient::new(ch)
                    .join_node(JoinNodeRequest {
                        using_sealed_configuration: false,
                    })
                    .await
            })
            .await;
        match result {
            Err(s) if s.code() == Code::NotFound => Some(format!(
                "the cluster no longer knows this node (it was deleted): {} ({})",
                s.message(),
                status.message()
            )),
            _ => None,
        }
    }
}
