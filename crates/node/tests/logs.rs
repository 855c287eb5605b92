//! NodeManagement.Logs against a logtree, calling the service directly: request
//! validation codes, backlog modes and chunking, filters, streaming, entry conversion.

use std::time::Duration;

use logtree::{Dn, LogTree, Severity};
use node::logs::NodeManagementService;
use node::logs::service::BACKLOG_CHUNK;
use proto::api::get_logs_request::{BacklogMode, StreamMode};
use proto::api::node_management_server::NodeManagement;
use proto::api::{GetLogsRequest, GetLogsResponse, UpdateNodeRequest};
use proto::common::log_entry::Kind;
use proto::common::log_filter::{
    Filter, LeveledWithMinimumSeverity, OnlyLeveled, OnlyRaw, WithChildren,
};
use proto::common::{LeveledLogSeverity, LogEntry, LogFilter};
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status};

fn dn(s: &str) -> Dn {
    Dn::new(s).expect("dn")
}

fn filter(f: Filter) -> LogFilter {
    LogFilter { filter: Some(f) }
}

fn children() -> LogFilter {
    filter(Filter::WithChildren(WithChildren {}))
}

fn request(d: &str, filters: Vec<LogFilter>, backlog: BacklogMode, count: i64) -> GetLogsRequest {
    GetLogsRequest {
        dn: d.to_string(),
        filters,
        backlog_mode: backlog as i32,
        backlog_count: count,
        stream_mode: StreamMode::StreamDisable as i32,
    }
}

/// A tree with: root.a (info, warning, error leveled + 2 raw), root.a.b (1 info), root.ab
/// (1 info).
fn sample() -> LogTree {
    let t = LogTree::new();
    let a = t.leveled(dn("root.a"));
    a.info("x.rs:1", "a info");
    a.warning("x.rs:2", "a warning");
    t.raw(dn("root.a")).write_line("a raw 1");
    a.error("x.rs:3", "a error\nsecond line");
    t.raw(dn("root.a")).write_line("a raw 2");
    t.leveled(dn("root.a.b")).info("y.rs:1", "b info");
    t.leveled(dn("root.ab")).info("z.rs:1", "ab info");
    t
}

async fn call(
    svc: &NodeManagementService,
    req: GetLogsRequest,
) -> Result<Vec<GetLogsResponse>, Status> {
    let mut stream = svc.logs(Request::new(req)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.next().await {
        out.push(msg?);
    }
    Ok(out)
}

fn backlog(msgs: &[GetLogsResponse]) -> Vec<LogEntry> {
    msgs.iter()
        .flat_map(|m| m.backlog_entries.clone())
        .collect()
}

/// First line (leveled) or data (raw) of each entry.
fn texts(entries: &[LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match &e.kind {
            Some(Kind::Leveled(l)) => l.lines[0].clone(),
            Some(Kind::Raw(r)) => r.data.clone(),
            None => String::new(),
        })
        .collect()
}

fn code(r: Result<Vec<GetLogsResponse>, Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn validation_codes() {
    let svc = NodeManagementService::new(sample());
    let all = BacklogMode::BacklogAll;
    let eleven = (0..11).map(|_| children()).collect();
    assert_eq!(
        code(call(&svc, request("root", eleven, all, 0)).await),
        Code::InvalidArgument
    );
    let ten = (0..10).map(|_| children()).collect();
    assert_eq!(
        code(call(&svc, request("root", ten, all, 0)).await),
        Code::Ok
    );
    for bad in ["a..b", ".a", "a."] {
        assert_eq!(
            code(call(&svc, request(bad, vec![], all, 0)).await),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    assert_eq!(
        code(
            call(
                &svc,
                request("root", vec![], BacklogMode::BacklogInvalid, 0)
            )
            .await
        ),
        Code::InvalidArgument
    );
    let mut unknown = request("root", vec![], all, 0);
    unknown.backlog_mode = 42;
    assert_eq!(code(call(&svc, unknown).await), Code::InvalidArgument);
    for count in [0, -1] {
        assert_eq!(
            code(
                call(
                    &svc,
                    request("root", vec![], BacklogMode::BacklogCount, count)
                )
                .await
            ),
            Code::InvalidArgument
        );
    }
    let both = vec![
        filter(Filter::OnlyRaw(OnlyRaw {})),
        filter(Filter::OnlyLeveled(OnlyLeveled {})),
    ];
    assert_eq!(
        code(call(&svc, request("root", both, all, 0)).await),
        Code::InvalidArgument
    );
    for minimum in [LeveledLogSeverity::Invalid as i32, 17] {
        let f = filter(Filter::LeveledWithMinimumSeverity(
            LeveledWithMinimumSeverity { minimum },
        ));
        assert_eq!(
            code(call(&svc, request("root", vec![f], all, 0)).await),
            Code::InvalidArgument
        );
    }
    // Stream mode INVALID is not rejected; it just does not stream.
    let mut invalid_stream = request("root.a.b", vec![], all, 0);
    invalid_stream.stream_mode = StreamMode::StreamInvalid as i32;
    let msgs = call(&svc, invalid_stream).await.expect("accepted");
    assert_eq!(texts(&backlog(&msgs)), vec!["b info"]);
    // A filter message without a filter is ignored.
    let empty = LogFilter { filter: None };
    assert_eq!(
        code(call(&svc, request("root.a", vec![empty], all, 0)).await),
        Code::Ok
    );
}

#[tokio::test]
async fn backlog_modes_and_dn_scope() {
    let svc = NodeManagementService::new(sample());
    let all = BacklogMode::BacklogAll;
    let exact = backlog(
        &call(&svc, request("root.a", vec![], all, 0))
            .await
            .expect("ok"),
    );
    assert_eq!(
        texts(&exact),
        vec!["a info", "a warning", "a raw 1", "a error", "a raw 2"]
    );
    assert!(exact.iter().all(|e| e.dn == "root.a"));

    let sub = backlog(
        &call(&svc, request("root.a", vec![children()], all, 0))
            .await
            .expect("ok"),
    );
    assert_eq!(sub.len(), 6, "root.a and root.a.b, not root.ab");
    assert_eq!(sub.last().map(|e| e.dn.as_str()), Some("root.a.b"));

    let everything = backlog(
        &call(&svc, request("", vec![children()], all, 0))
            .await
            .expect("ok"),
    );
    assert_eq!(everything.len(), 7);

    let newest = backlog(
        &call(
            &svc,
            request("root.a", vec![children()], BacklogMode::BacklogCount, 2),
        )
        .await
        .expect("ok"),
    );
    assert_eq!(
        texts(&newest),
        vec!["a raw 2", "b info"],
        "newest two, oldest first"
    );

    let none = call(
        &svc,
        request("root.a", vec![], BacklogMode::BacklogDisable, 0),
    )
    .await
    .expect("ok");
    assert!(backlog(&none).is_empty());
}

#[tokio::test]
async fn filters() {
    let svc = NodeManagementService::new(sample());
    let all = BacklogMode::BacklogAll;
    let raw = backlog(
        &call(
            &svc,
            request("root.a", vec![filter(Filter::OnlyRaw(OnlyRaw {}))], all, 0),
        )
        .await
        .expect("ok"),
    );
    assert_eq!(texts(&raw), vec!["a raw 1", "a raw 2"]);
    let leveled = backlog(
        &call(
            &svc,
            request(
                "root.a",
                vec![filter(Filter::OnlyLeveled(OnlyLeveled {}))],
                all,
                0,
            ),
        )
        .await
        .expect("ok"),
    );
    assert_eq!(texts(&leveled), vec!["a info", "a warning", "a error"]);
    // A minimum severity also drops raw entries (upstream's implementation).
    let min = filter(Filter::LeveledWithMinimumSeverity(
        LeveledWithMinimumSeverity {
            minimum: LeveledLogSeverity::Warning as i32,
        },
    ));
    let warn = backlog(
        &call(&svc, request("root.a", vec![min], all, 0))
            .await
            .expect("ok"),
    );
    assert_eq!(texts(&warn), vec!["a warning", "a error"]);
}

#[tokio::test]
async fn conversion() {
    let tree = LogTree::new();
    let ts = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).expect("ts");
    tree.leveled(dn("root.c"))
        .log_at(ts, Severity::Fatal, "c.rs:9", "one\ntwo");
    let long = "x".repeat(1500);
    tree.raw(dn("root.c")).write_line(&long);
    let svc = NodeManagementService::new(tree);
    let entries = backlog(
        &call(&svc, request("root.c", vec![], BacklogMode::BacklogAll, 0))
            .await
            .expect("ok"),
    );
    let Some(Kind::Leveled(l)) = &entries[0].kind else {
        panic!("leveled expected: {entries:?}");
    };
    assert_eq!(l.lines, vec!["one", "two"]);
    assert_eq!(l.severity, LeveledLogSeverity::Fatal as i32);
    assert_eq!(l.location, "c.rs:9");
    let t = l.timestamp.as_ref().expect("timestamp");
    assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_000));
    let Some(Kind::Raw(r)) = &entries[1].kind else {
        panic!("raw expected");
    };
    assert_eq!(r.data.len(), 1024);
    assert_eq!(r.original_length, 1500);
}

#[tokio::test]
async fn backlog_is_chunked() {
    let tree = LogTree::new();
    let l = tree.leveled(dn("root.big"));
    for i in 0..(2 * BACKLOG_CHUNK + 500) {
        l.info("big.rs:1", format!("line {i}"));
    }
    let svc = NodeManagementService::new(tree);
    let msgs = call(
        &svc,
        request("root.big", vec![], BacklogMode::BacklogAll, 0),
    )
    .await
    .expect("ok");
    let sizes: Vec<usize> = msgs.iter().map(|m| m.backlog_entries.len()).collect();
    assert_eq!(sizes, vec![BACKLOG_CHUNK, BACKLOG_CHUNK, 500]);
    assert!(msgs.iter().all(|m| m.stream_entries.is_empty()));
    let all = texts(&backlog(&msgs));
    assert_eq!(all.first().map(String::as_str), Some("line 0"));
    assert_eq!(all.last().map(String::as_str), Some("line 4499"));
}

#[tokio::test]
async fn streaming_after_backlog() {
    let tree = sample();
    let svc = NodeManagementService::new(tree.clone());
    let mut req = request("root.a", vec![children()], BacklogMode::BacklogCount, 1);
    req.stream_mode = StreamMode::StreamUnbuffered as i32;
    let mut stream = svc
        .logs(Request::new(req))
        .await
        .expect("logs")
        .into_inner();
    let first = stream.next().await.expect("backlog").expect("ok");
    assert_eq!(texts(&first.backlog_entries), vec!["b info"]);

    tree.leveled(dn("root.a.b")).info("s.rs:1", "live 1");
    tree.leveled(dn("root.other"))
        .info("s.rs:1", "not matching");
    tree.raw(dn("root.a")).write_line("live 2");
    for want in ["live 1", "live 2"] {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("streamed in time")
            .expect("message")
            .expect("ok");
        assert!(msg.backlog_entries.is_empty());
        assert_eq!(texts(&msg.stream_entries), vec![want]);
    }
    // Nothing else is pending.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn update_node_without_an_updater_is_unimplemented() {
    let svc = NodeManagementService::new(LogTree::new());
    let err = svc
        .update_node(Request::new(UpdateNodeRequest::default()))
        .await
        .expect_err("no updater");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("no updates"), "{}", err.message());
}

/// A deleted node loses its open log stream, over the real authorization layer: the stream
/// ends with Unauthenticated within a second of the revocation, without the server writing
/// anything. Nodes hold no READ_NODE_LOGS by default; this server grants it to them so that a
/// node can open the stream at all. The owner's stream, whose certificate is not revoked,
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_caller_loses_its_log_stream() {
    use identity::templates;
    use proto::api::node_management_client::NodeManagementClient;
    use proto::api::node_management_server::NodeManagementServer;
    use proto::ext::Permission;
    use rpc::{ClientCredentials, RevocationSet, ServerSecurity, ServerVerification};

    let ca_key = identity::SigningKey::generate().expect("key");
    let ca = templates::cluster_ca(&ca_key).expect("ca");
    let server_key = identity::SigningKey::generate().expect("key");
    let server_cert = templates::node_cert(&ca_key, &ca, &server_key.public_key()).expect("cert");
    let node_key = identity::SigningKey::generate().expect("key");
    let node_cert = templates::node_cert(&ca_key, &ca, &node_key.public_key()).expect("cert");
    let owner_key = identity::SigningKey::generate().expect("key");
    let owner_cert =
        templates::user_cert(&ca_key, &ca, &owner_key.public_key(), "owner").expect("cert");

    let revocations = RevocationSet::new();
    let mut security = ServerSecurity::new(ca.clone(), revocations.clone());
    security.node_permissions = std::sync::Arc::new(vec![Permission::ReadNodeLogs]);
    let tls =
        rpc::server_tls::server_config_for(server_cert, &server_key.to_pkcs8_der(), ca.clone())
            .expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let tree = sample();
    tokio::spawn(
        rpc::serve::server_builder(security)
            .add_service(NodeManagementServer::new(NodeManagementService::new(
                tree.clone(),
            )))
            .serve_with_incoming(rpc::serve::tls_incoming(listener, tls)),
    );
    let open = |creds: ClientCredentials| {
        let verification = ServerVerification::Cluster {
            ca: ca.clone(),
            node_id: Some(identity::node_id(&server_key.public_key())),
            crl: None,
        };
        let config = rpc::client_tls::client_config(&creds, verification).expect("config");
        let ch = rpc::client_tls::connect_lazy(&addr, config).expect("channel");
        let mut req = request("root.a", vec![], BacklogMode::BacklogDisable, 0);
        req.stream_mode = StreamMode::StreamUnbuffered as i32;
        async move {
            NodeManagementClient::new(ch)
                .logs(req)
                .await
                .expect("Logs")
                .into_inner()
        }
    };
    let mut as_node = open(ClientCredentials::Authenticated {
        certificate: node_cert,
        key: node_key.clone(),
    })
    .await;
    let mut as_owner = open(ClientCredentials::Authenticated {
        certificate: owner_cert,
        key: owner_key,
    })
    .await;
    tree.leveled(dn("root.a")).info("s.rs:1", "live");
    for s in [&mut as_node, &mut as_owner] {
        let msg = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("streamed in time")
            .expect("ok")
            .expect("a message");
        assert_eq!(texts(&msg.stream_entries), vec!["live"]);
    }

    revocations.revoke_node(&identity::node_id(&node_key.public_key()));
    let revoked = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(1), as_node.message())
        .await
        .expect("the stream ends within a second");
    assert_eq!(
        end.expect_err("ends with an error").code(),
        Code::Unauthenticated
    );
    println!(
        "log stream ended {:?} after the revocation",
        revoked.elapsed()
    );

    tree.leveled(dn("root.a")).info("s.rs:2", "still streaming");
    let msg = tokio::time::timeout(Duration::from_secs(5), as_owner.message())
        .await
        .expect("streamed in time")
        .expect("ok")
        .expect("a message");
    assert_eq!(texts(&msg.stream_entries), vec!["still streaming"]);
}
