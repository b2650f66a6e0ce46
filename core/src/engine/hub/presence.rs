//! The hub's side of presence: feeds the [`PresenceBook`] and sends what it
//! answers to the context's subscribers and, with several processes on one
//! store, onto the store's bus.

use super::{ConnId, Hub, Slot};
use crate::engine::presence::{BusMessage, Effects};
use crate::protocol::v1::{PresenceUser, ServerMessage};
use crate::store::BUS_MAX_MESSAGE;
use crate::transport::{Frame, SendError};
use serde_json::Value;
use std::time::Instant;

impl Hub {
    /// A connection's (already paced) presence update for a context it holds.
    pub(super) fn set_presence(&mut self, conn: ConnId, context: String, data: Value) {
        let Some(entry) = self.conns.get(&conn) else { return };
        // Unsubscribed or revoked since the session checked.
        if !entry.subs.lock().contains(&context) {
            return;
        }
        let user = PresenceUser::from(&*entry.user);
        let connection_id = self.connection_id(conn);
        let effects = self.presence.set(conn, connection_id, user, &context, data);
        self.apply_presence(effects);
    }

    /// The connection left the context: the others hear it, if it showed a presence.
    pub(super) fn leave_presence(&mut self, conn: ConnId, context: &str) {
        let effects = self.presence.leave(conn, context);
        self.apply_presence(effects);
    }

    pub(super) fn end_presence(&mut self, context: &str) {
        let effects = self.presence.end_context(context);
        self.apply_presence(effects);
    }

    /// A message from another process on the store's bus.
    pub(super) fn bus_message(&mut self, raw: &str) {
        tracing::trace!(message = raw, "from the bus");
        match serde_json::from_str::<BusMessage>(raw) {
            Ok(msg) => {
                let now = self.io.now();
                let effects = self.presence.on_bus(msg, now);
                self.apply_presence(effects);
            }
            Err(e) => tracing::debug!(error = %e, "ignoring a bus message this version does not read"),
        }
    }

    /// (Re)joined the bus: the others send their presence again.
    pub(super) fn bus_joined(&mut self) {
        if let Some(sync) = self.presence.hello() {
            self.publish(&sync);
        }
    }

    pub(super) fn presence_tick(&mut self, now: Instant) {
        let effects = self.presence.tick(now);
        self.apply_presence(effects);
    }

    /// This process stops serving: the other processes let its presence go.
    pub(super) fn presence_bye(&mut self) {
        if let Some(bye) = self.presence.bye() {
            self.publish(&bye);
        }
    }

    pub(super) fn connection_id(&self, conn: ConnId) -> String {
        format!("c{conn}{}", self.conn_suffix)
    }

    fn apply_presence(&mut self, effects: Effects) {
        for msg in &effects.publish {
            self.publish(msg);
        }
        for announce in effects.announce {
            let Some(Slot::Live(ctx)) = self.contexts.get(&announce.notice.context) else {
                tracing::trace!(context = %announce.notice.context, "presence in a context not live here");
                continue;
            };
            let targets: Vec<ConnId> =
                ctx.subscribers.iter().copied().filter(|c| Some(*c) != announce.except).collect();
            tracing::trace!(context = %announce.notice.context, targets = targets.len(), "announcing presence");
            let msg = ServerMessage::Presence(announce.notice);
            // Encoded once per codec, shared by every subscriber.
            let mut frames: [Option<Frame>; 2] = [None, None];
            let mut failed: Vec<(ConnId, SendError)> = Vec::new();
            for conn in targets {
                let Some(entry) = self.conns.get(&conn) else { continue };
                let codec = entry.codec;
                let slot = &mut frames[codec.index()];
                if slot.is_none() {
                    *slot = self.encode(codec, &msg);
                }
                let Some(frame) = slot.clone() else { continue };
                if let Err(e) = super::offer(&entry.outbox, std::slice::from_ref(&frame)) {
                    failed.push((conn, e));
                }
            }
            for (conn, e) in failed {
                self.send_failed(conn, e);
            }
        }
    }

    pub(super) fn publish(&mut self, msg: &BusMessage) {
        if !self.on_bus {
            return;
        }
        match serde_json::to_string(msg) {
            Ok(text) if text.len() <= BUS_MAX_MESSAGE => {
                tracing::trace!(message = %text, "publishing on the bus");
                self.io.publish(text)
            }
            Ok(text) => tracing::warn!(bytes = text.len(), "a presence too large for the bus stays local"),
            Err(e) => tracing::error!(error = %e, "encoding a bus message failed"),
        }
    }
}
