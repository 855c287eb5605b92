//! AAA service of the leader: Escrow, i.e. taking ownership.
//!
//! The only identity is `owner` and its only proof is REFRESH_CERTIFICATE: the caller
//! connects with a self-signed certificate of the owner key given at bootstrap and asks for a
//! certificate of that same key. The answer is the owner's user certificate (CN `owner`,
//! ClientAuth), issued once and returned unchanged on every later escrow with that key.

use std::sync::Arc;

use futures::stream;
use identity::PublicKey;
use proto::api::escrow_from_server::ProofRequest;
use proto::api::escrow_from_server::proof_request::Kind;
use proto::api::{EscrowFromClient, EscrowFromServer, aaa_server::Aaa};
use rpc::PeerInfo;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::Leader;
use crate::state::{StateError, cluster, pki};

/// The only identity Escrow can grant.
const OWNER_IDENTITY: &str = "owner";

/// The AAA service.
#[derive(Debug, Clone)]
pub struct AaaService(pub Arc<Leader>);

#[tonic::async_trait]
impl Aaa for AaaService {
    async fn escrow(
        &self,
        request: Request<Streaming<EscrowFromClient>>,
    ) -> Result<Response<BoxStream<EscrowFromServer>>, Status> {
        let transport_key = PeerInfo::of(&request)?.self_signed_key().copied();
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the first message must carry parameters"))?;
        let replies = escrow(&self.0, first, transport_key).await?;
        Ok(Response::new(Box::pin(stream::iter(replies))))
    }
}

/// Runs the escrow flow on the first client message. Later client messages carry nothing the
/// flow needs (no proof kind that takes client data exists), so they are not read.
async fn escrow(
    leader: &Leader,
    first: EscrowFromClient,
    transport_key: Option<PublicKey>,
) -> Result<Vec<Result<EscrowFromServer, Status>>, Status> {
    let params = first
        .parameters
        .ok_or_else(|| Status::invalid_argument("the first message must carry parameters"))?;
    if params.requested_identity_name != OWNER_IDENTITY {
        return Err(Status::unimplemented(format!(
            "only the identity {OWNER_IDENTITY:?} can be escrowed"
        )));
    }
    let requested = PublicKey::from_slice(&params.public_key).map_err(|_| {
        Status::invalid_argument(format!(
            "public_key must be 32 bytes, got {}",
            params.public_key.len()
        ))
    })?;
    let Some(transport_key) = transport_key else {
        // Tell the client what it lacks before refusing, so it knows to reconnect with a
        // certificate.
        let needed = EscrowFromServer {
            needed: vec![refresh_certificate()],
            ..Default::default()
        };
        return Ok(vec![
            Ok(needed),
            Err(Status::unauthenticated(
                "connect with a self-signed certificate of the key",
            )),
        ]);
    };
    if transport_key != requested {
        return Err(Status::unimplemented(
            "certificates can only be escrowed for the key the connection was made with",
        ));
    }
    // The caller is unauthenticated until its key is the owner's: it takes its turn among
    // the others for the check (see `Leader::admit_unauthenticated`).
    let turn = leader.admit_unauthenticated().await?;
    // As upstream: a missing or unreadable initial owner is FailedPrecondition, not the store
    // error it would otherwise map to.
    let owner = match cluster::initial_owner(&leader.leadership).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return Err(Status::failed_precondition("cluster has no initial owner")),
        Err(e @ StateError::Corrupt { .. }) => {
            return Err(Status::failed_precondition(format!(
                "initial owner record is invalid: {e}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if owner.as_slice() != requested.as_bytes() {
        return Err(Status::permission_denied(
            "this key is not the cluster owner's key",
        ));
    }
    drop(turn);
    let certificate =
        pki::ensure_owner_certificate(&leader.leadership.guarded_namespace(), &requested).await?;
    tracing::info!("owner certificate escrowed");
    Ok(vec![Ok(EscrowFromServer {
        fulfilled: vec![refresh_certificate()],
        emitted_certificate: certificate,
        ..Default::default()
    })])
}

fn refresh_certificate() -> ProofRequest {
    ProofRequest {
        kind: Kind::RefreshCertificate as i32,
    }
}
