//! `metroctl takeownership`: AAA.Escrow with the owner key, saving the owner certificate.

use proto::api::aaa_client::AaaClient;
use proto::api::escrow_from_client::Parameters;
use proto::api::escrow_from_server::proof_request::Kind as ProofKind;
use proto::api::{EscrowFromClient, EscrowFromServer};
use tonic::{Code, Status};

use super::Env;
use crate::config::{OWNER_CERT_FILE, OWNER_KEY_FILE};
use crate::error::{Error, Result};
use crate::model::fingerprint;

/// The identity upstream's Escrow issues certificates for.
const OWNER_IDENTITY: &str = "owner";

pub async fn run(env: &Env) -> Result<()> {
    let cfg = &env.ctx.cfg;
    let key = cfg.require_owner_key()?;
    let public_key = key.public_key();
    let session = env.ctx.ephemeral_session(key.clone()).await?;

    let result = session
        .call_status(move |channel| async move {
            let request = EscrowFromClient {
                parameters: Some(Parameters {
                    requested_identity_name: OWNER_IDENTITY.to_string(),
                    public_key: public_key.as_ref().to_vec(),
                }),
                proofs: None,
            };
            let mut responses = AaaClient::new(channel)
                .escrow(tokio_stream::iter([request]))
                .await?
                .into_inner();
            let mut last = None;
            while let Some(response) = responses.message().await? {
                if !response.emitted_certificate.is_empty() {
                    return Ok(Outcome::Certificate(response.emitted_certificate));
                }
                last = Some(response);
            }
            Ok(Outcome::NoCertificate(last))
        })
        .await?;

    let key_path = cfg.path(OWNER_KEY_FILE).display().to_string();
    let cert = match result {
        Ok(Outcome::Certificate(cert)) => cert,
        Ok(Outcome::NoCertificate(last)) => return Err(no_certificate(last.as_ref())),
        Err(status) => return Err(escrow_error(&status, &key_path)),
    };

    // Check what we got before saving it: a certificate for our key, issued by the pinned CA.
    identity::verify::verify_user_cert(&cert, session.ca()).map_err(|e| {
        Error::untrusted(format!(
            "the cluster returned an owner certificate that does not chain to its CA: {e}"
        ))
    })?;
    let cert_key = identity::verify::cert_public_key(&cert)
        .map_err(|e| Error::refused(format!("the cluster returned a broken certificate: {e}")))?;
    if cert_key != key.public_key() {
        return Err(Error::refused(
            "the cluster returned an owner certificate for another key",
        ));
    }
    let again = cfg.owner_cert()?.is_some();
    cfg.save_owner_cert(&cert)?;
    cfg.save_owner_pkcs8_key(&key)?;
    // Later commands work without --endpoints.
    cfg.save_endpoints(session.endpoints())?;
    let verb = if again { "refreshed" } else { "saved" };
    println!(
        "Took ownership of the cluster {}: owner certificate {verb} in {}.",
        fingerprint(session.ca()),
        cfg.path(OWNER_CERT_FILE).display()
    );
    println!(
        "Next: metroctl --config {} node describe",
        cfg.dir().display()
    );
    Ok(())
}

/// How an Escrow stream ended.
enum Outcome {
    Certificate(Vec<u8>),
    NoCertificate(Option<EscrowFromServer>),
}

fn no_certificate(last: Option<&EscrowFromServer>) -> Error {
    let needed: Vec<String> = last
        .map(|r| {
            r.needed
                .iter()
                .map(|p| {
                    ProofKind::try_from(p.kind)
                        .map(|k| k.as_str_name().to_string())
                        .unwrap_or_else(|_| p.kind.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    if needed.is_empty() {
        Error::refused("the cluster ended the escrow without issuing an owner certificate")
    } else {
        Error::refused(format!(
            "the cluster wants proofs metroctl cannot give ({}); no owner certificate was issued",
            needed.join(", ")
        ))
    }
}

/// Escrow's status codes as advice.
fn escrow_error(status: &Status, key_path: &str) -> Error {
    match status.code() {
        Code::PermissionDenied => Error::refused(format!(
            "not the owner key of this cluster: {key_path} is not the key the cluster was \
             bootstrapped with ({}). Use the config directory that holds the right \
             owner-key.pem.",
            status.message()
        )),
        Code::FailedPrecondition => Error::refused(format!(
            "the cluster has no initial owner key, so nobody can take ownership of it: {}",
            status.message()
        )),
        Code::Unauthenticated => Error::refused(format!(
            "the cluster did not see the self-signed owner-key certificate: {}",
            status.message()
        )),
        _ => Error::from_status("taking ownership", status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use proto::api::escrow_from_server::ProofRequest;

    #[test]
    fn wrong_key_reads_as_advice() {
        let e = escrow_error(
            &Status::permission_denied("key mismatch"),
            "/c/owner-key.pem",
        );
        assert_eq!(e.kind, Kind::Refused);
        assert!(
            e.message.starts_with("not the owner key of this cluster"),
            "{}",
            e.message
        );
        assert!(e.message.contains("/c/owner-key.pem"));
    }

    #[test]
    fn unreachable_stays_unreachable() {
        let e = escrow_error(&Status::unavailable("no leader"), "k");
        assert_eq!(e.kind, Kind::Unreachable);
    }

    #[test]
    fn missing_certificate_names_the_proofs() {
        let r = EscrowFromServer {
            needed: vec![ProofRequest {
                kind: ProofKind::PlaintextPassword as i32,
            }],
            fulfilled: vec![],
            emitted_certificate: vec![],
        };
        assert!(
            no_certificate(Some(&r))
                .message
                .contains("KIND_PLAINTEXT_PASSWORD")
        );
        assert!(no_certificate(None).message.contains("without issuing"));
    }
}
