//! Stream views on the client: the rows of one type that match a filter,
//! kept live by the stream's events, with the optimistic layer on top (the
//! rules are in [`crate::state`]'s stream view module). A reconnect
//! resubscribes each view with `since`, so the server replays what was
//! missed when its log reaches back, and a fresh snapshot is taken when not.

use crate::state::{StreamViewInfo, ViewChange, ViewRow};
use serde::de::DeserializeOwned;
use serde_json::Value;
use statecast_protocol::ids::{Id, Seq};
use statecast_protocol::row::Fields;
use statecast_protocol::v1::{ChangeOp, Subscribe, UnsubscribeReason};
use tokio::sync::mpsc;

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

    /// Only these actions.
    pub fn actions<I: IntoIterator<Item = ChangeOp>>(mut self, actions: I) -> Self {
        self.actions = Some(actions.into_iter().collect());
        self
    }

    /// Only the row with this id.
    pub fn id(mut self, id: Id) -> Self {
        self.id = Some(id);
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

/// A change to a stream view.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamViewEvent {
    /// Rows added, updated or removed (by stable key); read them with [`StreamView::row`].
    Changed(Vec<ViewChange>),
    /// The server ended the subscription (e.g. `PERMISSION_LOST`); the view is gone.
    Closed(UnsubscribeReason),
}

/// A live view of a stream: the snapshot kept current by its events, with
/// this client's pending writes on top (rows move in and out as the
/// stream's filters decide). Reconnects resume it with `since` (or a fresh
/// snapshot when the server's log no longer reaches back). Dropping it
/// unsubscribes.
pub struct StreamView {
    pub(crate) local: u64,
    pub(crate) events: mpsc::UnboundedReceiver<StreamViewEvent>,
    pub(crate) client: crate::Client,
}

impl StreamView {
    /// The view's rows, in key order.
    pub fn rows(&self) -> Vec<ViewRow> {
        self.client.shared.state.lock().stream_rows(self.local)
    }

    /// One row by id (or stable key).
    pub fn row(&self, id: Id) -> Option<ViewRow> {
        self.client.shared.state.lock().stream_row(self.local, id)
    }

    /// The rows as the app's own struct (`id` + fields).
    pub fn rows_as<T: DeserializeOwned>(&self) -> Result<Vec<T>, serde_json::Error> {
        self.rows().iter().map(|r| serde_json::from_value(r.to_json())).collect()
    }

    /// Status, subscription id, position and size.
    pub fn info(&self) -> Option<StreamViewInfo> {
        self.client.shared.state.lock().stream_info(self.local)
    }

    /// The next change; `None` once the view or the client is gone.
    pub async fn next(&mut self) -> Option<StreamViewEvent> {
        self.events.recv().await
    }

    /// Stops the view (the server's subscription is unsubscribed).
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for StreamView {
    fn drop(&mut self) {
        let shared = &self.client.shared;
        shared.stream_events.lock().remove(&self.local);
        shared.state.lock().remove_stream(self.local);
        let _ = self.client.command(crate::Command::Flush);
    }
}
