//! The debug web page ("webug"): a read-only HTML view of the BMDB's machines and their tags.
//!
//! Two pages: `/` lists every machine with its tags, `/machine/<id>` shows one machine with
//! its decoded hardware report and work history. It is served by a deliberately tiny HTTP/1.1
//! responder (one GET per connection, no keep-alive, bounded request size and time) rather
//! than a web framework: it only ever answers a handful of GETs from a developer's browser, so
//! it serves at most [`MAX_CONNECTIONS`] at once.
//! Everything that came from agents is HTML-escaped.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bmdb::model::MachineTags;
use bmdb::{SessionKeeper, queries};
use chrono::{DateTime, Utc};
use prost::Message;
use proto::cloud::agent::api::{Node, block_device, cpu};
use proto::cloud::bmaas::server::api::{AgentHardwareReport, os_installation_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::Result;

/// Largest request head we read.
const MAX_REQUEST: usize = 16 << 10;
/// Time a client gets to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are closed as soon as they are accepted. Each may run a
/// BMDB query over up to [`INDEX_LIMIT`] machines, and a developer's browser needs a few.
pub const MAX_CONNECTIONS: usize = 32;
/// Machines shown on the index page.
const INDEX_LIMIT: i64 = 1000;

/// Serves the page on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    keeper: Arc<SessionKeeper>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(stop);
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
                    let keeper = keeper.clone();
                    tokio::spawn(async move {
                        handle(stream, keeper).await;
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

struct Reply {
    status: &'static str,
    body: String,
}

async fn handle(mut stream: TcpStream, keeper: Arc<SessionKeeper>) {
    let reply = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => route(&head, &keeper).await,
        Ok(Err(reply)) => reply,
        Err(_) => return,
    };
    let response = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{}",
        reply.status,
        reply.body.len(),
        reply.body
    );
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads up to the end of the request head.
async fn read_head(stream: &mut TcpStream) -> Result<String, Reply> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| error("400 Bad Request", "read failed"))?;
        if n == 0 {
            return Err(error("400 Bad Request", "incomplete request"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_REQUEST {
            return Err(error(
                "431 Request Header Fields Too Large",
                "request too large",
            ));
        }
    }
}

fn error(status: &'static str, message: &str) -> Reply {
    Reply {
        status,
        body: page(status, &format!("<p>{}</p>", esc(message))),
    }
}

async fn route(head: &str, keeper: &SessionKeeper) -> Reply {
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != "GET" {
        return error("405 Method Not Allowed", "read-only: GET only");
    }
    let path = target.split('?').next().unwrap_or_default();
    let session = match keeper.get().await {
        Ok(s) => s,
        Err(e) => return error("503 Service Unavailable", &format!("no BMDB session: {e}")),
    };
    if path == "/" {
        let machines = session
            .transact(|tx| {
                Box::pin(async move { queries::list_machines(tx, None, INDEX_LIMIT).await })
            })
            .await;
        return match machines {
            Ok(m) => Reply {
                status: "200 OK",
                body: index(&m),
            },
            Err(e) => error("503 Service Unavailable", &format!("BMDB: {e}")),
        };
    }
    if let Some(id) = path.strip_prefix("/machine/") {
        let Ok(id) = Uuid::parse_str(id) else {
            return error("400 Bad Request", "not a machine ID");
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
        return match fetched {
            Ok((Some(m), history, work)) => Reply {
                status: "200 OK",
                body: detail(&m, &history, &work),
            },
            Ok((None, ..)) => error("404 Not Found", "no such machine"),
            Err(e) => error("503 Service Unavailable", &format!("BMDB: {e}")),
        };
    }
    error("404 Not Found", "no such page")
}

/// HTML-escapes text.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{} - BMaaS webug</title>\
         <style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}}\
         th{{background:#eee}}code{{font-size:90%}}</style></head><body>\
         <h1><a href=\"/\">BMaaS</a>: {}</h1>{body}</body></html>",
        esc(title),
        esc(title)
    )
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

fn index(machines: &[MachineTags]) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>{} machines (at most {INDEX_LIMIT} shown).</p><table><tr><th>Machine</th>\
         <th>Created</th><th>Provided</th><th>Agent started</th><th>Heartbeat</th>\
         <th>Hardware</th><th>Installation request</th><th>Installation report</th></tr>",
        machines.len()
    );
    for m in machines {
        let id = m.machine.machine_id;
        let provided = m
            .provided
            .as_ref()
            .map(|p| format!("{} {}", p.provider, esc(&p.provider_id)))
            .unwrap_or_default();
        let started = m
            .agent_started
            .as_ref()
            .map(|a| {
                format!(
                    "{}<br><code>{}</code>",
                    ago(a.agent_started_at),
                    hex::encode(&a.agent_public_key)
                )
            })
            .unwrap_or_default();
        let heartbeat = m
            .agent_heartbeat
            .as_ref()
            .map(|h| ago(h.agent_heartbeat_at))
            .unwrap_or_default();
        let hw = match (&m.hardware_report, hardware(m)) {
            (None, _) => String::new(),
            (Some(_), None) => "(does not decode)".into(),
            (Some(_), Some((node, w))) => esc(&hardware_summary(&node, w.len())),
        };
        let request = m
            .os_installation_request
            .as_ref()
            .map(|r| format!("generation {}", r.generation))
            .unwrap_or_default();
        let report = m
            .os_installation_report
            .as_ref()
            .map(|r| format!("generation {}: {}", r.generation, r.os_installation_result))
            .unwrap_or_default();
        let _ = write!(
            b,
            "<tr><td><a href=\"/machine/{id}\"><code>{id}</code></a></td><td>{}</td><td>{provided}</td>\
             <td>{started}</td><td>{heartbeat}</td><td>{hw}</td><td>{request}</td><td>{report}</td></tr>",
            ago(m.machine.machine_created_at)
        );
    }
    b.push_str("</table>");
    page("machines", &b)
}

fn detail(
    m: &MachineTags,
    history: &[bmdb::model::WorkHistory],
    work: &[bmdb::model::WorkRow],
) -> String {
    let mut b = String::new();
    let _ = write!(b, "<p>Created {}.</p>", ago(m.machine.machine_created_at));
    if let Some(p) = &m.provided {
        let _ = write!(
            b,
            "<p>Provided by {} as <code>{}</code>{}.</p>",
            p.provider,
            esc(&p.provider_id),
            p.provider_status
                .map(|s| format!(", status {s}"))
                .unwrap_or_default()
        );
    }
    if let Some(a) = &m.agent_started {
        let _ = write!(
            b,
            "<p>Agent started {} with key <code>{}</code>.</p>",
            ago(a.agent_started_at),
            hex::encode(&a.agent_public_key)
        );
    }
    if let Some(h) = &m.agent_heartbeat {
        let _ = write!(b, "<p>Last heartbeat {}.</p>", ago(h.agent_heartbeat_at));
    }
    if let Some((node, warnings)) = hardware(m) {
        b.push_str(&hardware_tables(&node, &warnings));
    } else if m.hardware_report.is_some() {
        b.push_str("<p>Hardware report does not decode.</p>");
    }
    if let Some(r) = &m.os_installation_request {
        let target = proto::cloud::bmaas::server::api::OsInstallationRequest::decode(
            r.os_installation_request_raw.as_slice(),
        )
        .ok()
        .and_then(|req| match req.r#type {
            Some(os_installation_request::Type::Metropolis(m)) => Some(m.root_device),
            None => None,
        })
        .unwrap_or_default();
        let _ = write!(
            b,
            "<p>Installation requested: generation {}, root device <code>{}</code>.</p>",
            r.generation,
            esc(&target)
        );
    }
    if let Some(r) = &m.os_installation_report {
        let report = proto::cloud::bmaas::server::api::OsInstallationReport::decode(
            r.os_installation_report_raw.as_slice(),
        )
        .ok();
        let error = match report.and_then(|r| r.result) {
            Some(proto::cloud::bmaas::server::api::os_installation_report::Result::Error(e)) => {
                format!(": {}", esc(&e.error))
            }
            _ => String::new(),
        };
        let _ = write!(
            b,
            "<p>Installation reported: generation {}, {}{error}.</p>",
            r.generation, r.os_installation_result
        );
    }
    b.push_str("<h2>Work in progress</h2><table><tr><th>Process</th><th>Session</th></tr>");
    for w in work {
        let _ = write!(
            b,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            w.process, w.session_id
        );
    }
    b.push_str("</table><h2>Work history</h2><table><tr><th>Time</th><th>Process</th><th>Event</th><th>Cause</th></tr>");
    for h in history {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            h.timestamp.format("%Y-%m-%d %H:%M:%S UTC"),
            h.process,
            h.event,
            esc(h.failed_cause.as_deref().unwrap_or_default())
        );
    }
    b.push_str("</table>");
    page(&format!("machine {}", m.machine.machine_id), &b)
}

fn hardware_tables(node: &Node, warnings: &[String]) -> String {
    let mut b = String::from("<h2>Hardware</h2>");
    let _ = write!(
        b,
        "<p>{} {} (serial <code>{}</code>), EFI {:?}, memory {} installed, usable ratio {:.2}.</p>",
        esc(&node.manufacturer),
        esc(&node.product),
        esc(&node.serial_number),
        node.efi_support(),
        gib(node.memory_installed_bytes),
        node.memory_usable_ratio
    );
    b.push_str("<table><tr><th>CPU</th><th>Vendor</th><th>Cores</th><th>Threads</th><th>Family/model/stepping</th></tr>");
    for c in &node.cpu {
        let fms = match &c.architecture {
            Some(cpu::Architecture::X8664(x)) => format!("{}/{}/{}", x.family, x.model, x.stepping),
            None => String::new(),
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{fms}</td></tr>",
            esc(&c.model),
            esc(&c.vendor),
            c.cores,
            c.hardware_threads
        );
    }
    b.push_str("</table><br><table><tr><th>Disk</th><th>Serial</th><th>Capacity</th><th>Blocks (logical/physical)</th><th>Protocol</th><th>Rotational</th></tr>");
    for d in &node.block_device {
        let protocol = block_device::Protocol::try_from(d.protocol)
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|_| d.protocol.to_string());
        let _ = write!(
            b,
            "<tr><td>{} {}</td><td><code>{}</code></td><td>{}</td><td>{}/{}</td><td>{protocol}</td><td>{}</td></tr>",
            esc(&d.vendor),
            esc(&d.device_model),
            esc(&d.serial_number),
            gib(d.capacity_bytes),
            d.logical_block_size_bytes,
            d.physical_block_size_bytes,
            d.rotational
        );
    }
    b.push_str(
        "</table><br><table><tr><th>NIC</th><th>Driver</th><th>Link</th><th>Speed</th></tr>",
    );
    for n in &node.network_interface {
        let mac: Vec<String> = n.mac.iter().map(|x| format!("{x:02x}")).collect();
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{} Mbit/s</td></tr>",
            mac.join(":"),
            esc(&n.driver),
            if n.link_up { "up" } else { "down" },
            n.current_speed_bytes * 8 / 1_000_000
        );
    }
    b.push_str("</table>");
    if !warnings.is_empty() {
        b.push_str("<h3>Report warnings</h3><ul>");
        for w in warnings {
            let _ = write!(b, "<li>{}</li>", esc(w));
        }
        b.push_str("</ul>");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_agent_input() {
        assert_eq!(esc("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
    }
}
