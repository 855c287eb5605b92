//! Namespaced key-value access against a real etcd member.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use futures::StreamExt;
use kv::{Error, EventKind, Namespaced, WatchStream, connect_unix};
use test_support::etcd::TestEtcd;

const WAIT: Duration = Duration::from_secs(10);

async fn etcd() -> TestEtcd {
    TestEtcd::start().await.expect("start etcd")
}

fn keys(resp: &etcd_client::GetResponse) -> Vec<(String, String)> {
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

async fn next_batch(watch: &mut WatchStream) -> kv::WatchBatch {
    tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("watch event in time")
        .expect("watch still open")
        .expect("watch ok")
}

#[tokio::test]
async fn keys_land_under_the_upstream_prefix() {
    let etcd = etcd().await;
    let root = Namespaced::root(etcd.client());
    let curator = root.sub("curator").expect("sub");
    assert_eq!(curator.prefix(), "namespaced:curator/");
    assert_eq!(
        root.sub("a").expect("a").sub("b").expect("b").prefix(),
        "namespaced:a:b/"
    );
    assert_eq!(curator.key("/nodes/x"), b"namespaced:curator//nodes/x");
    assert_eq!(
        curator.strip(b"namespaced:curator//nodes/x"),
        Some(&b"/nodes/x"[..])
    );
    assert_eq!(curator.strip(b"namespaced:other//nodes/x"), None);

    curator.put("/nodes/x", "1", None).await.expect("put");
    let raw = root
        .get("namespaced:curator//nodes/x", None)
        .await
        .expect("raw get");
    assert_eq!(
        keys(&raw),
        [("namespaced:curator//nodes/x".into(), "1".into())]
    );
    let rel = curator.get("/nodes/x", None).await.expect("get");
    assert_eq!(keys(&rel), [("/nodes/x".into(), "1".into())]);
}

#[tokio::test]
async fn namespaces_are_isolated() {
    let etcd = etcd().await;
    let a = etcd.namespaced("a").expect("a");
    let ab = a.sub("b").expect("ab");
    let other = etcd.namespaced("other").expect("other");
    a.put("k1", "a1", None).await.expect("put");
    a.put("k2", "a2", None).await.expect("put");
    ab.put("k1", "ab1", None).await.expect("put");
    other.put("k1", "o1", None).await.expect("put");

    assert_eq!(
        keys(&a.get_prefix("").await.expect("prefix")),
        [("k1".into(), "a1".into()), ("k2".into(), "a2".into())]
    );
    assert_eq!(
        keys(&ab.get_prefix("k").await.expect("prefix")),
        [("k1".into(), "ab1".into())]
    );
    let range = a
        .get("k1", Some(GetOptions::new().with_range("k2")))
        .await
        .expect("range");
    assert_eq!(keys(&range), [("k1".into(), "a1".into())]);

    let deleted = a.delete_prefix("").await.expect("delete prefix");
    assert_eq!(deleted.deleted(), 2);
    assert!(a.get_prefix("").await.expect("prefix").kvs().is_empty());
    assert_eq!(ab.get_prefix("").await.expect("ab").kvs().len(), 1);
    assert_eq!(other.get_prefix("").await.expect("other").kvs().len(), 1);
    assert_eq!(
        a.delete("missing", None).await.expect("delete").deleted(),
        0
    );
}

#[tokio::test]
async fn invalid_sub_names_are_rejected() {
    let etcd = etcd().await;
    let root = etcd.root();
    for bad in ["", "a:b"] {
        match root.sub(bad) {
            Err(Error::InvalidNamespace { name, .. }) => assert_eq!(name, bad),
            other => panic!("{bad:?}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn transactions_use_relative_keys() {
    let etcd = etcd().await;
    let ns = etcd.namespaced("txn").expect("ns");
    let create_only = |value: &str| {
        Txn::new()
            .when([Compare::create_revision("key", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("key", value, None)])
            .or_else([TxnOp::get("key", None)])
    };
    let first = ns.txn(create_only("first")).await.expect("txn");
    assert!(first.succeeded());
    let second = ns.txn(create_only("second")).await.expect("txn");
    assert!(!second.succeeded());
    match second.op_responses().as_slice() {
        [TxnOpResponse::Get(get)] => {
            assert_eq!(keys(get), [("key".into(), "first".into())]);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    // The raw key was written under the prefix, nothing at the bare key.
    assert!(
        etcd.root()
            .get("key", None)
            .await
            .expect("raw")
            .kvs()
            .is_empty()
    );
    assert_eq!(
        etcd.root()
            .get("namespaced:txn/key", None)
            .await
            .expect("raw")
            .kvs()
            .len(),
        1
    );
}

#[tokio::test]
async fn watch_reports_relative_keys_of_its_namespace_only() {
    let etcd = etcd().await;
    let ns = etcd.namespaced("w").expect("ns");
    let neighbour = etcd.namespaced("w2").expect("ns");
    let mut watch = ns
        .watch(
            "dir/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("watch");
    neighbour.put("dir/x", "no", None).await.expect("put");
    ns.put("other", "no", None).await.expect("put");
    ns.put("dir/a", "1", None).await.expect("put");
    ns.put("dir/a", "2", None).await.expect("put");
    ns.delete("dir/a", None).await.expect("delete");

    let mut events = Vec::new();
    while events.len() < 3 {
        events.extend(next_batch(&mut watch).await.events);
    }
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.key.clone(), e.value.clone(), e.prev_value.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (EventKind::Put, b"dir/a".to_vec(), b"1".to_vec(), None),
            (
                EventKind::Put,
                b"dir/a".to_vec(),
                b"2".to_vec(),
                Some(b"1".to_vec())
            ),
            (
                EventKind::Delete,
                b"dir/a".to_vec(),
                Vec::new(),
                Some(b"2".to_vec())
            ),
        ]
    );
    assert!(events[1].mod_revision > events[0].mod_revision);
}

#[tokio::test]
async fn watch_from_a_revision_replays_history() {
    let etcd = etcd().await;
    let ns = etcd.namespaced("h").expect("ns");
    let rev = ns
        .put("k", "old", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    ns.put("k", "new", None).await.expect("put");
    let mut watch = ns
        .watch("k", Some(WatchOptions::new().with_start_revision(rev + 1)))
        .await
        .expect("watch");
    let batch = next_batch(&mut watch).await;
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.events[0].value, b"new");
    assert_eq!(batch.events[0].mod_revision, rev + 1);
}

#[tokio::test]
async fn compacted_start_revision_cancels_the_watch() {
    let etcd = etcd().await;
    let ns = etcd.namespaced("c").expect("ns");
    ns.put("k", "1", None).await.expect("put");
    let rev = ns
        .put("k", "2", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    etcd.client().compact(rev, None).await.expect("compact");
    let mut watch = ns
        .watch("k", Some(WatchOptions::new().with_start_revision(1)))
        .await
        .expect("watch");
    match tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("in time")
    {
        Some(Err(Error::WatchCanceled {
            compact_revision, ..
        })) => assert_eq!(compact_revision, rev),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        watch.next().await.is_none(),
        "stream ends after cancellation"
    );
}

#[tokio::test]
async fn connect_unix_reaches_the_member_and_fails_cleanly_without_one() {
    let etcd = etcd().await;
    let mut client = connect_unix(etcd.socket_path()).await.expect("connect");
    client.put("x", "y", None).await.expect("put");
    let dir = tempfile::tempdir().expect("tempdir");
    match connect_unix(dir.path().join("nothing.sock")).await {
        Err(Error::Connect { path, .. }) => assert!(path.ends_with("nothing.sock")),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}
