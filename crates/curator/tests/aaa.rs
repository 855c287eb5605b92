//! AAA.Escrow (taking ownership): the owner certificate is issued once and returned again,
//! and every refusal of Escrow with its code.

mod curator_support;

use curator::state::cluster::INITIAL_OWNER_KEY;
use curator::testing::TestLeader;
use curator_support::*;
use identity::{PublicKey, SigningKey};
use proto::api::aaa_client::AaaClient;
use proto::api::escrow_from_client::Parameters;
use proto::api::escrow_from_server::proof_request::Kind;
use proto::api::{EscrowFromClient, EscrowFromServer};
use rpc::ClientCredentials;
use tonic::transport::Channel;
use tonic::{Code, Status};

fn params(identity: &str, key: &[u8]) -> EscrowFromClient {
    EscrowFromClient {
        parameters: Some(Parameters {
            requested_identity_name: identity.to_string(),
            public_key: key.to_vec(),
        }),
        proofs: None,
    }
}

fn owner_params(key: &PublicKey) -> EscrowFromClient {
    params("owner", key.as_bytes())
}

/// Runs one escrow with `messages`: the server's messages up to the end of the stream, and
/// the status it ended with (None for OK).
async fn escrow(
    ch: Channel,
    messages: Vec<EscrowFromClient>,
) -> (Vec<EscrowFromServer>, Option<Status>) {
    let mut client = AaaClient::new(ch);
    let mut replies = match client.escrow(futures::stream::iter(messages)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut got = Vec::new();
    loop {
        match next(&mut replies).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => return (got, None),
            Err(e) => return (got, Some(e)),
        }
    }
}

/// The code an escrow ended with.
async fn escrow_code(ch: Channel, messages: Vec<EscrowFromClient>) -> Code {
    escrow(ch, messages).await.1.map_or(Code::Ok, |s| s.code())
}

/// A successful escrow's certificate.
async fn take_ownership(t: &TestLeader, key: &SigningKey) -> Vec<u8> {
    let (replies, status) = escrow(t.ephemeral(key), vec![owner_params(&key.public_key())]).await;
    assert!(status.is_none(), "escrow failed: {status:?}");
    assert_eq!(replies.len(), 1);
    let reply = &replies[0];
    assert!(reply.needed.is_empty());
    assert_eq!(
        reply.fulfilled.iter().map(|p| p.kind).collect::<Vec<_>>(),
        vec![Kind::RefreshCertificate as i32]
    );
    reply.emitted_certificate.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escrow_issues_the_owner_certificate() {
    let t = TestLeader::start().await;
    let cert = take_ownership(&t, &t.owner_key).await;
    assert_eq!(
        identity::verify::verify_user_cert(&cert, &t.ca).expect("a user certificate"),
        "owner"
    );
    assert_eq!(
        identity::verify::cert_public_key(&cert).expect("key"),
        t.owner_key.public_key()
    );
    // Repeatable: the same certificate again.
    assert_eq!(take_ownership(&t, &t.owner_key).await, cert);

    // The certificate works for Management.
    let owner = t.channel(ClientCredentials::Authenticated {
        certificate: cert,
        key: t.owner_key.clone(),
    });
    management(owner)
        .get_register_ticket(proto::api::GetRegisterTicketRequest {})
        .await
        .expect("owner can manage");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escrow_refusals() {
    let t = TestLeader::start().await;
    let owner = t.owner_key.public_key();
    let eph = || t.ephemeral(&t.owner_key);

    // Parameters missing (or no message at all).
    assert_eq!(
        escrow_code(eph(), vec![EscrowFromClient::default()]).await,
        Code::InvalidArgument
    );
    assert_eq!(escrow_code(eph(), vec![]).await, Code::InvalidArgument);
    // Another identity.
    assert_eq!(
        escrow_code(eph(), vec![params("admin", owner.as_bytes())]).await,
        Code::Unimplemented
    );
    // Bad key length.
    assert_eq!(
        escrow_code(eph(), vec![params("owner", &owner.as_bytes()[..31])]).await,
        Code::InvalidArgument
    );

    // No certificate: told what is needed, then Unauthenticated.
    let (replies, status) = escrow(
        t.channel(ClientCredentials::None),
        vec![owner_params(&owner)],
    )
    .await;
    assert_eq!(status.map(|s| s.code()), Some(Code::Unauthenticated));
    assert_eq!(replies.len(), 1);
    assert_eq!(
        replies[0].needed.iter().map(|p| p.kind).collect::<Vec<_>>(),
        vec![Kind::RefreshCertificate as i32]
    );
    assert!(replies[0].emitted_certificate.is_empty());
    // A cluster certificate is not a self-signed one either.
    let (replies, status) = escrow(t.owner().await, vec![owner_params(&owner)]).await;
    assert_eq!(
        (replies.len(), status.map(|s| s.code())),
        (1, Some(Code::Unauthenticated))
    );

    // Connected with one key, asking for another.
    let stranger = key();
    assert_eq!(
        escrow_code(t.ephemeral(&stranger), vec![owner_params(&owner)]).await,
        Code::Unimplemented
    );
    // Not the owner's key.
    assert_eq!(
        escrow_code(
            t.ephemeral(&stranger),
            vec![owner_params(&stranger.public_key())]
        )
        .await,
        Code::PermissionDenied
    );

    // No initial owner recorded.
    t.leader
        .ns()
        .delete(INITIAL_OWNER_KEY, None)
        .await
        .expect("delete initial owner");
    assert_eq!(
        escrow_code(eph(), vec![owner_params(&owner)]).await,
        Code::FailedPrecondition
    );
    t.stop().await;
}
