//! `metroctl cluster info | ticket | node-params | bootstrap-params`.

use std::path::Path;

use prost::Message;
use proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use proto::api::{GetClusterInfoResponse, NodeParameters};
use proto::common::cluster_configuration::{StorageSecurityPolicy, TpmMode};
use proto::common::node_labels::Pair;
use proto::common::{ClusterConfiguration, ClusterDirectory, NodeLabels};
use serde_json::Value;

use super::Env;
use crate::cli::{StoragePolicy, TpmMode as TpmFlag};
use crate::config::OWNER_KEY_FILE;
use crate::error::{Error, Result};
use crate::model::fingerprint;
use crate::output::{render_doc, table};
use crate::session::Session;
use crate::yaml::Doc;

/// `cluster info`.
pub async fn info(env: &Env) -> Result<()> {
    let session = env.ctx.owner_session().await?;
    let info = cluster_info(&session).await?;
    let leader = session.leader();
    let config = info.cluster_configuration.clone().unwrap_or_default();
    let directory = directory_entries(info.cluster_directory.as_ref());
    let doc = Doc::map([
        (
            "ca_fingerprint",
            Doc::str(fingerprint(&info.ca_certificate)),
        ),
        (
            "leader",
            leader.as_ref().map_or(Doc::Scalar(Value::Null), |l| {
                Doc::map([
                    ("id", Doc::str(&l.node_id)),
                    ("endpoint", Doc::str(&l.endpoint)),
                ])
            }),
        ),
        ("tpm_mode", Doc::str(tpm_mode_name(config.tpm_mode))),
        (
            "storage_security_policy",
            Doc::str(storage_policy_name(config.storage_security_policy)),
        ),
        (
            "directory",
            Doc::Seq(
                directory
                    .iter()
                    .map(|(id, addrs)| {
                        Doc::map([
                            ("id", Doc::str(id)),
                            ("addresses", Doc::Seq(addrs.iter().map(Doc::str).collect())),
                        ])
                    })
                    .collect(),
            ),
        ),
    ]);
    let text = render_doc(env.format, &doc, || {
        let mut s = String::new();
        s.push_str(&format!(
            "Cluster CA:        {}\n",
            fingerprint(&info.ca_certificate)
        ));
        if let Some(l) = &leader {
            s.push_str(&format!(
                "Curator leader:    {} ({})\n",
                l.node_id, l.endpoint
            ));
        }
        s.push_str(&format!(
            "TPM mode:          {}\n",
            tpm_mode_name(config.tpm_mode)
        ));
        s.push_str(&format!(
            "Storage security:  {}\n\nCluster directory (nodes new nodes contact):\n",
            storage_policy_name(config.storage_security_policy)
        ));
        let rows: Vec<Vec<String>> = directory
            .iter()
            .map(|(id, addrs)| vec![id.clone(), addrs.join(",")])
            .collect();
        s.push_str(&table(&["NODE ID", "ADDRESSES"], &rows));
        s
    });
    env.output.write_document(&text)
}

async fn cluster_info(session: &Session) -> Result<GetClusterInfoResponse> {
    session
        .api(
            "reading the cluster info",
            session.management().cluster_info(),
        )
        .await
}

/// `(node ID, addresses)` of each directory entry (ID from the `id` field later upstream Monogon
/// added, else derived from the baseline's public key).
fn directory_entries(dir: Option<&ClusterDirectory>) -> Vec<(String, Vec<String>)> {
    dir.map(|d| {
        d.nodes
            .iter()
            .map(|n| {
                let id = if !n.id.is_empty() {
                    n.id.clone()
                } else {
                    identity::PublicKey::from_slice(&n.public_key)
                        .map(|k| k.node_id())
                        .unwrap_or_else(|_| "(unknown)".to_string())
                };
                (id, n.addresses.iter().map(|a| a.host.clone()).collect())
            })
            .collect()
    })
    .unwrap_or_default()
}

fn tpm_mode_name(v: i32) -> String {
    TpmMode::try_from(v)
        .map(|m| m.as_str_name().trim_start_matches("TPM_MODE_").to_string())
        .unwrap_or_else(|_| format!("UNKNOWN({v})"))
}

fn storage_policy_name(v: i32) -> String {
    StorageSecurityPolicy::try_from(v)
        .map(|m| {
            m.as_str_name()
                .trim_start_matches("STORAGE_SECURITY_POLICY_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("UNKNOWN({v})"))
}

/// `cluster ticket [--rotate]`.
pub async fn ticket(env: &Env, rotate: bool) -> Result<()> {
    let session = env.ctx.owner_session().await?;
    let ticket = if rotate {
        session
            .api(
                "rotating the register ticket",
                session.management().rotate_register_ticket(),
            )
            .await?
    } else {
        register_ticket(&session).await?
    };
    let hex = hex::encode(&ticket);
    let doc = Doc::map([("ticket", Doc::str(&hex))]);
    env.output
        .write_document(&render_doc(env.format, &doc, || format!("{hex}\n")))?;
    if rotate {
        eprintln!(
            "The register ticket was replaced. Nodes that have not registered yet need new \
             parameters: metroctl cluster node-params <file>"
        );
    }
    Ok(())
}

async fn register_ticket(session: &Session) -> Result<Vec<u8>> {
    session
        .api(
            "reading the register ticket",
            session.management().register_ticket(),
        )
        .await
}

/// `cluster node-params FILE`.
pub async fn node_params(env: &Env, file: &Path, labels: &[String]) -> Result<()> {
    let labels = parse_labels(labels)?;
    let session = env.ctx.owner_session().await?;
    let info = cluster_info(&session).await?;
    let ticket = register_ticket(&session).await?;
    let directory = info.cluster_directory.unwrap_or_default();
    if directory.nodes.iter().all(|n| n.addresses.is_empty()) {
        return Err(Error::refused(
            "the cluster directory lists no node with an address yet, so a new node could not \
             find the cluster; wait until the nodes have reported their addresses",
        ));
    }
    let count = directory.nodes.len();
    let params = NodeParameters {
        cluster: Some(Cluster::ClusterRegister(ClusterRegister {
            cluster_directory: Some(directory),
            register_ticket: ticket,
            ca_certificate: info.ca_certificate.clone(),
            labels,
        })),
        network_config: None,
    };
    // The ticket is in there: owner-only, like a key.
    write_private(file, &params.encode_to_vec())?;
    eprintln!(
        "Wrote the parameters to register into cluster {} ({count} directory nodes) to {}.\n\
         Start the new node with them, then approve it: metroctl approve",
        fingerprint(&info.ca_certificate),
        file.display()
    );
    Ok(())
}

/// `cluster bootstrap-params FILE`.
pub fn bootstrap_params(
    env: &Env,
    file: &Path,
    tpm_mode: Option<TpmFlag>,
    storage: Option<StoragePolicy>,
) -> Result<()> {
    let cfg = &env.ctx.cfg;
    let (key, created) = cfg.owner_key_or_create()?;
    if created {
        eprintln!(
            "Created a new owner key in {} (keep it safe: it is the only way to take ownership).",
            cfg.path(OWNER_KEY_FILE).display()
        );
    }
    let initial = (tpm_mode.is_some() || storage.is_some()).then(|| ClusterConfiguration {
        tpm_mode: tpm_mode.map_or(TpmMode::Required, tpm_mode_value) as i32,
        storage_security_policy: storage.map_or(
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication,
            storage_value,
        ) as i32,
        ..Default::default()
    });
    let params = NodeParameters {
        cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
            owner_public_key: key.public_key().as_ref().to_vec(),
            initial_cluster_configuration: initial,
            labels: None,
        })),
        network_config: None,
    };
    write_private(file, &params.encode_to_vec())?;
    eprintln!(
        "Wrote bootstrap parameters for a cluster owned by {} to {}.\n\
         Start the first node with them, then: metroctl --config {} --endpoints <its address> \
         takeownership",
        cfg.path(OWNER_KEY_FILE).display(),
        file.display(),
        cfg.dir().display()
    );
    Ok(())
}

fn tpm_mode_value(m: TpmFlag) -> TpmMode {
    match m {
        TpmFlag::Required => TpmMode::Required,
        TpmFlag::BestEffort => TpmMode::BestEffort,
        TpmFlag::Disabled => TpmMode::Disabled,
    }
}

fn storage_value(p: StoragePolicy) -> StorageSecurityPolicy {
    match p {
        StoragePolicy::Permissive => StorageSecurityPolicy::Permissive,
        StoragePolicy::NeedsEncryption => StorageSecurityPolicy::NeedsEncryption,
        StoragePolicy::NeedsEncryptionAndAuthentication => {
            StorageSecurityPolicy::NeedsEncryptionAndAuthentication
        }
        StoragePolicy::NeedsInsecure => StorageSecurityPolicy::NeedsInsecure,
    }
}

/// `KEY=VALUE` labels, checked against the cluster's label rules before anything is written:
/// the cluster silently drops labels it does not accept when the node registers (the node
/// cannot fix its parameters then), so a mistake is caught here or not at all.
fn parse_labels(labels: &[String]) -> Result<Option<NodeLabels>> {
    if labels.is_empty() {
        return Ok(None);
    }
    let pairs = labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| Pair {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .ok_or_else(|| Error::usage(format!("label {l:?} is not KEY=VALUE")))
        })
        .collect::<Result<Vec<_>>>()?;
    ::labels::check_set(pairs.iter().map(|p| (p.key.as_str(), p.value.as_str()))).map_err(|e| {
        Error::usage(format!(
            "--label: {e}.\nA label key is an optional lowercase DNS name and '/' (e.g. \
             example.com/zone), then a name of 1-{max} letters, digits, '-', '_' or '.' that \
             starts and ends with a letter or digit; a value is empty or like a name; a node \
             has at most {count} labels.",
            max = ::labels::MAX_NAME_LENGTH,
            count = ::labels::MAX_LABELS_PER_NODE,
        ))
    })?;
    Ok(Some(NodeLabels { pairs }))
}

fn write_private(file: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::local(format!("creating {}: {e}", parent.display())))?;
    }
    identity::files::write_atomic(file, data, identity::files::PRIVATE_MODE)
        .map_err(|e| Error::local(format!("writing {}: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::common::cluster_directory::{Node as DirNode, node::Address};

    #[test]
    fn labels_parse() {
        let l = parse_labels(&["zone=a".into(), "empty=".into()])
            .expect("ok")
            .expect("some");
        assert_eq!(l.pairs.len(), 2);
        assert_eq!(l.pairs[1].value, "");
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
        assert_eq!(parse_labels(&[]).expect("ok"), None);
        let l = parse_labels(&["example.com/zone=a-1".into()])
            .expect("prefixed key")
            .expect("some");
        assert_eq!(l.pairs[0].key, "example.com/zone");
    }

    /// The cluster would drop these at registration; metroctl refuses them up front, naming
    /// the label and the rule.
    #[test]
    fn invalid_labels_are_refused_before_writing() {
        for (arg, names) in [
            ("Example.com/x=v", "Example.com/x"),
            ("zone=a b", "a b"),
            ("-zone=a", "-zone"),
            ("1.2.3.4/x=v", "1.2.3.4/x"),
        ] {
            let e = parse_labels(&[arg.into()]).expect_err(arg);
            assert_eq!(e.kind, crate::error::Kind::Usage, "{arg}");
            assert!(e.message.contains(names), "{arg}: {}", e.message);
            assert!(e.message.contains("DNS name"), "{arg}: {}", e.message);
        }
        let e = parse_labels(&["zone=a".into(), "zone=b".into()]).expect_err("duplicate");
        assert!(e.message.contains("given twice"), "{}", e.message);
        let many: Vec<String> = (0..=::labels::MAX_LABELS_PER_NODE)
            .map(|i| format!("k{i}=v"))
            .collect();
        let e = parse_labels(&many).expect_err("too many");
        assert!(e.message.contains("at most"), "{}", e.message);
    }

    #[test]
    fn directory_ids_from_id_or_key() {
        let key = identity::PublicKey::from_bytes([3; 32]);
        let dir = ClusterDirectory {
            nodes: vec![
                DirNode {
                    public_key: key.as_ref().to_vec(),
                    addresses: vec![Address {
                        host: "10.0.0.1".into(),
                    }],
                    id: String::new(),
                },
                DirNode {
                    public_key: vec![],
                    addresses: vec![],
                    id: "metropolis-x".into(),
                },
            ],
        };
        let entries = directory_entries(Some(&dir));
        assert_eq!(entries[0], (key.node_id(), vec!["10.0.0.1".to_string()]));
        assert_eq!(entries[1].0, "metropolis-x");
    }

    #[test]
    fn policy_names_lose_prefixes() {
        assert_eq!(tpm_mode_name(TpmMode::BestEffort as i32), "BEST_EFFORT");
        assert_eq!(
            storage_policy_name(StorageSecurityPolicy::NeedsInsecure as i32),
            "NEEDS_INSECURE"
        );
        assert_eq!(tpm_mode_name(42), "UNKNOWN(42)");
    }

    #[test]
    fn bootstrap_parameters_carry_the_owner_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::config::ConfigDir::locate(Some(dir.path().join("cfg"))).expect("cfg");
        let ctx = crate::session::Context::new(
            cfg.clone(),
            &[],
            Default::default(),
            std::time::Duration::from_secs(1),
        )
        .expect("ctx");
        let env = Env {
            ctx,
            format: crate::cli::Format::Table,
            output: crate::output::Output::new(None),
        };
        let file = dir.path().join("esp/metropolis/parameters.pb");
        bootstrap_params(
            &env,
            &file,
            Some(TpmFlag::Disabled),
            Some(StoragePolicy::Permissive),
        )
        .expect("written");
        let params = NodeParameters::decode(std::fs::read(&file).expect("read").as_slice())
            .expect("decodes");
        let key = cfg.owner_key().expect("read").expect("created");
        match params.cluster {
            Some(Cluster::ClusterBootstrap(b)) => {
                assert_eq!(b.owner_public_key, key.public_key().as_ref().to_vec());
                let c = b.initial_cluster_configuration.expect("config");
                assert_eq!(c.tpm_mode, TpmMode::Disabled as i32);
                assert_eq!(
                    c.storage_security_policy,
                    StorageSecurityPolicy::Permissive as i32
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
