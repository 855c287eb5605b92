//! Taking ownership of a freshly bootstrapped cluster: `AAA.Escrow` with the owner key (what
//! `metroctl takeownership` does), then fetching the cluster CA.
//!
//! Before ownership is taken we hold no certificate and know no CA, so this first contact is
//! trust-on-first-use: the connection does not verify the server. It is acceptable here
//! because the launcher itself started the node at that loopback address a moment ago; the
//! answer is then checked for consistency (the CA is a sane CA and the owner certificate it
//! issued chains to it for the identity `owner`), and every later connection verifies the
//! server's node certificate against that CA.

use std::time::Duration;

use identity::SigningKey;
use proto::api::aaa_client::AaaClient;
use proto::api::escrow_from_client::Parameters;
use proto::api::management_client::ManagementClient;
use proto::api::{EscrowFromClient, GetClusterInfoRequest};
use proto::curator_api::GetCaCertificateRequest;
use proto::curator_api::curator_local_client::CuratorLocalClient;
use rpc::client_tls;
use rpc::{Backoff, ClientCredentials, RetryPolicy, ServerVerification};
use tonic::{Code, Status};

use crate::error::{Error, Result};

/// The identity the owner certificate is issued for.
pub const OWNER_IDENTITY: &str = "owner";
/// How long one escrow attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts while the curator is not serving yet.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What taking ownership yields.
#[derive(Debug, Clone)]
pub struct Ownership {
    /// The owner certificate (DER), CN `owner`, ClientAuth.
    pub owner_certificate: Vec<u8>,
    /// The cluster CA certificate (DER).
    pub ca_certificate: Vec<u8>,
}

enum Attempt {
    /// Worth trying again (curator not up yet, not the leader yet, connection refused, …).
    Retry(String),
    /// A definite refusal or an inconsistent answer.
    Fatal(Error),
}

/// Escrows the owner certificate from the curator at `endpoint` (`host:port`), retrying while
/// it is not serving yet, for at most `timeout`, with the project's one retry loop
/// ([`rpc::retry::retry`]): a refusal to retry becomes a transient Unavailable, a definite refusal is
/// kept aside and returned as is.
pub async fn take_ownership(
    endpoint: &str,
    owner: &SigningKey,
    timeout: Duration,
) -> Result<Ownership> {
    let policy = RetryPolicy::default()
        .with_backoff(Backoff::new(RETRY_PAUSE, RETRY_PAUSE))
        .with_attempt_timeout(Some(ATTEMPT_TIMEOUT))
        .with_deadline(Some(timeout));
    let fatal = std::sync::Mutex::new(None);
    let result = rpc::retry::retry(&policy, || async {
        match attempt(endpoint, owner).await {
            Ok(ownership) => Ok(ownership),
            Err(Attempt::Retry(why)) => {
                tracing::debug!("escrow at {endpoint} not possible yet: {why}");
                Err(Status::unavailable(why))
            }
            Err(Attempt::Fatal(e)) => {
                *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Err(Status::failed_precondition("definite refusal"))
            }
        }
    })
    .await;
    result.map_err(
        |last| match fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => e,
            None => Error::Timeout {
                what: format!("taking ownership (AAA.Escrow at {endpoint})"),
                after: timeout,
                last: last.message().to_string(),
            },
        },
    )
}

fn classify(what: &str, status: Status) -> Attempt {
    match status.code() {
        // A definite "no": retrying cannot change these.
        Code::PermissionDenied | Code::InvalidArgument | Code::Unauthenticated => {
            Attempt::Fatal(Error::rpc(what, &status))
        }
        // Unavailable/Unimplemented: no leader yet or a follower; FailedPrecondition: the
        // initial owner is not written yet by a node still bootstrapping.
        _ => Attempt::Retry(format!("{what}: {:?}: {}", status.code(), status.message())),
    }
}

async fn attempt(endpoint: &str, owner: &SigningKey) -> Result<Ownership, Attempt> {
    let client_error = |what| move |source| Attempt::Fatal(Error::Client { what, source });
    let ephemeral = client_tls::client_config(
        &ClientCredentials::Ephemeral(owner.clone()),
        ServerVerification::Insecure,
    )
    .map_err(client_error("configuring the escrow client"))?;
    let channel = client_tls::connect(endpoint, ephemeral)
        .await
        .map_err(|e| Attempt::Retry(format!("connecting to {endpoint}: {e}")))?;

    let request = EscrowFromClient {
        parameters: Some(Parameters {
            requested_identity_name: OWNER_IDENTITY.to_string(),
            public_key: owner.public_key().as_bytes().to_vec(),
        }),
        proofs: None,
    };
    let mut responses = AaaClient::new(channel.clone())
        .escrow(futures::stream::iter([request]))
        .await
        .map_err(|s| classify("AAA.Escrow", s))?
        .into_inner();
    let owner_certificate = loop {
        match responses
            .message()
            .await
            .map_err(|s| classify("AAA.Escrow", s))?
        {
            Some(m) if !m.emitted_certificate.is_empty() => break m.emitted_certificate,
            // "needed" proofs: the server ends the stream with the reason next.
            Some(_) => continue,
            None => {
                return Err(Attempt::Retry(
                    "AAA.Escrow ended without a certificate".into(),
                ));
            }
        }
    };

    let ca_certificate = match CuratorLocalClient::new(channel)
        .get_ca_certificate(GetCaCertificateRequest {})
        .await
    {
        Ok(response) => response.into_inner().identity_ca_certificate,
        // A curator without this RPC (later upstream Monogon, not in the 8456ddf0 baseline): ask
        // GetClusterInfo with the new certificate.
        Err(status) if status.code() == Code::Unimplemented => {
            let creds = ClientCredentials::Authenticated {
                certificate: owner_certificate.clone(),
                key: owner.clone(),
            };
            let config = client_tls::client_config(&creds, ServerVerification::Insecure)
                .map_err(client_error("configuring the owner client"))?;
            let channel = client_tls::connect(endpoint, config)
                .await
                .map_err(|e| Attempt::Retry(format!("connecting to {endpoint}: {e}")))?;
            ManagementClient::new(channel)
                .get_cluster_info(GetClusterInfoRequest {})
                .await
                .map_err(|s| classify("GetClusterInfo", s))?
                .into_inner()
                .ca_certificate
        }
        Err(status) => return Err(classify("CuratorLocal.GetCACertificate", status)),
    };

    let inconsistent = |what| move |source| Attempt::Fatal(Error::Identity { what, source });
    identity::verify::check_ca(&ca_certificate)
        .map_err(inconsistent("the cluster CA is not a CA"))?;
    let name = identity::verify::verify_user_cert(&owner_certificate, &ca_certificate).map_err(
        inconsistent("the owner certificate does not chain to the cluster CA"),
    )?;
    let key = identity::verify::cert_public_key(&owner_certificate)
        .map_err(inconsistent("reading the owner certificate"))?;
    if name != OWNER_IDENTITY || key != owner.public_key() {
        return Err(Attempt::Fatal(Error::Invalid(format!(
            "the cluster issued a certificate for {name:?}/{key}, expected {OWNER_IDENTITY:?}/{}",
            owner.public_key()
        ))));
    }
    Ok(Ownership {
        owner_certificate,
        ca_certificate,
    })
}
