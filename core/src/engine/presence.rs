//! Presence: who is in a context and what they show (a cursor, "editing
//! task 3"). Never stored: it lives in the hub's memory, and with a store
//! shared by several processes it travels between them on the store's
//! [`Bus`](crate::store::Bus).
//!
//! [`PresenceBook`] is a plain state machine: no tasks, no clock, no I/O. The
//! hub feeds it (a connection sets or clears its presence, leaves a context,
//! a bus message arrives, a tick with the time) and sends what it answers.
//! The rate limit per connection is the session's (see
//! [`PresenceOutbox`]), so what reaches the book is already paced.

use super::hub::ConnId;
use crate::protocol::v1::{PRESENCE_UPDATES_PER_SECOND, Presence, PresenceEntry, PresenceUser};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How often a process says on the bus that it is alive.
pub(crate) const BEAT_EVERY: Duration = Duration::from_secs(5);
/// A process not heard for this long is gone: its connections' presence leaves.
pub(crate) const ORIGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Whose presence an entry is: a connection of this process, or of another one.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holder {
    Local(ConnId),
    Remote(String),
}

#[derive(Clone, Debug)]
struct Slot {
    holder: Holder,
    user: PresenceUser,
    data: Value,
}

/// A presence change to announce to a context's subscribers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Announce {
    pub notice: Presence,
    /// The connection it came from, which is not told its own presence.
    pub except: Option<ConnId>,
}

/// What travels between processes sharing a store (JSON on the bus).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub(crate) enum BusMessage {
    /// A connection's presence (`data: null` cleared, `left`: it left).
    Set {
        origin: String,
        context: String,
        #[serde(rename = "connectionId")]
        connection_id: String,
        user: PresenceUser,
        data: Value,
        #[serde(default)]
        left: bool,
    },
    /// A process started: the others send their presence again.
    Sync { origin: String },
    /// A process is alive.
    Beat { origin: String },
    /// A process stops: its presence leaves.
    Bye { origin: String },
}

impl BusMessage {
    fn origin(&self) -> &str {
        match self {
            BusMessage::Set { origin, .. }
            | BusMessage::Sync { origin }
            | BusMessage::Beat { origin }
            | BusMessage::Bye { origin } => origin,
        }
    }
}

/// Everyone's presence, per context, in the order they first showed it.
#[derive(Default)]
pub(crate) struct PresenceBook {
    /// This process's name on the bus (None: alone).
    origin: Option<String>,
    /// context → connection id → slot (connection ids order by arrival
    /// within a process: `c1`, `c2`, …; BTreeMap keeps a stable order).
    contexts: HashMap<String, BTreeMap<String, Slot>>,
    /// Other processes, by when they were last heard.
    origins: HashMap<String, Instant>,
}

/// What the hub does after feeding the book.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Effects {
    /// Tell the context's subscribers (but `except`).
    pub announce: Vec<Announce>,
    /// Publish on the bus.
    pub publish: Vec<BusMessage>,
}

impl PresenceBook {
    pub fn new(origin: Option<String>) -> Self {
        Self { origin, ..Self::default() }
    }

    /// The bus message a new process sends first.
    pub fn hello(&self) -> Option<BusMessage> {
        self.origin.clone().map(|origin| BusMessage::Sync { origin })
    }

    /// A connection of this process set (or, with `null`, cleared) its presence.
    pub fn set(
        &mut self,
        conn: ConnId,
        connection_id: String,
        user: PresenceUser,
        context: &str,
        data: Value,
    ) -> Effects {
        let book = self.contexts.entry(context.to_owned()).or_default();
        if data.is_null() {
            if book.remove(&connection_id).is_none() {
                return Effects::default();
            }
            if book.is_empty() {
                self.contexts.remove(context);
            }
        } else {
            let slot = Slot { holder: Holder::Local(conn), user: user.clone(), data: data.clone() };
            book.insert(connection_id.clone(), slot);
        }
        self.local_effects(conn, context, connection_id, user, data, false)
    }

    /// A connection of this process left a context (unsubscribed, revoked,
    /// disconnected): announced only if it showed a presence there.
    pub fn leave(&mut self, conn: ConnId, context: &str) -> Effects {
        let Some(book) = self.contexts.get_mut(context) else { return Effects::default() };
        let Some(id) = book.iter().find(|(_, s)| s.holder == Holder::Local(conn)).map(|(id, _)| id.clone()) else {
            return Effects::default();
        };
        let Some(slot) = book.remove(&id) else { return Effects::default() };
        if book.is_empty() {
            self.contexts.remove(context);
        }
        self.local_effects(conn, context, id, slot.user, Value::Null, true)
    }

    /// The context ended for everyone (its anchor was deleted): its local
    /// presence is dropped without announcement (nobody is left to tell),
    /// but other processes hear that these connections left.
    pub fn end_context(&mut self, context: &str) -> Effects {
        let Some(book) = self.contexts.remove(context) else { return Effects::default() };
        let mut effects = Effects::default();
        for (connection_id, slot) in book {
            if let (Holder::Local(_), Some(origin)) = (&slot.holder, &self.origin) {
                effects.publish.push(BusMessage::Set {
                    origin: origin.clone(),
                    context: context.to_owned(),
                    connection_id,
                    user: slot.user,
                    data: Value::Null,
                    left: true,
                });
            }
        }
        effects
    }

    fn local_effects(
        &self,
        conn: ConnId,
        context: &str,
        connection_id: String,
        user: PresenceUser,
        data: Value,
        left: bool,
    ) -> Effects {
        let notice = Presence { context: context.to_owned(), connection_id, user, data, left };
        let publish = self.origin.iter().map(|origin| BusMessage::Set {
            origin: origin.clone(),
            context: notice.context.clone(),
            connection_id: notice.connection_id.clone(),
            user: notice.user.clone(),
            data: notice.data.clone(),
            left,
        });
        Effects { publish: publish.collect(), announce: vec![Announce { notice, except: Some(conn) }] }
    }

    /// The presence a subscribe's `state` lists: everyone's but the subscriber's own.
    pub fn entries(&self, context: &str, except: ConnId) -> Vec<PresenceEntry> {
        let Some(book) = self.contexts.get(context) else { return Vec::new() };
        book.iter()
            .filter(|(_, s)| s.holder != Holder::Local(except))
            .map(|(id, s)| PresenceEntry { connection_id: id.clone(), user: s.user.clone(), data: s.data.clone() })
            .collect()
    }

    /// A message from the bus (this process's own are ignored).
    pub fn on_bus(&mut self, msg: BusMessage, now: Instant) -> Effects {
        if Some(msg.origin()) == self.origin.as_deref() {
            return Effects::default();
        }
        self.origins.insert(msg.origin().to_owned(), now);
        match msg {
            BusMessage::Set { origin, context, connection_id, user, data, left } => {
                self.remote_set(origin, context, connection_id, user, data, left)
            }
            BusMessage::Sync { .. } => Effects { publish: self.everything_local(), ..Effects::default() },
            BusMessage::Beat { .. } => Effects::default(),
            BusMessage::Bye { origin } => {
                self.origins.remove(&origin);
                self.drop_origin(&origin)
            }
        }
    }

    fn remote_set(
        &mut self,
        origin: String,
        context: String,
        connection_id: String,
        user: PresenceUser,
        data: Value,
        left: bool,
    ) -> Effects {
        let book = self.contexts.entry(context.clone()).or_default();
        let changed = if data.is_null() {
            book.remove(&connection_id).is_some()
        } else {
            let same = book.get(&connection_id).is_some_and(|s| s.data == data);
            book.insert(
                connection_id.clone(),
                Slot { holder: Holder::Remote(origin), user: user.clone(), data: data.clone() },
            );
            !same
        };
        if book.is_empty() {
            self.contexts.remove(&context);
        }
        if !changed {
            return Effects::default();
        }
        let notice = Presence { context, connection_id, user, data, left };
        Effects { announce: vec![Announce { notice, except: None }], ..Effects::default() }
    }

    /// Every local presence, to send to a process that just started.
    fn everything_local(&self) -> Vec<BusMessage> {
        let Some(origin) = &self.origin else { return Vec::new() };
        let mut out = Vec::new();
        for (context, book) in &self.contexts {
            for (connection_id, slot) in book.iter().filter(|(_, s)| matches!(s.holder, Holder::Local(_))) {
                out.push(BusMessage::Set {
                    origin: origin.clone(),
                    context: context.clone(),
                    connection_id: connection_id.clone(),
                    user: slot.user.clone(),
                    data: slot.data.clone(),
                    left: false,
                });
            }
        }
        out
    }

    /// Every `BEAT_EVERY`: say this process is alive, and let go of the
    /// presence of processes not heard for `ORIGIN_TIMEOUT`.
    pub fn tick(&mut self, now: Instant) -> Effects {
        let mut effects = Effects::default();
        if let Some(origin) = &self.origin {
            effects.publish.push(BusMessage::Beat { origin: origin.clone() });
        }
        let gone: Vec<String> = self
            .origins
            .iter()
            .filter(|(_, heard)| now.saturating_duration_since(**heard) > ORIGIN_TIMEOUT)
            .map(|(o, _)| o.clone())
            .collect();
        for origin in gone {
            tracing::info!(%origin, "a process sharing the store went quiet: its presence leaves");
            self.origins.remove(&origin);
            effects.announce.extend(self.drop_origin(&origin).announce);
        }
        effects
    }

    /// This process stops: the others let its presence go at once.
    pub fn bye(&self) -> Option<BusMessage> {
        self.origin.clone().map(|origin| BusMessage::Bye { origin })
    }

    fn drop_origin(&mut self, origin: &str) -> Effects {
        let mut effects = Effects::default();
        let holder = Holder::Remote(origin.to_owned());
        self.contexts.retain(|context, book| {
            book.retain(|connection_id, slot| {
                if slot.holder != holder {
                    return true;
                }
                effects.announce.push(Announce {
                    notice: Presence {
                        context: context.clone(),
                        connection_id: connection_id.clone(),
                        user: slot.user.clone(),
                        data: Value::Null,
                        left: true,
                    },
                    except: None,
                });
                false
            });
            !book.is_empty()
        });
        effects
    }
}

/// The session's side of the rate limit: at most
/// [`PRESENCE_UPDATES_PER_SECOND`] updates relayed per connection; past
/// that, the latest per context waits for its turn and older ones are
/// replaced, so nothing queues without bound.
#[derive(Default)]
pub(crate) struct PresenceOutbox {
    /// When the next update may go.
    next_at: Option<Instant>,
    /// context → the latest data waiting, in the order contexts first waited.
    waiting: BTreeMap<u64, (String, Value)>,
    order: u64,
}

impl PresenceOutbox {
    /// The gap between two relayed updates.
    pub const GAP: Duration = Duration::from_millis(1000 / PRESENCE_UPDATES_PER_SECOND as u64);

    /// An update: Some(update) to relay now, or None when it waits.
    pub fn offer(&mut self, context: String, data: Value, now: Instant) -> Option<(String, Value)> {
        if self.waiting.is_empty() && self.next_at.is_none_or(|at| now >= at) {
            self.advance(now);
            return Some((context, data));
        }
        if let Some(slot) = self.waiting.values_mut().find(|(c, _)| *c == context) {
            slot.1 = data;
        } else {
            self.order += 1;
            self.waiting.insert(self.order, (context, data));
        }
        None
    }

    /// When a waiting update may go (None: none waits).
    pub fn due(&self) -> Option<Instant> {
        if self.waiting.is_empty() { None } else { self.next_at }
    }

    /// The waiting update whose turn it is at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<(String, Value)> {
        if self.next_at.is_some_and(|at| now < at) {
            return None;
        }
        let (_, update) = self.waiting.pop_first()?;
        self.advance(now);
        Some(update)
    }

    /// The next slot follows the one just used, not the moment it was used
    /// (a timer fires a little late: counting from then, a client sending
    /// at exactly the limit would always be slightly over it). At most one
    /// slot of credit builds up while idle.
    fn advance(&mut self, now: Instant) {
        let floor = now.checked_sub(Self::GAP).unwrap_or(now);
        let from = self.next_at.map_or(now, |at| at.max(floor));
        self.next_at = Some(from + Self::GAP);
    }

    /// The connection left the context: what waited for it is dropped.
    pub fn forget(&mut self, context: &str) {
        self.waiting.retain(|_, (c, _)| c != context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> PresenceUser {
        PresenceUser { id: 1, name: "alice".into() }
    }

    fn bob() -> PresenceUser {
        PresenceUser { id: 2, name: "bob".into() }
    }

    #[test]
    fn a_set_is_announced_to_the_others_and_listed_for_newcomers() {
        let mut book = PresenceBook::new(None);
        let fx = book.set(1, "c1".into(), alice(), "job/1", json!({"editing": 3}));
        assert_eq!(fx.announce.len(), 1);
        assert_eq!(fx.announce[0].except, Some(1));
        assert_eq!(fx.announce[0].notice.data, json!({"editing": 3}));
        assert!(fx.publish.is_empty(), "alone: nothing goes on a bus");
        book.set(2, "c2".into(), bob(), "job/1", json!({"editing": 1}));
        let ids = |v: Vec<PresenceEntry>| v.into_iter().map(|e| e.connection_id).collect::<Vec<_>>();
        assert_eq!(ids(book.entries("job/1", 3)), ["c1", "c2"]);
        assert_eq!(ids(book.entries("job/1", 1)), ["c2"], "a subscriber's own presence is not listed to it");
        assert!(book.entries("job/2", 3).is_empty());
    }

    #[test]
    fn clearing_and_leaving_remove_the_entry_and_leaving_twice_says_nothing() {
        let mut book = PresenceBook::new(None);
        book.set(1, "c1".into(), alice(), "job/1", json!(1));
        let fx = book.set(1, "c1".into(), alice(), "job/1", Value::Null);
        assert_eq!((fx.announce[0].notice.data.clone(), fx.announce[0].notice.left), (Value::Null, false));
        assert!(book.entries("job/1", 9).is_empty());
        assert_eq!(book.set(1, "c1".into(), alice(), "job/1", Value::Null), Effects::default(), "nothing to clear");
        book.set(1, "c1".into(), alice(), "job/1", json!(2));
        let fx = book.leave(1, "job/1");
        assert!(fx.announce[0].notice.left);
        assert_eq!(book.leave(1, "job/1"), Effects::default());
        assert!(book.contexts.is_empty(), "no empty books are kept");
    }

    #[test]
    fn processes_exchange_presence_and_a_quiet_one_is_let_go() {
        let t0 = Instant::now();
        let mut a = PresenceBook::new(Some("A".into()));
        let mut b = PresenceBook::new(Some("B".into()));
        let fx = a.set(1, "c1@A".into(), alice(), "job/1", json!({"x": 1}));
        assert_eq!(fx.publish.len(), 1);
        let got = b.on_bus(fx.publish[0].clone(), t0);
        assert_eq!(got.announce[0].except, None, "every local subscriber of B hears it");
        assert_eq!(b.entries("job/1", 7)[0].connection_id, "c1@A");
        // Its own messages come back on the bus and are ignored.
        assert_eq!(a.on_bus(fx.publish[0].clone(), t0), Effects::default());
        // A third process starts and asks: A answers with its presence.
        let mut c = PresenceBook::new(Some("C".into()));
        let answer = a.on_bus(c.hello().expect("sync"), t0);
        assert_eq!(answer.publish.len(), 1);
        c.on_bus(answer.publish[0].clone(), t0);
        assert_eq!(c.entries("job/1", 7).len(), 1);
        // A goes quiet: B lets its presence go after the timeout, not before.
        assert!(b.tick(t0 + ORIGIN_TIMEOUT).announce.is_empty());
        let fx = b.tick(t0 + ORIGIN_TIMEOUT + Duration::from_secs(1));
        assert!(fx.announce[0].notice.left);
        assert!(b.entries("job/1", 7).is_empty());
        assert_eq!(fx.publish, vec![BusMessage::Beat { origin: "B".into() }]);
        // A says bye: C lets go at once.
        let fx = c.on_bus(a.bye().expect("bye"), t0);
        assert!(fx.announce[0].notice.left);
        assert!(c.entries("job/1", 7).is_empty());
    }

    #[test]
    fn the_outbox_relays_twenty_a_second_and_keeps_only_the_latest_per_context() {
        let t0 = Instant::now();
        let mut out = PresenceOutbox::default();
        assert!(out.offer("job/1".into(), json!(1), t0).is_some());
        for i in 2..100 {
            assert!(out.offer("job/1".into(), json!(i), t0).is_none());
        }
        assert!(out.offer("job/2".into(), json!("b"), t0).is_none());
        assert_eq!(out.due(), Some(t0 + PresenceOutbox::GAP));
        assert_eq!(out.take_due(t0), None, "not before its turn");
        let gap = PresenceOutbox::GAP;
        assert_eq!(out.take_due(t0 + gap), Some(("job/1".into(), json!(99))), "only the latest");
        assert_eq!(out.take_due(t0 + gap), None);
        assert_eq!(out.take_due(t0 + gap * 2), Some(("job/2".into(), json!("b"))));
        assert_eq!(out.due(), None);
        // Idle since: the next goes at once (one slot of credit), the one after waits.
        let later = t0 + gap * 10;
        assert!(out.offer("job/1".into(), json!(0), later).is_some());
        assert!(out.offer("job/1".into(), json!(1), later).is_some(), "the credit of one idle slot");
        assert!(out.offer("job/1".into(), json!(5), later).is_none());
        out.forget("job/1");
        assert_eq!(out.due(), None, "a left context's waiting update is dropped");
        // Exactly at the limit, a little late each time: nothing is ever held back.
        let mut out = PresenceOutbox::default();
        let start = t0 + gap * 100;
        for i in 0..100u32 {
            let at = start + gap * i + Duration::from_micros(900);
            assert!(out.offer("job/1".into(), json!(i), at).is_some(), "update {i} at the limit waited");
        }
    }
}
