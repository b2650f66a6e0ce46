//! Stream subscriptions on the client: every change to rows of one type
//! that match a filter, as typed events. A reconnect resubscribes each stream
//! with `since`, so the server replays what was missed when its log reaches back.

use serde::de::DeserializeOwned;
use serde_json::Value;
use statecast_core::ids::{Id, Seq};
use statecast_core::protocol::v1::{ChangeOp, Event, Subscribe};
use statecast_core::row::{Fields, Row};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What to subscribe to.
#[derive(Clone, Debug, Default)]
pub struct StreamRequest {
    /// The stream's name (`"tasks"`).
    pub name: String,
    /// `{"job": 1, "name__icontains": "bug"}`.
    pub filters: Fields,
    /// Project full-payload events to these fields.
    pub fields: Option<Vec<String>>,
    /// Only these actions (default: all).
    pub actions: Option<Vec<ChangeOp>>,
    /// Only this row.
    pub id: Option<Id>,
    /// Answer with the matching rows now.
    pub snapshot: bool,
}

impl StreamRequest {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }

    /// Adds a filter `field[__lookup] = value`.
    pub fn filter(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.filters.insert(key.to_owned(), value.into());
        self
    }

    pub fn fields<I: IntoIterator<Item = S>, S: Into<String>>(mut self, fields: I) -> Self {
        self.fields = Some(fields.into_iter().map(Into::into).collect());
        self
    }

    pub fn snapshot(mut self) -> Self {
        self.snapshot = true;
        self
    }

    pub(crate) fn message(&self, rid: u64, since: Option<(Seq, Option<String>)>) -> Subscribe {
        Subscribe {
            stream: Some(self.name.clone()),
            filters: (!self.filters.is_empty()).then(|| self.filters.clone()),
            fields: self.fields.clone(),
            actions: self.actions.clone(),
            id: self.id,
            snapshot: self.snapshot && since.is_none(),
            since: since.as_ref().map(|(s, _)| *s),
            epoch: since.and_then(|(_, e)| e),
            rid: Some(Value::from(rid)),
            ..Subscribe::default()
        }
    }
}

/// One change seen by a stream subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    pub seq: Seq,
    pub action: ChangeOp,
    pub id: Id,
    /// The (projected) row, in full-payload streams.
    pub data: Option<Fields>,
}

impl StreamEvent {
    /// The event's row as the app's own struct (`id` + data).
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        let mut obj = self.data.clone().unwrap_or_default();
        obj.insert("id".into(), Value::from(self.id));
        serde_json::from_value(Value::Object(obj))
    }
}

impl From<Event> for StreamEvent {
    fn from(e: Event) -> Self {
        Self { seq: e.seq, action: e.action, id: e.id, data: e.data }
    }
}

pub(crate) type SubscribedWaiter = oneshot::Sender<Result<Vec<Arc<Row>>, crate::ClientError>>;

pub(crate) struct Entry {
    pub request: StreamRequest,
    /// The server's id for it on the current connection.
    pub server_id: Option<String>,
    /// The last seq seen (subscribed or event), for `since` after a reconnect.
    pub seq: Option<Seq>,
    pub events: mpsc::UnboundedSender<StreamEvent>,
    pub waiter: Option<SubscribedWaiter>,
    pub snapshot: Vec<Arc<Row>>,
}

/// The client's stream subscriptions, by local id.
#[derive(Default)]
pub(crate) struct Streams {
    pub next: u64,
    pub entries: HashMap<u64, Entry>,
    pub by_server: HashMap<String, u64>,
}

/// A live stream subscription: receive its events with [`next`](Self::next).
pub struct StreamSubscription {
    pub(crate) local: u64,
    /// The rows that matched when subscribing (with `snapshot`).
    pub snapshot: Vec<Arc<Row>>,
    pub(crate) events: mpsc::UnboundedReceiver<StreamEvent>,
    pub(crate) client: crate::Client,
}

impl StreamSubscription {
    /// The next event; `None` once the subscription or the client is gone.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    /// Stops the subscription.
    pub fn unsubscribe(self) {
        drop(self);
    }
}

impl Drop for StreamSubscription {
    fn drop(&mut self) {
        let _ = self.client.command(crate::Command::StreamUnsubscribe { local: self.local });
    }
}
