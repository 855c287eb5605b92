//! `metroctl node list` / `node describe`, once or with `--watch` (Curator.Watch of all
//! nodes: re-render on every change, never poll).

use std::io::IsTerminal;
use std::time::Duration;

use proto::curator_api::curator_client::CuratorClient;
use proto::curator_api::watch_event::Progress;
use proto::curator_api::watch_request::{Kind as WatchKind, NodesInCluster};
use proto::curator_api::{WatchEvent, WatchRequest};
use tonic::Streaming;

use super::Env;
use crate::cli::{Format, SelectArgs};
use crate::error::{Error, Result};
use crate::model::NodeView;
use crate::output::{Column, nodes_doc, nodes_table, parse_columns, render_doc};
use crate::session::{Session, check_node_id, unknown_node};

/// Pause before re-opening a watch that broke (leader change).
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

/// What to show, resolved from the arguments.
struct Selection {
    ids: Vec<String>,
    filter: String,
    columns: Vec<Column>,
}

pub async fn run(env: &Env, args: &SelectArgs, list: bool) -> Result<()> {
    let selection = select(env.format, args, list)?;
    let session = env.ctx.owner_session().await?;
    if args.watch {
        return watch(env, &session, &selection).await;
    }
    let nodes = fetch(&session, &selection, true).await?;
    env.output
        .write_document(&render(env.format, &nodes, &selection.columns))
}

fn select(format: Format, args: &SelectArgs, list: bool) -> Result<Selection> {
    let ids: Vec<String> = args
        .ids
        .iter()
        .filter(|id| id.as_str() != "all")
        .cloned()
        .collect();
    for id in &ids {
        check_node_id(id)?;
    }
    let columns = if !args.columns.is_empty() {
        parse_columns(&args.columns)?
    } else if list {
        vec![Column::Id]
    } else if format == Format::Table {
        Column::DESCRIBE.to_vec()
    } else {
        // Scripts get everything unless they ask for less.
        Column::ALL.to_vec()
    };
    if columns.is_empty() {
        return Err(Error::usage("--columns selects no column"));
    }
    Ok(Selection {
        ids,
        filter: args.filter.clone().unwrap_or_default(),
        columns,
    })
}

/// The selected nodes, sorted by ID. With `strict`, IDs the cluster does not have are an
/// error (unless a filter may have excluded them).
async fn fetch(session: &Session, selection: &Selection, strict: bool) -> Result<Vec<NodeView>> {
    let nodes = session.nodes(&selection.filter).await?;
    let mut views: Vec<NodeView> = nodes.iter().map(NodeView::from_api).collect();
    if !selection.ids.is_empty() {
        if strict && selection.filter.is_empty() {
            for id in &selection.ids {
                if !views.iter().any(|v| &v.id == id) {
                    return Err(unknown_node(id));
                }
            }
        }
        views.retain(|v| selection.ids.contains(&v.id));
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(views)
}

fn render(format: Format, nodes: &[NodeView], columns: &[Column]) -> String {
    render_doc(format, &nodes_doc(nodes, columns), || {
        nodes_table(nodes, columns)
    })
}

/// Renders now and after every change, until interrupted or the cluster refuses.
async fn watch(env: &Env, session: &Session, selection: &Selection) -> Result<()> {
    let mut renderer = WatchRenderer::new(env);
    loop {
        let mut stream = open_watch(session).await?;
        let mut backlogged = false;
        loop {
            let event: WatchEvent = match stream.message().await {
                Ok(Some(event)) => event,
                // Leadership moved or the connection broke: watch again on the new leader.
                Ok(None) => break,
                Err(status) if rpc::is_transient(status.code()) => break,
                Err(status) => return Err(Error::from_status("watching nodes", &status)),
            };
            if event.progress == Progress::LastBacklogged as i32 {
                backlogged = true;
            }
            if !backlogged {
                continue;
            }
            if !relevant(&event, &selection.ids) {
                continue;
            }
            // Health and heartbeat ages live in the leader's memory, not in the watched
            // records: the rendered state comes from GetNodes.
            let nodes = fetch(session, selection, false).await?;
            renderer.show(&nodes, &selection.columns)?;
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
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

/// Whether an event concerns a shown node (all nodes if no IDs were given). The first
/// event after the backlog is always relevant: it triggers the first rendering.
fn relevant(event: &WatchEvent, ids: &[String]) -> bool {
    if ids.is_empty() || event.progress == Progress::LastBacklogged as i32 {
        return true;
    }
    event.nodes.iter().any(|n| ids.contains(&n.id))
        || event
            .node_tombstones
            .iter()
            .any(|t| ids.contains(&t.node_id))
}

/// Writes successive renderings: a redrawn screen on a terminal, one JSON document per line,
/// YAML documents separated by `---`, tables separated by a blank line, or a file rewritten
/// in place.
struct WatchRenderer<'a> {
    env: &'a Env,
    redraw: bool,
    count: usize,
}

impl<'a> WatchRenderer<'a> {
    fn new(env: &'a Env) -> Self {
        let redraw =
            env.format == Format::Table && !env.output.is_file() && std::io::stdout().is_terminal();
        WatchRenderer {
            env,
            redraw,
            count: 0,
        }
    }

    fn show(&mut self, nodes: &[NodeView], columns: &[Column]) -> Result<()> {
        self.count += 1;
        let text = if self.env.output.is_file() {
            render(self.env.format, nodes, columns)
        } else {
            match self.env.format {
                Format::Json => {
                    let mut line = nodes_doc(nodes, columns).to_json();
                    line.push('\n');
                    line
                }
                Format::Yaml => format!("---\n{}", render(Format::Yaml, nodes, columns)),
                Format::Table if self.redraw => {
                    format!("\x1b[H\x1b[2J{}\n{}", header(), nodes_table(nodes, columns))
                }
                Format::Table if self.count > 1 => format!("\n{}", nodes_table(nodes, columns)),
                Format::Table => nodes_table(nodes, columns),
            }
        };
        self.env.output.write_document(&text)
    }
}

fn header() -> String {
    format!(
        "Watching nodes ({}), Ctrl-C to stop",
        chrono::Local::now().format("%H:%M:%S")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::curator_api::watch_event::NodeTombstone;

    fn args(ids: &[&str], columns: &[&str]) -> SelectArgs {
        SelectArgs {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            filter: None,
            columns: columns.iter().map(|s| s.to_string()).collect(),
            watch: false,
        }
    }

    #[test]
    fn default_columns_per_command_and_format() {
        assert_eq!(
            select(Format::Table, &args(&[], &[]), true)
                .expect("ok")
                .columns,
            vec![Column::Id]
        );
        assert_eq!(
            select(Format::Table, &args(&[], &[]), false)
                .expect("ok")
                .columns,
            Column::DESCRIBE.to_vec()
        );
        assert_eq!(
            select(Format::Json, &args(&[], &[]), false)
                .expect("ok")
                .columns,
            Column::ALL.to_vec()
        );
        assert_eq!(
            select(Format::Json, &args(&[], &["id", "state"]), false)
                .expect("ok")
                .columns,
            vec![Column::Id, Column::State]
        );
    }

    #[test]
    fn all_means_every_node_and_bad_ids_are_usage_errors() {
        assert!(
            select(Format::Table, &args(&["all"], &[]), false)
                .expect("ok")
                .ids
                .is_empty()
        );
        let e = select(Format::Table, &args(&["nope"], &[]), false)
            .err()
            .expect("invalid id");
        assert_eq!(e.kind, crate::error::Kind::Usage);
    }

    #[test]
    fn events_about_other_nodes_are_skipped() {
        let ids = vec!["metropolis-aa".to_string()];
        let other = WatchEvent {
            nodes: vec![proto::curator_api::Node {
                id: "metropolis-bb".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!relevant(&other, &ids));
        assert!(relevant(&other, &[]));
        let gone = WatchEvent {
            node_tombstones: vec![NodeTombstone {
                node_id: "metropolis-aa".into(),
            }],
            ..Default::default()
        };
        assert!(relevant(&gone, &ids));
        let backlog_done = WatchEvent {
            progress: Progress::LastBacklogged as i32,
            ..Default::default()
        };
        assert!(relevant(&backlog_done, &ids));
    }
}
