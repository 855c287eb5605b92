//! etcd's peer client-SAN check, on by default: a peer whose certificate does not name the
//! address it connects from is refused. On one host's loopback every member connects from
//! 127.0.0.1 whatever address it listens on and its certificate names, which is exactly such
//! a peer: with the check on, a second member cannot join.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use consensus::{Config, JoinCluster, Service};
use identity::SigningKey;
use logtree::LogTree;
use supervisor::Supervisor;
use tempfile::TempDir;
use test_support::LoopbackBlock;
use tokio::time::Instant;

/// etcd start on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);

struct Member {
    _dir: TempDir,
    tree: LogTree,
    _supervisor: Supervisor,
    service: Arc<Service>,
}

fn start(address: IpAddr, key: &SigningKey, join: Option<JoinCluster>) -> Member {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(
        dir.path().join("data/etcd"),
        dir.path().join("eph"),
        key.clone(),
        address,
    );
    assert!(config.peer_client_san_check, "the check is on by default");
    config.join_cluster = join;
    let service = Service::new(config);
    let tree = LogTree::new();
    let runnable = service.runnable();
    let supervisor = Supervisor::start(
        tree.clone(),
        supervisor::runnable(move |ctx| {
            let runnable = runnable.clone();
            async move {
                ctx.run("consensus", runnable)?;
                ctx.signal_healthy();
                ctx.cancelled().await;
                Ok(())
            }
        }),
    );
    Member {
        _dir: dir,
        tree,
        _supervisor: supervisor,
        service,
    }
}

impl Member {
    fn logs(&self) -> Vec<String> {
        common::consensus_logs(&self.tree)
    }
}

/// The IP addresses a certificate names as subject alternative names.
fn ip_sans(der: &[u8]) -> Vec<IpAddr> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    let san = cert
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("a SAN extension");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_connecting_from_an_address_its_certificate_does_not_name_is_refused() {
    let block = LoopbackBlock::allocate();
    let a = start(
        block.addr(1).into(),
        &SigningKey::generate().expect("key"),
        None,
    );
    let sa = tokio::time::timeout(TIMEOUT, a.service.wait_running())
        .await
        .expect("the first member runs");

    // B's certificate names 127.x.y.2 (its own address); it reaches A from 127.0.0.1.
    let b_key = SigningKey::generate().expect("key");
    let b_address: IpAddr = block.addr(2).into();
    let join = sa
        .add_node(&b_key.public_key(), b_address)
        .await
        .expect("add_node");
    assert_eq!(
        ip_sans(&join.node_certificate),
        vec![b_address],
        "the peer certificate names B's address"
    );
    let b = start(b_address, &b_key, Some(join));

    let deadline = Instant::now() + TIMEOUT;
    let refusal = loop {
        if let Some(line) = a
            .logs()
            .into_iter()
            .find(|l| l.contains("rejected connection") && l.contains("127.0.0.1"))
        {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "A never refused B; A's logs:\n{}",
            a.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refusal.contains(&block.addr(2).to_string()),
        "the refusal names the certificate's address: {refusal}"
    );
    assert!(
        b.service.watch().borrow().is_none(),
        "B became a running member although every connection to A was refused"
    );
}
