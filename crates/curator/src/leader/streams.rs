//! Per-caller caps on the leader's long-lived streams (Curator.Watch, WatchRevocations).
//!
//! Each such stream holds an etcd watch on the leader's connection and, for a watch of all
//! nodes, a copy of the cluster's backlog until it is read. Bounded per stream elsewhere
//! (`curator::watch`), they still add up: without a cap, one node certificate could open
//! thousands of them. A node needs a handful (its own record, the cluster directory, the
//! revocations, with some overlap while it reconnects), so a caller holds at most
//! [`MAX_STREAMS_PER_CALLER`] at a time; one more is refused with ResourceExhausted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rpc::PeerInfo;
use tonic::Status;
use tonic::codegen::BoxStream;

/// Long-lived streams one caller (a node ID, a user identity) may hold at once.
pub const MAX_STREAMS_PER_CALLER: usize = 16;

/// The streams each caller holds.
#[derive(Debug, Default, Clone)]
pub struct StreamSlots {
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One caller's stream; gives its slot back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    held: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl StreamSlots {
    /// Takes a slot for `peer`, or refuses once it holds [`MAX_STREAMS_PER_CALLER`].
    pub fn take(&self, peer: &PeerInfo) -> Result<StreamSlot, Status> {
        let caller = match peer {
            PeerInfo::Node(n) => format!("node {}", n.id),
            PeerInfo::User { identity } => format!("user {identity}"),
            // Every long-lived stream needs a permission; the authorization layer has refused
            // unauthenticated callers already.
            _ => {
                return Err(Status::unauthenticated(
                    "a stream needs cluster credentials",
                ));
            }
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(caller.clone()).or_insert(0);
        if *count >= MAX_STREAMS_PER_CALLER {
            return Err(Status::resource_exhausted(format!(
                "{caller} already holds {MAX_STREAMS_PER_CALLER} open streams (Watch, \
                 WatchRevocations) on this curator, the limit per caller"
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            held: self.held.clone(),
            caller,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

/// `stream`, holding `slot` for as long as it lives.
pub fn holding<T: Send + 'static>(slot: StreamSlot, stream: BoxStream<T>) -> BoxStream<T> {
    Box::pin(stream.map(move |item| {
        let _held = &slot;
        item
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> PeerInfo {
        PeerInfo::Node(rpc::peer::NodePeer {
            id: id.to_string(),
            public_key: identity::SigningKey::generate().expect("key").public_key(),
            permissions: Vec::new(),
        })
    }

    #[test]
    fn a_caller_holds_at_most_the_limit_and_dropping_gives_slots_back() {
        let slots = StreamSlots::default();
        let a = node("a");
        let held: Vec<_> = (0..MAX_STREAMS_PER_CALLER)
            .map(|_| slots.take(&a).expect("within the limit"))
            .collect();
        let refused = slots.take(&a).expect_err("over the limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        // Another caller is not affected.
        let _b = slots.take(&node("b")).expect("another caller");
        drop(held);
        let _again = slots.take(&a).expect("slots given back");
    }
}
