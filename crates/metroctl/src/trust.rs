//! Trust on first use of the cluster CA, and the loud refusal when it changes.
//!
//! The first contact with a cluster fetches its CA certificate over an *unverified*
//! connection (CuratorLocal.GetCACertificate), shows its fingerprint and pins it in `ca.pem`
//! once accepted: silently if our owner certificate is signed by it (we already trust that
//! cluster), with `--accept-ca-fingerprint` if the fingerprint matches, with
//! `--insecure-accept-any-ca`, or after the user typed `yes` at upstream's prompt. From then
//! on every connection verifies the cluster against the pinned CA (rpc's node-certificate
//! check). A cluster with another CA then fails every handshake; [`spawn_pin_check`] finds
//! out why, so metroctl can say so plainly instead of "no leader found".

use std::io::IsTerminal;
use std::time::Duration;

use proto::curator_api::GetCaCertificateRequest;
use proto::curator_api::curator_local_client::CuratorLocalClient;
use rpc::client_tls::{self, ClientCredentials, ServerVerification};
use tokio::sync::watch;
use tonic::Code;

use crate::config::{CA_FILE, ConfigDir, OWNER_CERT_FILE};
use crate::error::{Error, Result};
use crate::model::{fingerprint, normalize_fingerprint};
use crate::prompt;

/// Per endpoint: how long connecting plus GetCACertificate may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How the user lets a first contact pin a CA without the prompt.
#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    /// Accept the CA if it has this fingerprint.
    pub accept_fingerprint: Option<String>,
    /// Accept any CA.
    pub accept_any: bool,
}

/// The pinned CA (DER); on first contact fetches it, asks (or checks the options) and pins it.
pub async fn ensure_pinned(
    cfg: &ConfigDir,
    endpoints: &[String],
    owner_cert: Option<&[u8]>,
    options: &TrustOptions,
) -> Result<Vec<u8>> {
    if let Some(ca) = cfg.ca()? {
        return Ok(ca);
    }
    let (endpoint, ca) = fetch_ca(endpoints).await?;
    identity::verify::check_ca(&ca).map_err(|e| {
        Error::untrusted(format!(
            "the cluster at {endpoint} presented a CA certificate that is not usable: {e}"
        ))
    })?;
    decide(&ca, &endpoint_list(endpoints), owner_cert, options)?;
    cfg.save_ca(&ca)?;
    eprintln!(
        "Pinned the cluster CA {} in {}.",
        fingerprint(&ca),
        cfg.path(CA_FILE).display()
    );
    Ok(ca)
}

fn endpoint_list(endpoints: &[String]) -> String {
    endpoints.join(", ")
}

/// Whether to pin `ca`; Err(Untrusted) if not.
fn decide(
    ca: &[u8],
    endpoints: &str,
    owner_cert: Option<&[u8]>,
    options: &TrustOptions,
) -> Result<()> {
    let fp = fingerprint(ca);
    // Our owner certificate was issued by this CA: it is the cluster we already own.
    if owner_cert.is_some_and(|cert| identity::verify::check_in_cluster(cert, ca).is_ok()) {
        return Ok(());
    }
    if let Some(want) = &options.accept_fingerprint {
        if normalize_fingerprint(want) == fp {
            return Ok(());
        }
        return Err(Error::untrusted(format!(
            "the cluster at {endpoints} presented the CA {fp}, not the expected {}: refusing to \
             pin it. Check that --endpoints names the cluster you mean.",
            want.trim()
        )));
    }
    if options.accept_any {
        eprintln!(
            "warning: pinning the cluster CA {fp} without verification \
             (--insecure-accept-any-ca)"
        );
        return Ok(());
    }
    if !prompt::is_interactive() {
        return Err(Error::untrusted(format!(
            "the authenticity of the cluster at {endpoints} can't be established, and there is \
             no terminal to ask. Its CA fingerprint is {fp}. If that is your cluster's, run \
             again with --accept-ca-fingerprint {fp}."
        )));
    }
    let question = format!(
        "The authenticity of the cluster at endpoints {endpoints} can't be established.\n\
         ED25519 key fingerprint of the cluster CA is {fp}.\n\
         Are you sure you want to continue connecting"
    );
    if prompt::ask_yes_no(&question)? {
        Ok(())
    } else {
        Err(Error::untrusted(
            "the cluster CA was not accepted; nothing was pinned",
        ))
    }
}

/// Fetches the CA certificate from the first endpoint that answers, without verifying the
/// server (that is the point: we do not know its CA yet). No client certificate is sent: the
/// call needs none, and a server refuses the handshake of a certificate issued by another
/// cluster's CA, which is exactly the case [`spawn_pin_check`] must diagnose.
pub async fn fetch_ca(endpoints: &[String]) -> Result<(String, Vec<u8>)> {
    let config = client_tls::client_config(&ClientCredentials::None, ServerVerification::Insecure)
        .map_err(|e| Error::local(format!("building the TLS configuration: {e}")))?;
    let mut failures = Vec::new();
    for endpoint in endpoints {
        let attempt = async {
            let channel = client_tls::connect(endpoint, config.clone())
                .await
                .map_err(|e| FetchFailure::Connect(error_chain(&e)))?;
            let response = CuratorLocalClient::new(channel)
                .get_ca_certificate(GetCaCertificateRequest {})
                .await
                .map_err(FetchFailure::Call)?;
            Ok::<_, FetchFailure>(response.into_inner().identity_ca_certificate)
        };
        match tokio::time::timeout(FETCH_TIMEOUT, attempt).await {
            Ok(Ok(ca)) if !ca.is_empty() => return Ok((endpoint.clone(), ca)),
            Ok(Ok(_)) => failures.push(format!("{endpoint}: answered with an empty CA")),
            Ok(Err(FetchFailure::Call(status))) if status.code() == Code::Unimplemented => {
                return Err(Error::refused(format!(
                    "the cluster at {endpoint} does not serve CuratorLocal.GetCACertificate, so \
                     its CA cannot be fetched; put the cluster CA certificate (PEM) into ca.pem \
                     of the config directory yourself"
                )));
            }
            Ok(Err(FetchFailure::Call(status))) => {
                failures.push(format!("{endpoint}: {}", status.message()))
            }
            Ok(Err(FetchFailure::Connect(e))) => failures.push(format!("{endpoint}: {e}")),
            Err(_) => failures.push(format!("{endpoint}: no answer within {FETCH_TIMEOUT:?}")),
        }
    }
    Err(Error::unreachable(format!(
        "cannot reach the cluster: {}\nCheck that --endpoints names a running node of the cluster.",
        failures.join("; ")
    )))
}

enum FetchFailure {
    Connect(String),
    Call(tonic::Status),
}

/// Starts comparing the CA the cluster presents with the pinned one, in the background. The
/// receiver turns to `Some(error)` only on a mismatch; if the check cannot run, it stays
/// `None` and the real calls report what is wrong.
pub fn spawn_pin_check(
    cfg: &ConfigDir,
    endpoints: Vec<String>,
    pinned: Vec<u8>,
) -> watch::Receiver<Option<Error>> {
    let (tx, rx) = watch::channel(None);
    let ca_path = cfg.path(CA_FILE);
    let owner_path = cfg.path(OWNER_CERT_FILE);
    tokio::spawn(async move {
        if let Ok((endpoint, presented)) = fetch_ca(&endpoints).await
            && presented != pinned
        {
            let _ = tx.send(Some(Error::untrusted(mismatch_message(
                &endpoint,
                &pinned,
                &presented,
                &ca_path.display().to_string(),
                &owner_path.display().to_string(),
            ))));
        }
        // Keep the sender until nobody listens, so a receiver never mistakes "checked, fine"
        // for a closed channel it must handle.
        tx.closed().await;
    });
    rx
}

/// The loud refusal when the cluster's CA is not the pinned one.
pub fn mismatch_message(
    endpoint: &str,
    pinned: &[u8],
    presented: &[u8],
    ca_path: &str,
    owner_path: &str,
) -> String {
    format!(
        "@@@ THE CLUSTER AT {endpoint} IS NOT THE CLUSTER THIS CONFIG TRUSTS @@@\n\
         \x20 pinned CA:    {} ({ca_path})\n\
         \x20 presented CA: {}\n\
         It is a different cluster, or someone is impersonating yours: refusing to talk to it.\n\
         If the change is intended (the cluster was re-created, or you meant another cluster), \
         delete {ca_path} and {owner_path} (they belong to the old cluster), or use another \
         --config directory.",
        fingerprint(pinned),
        fingerprint(presented),
    )
}

pub use rpc::error::error_chain;

/// Whether stdin is a terminal (for callers that want to know before asking).
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_and_owner() -> (Vec<u8>, Vec<u8>) {
        let ca_key = identity::SigningKey::generate().expect("key");
        let ca = identity::templates::cluster_ca(&ca_key).expect("ca");
        let owner = identity::SigningKey::generate().expect("key");
        let cert = identity::templates::user_cert(&ca_key, &ca, &owner.public_key(), "owner")
            .expect("owner cert");
        (ca, cert)
    }

    #[test]
    fn owner_certificate_of_the_cluster_is_accepted_silently() {
        let (ca, owner) = ca_and_owner();
        decide(&ca, "e", Some(&owner), &TrustOptions::default()).expect("accepted");
    }

    #[test]
    fn matching_fingerprint_is_accepted_and_other_refused() {
        let (ca, _) = ca_and_owner();
        let good = TrustOptions {
            accept_fingerprint: Some(fingerprint(&ca).to_uppercase().replace("SHA256:", "")),
            accept_any: false,
        };
        decide(&ca, "e", None, &good).expect("accepted");
        let bad = TrustOptions {
            accept_fingerprint: Some("SHA256:00".to_string()),
            accept_any: false,
        };
        let e = decide(&ca, "e", None, &bad).expect_err("refused");
        assert_eq!(e.kind, crate::error::Kind::Untrusted);
        assert!(e.message.contains(&fingerprint(&ca)), "{}", e.message);
    }

    #[test]
    fn owner_certificate_of_another_cluster_does_not_help() {
        let (ca, _) = ca_and_owner();
        let (_, foreign_owner) = ca_and_owner();
        // No terminal in tests: the refusal names the fingerprint and the flag.
        if prompt::is_interactive() {
            return;
        }
        let e =
            decide(&ca, "e", Some(&foreign_owner), &TrustOptions::default()).expect_err("refused");
        assert!(
            e.message.contains("--accept-ca-fingerprint"),
            "{}",
            e.message
        );
    }

    #[test]
    fn mismatch_names_both_fingerprints_and_the_file() {
        let m = mismatch_message("10.0.0.1:7835", b"one", b"two", "/c/ca.pem", "/c/owner.pem");
        assert!(m.contains(&fingerprint(b"one")));
        assert!(m.contains(&fingerprint(b"two")));
        assert!(m.contains("delete /c/ca.pem"));
        assert!(m.contains("IS NOT THE CLUSTER"));
    }
}
