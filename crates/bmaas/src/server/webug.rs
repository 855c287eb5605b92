//! The debug web page ("webug"): a read-only HTML view of the BMDB's machines and their tags.
//!
//! Two pages: `/` lists the machines with their tags (all of them, or those matching a search
//! by machine ID prefix, provider and provider ID), `/machine/<id>` shows one machine with its
//! decoded hardware report, work in progress and work history. Routing is axum's, the HTML is
//! maud's, which escapes every value it interpolates (everything that came from agents is
//! untrusted). The pages carry no script and a Content-Security-Policy that allows none.
//!
//! Connections are served by hyper directly rather than `axum::serve`, for the bounds a
//! debug page that only ever answers a developer's browser should have: at most
//! [`MAX_CONNECTIONS`] at once (more are closed as soon as they are accepted), one request per
//! connection, a request head of at most [`MAX_REQUEST`] bytes, read within
//! [`READ_TIMEOUT`], and the whole exchange within [`CONNECTION_TIMEOUT`]. Only GET (and
//! HEAD) is routed: the page never writes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bmdb::model::{MachineTags, Provider};
use bmdb::queries::MachineSearch;
use bmdb::{SessionKeeper, queries};
use chrono::{DateTime, Utc};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use maud::{DOCTYPE, Markup, html};
use prost::Message;
use proto::cloud::agent::api::{Node, block_device, cpu};
use proto::cloud::bmaas::server::api::{AgentHardwareReport, os_installation_request};
use serde::Deserialize;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::Result;

/// Largest request head we read; a larger one is answered 431.
pub const MAX_REQUEST: usize = 16 << 10;
/// Time a client gets to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection may last in all: request, query, answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(40);
/// Connections served at once; more are closed as soon as they are accepted. Each may run a
/// BMDB query over up to [`INDEX_LIMIT`] machines, and a developer's browser needs a few.
pub const MAX_CONNECTIONS: usize = 32;
/// Machines shown on the index page.
const INDEX_LIMIT: i64 = 1000;
/// No scripts, no frames, no outside resources: only the page's own inline style.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// Serves the page on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    keeper: Arc<SessionKeeper>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(stop);
    let app = router(keeper);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::debug!(%remote, "webug connection refused: {MAX_CONNECTIONS} are open");
                        continue;
                    };
                    let service = TowerToHyperService::new(app.clone());
                    tokio::spawn(async move {
                        let connection = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(READ_TIMEOUT)
                            .max_buf_size(MAX_REQUEST)
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service);
                        match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(%remote, "webug connection: {e}"),
                            Err(_) => tracing::debug!(%remote, "webug connection timed out"),
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("webug accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The page's routes; anything else is 404, any method but GET/HEAD on a route 405.
fn router(keeper: Arc<SessionKeeper>) -> Router {
    Router::new()
        .route("/", get(index_page))
        .route("/machine/{id}", get(machine_page))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(keeper)
}

/// Headers of every answer, errors included.
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
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    let title = status.to_string();
    (status, page(&title, html! { p { (message) } })).into_response()
}

/// The search form's fields; empty fields are not searched for.
#[derive(Debug, Default, Deserialize)]
struct SearchForm {
    #[serde(default)]
    machine: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    provider_id: String,
}

impl SearchForm {
    fn to_search(&self) -> std::result::Result<MachineSearch, String> {
        let machine = self.machine.trim();
        if !machine.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err("a machine ID has only hex digits and hyphens".into());
        }
        let provider = match self.provider.trim() {
            "" => None,
            p => Some(p.parse::<Provider>()?),
        };
        let provider_id = self.provider_id.trim();
        Ok(MachineSearch {
            id_prefix: (!machine.is_empty()).then(|| machine.to_string()),
            provider,
            provider_id: (!provider_id.is_empty()).then(|| provider_id.to_string()),
        })
    }
}

async fn index_page(
    State(keeper): State<Arc<SessionKeeper>>,
    Query(form): Query<SearchForm>,
) -> Response {
    let search = match form.to_search() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    // A complete machine ID is a lookup: go straight to its page.
    if let (Some(id), None, None) = (&search.id_prefix, &search.provider, &search.provider_id)
        && let Ok(id) = Uuid::parse_str(id)
    {
        return axum::response::Redirect::to(&format!("/machine/{id}")).into_response();
    }
    let session = match keeper.get().await {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no BMDB session: {e}"),
            );
        }
    };
    let machines = session
        .transact(|tx| {
            let search = search.clone();
            Box::pin(async move { queries::search_machines(tx, &search, INDEX_LIMIT).await })
        })
        .await;
    match machines {
        Ok(m) => page("machines", index(&form, &search, &m)).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("BMDB: {e}")),
    }
}

async fn machine_page(
    State(keeper): State<Arc<SessionKeeper>>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = Uuid::parse_str(&id) else {
        return error(StatusCode::BAD_REQUEST, "not a machine ID");
    };
    let session = match keeper.get().await {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no BMDB session: {e}"),
            );
        }
    };
    let fetched = session
        .transact(|tx| {
            Box::pin(async move {
                let m = queries::get_machine(tx, id).await?;
                let history = queries::list_history_of(tx, id).await?;
                let work = queries::list_work_of(tx, id).await?;
                Ok((m, history, work))
            })
        })
        .await;
    match fetched {
        Ok((Some(m), history, work)) => page(
            &format!("machine {}", m.machine.machine_id),
            detail(&m, &history, &work),
        )
        .into_response(),
        Ok((None, ..)) => error(StatusCode::NOT_FOUND, "no such machine"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &format!("BMDB: {e}")),
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}\
th{background:#eee}code{font-size:90%}form{margin:0 0 1em}input,select{margin-right:.5em}\
.scroll{overflow-x:auto}";

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " - BMaaS webug" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                h1 { a href="/" { "BMaaS" } ": " (title) }
                (body)
            }
        }
    }
}

fn ago(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds();
    format!("{} ({secs} s ago)", t.format("%Y-%m-%d %H:%M:%S UTC"))
}

fn hardware(m: &MachineTags) -> Option<(Node, Vec<String>)> {
    let raw = &m.hardware_report.as_ref()?.hardware_report_raw;
    let report = AgentHardwareReport::decode(raw.as_slice()).ok()?;
    Some((report.report.unwrap_or_default(), report.warning))
}

fn gib(bytes: i64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn hardware_summary(node: &Node, warnings: usize) -> String {
    let threads: i32 = node.cpu.iter().map(|c| c.hardware_threads).sum();
    let model = node.cpu.first().map(|c| c.model.as_str()).unwrap_or("?");
    format!(
        "{} × {} ({} threads), {} RAM, {} disks, {} NICs{}",
        node.cpu.len(),
        model,
        threads,
        gib(node.memory_installed_bytes),
        node.block_device.len(),
        node.network_interface.len(),
        if warnings > 0 {
            format!(", {warnings} warnings")
        } else {
            String::new()
        }
    )
}

fn search_form(form: &SearchForm) -> Markup {
    html! {
        form method="get" action="/" {
            label { "Machine ID " input type="search" name="machine" value=(form.machine)
                placeholder="prefix or full ID"; }
            label { "Provider "
                select name="provider" {
                    option value="" { "any" }
                    @for p in Provider::ALL {
                        option value=(p.as_str()) selected[form.provider.eq_ignore_ascii_case(p.as_str())] { (p.as_str()) }
                    }
                }
            }
            label { "Provider ID " input type="search" name="provider_id" value=(form.provider_id); }
            button type="submit" { "Search" }
        }
    }
}

fn index(form: &SearchForm, search: &MachineSearch, machines: &[MachineTags]) -> Markup {
    let searching = *search != MachineSearch::default();
    html! {
        (search_form(form))
        p {
            (machines.len()) " machines"
            @if searching { " matching" }
            " (at most " (INDEX_LIMIT) " shown)."
            @if searching { " " a href="/" { "All machines" } }
        }
        div.scroll { table {
            tr {
                th { "Machine" } th { "Created" } th { "Provided" } th { "Agent started" }
                th { "Heartbeat" } th { "Hardware" } th { "Installation request" }
                th { "Installation report" }
            }
            @for m in machines {
                @let id = m.machine.machine_id;
                tr {
                    td { a href={ "/machine/" (id) } { code { (id) } } }
                    td { (ago(m.machine.machine_created_at)) }
                    td { @if let Some(p) = &m.provided { (p.provider) " " (p.provider_id) } }
                    td { @if let Some(a) = &m.agent_started {
                        (ago(a.agent_started_at)) br; code { (hex::encode(&a.agent_public_key)) }
                    } }
                    td { @if let Some(h) = &m.agent_heartbeat { (ago(h.agent_heartbeat_at)) } }
                    td { @match (&m.hardware_report, hardware(m)) {
                        (None, _) => {},
                        (Some(_), None) => { "(does not decode)" },
                        (Some(_), Some((node, w))) => { (hardware_summary(&node, w.len())) },
                    } }
                    td { @if let Some(r) = &m.os_installation_request { "generation " (r.generation) } }
                    td { @if let Some(r) = &m.os_installation_report {
                        "generation " (r.generation) ": " (r.os_installation_result)
                    } }
                }
            }
        } }
    }
}

fn detail(
    m: &MachineTags,
    history: &[bmdb::model::WorkHistory],
    work: &[bmdb::model::WorkRow],
) -> Markup {
    let install_target = m.os_installation_request.as_ref().map(|r| {
        proto::cloud::bmaas::server::api::OsInstallationRequest::decode(
            r.os_installation_request_raw.as_slice(),
        )
        .ok()
        .and_then(|req| match req.r#type {
            Some(os_installation_request::Type::Metropolis(m)) => Some(m.root_device),
            None => None,
        })
        .unwrap_or_default()
    });
    let install_error = m.os_installation_report.as_ref().and_then(|r| {
        match proto::cloud::bmaas::server::api::OsInstallationReport::decode(
            r.os_installation_report_raw.as_slice(),
        )
        .ok()
        .and_then(|r| r.result)
        {
            Some(proto::cloud::bmaas::server::api::os_installation_report::Result::Error(e)) => {
                Some(e.error)
            }
            _ => None,
        }
    });
    html! {
        p { "Created " (ago(m.machine.machine_created_at)) "." }
        @if let Some(p) = &m.provided {
            p {
                "Provided by " (p.provider) " as " code { (p.provider_id) }
                @if let Some(s) = p.provider_status { ", status " (s) }
                "."
            }
        }
        @if let Some(a) = &m.agent_started {
            p {
                "Agent started " (ago(a.agent_started_at)) " with key "
                code { (hex::encode(&a.agent_public_key)) } "."
            }
        }
        @if let Some(h) = &m.agent_heartbeat {
            p { "Last heartbeat " (ago(h.agent_heartbeat_at)) "." }
        }
        @if let Some((node, warnings)) = hardware(m) {
            (hardware_tables(&node, &warnings))
        } @else if m.hardware_report.is_some() {
            p { "Hardware report does not decode." }
        }
        @if let (Some(r), Some(target)) = (&m.os_installation_request, &install_target) {
            p {
                "Installation requested: generation " (r.generation) ", root device "
                code { (target) } "."
            }
        }
        @if let Some(r) = &m.os_installation_report {
            p {
                "Installation reported: generation " (r.generation) ", " (r.os_installation_result)
                @if let Some(e) = &install_error { ": " (e) }
                "."
            }
        }
        h2 { "Work in progress" }
        table {
            tr { th { "Process" } th { "Session" } }
            @for w in work {
                tr { td { (w.process) } td { code { (w.session_id) } } }
            }
        }
        h2 { "Work history" }
        div.scroll { table {
            tr { th { "Time" } th { "Process" } th { "Event" } th { "Cause" } }
            @for h in history {
                tr {
                    td { (h.timestamp.format("%Y-%m-%d %H:%M:%S UTC")) }
                    td { (h.process) }
                    td { (h.event) }
                    td { (h.failed_cause.as_deref().unwrap_or_default()) }
                }
            }
        } }
    }
}

fn hardware_tables(node: &Node, warnings: &[String]) -> Markup {
    html! {
        h2 { "Hardware" }
        p {
            (node.manufacturer) " " (node.product) " (serial " code { (node.serial_number) } "), EFI "
            (format!("{:?}", node.efi_support())) ", memory " (gib(node.memory_installed_bytes))
            " installed, usable ratio " (format!("{:.2}", node.memory_usable_ratio)) "."
        }
        div.scroll { table {
            tr { th { "CPU" } th { "Vendor" } th { "Cores" } th { "Threads" } th { "Family/model/stepping" } }
            @for c in &node.cpu {
                tr {
                    td { (c.model) } td { (c.vendor) } td { (c.cores) } td { (c.hardware_threads) }
                    td { @match &c.architecture {
                        Some(cpu::Architecture::X8664(x)) => { (x.family) "/" (x.model) "/" (x.stepping) },
                        None => {},
                    } }
                }
            }
        } }
        br;
        div.scroll { table {
            tr {
                th { "Disk" } th { "Serial" } th { "Capacity" } th { "Blocks (logical/physical)" }
                th { "Protocol" } th { "Rotational" }
            }
            @for d in &node.block_device {
                tr {
                    td { (d.vendor) " " (d.device_model) }
                    td { code { (d.serial_number) } }
                    td { (gib(d.capacity_bytes)) }
                    td { (d.logical_block_size_bytes) "/" (d.physical_block_size_bytes) }
                    td { (block_device::Protocol::try_from(d.protocol)
                            .map(|p| format!("{p:?}"))
                            .unwrap_or_else(|_| d.protocol.to_string())) }
                    td { (d.rotational) }
                }
            }
        } }
        br;
        div.scroll { table {
            tr { th { "NIC" } th { "Driver" } th { "Link" } th { "Speed" } }
            @for n in &node.network_interface {
                tr {
                    td { code { (n.mac.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")) } }
                    td { (n.driver) }
                    td { @if n.link_up { "up" } @else { "down" } }
                    td { (n.current_speed_bytes * 8 / 1_000_000) " Mbit/s" }
                }
            }
        } }
        @if !warnings.is_empty() {
            h3 { "Report warnings" }
            ul { @for w in warnings { li { (w) } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_agent_input() {
        let node = Node {
            manufacturer: "<script>&\"'".into(),
            ..Default::default()
        };
        let html = hardware_tables(&node, &["<b>".into()]).into_string();
        assert!(html.contains("&lt;script&gt;&amp;&quot;'"), "{html}");
        assert!(html.contains("&lt;b&gt;"), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
    }

    #[test]
    fn search_form_refuses_what_is_not_an_id_or_provider() {
        let form = |machine: &str, provider: &str| SearchForm {
            machine: machine.into(),
            provider: provider.into(),
            provider_id: String::new(),
        };
        assert!(form("12ab-", "").to_search().is_ok());
        assert!(form("%", "").to_search().is_err());
        assert!(form("x", "").to_search().is_err());
        assert!(form("", "Nowhere").to_search().is_err());
        let s = form("", "equinix").to_search().expect("a provider");
        assert_eq!(s.provider, Some(Provider::Equinix));
        assert_eq!(s.id_prefix, None);
    }
}
