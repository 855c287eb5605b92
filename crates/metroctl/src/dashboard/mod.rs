//! `metroctl dashboard`: a local, read-only web page of the cluster, served by metroctl with
//! the operator's own session (owner certificate, pinned CA), so the cluster gains no new
//! server and no new credential.
//!
//! * `/` shows the nodes (the same CEL `?filter=` as `--filter`, evaluated by the cluster's
//!   GetNodes), the curator leader and the consensus members with their etcd status.
//! * `/events` is a server-sent event stream: a Curator.Watch of the nodes, and on every
//!   change the live part of `/` rendered again and pushed to the browser, which swaps it in
//!   (`app.js`, a dozen lines). Health and heartbeat ages live in the leader's memory, not in
//!   the watched records, so they are also refreshed every [`REFRESH`].
//! * `/node/<id>` shows one node and its recent logs (NodeManagement.Logs on the node, as
//!   `metroctl node logs`).
//!
//! Every route is a GET: the page changes nothing. All HTML is rendered by maud, which escapes
//! every value. Served on loopback by default (metroctl refuses any other address unless
//! told `--allow-remote`: whoever reaches the page sees the cluster through the owner's
//! credentials), and on loopback only requests naming the page's own address in `Host` are
//! answered, so a web page of another origin cannot rebind a DNS name to it and read it.

mod html;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::api::GetLogsRequest;
use proto::api::get_logs_request::{BacklogMode, StreamMode};
use proto::common::log_filter::{Filter, WithChildren};
use proto::common::{LogFilter, NodeState};
use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::get_consensus_status_response::etcd_member::Status as MemberStatus;
use proto::curator_api::watch_event::Progress;
use proto::curator_api::watch_request::{Kind as WatchKind, NodesInCluster};
use proto::curator_api::{WatchEvent, WatchRequest};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::error::{Error, Result};
use crate::model::NodeView;
use crate::session::{Session, check_node_id};

/// Where the dashboard listens unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7850";
/// How often the live part is refreshed without a change (heartbeat ages, health).
pub const REFRESH: Duration = Duration::from_secs(10);
/// Pause before re-opening a watch that broke (leader change).
const REWATCH_PAUSE: Duration = Duration::from_millis(500);
/// Log entries shown on a node's page.
pub const LOG_BACKLOG: i64 = 200;
/// How long reading a node's logs may take.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Scripts and styles from the page itself only, connections back to it only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// What the handlers share.
struct Dashboard {
    session: Session,
    /// `Host` values answered (the page's own address); `None` accepts any (`--allow-remote`).
    allowed_hosts: Option<Vec<String>>,
}

type Shared = Arc<Dashboard>;

/// One look at the cluster, as the page shows it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The nodes the filter selects, sorted by ID, or why there are none.
    pub nodes: std::result::Result<Vec<NodeView>, String>,
    /// The curator leader's node ID and endpoint, once known.
    pub leader: Option<(String, String)>,
    /// The etcd members, or why they are unknown.
    pub consensus: std::result::Result<Vec<Member>, String>,
    /// When the snapshot was taken.
    pub taken_at: chrono::DateTime<chrono::Local>,
}

/// An etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node ID (or, for a learner that has not started yet, its peer host).
    pub id: String,
    /// LEARNER, FULL or UNKNOWN.
    pub status: String,
}

/// The `?filter=` of `/` and `/events`.
#[derive(Debug, Default, Deserialize)]
struct FilterQuery {
    #[serde(default)]
    filter: String,
}

/// `metroctl dashboard`: listens on `listen` and serves until interrupted.
pub async fn run(session: Session, listen: &str, allow_remote: bool) -> Result<()> {
    let addr: SocketAddr = listen.parse().map_err(|e| {
        Error::usage(format!(
            "--listen {listen:?}: {e} (an IP address and port, e.g. {DEFAULT_LISTEN})"
        ))
    })?;
    check_listen(addr, allow_remote)?;
    // Prove the session works before offering a page that could only show errors.
    session.nodes("").await?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::local(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::local(format!("cannot listen on {addr}: {e}")))?;
    let allowed_hosts = bound.ip().is_loopback().then(|| allowed_hosts(bound));
    let app = router(Arc::new(Dashboard {
        session,
        allowed_hosts,
    }));
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "metroctl dashboard on http://{bound}/ (Ctrl-C stops it)"
        );
        let _ = out.flush();
    }
    // Not a graceful shutdown: the event streams never end by themselves.
    tokio::select! {
        served = axum::serve(listener, app).into_future() => {
            served.map_err(|e| Error::local(format!("serving the dashboard: {e}")))
        }
        _ = stop_signal() => Ok(()),
    }
}

/// Loopback unless explicitly allowed otherwise.
fn check_listen(addr: SocketAddr, allow_remote: bool) -> Result<()> {
    if addr.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    Err(Error::usage(format!(
        "refusing to serve the dashboard on {addr}: it shows the cluster through your owner \
         credentials to whoever can reach it. Use a loopback address (e.g. {DEFAULT_LISTEN}, \
         and an SSH tunnel from elsewhere), or pass --allow-remote if that is really meant."
    )))
}

/// The `Host` values a browser sends for the page at `bound`.
fn allowed_hosts(bound: SocketAddr) -> Vec<String> {
    let port = bound.port();
    vec![bound.to_string(), format!("localhost:{port}")]
}

async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn router(dashboard: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/events", get(events))
        .route("/node/{id}", get(node_page))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/style.css", get(|| async { asset("text/css", STYLE_CSS) }))
        .fallback(|| async { page_error(StatusCode::NOT_FOUND, "no such page") })
        .layer(middleware::map_response(security_headers))
        .layer(middleware::from_fn_with_state(
            dashboard.clone(),
            check_host,
        ))
        .with_state(dashboard)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// Answers only requests for the page's own address (see the module documentation).
async fn check_host(State(d): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(allowed) = &d.allowed_hosts {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            let message = format!(
                "this dashboard answers requests for {} only",
                allowed.join(" or ")
            );
            return security_headers(page_error(StatusCode::FORBIDDEN, &message)).await;
        }
    }
    next.run(request).await
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn page_error(status: StatusCode, message: &str) -> Response {
    (status, html::error_page(&status.to_string(), message)).into_response()
}

async fn index(State(d): State<Shared>, Query(q): Query<FilterQuery>) -> Response {
    let snap = snapshot(&d.session, &q.filter).await;
    html::index_page(&q.filter, &snap).into_response()
}

/// The live part of `/`, pushed on every change (event `live`, data: HTML).
async fn events(
    State(d): State<Shared>,
    Query(q): Query<FilterQuery>,
) -> Sse<impl tokio_stream::Stream<Item = std::result::Result<Event, std::convert::Infallible>>> {
    // A small buffer: a browser that reads slowly makes the watcher wait, not queue pages.
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(live_updates(d, q.filter, tx));
    Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::default())
}

/// Watches the nodes and pushes a new rendering on every change and every [`REFRESH`],
/// until the browser goes away.
async fn live_updates(d: Shared, filter: String, tx: mpsc::Sender<Event>) {
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let opened = tokio::select! {
            opened = open_watch(&d.session) => opened,
            _ = tx.closed() => return,
        };
        match opened {
            Ok(mut stream) => {
                let mut backlogged = false;
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = refresh.tick() => {}
                        message = stream.message() => match message {
                            Ok(Some(event)) => {
                                if event.progress == Progress::LastBacklogged as i32 {
                                    backlogged = true;
                                }
                                // The backlog is the state the page already shows.
                                if !backlogged {
                                    continue;
                                }
                            }
                            // Leadership moved or the connection broke: watch again.
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!("dashboard watch ended: {status}");
                                break;
                            }
                        },
                    }
                    if !push(&d, &filter, &tx).await {
                        return;
                    }
                }
            }
            Err(e) => {
                let fragment = html::error_fragment(&e.message).into_string();
                if tx
                    .send(Event::default().event("live").data(fragment))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REWATCH_PAUSE) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Renders the live part now and sends it; false once the browser is gone.
async fn push(d: &Dashboard, filter: &str, tx: &mpsc::Sender<Event>) -> bool {
    let snap = snapshot(&d.session, filter).await;
    let fragment = html::live(&snap).into_string();
    tx.send(Event::default().event("live").data(fragment))
        .await
        .is_ok()
}

async fn open_watch(session: &Session) -> Result<Streaming<WatchEvent>> {
    session
        .call("watching nodes", |channel| async move {
            Ok(CuratorClient::new(channel)
                .watch(WatchRequest {
                    kind: Some(WatchKind::NodesInCluster(NodesInCluster {})),
                })
                .await?
                .into_inner())
        })
        .await
}

/// Nodes (through `filter`), leader and consensus members, now.
async fn snapshot(session: &Session, filter: &str) -> Snapshot {
    let nodes = session
        .nodes(filter)
        .await
        .map(|nodes| {
            let mut views: Vec<NodeView> = nodes.iter().map(NodeView::from_api).collect();
            views.sort_by(|a, b| a.id.cmp(&b.id));
            views
        })
        .map_err(|e| e.message);
    let consensus = session
        .api(
            "reading the consensus status",
            session.management().consensus_status(),
        )
        .await
        .map(|members| {
            let mut members: Vec<Member> = members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    status: member_status(m.status),
                })
                .collect();
            members.sort_by(|a, b| a.id.cmp(&b.id));
            members
        })
        .map_err(|e| e.message);
    Snapshot {
        nodes,
        leader: session.leader().map(|l| (l.node_id, l.endpoint)),
        consensus,
        taken_at: chrono::Local::now(),
    }
}

/// `STATUS_LEARNER` → `LEARNER`.
fn member_status(status: i32) -> String {
    match MemberStatus::try_from(status) {
        Ok(s) => s.as_str_name().trim_start_matches("STATUS_").to_string(),
        Err(_) => format!("UNKNOWN({status})"),
    }
}

async fn node_page(State(d): State<Shared>, Path(id): Path<String>) -> Response {
    if let Err(e) = check_node_id(&id) {
        return page_error(StatusCode::BAD_REQUEST, &e.message);
    }
    let node = match d.session.node(&id).await {
        Ok(node) => node,
        Err(e) if e.kind == crate::error::Kind::Refused => {
            return page_error(StatusCode::NOT_FOUND, &e.message);
        }
        Err(e) => return page_error(StatusCode::BAD_GATEWAY, &e.message),
    };
    let view = NodeView::from_api(&node);
    let logs = recent_logs(&d.session, &node, &view).await;
    html::node_page(&view, &logs).into_response()
}

/// The newest [`LOG_BACKLOG`] entries of the whole log tree of the node, rendered like
/// `metroctl node logs`, or why there are none.
async fn recent_logs(
    session: &Session,
    node: &proto::api::Node,
    view: &NodeView,
) -> std::result::Result<Vec<String>, String> {
    let state = NodeState::try_from(node.state).unwrap_or(NodeState::Invalid);
    if matches!(
        state,
        NodeState::New | NodeState::Standby | NodeState::Decommissioned
    ) {
        return Err(format!(
            "a {} node serves no logs",
            crate::model::state_name(node.state)
        ));
    }
    let Some(address) = &view.address else {
        return Err("the node has not reported its address yet".into());
    };
    let request = GetLogsRequest {
        dn: String::new(),
        filters: vec![LogFilter {
            filter: Some(Filter::WithChildren(WithChildren {})),
        }],
        backlog_mode: BacklogMode::BacklogCount as i32,
        backlog_count: LOG_BACKLOG,
        stream_mode: StreamMode::StreamDisable as i32,
    };
    let read = async {
        let mut client = session
            .node_management(&view.id, address)
            .await
            .map_err(|e| e.message)?;
        let mut stream = client
            .logs(request)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut lines = Vec::new();
        while let Some(response) = stream
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            for entry in response
                .backlog_entries
                .iter()
                .chain(response.stream_entries.iter())
            {
                lines.push(crate::logs::render(entry, false));
            }
        }
        Ok(lines)
    };
    tokio::time::timeout(LOG_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(format!("no logs within {LOG_TIMEOUT:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        let lo: SocketAddr = "127.0.0.1:7850".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:0".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:7850".parse().expect("addr");
        let lan: SocketAddr = "10.1.2.3:7850".parse().expect("addr");
        assert!(check_listen(lo, false).is_ok());
        assert!(check_listen(lo6, false).is_ok());
        for addr in [any, lan] {
            let e = check_listen(addr, false).expect_err("refused");
            assert_eq!(e.kind, crate::error::Kind::Usage);
            assert!(e.message.contains("--allow-remote"), "{}", e.message);
            assert!(check_listen(addr, true).is_ok());
        }
    }

    #[test]
    fn hosts_are_the_pages_own_address() {
        let bound: SocketAddr = "127.0.0.1:4321".parse().expect("addr");
        assert_eq!(
            allowed_hosts(bound),
            vec!["127.0.0.1:4321".to_string(), "localhost:4321".to_string()]
        );
        let bound6: SocketAddr = "[::1]:4321".parse().expect("addr");
        assert_eq!(allowed_hosts(bound6)[0], "[::1]:4321");
    }

    #[test]
    fn member_status_names() {
        assert_eq!(member_status(MemberStatus::Learner as i32), "LEARNER");
        assert_eq!(member_status(MemberStatus::Full as i32), "FULL");
        assert_eq!(member_status(99), "UNKNOWN(99)");
    }
}
