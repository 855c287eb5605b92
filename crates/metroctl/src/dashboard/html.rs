//! The dashboard's HTML (maud: every interpolated value is escaped). The live part of the
//! index page ([`live`]) is also what the event stream pushes.
//!
//! Stable hooks for scripts and tests: the nodes table is `#nodes`, each node row carries
//! `data-node` (ID) and `data-state`; the consensus table is `#consensus`; the live part is
//! `#live`.

use maud::{DOCTYPE, Markup, html};

use super::{LOG_BACKLOG, Snapshot};
use crate::model::NodeView;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Metropolis" }
                link rel="stylesheet" href="/style.css";
            }
            body { (body) }
        }
    }
}

/// A page that only says what went wrong.
pub fn error_page(title: &str, message: &str) -> Markup {
    layout(
        title,
        html! {
            p { a href="/" { "← all nodes" } }
            h1 { (title) }
            p.error { (message) }
        },
    )
}

/// The live part when the cluster could not be watched at all.
pub fn error_fragment(message: &str) -> Markup {
    html! { p.error { (message) } }
}

/// `/`: filter box, then the live part, then the script that keeps it live.
pub fn index_page(filter: &str, snap: &Snapshot) -> Markup {
    layout(
        "Cluster",
        html! {
            h1 { "Metropolis cluster " span #conn .conn { "static" } }
            form method="get" action="/" {
                input type="search" name="filter" value=(filter) aria-label="CEL filter"
                    placeholder="CEL filter, e.g. node.state == NODE_STATE_UP";
                button type="submit" { "Filter" }
                @if !filter.is_empty() { a href="/" { "clear" } }
            }
            div #live { (live(snap)) }
            script src="/app.js" {}
        },
    )
}

fn heartbeat(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) => format!("{:.0}m", s / 60.0),
        None => "never".into(),
    }
}

/// Leader, nodes and consensus members.
pub fn live(snap: &Snapshot) -> Markup {
    let leader_id = snap.leader.as_ref().map(|(id, _)| id.as_str());
    html! {
        p.meta {
            "Curator leader: "
            @match &snap.leader {
                Some((id, endpoint)) => {
                    a #leader href={ "/node/" (id) } { code { (id) } } " (" (endpoint) ")"
                }
                None => { "not known yet" }
            }
            " · updated " (snap.taken_at.format("%H:%M:%S"))
        }
        h2 { "Nodes" }
        @match &snap.nodes {
            Err(e) => { p.error #nodes-error { (e) } }
            Ok(nodes) => {
                p.meta { (nodes.len()) " nodes" }
                div.scroll { table #nodes .cards {
                    thead { tr {
                        th { "Node ID" } th { "State" } th { "Health" } th { "Roles" }
                        th { "Address" } th { "Version" } th { "Heartbeat" } th { "Labels" }
                    } }
                    tbody {
                        @for n in nodes { (node_row(n, leader_id)) }
                    }
                } }
            }
        }
        h2 { "Consensus" }
        @match &snap.consensus {
            Err(e) => { p.error { (e) } }
            Ok(members) => {
                div.scroll { table #consensus .cards {
                    thead { tr { th { "Member" } th { "etcd" } th { "Curator" } } }
                    tbody {
                        @for m in members {
                            tr data-member=(m.id) {
                                td data-label="Member" { a href={ "/node/" (m.id) } { code { (m.id) } } }
                                td data-label="etcd" { (m.status) }
                                td data-label="Curator" { @if Some(m.id.as_str()) == leader_id { "leader" } }
                            }
                        }
                    }
                } }
            }
        }
    }
}

fn node_row(n: &NodeView, leader_id: Option<&str>) -> Markup {
    html! {
        tr data-node=(n.id) data-state=(n.state) {
            td data-label="Node ID" {
                a href={ "/node/" (n.id) } { code { (n.id) } }
                @if Some(n.id.as_str()) == leader_id { " ★" }
            }
            td data-label="State" class={ "state s-" (n.state) } { (n.state) }
            td data-label="Health" class={ "h-" (n.health) } { (n.health) }
            td data-label="Roles" { (n.roles.join(", ")) }
            td data-label="Address" { (n.address.as_deref().unwrap_or("")) }
            td data-label="Version" { (n.version.as_deref().unwrap_or("")) }
            td data-label="Heartbeat" { (heartbeat(n.time_since_heartbeat_seconds)) }
            td.labels data-label="Labels" { @for (k, v) in &n.labels { code { (k) "=" (v) } } }
        }
    }
}

/// `/node/<id>`: the node and its recent logs.
pub fn node_page(n: &NodeView, logs: &Result<Vec<String>, String>) -> Markup {
    layout(
        &n.id,
        html! {
            p { a href="/" { "← all nodes" } }
            h1 { code { (n.id) } }
            div.scroll { table #node {
                tr { th { "State" } td class={ "state s-" (n.state) } { (n.state) } }
                tr { th { "Health" } td class={ "h-" (n.health) } { (n.health) } }
                tr { th { "Roles" } td { (n.roles.join(", ")) } }
                tr { th { "Address" } td { (n.address.as_deref().unwrap_or("")) } }
                tr { th { "Version" } td { (n.version.as_deref().unwrap_or("")) } }
                tr { th { "Heartbeat" } td { (heartbeat(n.time_since_heartbeat_seconds)) } }
                tr { th { "Curator" } td { @if n.running_curator { "running" } @else { "no" } } }
                tr { th { "TPM" } td { (n.tpm_usage) } }
                tr { th { "Labels" } td.labels { @for (k, v) in &n.labels { code { (k) "=" (v) } } } }
                tr { th { "Public key" } td { code { (n.pubkey) } } }
            } }
            h2 { "Recent logs" }
            @match logs {
                Ok(lines) => {
                    p.meta { "The newest " (LOG_BACKLOG) " entries; metroctl node logs "
                        (n.id) " -f follows them." }
                    pre #logs { @for l in lines { (l) "\n" } }
                }
                Err(e) => { p.error #logs-error { (e) } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn view(id: &str, state: &str) -> NodeView {
        NodeView {
            id: id.into(),
            pubkey: "00".into(),
            state: state.into(),
            address: Some("10.0.0.1".into()),
            health: "HEALTHY".into(),
            roles: vec!["ConsensusMember".into()],
            tpm_usage: "NOT_PRESENT".into(),
            time_since_heartbeat_seconds: Some(2.4),
            running_curator: true,
            version: Some("0.1.0".into()),
            labels: BTreeMap::from([("rack".to_string(), "<b>r1</b>".to_string())]),
        }
    }

    #[test]
    fn live_part_shows_nodes_leader_members_and_escapes() {
        let snap = Snapshot {
            nodes: Ok(vec![
                view("metropolis-aa", "UP"),
                view("metropolis-bb", "NEW"),
            ]),
            leader: Some(("metropolis-aa".into(), "10.0.0.1:7835".into())),
            consensus: Ok(vec![super::super::Member {
                id: "metropolis-aa".into(),
                status: "FULL".into(),
            }]),
            taken_at: chrono::Local::now(),
        };
        let html = live(&snap).into_string();
        assert!(
            html.contains(r#"<tr data-node="metropolis-bb" data-state="NEW">"#),
            "{html}"
        );
        assert!(html.contains(r#"id="leader""#), "{html}");
        assert!(
            html.contains(r#"<tr data-member="metropolis-aa">"#),
            "{html}"
        );
        assert!(html.contains("rack=&lt;b&gt;r1&lt;/b&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("2s"), "{html}");
    }

    #[test]
    fn a_refused_filter_is_shown() {
        let snap = Snapshot {
            nodes: Err("the cluster rejected the filter \"<x>\"".into()),
            leader: None,
            consensus: Ok(Vec::new()),
            taken_at: chrono::Local::now(),
        };
        let html = index_page("<x>", &snap).into_string();
        assert!(
            html.contains("rejected the filter &quot;&lt;x&gt;&quot;"),
            "{html}"
        );
        assert!(html.contains(r#"value="&lt;x&gt;""#), "{html}");
        assert!(html.contains(r#"name="viewport""#), "{html}");
    }
}
