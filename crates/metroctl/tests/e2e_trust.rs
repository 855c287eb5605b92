//! e2e with two single-node clusters, A and B, in blocks of their own: a config that pinned cluster A's
//! CA refuses cluster B loudly, and A's owner key is refused by B's Escrow.

mod common;

use common::Metroctl;
use test_support::LoopbackBlock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_ca_and_wrong_owner_key() {
    let (block_a, block_b) = (LoopbackBlock::allocate(), LoopbackBlock::allocate());
    let (a, b) = tokio::join!(common::start(1, &block_a), common::start(1, &block_b));
    let fp_a = common::fingerprint(a.ca_certificate());
    let fp_b = common::fingerprint(b.ca_certificate());
    assert_ne!(fp_a, fp_b);
    let tmp = tempfile::tempdir().expect("tempdir");

    // Config A owns cluster A.
    let mctl_a = Metroctl::fresh(&tmp.path().join("a"), Some(&a.owner_key_path()))
        .with_endpoints(&block_a.host(1));
    mctl_a
        .run(&["--accept-ca-fingerprint", &fp_a, "takeownership"])
        .await
        .ok();
    mctl_a.run(&["node", "list"]).await.ok();

    // Pointed at cluster B, config A refuses loudly (exit 5), naming both fingerprints and the
    // file to delete if the change is intended; for every command.
    let to_b = mctl_a.clone().with_endpoints(&block_b.host(1));
    for args in [&["node", "list"][..], &["takeownership"][..]] {
        let run = to_b.run(args).await.failed(5);
        assert!(
            run.stderr.contains("IS NOT THE CLUSTER THIS CONFIG TRUSTS"),
            "{run}"
        );
        assert!(
            run.stderr.contains(&fp_a) && run.stderr.contains(&fp_b),
            "{run}"
        );
        let ca_path = mctl_a.config.join("ca.pem");
        assert!(
            run.stderr
                .contains(&format!("delete {}", ca_path.display())),
            "{run}"
        );
    }
    // The pin is untouched.
    assert_eq!(
        std::fs::read(mctl_a.config.join("ca.pem")).expect("ca.pem"),
        identity::files::certificate_to_pem(a.ca_certificate()).into_bytes()
    );

    // A's owner key against B (B's CA accepted on purpose): Escrow refuses it.
    let wrong = Metroctl::fresh(&tmp.path().join("wrong"), Some(&a.owner_key_path()))
        .with_endpoints(&block_b.host(1));
    let run = wrong
        .run(&["--accept-ca-fingerprint", &fp_b, "takeownership"])
        .await
        .failed(3);
    assert!(
        run.stderr.contains("not the owner key of this cluster"),
        "{run}"
    );
    assert!(!wrong.config.join("owner.pem").exists());

    // Interactively (on a terminal): upstream's prompt; only "yes" pins.
    let asked = Metroctl::fresh(&tmp.path().join("asked"), Some(&b.owner_key_path()))
        .with_endpoints(&block_b.host(1));
    if let Some(run) = asked.run_on_terminal(&["takeownership"], "no\n").await {
        assert_eq!(run.code, 5, "{run}");
        assert!(
            run.stdout.contains(&format!(
                "ED25519 key fingerprint of the cluster CA is {fp_b}.\r\nAre you sure you want \
                 to continue connecting (yes/no)?"
            )),
            "{run}"
        );
        assert!(!asked.config.join("ca.pem").exists());
        let run = asked
            .run_on_terminal(&["takeownership"], "yes\n")
            .await
            .expect("script");
        assert_eq!(run.code, 0, "{run}");
        assert!(run.stdout.contains("Took ownership"), "{run}");
    }

    // Without an owner certificate, other commands say to take ownership first.
    let run = wrong.run(&["node", "list"]).await.failed(1);
    assert!(run.stderr.contains("takeownership"), "{run}");

    tokio::join!(a.shutdown(), b.shutdown());
}
