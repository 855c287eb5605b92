//! The `heartbeat` worker: keeps a Curator.Heartbeat stream open and sends a beat every
//! [`HEARTBEAT_INTERVAL`], waiting at most [`HEARTBEAT_TIMEOUT`] for each answer.
//!
//! Upstream sleeps until *send time + 10 s* (the health timeout) instead of the 5 s interval,
//! so its nodes hover right at the timeout and may briefly show HEARTBEAT_TIMEOUT. We send
//! every 5 s as the constants' names intend.

use std::sync::Arc;
use std::time::Duration;

use proto::curator_api::HeartbeatUpdateRequest;
use supervisor::{Context, Runnable, RunnableResult};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Roleserve, call_failed, follow_leader, until_cancelled};

/// How often a beat is sent (upstream's HeartbeatInterval).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long an answer may take (upstream's HeartbeatTimeout).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// The supervisor runnable.
pub fn runnable(rs: Arc<Roleserve>) -> Runnable {
    supervisor::runnable(move |ctx: Context| {
        let rs = rs.clone();
        async move {
            let body = follow_leader(&rs, "heartbeat", || run(rs.clone(), ctx.clone()));
            until_cancelled(&ctx, body).await
        }
    })
}

async fn run(rs: Arc<Roleserve>, ctx: Context) -> RunnableResult {
    let m = rs.membership().await;
    let mut client = m.client().await?;
    let (tx, rx) = mpsc::channel(1);
    // The first beat is queued before the call so the stream has data as soon as it opens.
    tx.send(HeartbeatUpdateRequest {})
        .await
        .map_err(|_| "heartbeat stream closed")?;
    let mut replies = match client.heartbeat(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(call_failed(&rs, &m, "opening heartbeat stream", s).await),
    };
    ctx.signal_healthy();
    let mut first = true;
    loop {
        if !first {
            tx.send(HeartbeatUpdateRequest {})
                .await
                .map_err(|_| "heartbeat stream closed")?;
        }
        first = false;
        let sent = tokio::time::Instant::now();
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, replies.message()).await {
            Ok(Ok(Some(_))) => rs
                .metrics()
                .heartbeat_round_trip
                .observe(sent.elapsed().as_secs_f64()),
            Ok(Ok(None)) => return Err("heartbeat stream ended".into()),
            Ok(Err(s)) => return Err(call_failed(&rs, &m, "heartbeat", s).await),
            Err(_) => {
                return Err(format!("no heartbeat answer within {HEARTBEAT_TIMEOUT:?}").into());
            }
        }
        tokio::time::sleep_until(sent + HEARTBEAT_INTERVAL).await;
    }
}
