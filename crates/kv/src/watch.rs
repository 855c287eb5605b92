//! Watch streams of a [`crate::Namespaced`] client, with keys relative to the namespace.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use etcd_client::EventType;
use futures::Stream;

use crate::error::{Error, Result};

/// Whether a key was written or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted (`value` is empty).
    Delete,
}

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key, relative to the namespace.
    pub key: Vec<u8>,
    /// The new value (empty for deletes).
    pub value: Vec<u8>,
    /// Revision at which the key was created (0 for deletes).
    pub create_revision: i64,
    /// Revision of this change.
    pub mod_revision: i64,
    /// Number of writes since creation (0 for deletes).
    pub version: i64,
    /// The previous value, when the watch asked for it (`with_prev_key`).
    pub prev_value: Option<Vec<u8>>,
}

/// The changes etcd reported in one watch response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The store revision the response was sent at; with progress notifications a batch may
    /// be empty and only move this forward.
    pub revision: i64,
    /// The changes, in revision order.
    pub events: Vec<Event>,
}

/// A stream of [`WatchBatch`]es; ends after an error or a cancellation by etcd (both are
/// reported as the last item). Dropping it cancels the watch.
pub struct WatchStream {
    // Holds the request sender too: etcd ends the watch when the request side closes.
    inner: etcd_client::WatchStream,
    prefix: Vec<u8>,
    done: bool,
}

impl WatchStream {
    pub(crate) fn new(inner: etcd_client::WatchStream, prefix: Vec<u8>) -> Self {
        WatchStream {
            inner,
            prefix,
            done: false,
        }
    }

    /// Turns one etcd event into ours; `None` for keys outside the namespace (possible with
    /// `with_from_key` style options, which etcd-client does not confine).
    fn convert(&self, event: &etcd_client::Event) -> Option<Event> {
        let kv = event.kv()?;
        let key = kv.key().strip_prefix(self.prefix.as_slice())?;
        Some(Event {
            kind: match event.event_type() {
                EventType::Put => EventKind::Put,
                EventType::Delete => EventKind::Delete,
            },
            key: key.to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            prev_value: event.prev_kv().map(|p| p.value().to_vec()),
        })
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let resp = match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Some(Ok(resp)) => resp,
            };
            if resp.canceled() {
                this.done = true;
                return Poll::Ready(Some(Err(Error::WatchCanceled {
                    reason: resp.cancel_reason().to_string(),
                    compact_revision: resp.compact_revision(),
                })));
            }
            let events: Vec<Event> = resp
                .events()
                .iter()
                .filter_map(|e| this.convert(e))
                .collect();
            // The creation acknowledgement carries nothing, and a batch whose events all lay
            // outside the namespace is nothing to this caller either.
            if events.is_empty() && (resp.created() || !resp.events().is_empty()) {
                continue;
            }
            return Poll::Ready(Some(Ok(WatchBatch {
                revision: resp.header().map_or(0, |h| h.revision()),
                events,
            })));
        }
    }
}
