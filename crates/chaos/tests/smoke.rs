//! The campaign's smoke scenario, run by `make test` so the harness keeps working: one
//! follower partition and heal on test hosts (scenario 2, once). Needs root and the node
//! binary (`cargo build --workspace --bins`).

use chaos::scenarios::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_partition_and_heal() {
    test_support::logging::init_with("chaos=info,launch=info");
    chaos::net::probe().expect("test hosts need root, iproute2 (ip, tc) and nftables (nft)");
    let outcome = Scenario::FollowerPartition.run(1).await;
    eprintln!("{outcome:#?}");
    assert!(outcome.ok(), "{:#?}", outcome.notes);
    assert_eq!(outcome.records_lost, 0);
}
