//! `metroctl node logs <id>`: NodeManagement.Logs on the node itself (port 7839, verified to
//! be that node of the pinned cluster), rendered like upstream.

use proto::api::GetLogsRequest;
use proto::api::get_logs_request::{BacklogMode, StreamMode};
use proto::common::log_filter::{Filter, WithChildren};
use proto::common::{LogFilter, NodeState};

use super::Env;
use crate::error::{Error, Result};
use crate::logs::render;
use crate::session::check_node_id;

/// `node logs` flags.
#[derive(Debug, Clone)]
pub struct Options {
    pub dn: String,
    pub exact: bool,
    pub follow: bool,
    pub backlog: i64,
    pub concise: bool,
}

pub async fn run(env: &Env, id: &str, opts: Options) -> Result<()> {
    check_node_id(id)?;
    let request = request(&opts)?;
    let session = env.ctx.owner_session().await?;
    let node = session.node(id).await?;
    check_serves_logs(id, &node)?;
    let address = node
        .status
        .as_ref()
        .map(|s| s.external_address.clone())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            Error::refused(format!(
                "node {id} has not reported its address yet, so its logs cannot be fetched; \
                 try again shortly (metroctl node describe {id} shows it)"
            ))
        })?;
    let what = format!("reading the logs of node {id}");
    let mut client = session.node_management(id, &address).await?;
    let mut stream = client
        .logs(request)
        .await
        .map_err(|s| Error::from_status(&what, &s))?
        .into_inner();
    let mut out = env.output.stream()?;
    out.write(&format!("=== Logs from {id} ({address}):\n"))?;
    while let Some(response) = stream
        .message()
        .await
        .map_err(|s| Error::from_status(&what, &s))?
    {
        let mut text = String::new();
        for entry in response
            .backlog_entries
            .iter()
            .chain(response.stream_entries.iter())
        {
            text.push_str(&render(entry, opts.concise));
            text.push('\n');
        }
        out.write(&text)?;
    }
    out.write("=== Done.\n")
}

/// The Logs request for these flags: backlog -1 = all, 0 = none, N = newest N;
/// not exact = with children; follow = unbuffered stream.
pub fn request(opts: &Options) -> Result<GetLogsRequest> {
    if !opts.dn.is_empty() {
        logtree::Dn::new(opts.dn.clone())
            .map_err(|e| Error::usage(format!("invalid --dn {:?}: {e}", opts.dn)))?;
    }
    let (backlog_mode, backlog_count) = match opts.backlog {
        -1 => (BacklogMode::BacklogAll, 0),
        0 => (BacklogMode::BacklogDisable, 0),
        n if n > 0 => (BacklogMode::BacklogCount, n),
        n => {
            return Err(Error::usage(format!(
                "--backlog {n}: use -1 for all entries, 0 for none or a positive count"
            )));
        }
    };
    if backlog_mode == BacklogMode::BacklogDisable && !opts.follow {
        return Err(Error::usage(
            "--backlog 0 without --follow would print nothing",
        ));
    }
    let filters = if opts.exact {
        Vec::new()
    } else {
        vec![LogFilter {
            filter: Some(Filter::WithChildren(WithChildren {})),
        }]
    };
    Ok(GetLogsRequest {
        dn: opts.dn.clone(),
        filters,
        backlog_mode: backlog_mode as i32,
        backlog_count,
        stream_mode: if opts.follow {
            StreamMode::StreamUnbuffered
        } else {
            StreamMode::StreamDisable
        } as i32,
    })
}

/// Nodes that are not (yet, or any more) members serve no logs; say what to do instead.
fn check_serves_logs(id: &str, node: &proto::api::Node) -> Result<()> {
    let state = NodeState::try_from(node.state).unwrap_or(NodeState::Invalid);
    match state {
        NodeState::New => Err(Error::refused(format!(
            "node {id} is NEW: approve it first (metroctl approve {id}); it serves logs once it \
             is UP"
        ))),
        NodeState::Standby => Err(Error::refused(format!(
            "node {id} is STANDBY: it was approved but has not committed yet; it serves logs \
             once it is UP"
        ))),
        NodeState::Decommissioned => Err(Error::refused(format!(
            "node {id} is DECOMMISSIONED and no longer serves logs"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    fn opts(backlog: i64, exact: bool, follow: bool) -> Options {
        Options {
            dn: "root".to_string(),
            exact,
            follow,
            backlog,
            concise: false,
        }
    }

    #[test]
    fn backlog_modes() {
        let r = request(&opts(-1, false, false)).expect("ok");
        assert_eq!(r.backlog_mode, BacklogMode::BacklogAll as i32);
        assert_eq!(r.stream_mode, StreamMode::StreamDisable as i32);
        assert_eq!(r.filters.len(), 1);
        let r = request(&opts(25, true, true)).expect("ok");
        assert_eq!(r.backlog_mode, BacklogMode::BacklogCount as i32);
        assert_eq!(r.backlog_count, 25);
        assert_eq!(r.stream_mode, StreamMode::StreamUnbuffered as i32);
        assert!(r.filters.is_empty());
        let r = request(&opts(0, false, true)).expect("ok");
        assert_eq!(r.backlog_mode, BacklogMode::BacklogDisable as i32);
    }

    #[test]
    fn pointless_or_invalid_requests_are_usage_errors() {
        assert_eq!(
            request(&opts(-2, false, false)).expect_err("bad").kind,
            Kind::Usage
        );
        assert_eq!(
            request(&opts(0, false, false)).expect_err("empty").kind,
            Kind::Usage
        );
        let mut o = opts(-1, false, false);
        o.dn = "a..b".to_string();
        assert_eq!(request(&o).expect_err("bad dn").kind, Kind::Usage);
    }

    #[test]
    fn new_nodes_must_be_approved_first() {
        let node = proto::api::Node {
            state: NodeState::New as i32,
            ..Default::default()
        };
        let e = check_serves_logs("metropolis-aa", &node).expect_err("NEW");
        assert_eq!(
            e.message,
            "node metropolis-aa is NEW: approve it first (metroctl approve metropolis-aa); it \
             serves logs once it is UP"
        );
        let up = proto::api::Node {
            state: NodeState::Up as i32,
            ..Default::default()
        };
        check_serves_logs("metropolis-aa", &up).expect("UP serves logs");
    }
}
