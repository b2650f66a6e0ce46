//! The simulated clients: what they hold, and what they do (connect,
//! subscribe, write, stall, change read rules).

use super::*;

/// What a client holds of one context.
#[derive(Clone, Debug, Default)]
pub(super) struct View {
    pub(super) seq: Seq,
    pub(super) rows: BTreeMap<RowKey, Fields>,
    /// The read rules it is read under (see [`RULES`]).
    pub(super) rules: u8,
    /// The `view` tag its last state carried (sent back to resume).
    pub(super) tag: Option<String>,
}

/// The read rules a simulated user may have, by number: 0 reads all; 1 reads
/// the tasks whose title starts with "w5" (a hidden task hides its notes);
/// 2 reads every task without its title; 3 the tasks whose title starts
/// with "w", without it. Titles change all the time, so tasks come into
/// view and leave it with their notes.
pub(super) const RULES: u8 = 4;

pub(super) struct Conn {
    pub(super) id: ConnId,
    pub(super) rx: OutboxReceiver,
    pub(super) subs: SharedSubs,
    /// Contexts whose state came on this connection (deltas may follow).
    pub(super) live: BTreeSet<String>,
    /// Writes committed, by write id: their seq.
    pub(super) writes: BTreeMap<i64, Seq>,
    /// Unsubscribes not answered yet: what comes for these contexts before
    /// the answer belongs to the old subscription, and a client drops it.
    pub(super) closing: BTreeMap<String, u32>,
    /// Stream subscriptions by wire name: the project their filter fixes.
    pub(super) streams: BTreeMap<String, Id>,
    /// Stream subscriptions whose `subscribed` came (events may follow).
    pub(super) streams_live: BTreeSet<String>,
    /// Stream unsubscribes not answered yet.
    pub(super) streams_closing: BTreeSet<String>,
    /// The presence this connection sees, by context and connection id.
    pub(super) presence: BTreeMap<String, BTreeMap<String, Value>>,
    /// Contexts whose read rules the server was told changed: the state
    /// without a rid that follows is read under these.
    pub(super) reclassing: BTreeMap<String, u8>,
    pub(super) stalled: bool,
}

pub(super) struct Client {
    pub(super) user: Arc<User>,
    pub(super) codec: Codec,
    pub(super) conn: Option<Conn>,
    /// Kept across connections, as a client's cache is, to resume with `since`.
    pub(super) views: BTreeMap<String, View>,
    /// The `tasks` stream filtered on a project: the tasks it holds, by project.
    pub(super) stream_views: BTreeMap<Id, View>,
    pub(super) next_write: i64,
    /// The read rules this user has now (see [`RULES`]).
    pub(super) rules: u8,
}

impl Sim {
    // ---- the clients' moves ----------------------------------------------

    pub(super) fn connected(&mut self) -> Option<usize> {
        let ids: Vec<usize> = (0..self.clients.len()).filter(|i| self.clients[*i].conn.is_some()).collect();
        self.rng.pick(&ids).copied()
    }

    pub(super) fn connect(&mut self) {
        let ids: Vec<usize> = (0..self.clients.len()).filter(|i| self.clients[*i].conn.is_none()).collect();
        let Some(&c) = self.rng.pick(&ids) else { return self.advance() };
        if self.rng.chance(20) {
            // Its role changed meanwhile: resuming with `since` must not
            // keep what the old rules showed.
            self.clients[c].rules = self.rng.below(u64::from(RULES)) as u8;
        }
        let frames = 8 + self.rng.below(56) as usize;
        let (outbox, rx) = outbox_with(OutboxLimits::frames(frames));
        let id = self.next_conn;
        self.next_conn += 1;
        let subs: SharedSubs = Arc::default();
        let client = &mut self.clients[c];
        let (user, codec) = (client.user.clone(), client.codec);
        client.conn = Some(Conn {
            id,
            rx,
            subs: subs.clone(),
            live: BTreeSet::new(),
            writes: BTreeMap::new(),
            closing: BTreeMap::new(),
            streams: BTreeMap::new(),
            streams_live: BTreeSet::new(),
            streams_closing: BTreeSet::new(),
            reclassing: BTreeMap::new(),
            presence: BTreeMap::new(),
            stalled: false,
        });
        self.send(HubMsg::Connect { conn: id, user, outbox, codec, subs });
        // A returning client resumes what it held, from its seq.
        let held: Vec<String> = self.clients[c].views.keys().cloned().collect();
        for context in held {
            self.subscribe_to(c, context);
        }
        let streams: Vec<Id> = self.clients[c].stream_views.keys().copied().collect();
        for project in streams {
            self.stream_subscribe_to(c, project);
        }
    }

    pub(super) fn disconnect(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        if let Some(conn) = self.clients[c].conn.take() {
            self.forget_presence(conn.id);
            self.send(HubMsg::Disconnect { conn: conn.id });
        }
    }

    /// A connection shows (or clears, with `null`) its presence in a context
    /// whose state it has.
    pub(super) fn set_presence(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let Some(conn) = &self.clients[c].conn else { return };
        let live: Vec<String> = conn.live.iter().filter(|x| !conn.closing.contains_key(*x)).cloned().collect();
        let Some(context) = self.rng.pick(&live).cloned() else { return };
        let data = if self.rng.chance(20) { Value::Null } else { json!({"at": self.rng.below(100)}) };
        let id = conn.id;
        let shown = self.presence.entry(context.clone()).or_default();
        match &data {
            Value::Null => shown.remove(&id),
            d => shown.insert(id, d.clone()),
        };
        self.send(HubMsg::Presence { conn: id, context, data });
    }

    /// The connection is gone: its presence leaves every context.
    pub(super) fn forget_presence(&mut self, conn: ConnId) {
        for shown in self.presence.values_mut() {
            shown.remove(&conn);
        }
    }

    pub(super) fn toggle_stall(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        if let Some(conn) = &mut self.clients[c].conn {
            conn.stalled = !conn.stalled;
        }
    }

    pub(super) fn subscribe(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let projects: Vec<Id> = (1..=4).chain(self.store.of_type("Project")).collect();
        let Some(&p) = self.rng.pick(&projects) else { return };
        self.subscribe_to(c, format!("project/{p}"));
    }

    pub(super) fn subscribe_to(&mut self, c: usize, context: String) {
        let read = self.read_rules(self.clients[c].rules);
        let client = &mut self.clients[c];
        let rules = client.rules;
        let Some(conn) = &mut client.conn else { return };
        let since = client.views.get(&context).map(|v| (v.seq, Some("sim".to_owned())));
        let view = client.views.get(&context).and_then(|v| v.tag.clone());
        conn.subs.lock().insert(context.clone());
        let anchor_id = context.trim_start_matches("project/").parse().expect("a project context");
        let req = SubscribeRequest {
            conn: conn.id,
            channel: self.channel.clone(),
            anchor_id,
            context,
            // The rid names the rules the state is read under.
            rid: Some(json!(rules)),
            since,
            view,
            read,
        };
        self.send(HubMsg::Subscribe(req));
    }

    pub(super) fn unsubscribe(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let client = &mut self.clients[c];
        let Some(conn) = &mut client.conn else { return };
        let held: Vec<String> = conn.subs.lock().iter().cloned().collect();
        let Some(context) = self.rng.pick(&held).cloned() else { return };
        conn.subs.lock().remove(&context);
        conn.live.remove(&context);
        conn.presence.remove(&context);
        *conn.closing.entry(context.clone()).or_default() += 1;
        client.views.remove(&context);
        let id = conn.id;
        self.presence.entry(context.clone()).or_default().remove(&id);
        self.send(HubMsg::Unsubscribe { conn: id, context, rid: None });
    }

    pub(super) fn stream_subscribe(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let projects: Vec<Id> = (1..=4).chain(self.store.of_type("Project")).collect();
        let Some(&p) = self.rng.pick(&projects) else { return };
        self.stream_subscribe_to(c, p);
    }

    /// Subscribes `tasks` filtered on `project`: resuming from the client's
    /// seq when it holds that view, else with a snapshot.
    pub(super) fn stream_subscribe_to(&mut self, c: usize, project: Id) {
        let id = self.next_sub;
        self.next_sub += 1;
        let client = &mut self.clients[c];
        let Some(conn) = &mut client.conn else { return };
        if conn.streams.values().any(|p| *p == project) {
            return; // one subscription per filter keeps the views simple
        }
        let since = client.stream_views.get(&project).map(|v| (v.seq, Some("sim".to_owned())));
        let filters = crate::stream::Filters::new().eq("project", json!(project));
        let Some(entity) = self.schema.entity("Task") else { return };
        let compiled = filters.compile(entity).expect("the filter compiles");
        let route = crate::engine::streams::route_of(&self.stream, &compiled, true);
        let all = crate::engine::streams::Actions::ALL;
        let sub = crate::engine::streams::StreamSub::new(id, conn.id, self.stream.clone(), compiled, all, None, route);
        let wire = sub.wire.to_string();
        conn.streams.insert(wire.clone(), project);
        let req = crate::engine::hub::StreamSubscribeRequest {
            sub,
            rid: Some(json!(wire)),
            snapshot: since.is_none(),
            since,
        };
        self.send(HubMsg::StreamSubscribe(Box::new(req)));
    }

    pub(super) fn stream_unsubscribe(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let client = &mut self.clients[c];
        let Some(conn) = &mut client.conn else { return };
        let held: Vec<String> = conn.streams.keys().cloned().collect();
        let Some(wire) = self.rng.pick(&held).cloned() else { return };
        if let Some(project) = conn.streams.remove(&wire) {
            client.stream_views.remove(&project);
        }
        conn.streams_live.remove(&wire);
        conn.streams_closing.insert(wire.clone());
        let id = conn.id;
        self.send(HubMsg::StreamUnsubscribe { conn: id, subscription: wire, rid: None });
    }

    // ---- writes ----------------------------------------------------------

    pub(super) fn write(&mut self) {
        let n = if self.rng.chance(20) { 2 + self.rng.below(2) } else { 1 };
        let mut changes: Vec<Change> = Vec::new();
        for _ in 0..n {
            for change in self.random_changes(&changes) {
                match changes.iter_mut().find(|c| c.key == change.key) {
                    Some(earlier) => earlier.after = change.after,
                    None => changes.push(change),
                }
            }
        }
        changes.retain(|c| c.before.is_some() || c.after.is_some());
        if changes.is_empty() {
            return self.advance();
        }
        let committed = self.store.commit(changes);
        self.stats.commits += 1;
        if self.shared {
            // The database's commit is durable when it returns.
            self.store.durable = committed.seq;
            if self.rng.chance(40) {
                return; // another process's commit: only the tailer brings it
            }
        }
        let writer = match self.connected() {
            Some(c) if self.rng.chance(85) => {
                let client = &mut self.clients[c];
                let write_id = client.next_write;
                client.next_write += 1;
                let conn = client.conn.as_mut().expect("connected");
                conn.writes.insert(write_id, committed.seq);
                Some(WriterTag {
                    target: ReplyTarget::Conn(conn.id),
                    write_id,
                    rid: None,
                    single_create: false,
                    in_flight: None,
                })
            }
            _ => None,
        };
        let started = self.base + self.now();
        // The writer reads the subtrees its commit moved while the store is
        // still at its seq; now and then that read "fails" and the hub reads
        // them itself (the path another process's commits take).
        let moved = if !self.shared && self.rng.chance(80) { Some(self.moved_by(&committed)) } else { None };
        self.send(HubMsg::Commit { committed, writer, started, moved });
    }

    /// One operation's changes against the store as `earlier` in the batch left it.
    pub(super) fn random_changes(&mut self, earlier: &[Change]) -> Vec<Change> {
        let mut rows = self.store.rows().clone();
        for c in earlier {
            match &c.after {
                Some(a) => rows.insert(c.key.clone(), a.clone()),
                None => rows.remove(&c.key),
            };
        }
        let ids = |ty: &str| -> Vec<Id> { rows.keys().filter(|k| &*k.ty == ty).map(|k| k.id).collect() };
        let (projects, tasks, notes) = (ids("Project"), ids("Task"), ids("Note"));
        let get = |ty: &str, id: Id| rows.get(&RowKey::new(ty, id)).cloned();
        let update = |r: Row, field: &str, value: Value| {
            let mut after = r.clone();
            after.fields.insert(field.into(), value);
            Change { key: r.key(), before: Some(r), after: Some(after) }
        };
        let delete = |r: &Row| Change { key: r.key(), before: Some(r.clone()), after: None };
        let word = format!("w{}", self.rng.below(1000));
        match self.rng.below(10) {
            0 if projects.len() < 5 => {
                let id = self.fresh_id();
                vec![Change {
                    key: RowKey::new("Project", id),
                    before: None,
                    after: Some(row("Project", id, json!({"name": word}))),
                }]
            }
            1 if projects.len() > 1 && self.rng.chance(40) => {
                let Some(&p) = self.rng.pick(&projects) else { return vec![] };
                let Some(project) = get("Project", p) else { return vec![] };
                let mut out = vec![delete(&project)];
                for t in rows.values().filter(|r| &*r.ty == "Task" && r.get_i64("project") == Some(p)) {
                    out.push(delete(t));
                    for n in rows.values().filter(|r| &*r.ty == "Note" && r.get_i64("task") == Some(t.id)) {
                        out.push(delete(n));
                    }
                }
                out
            }
            2 => {
                let Some(&p) = self.rng.pick(&projects) else { return vec![] };
                let id = self.fresh_id();
                vec![Change {
                    key: RowKey::new("Task", id),
                    before: None,
                    after: Some(row("Task", id, json!({"project": p, "title": word}))),
                }]
            }
            3 => {
                let Some(&t) = self.rng.pick(&tasks) else { return vec![] };
                let id = self.fresh_id();
                vec![Change {
                    key: RowKey::new("Note", id),
                    before: None,
                    after: Some(row("Note", id, json!({"task": t, "text": word}))),
                }]
            }
            4 => {
                // A task moves to another project, its notes with it.
                let (Some(&t), Some(&p)) = (self.rng.pick(&tasks), self.rng.pick(&projects)) else { return vec![] };
                let Some(task) = get("Task", t) else { return vec![] };
                if task.get_i64("project") == Some(p) {
                    return vec![];
                }
                vec![update(task, "project", json!(p))]
            }
            5 => {
                let (Some(&n), Some(&t)) = (self.rng.pick(&notes), self.rng.pick(&tasks)) else { return vec![] };
                let Some(note) = get("Note", n) else { return vec![] };
                if note.get_i64("task") == Some(t) {
                    return vec![];
                }
                vec![update(note, "task", json!(t))]
            }
            6 => {
                let Some(&t) = self.rng.pick(&tasks) else { return vec![] };
                let Some(task) = get("Task", t) else { return vec![] };
                let mut out = vec![delete(&task)];
                for n in rows.values().filter(|r| &*r.ty == "Note" && r.get_i64("task") == Some(t)) {
                    out.push(delete(n));
                }
                out
            }
            7 => {
                let Some(&n) = self.rng.pick(&notes) else { return vec![] };
                get("Note", n).map(|r| vec![delete(&r)]).unwrap_or_default()
            }
            8 => {
                let Some(&n) = self.rng.pick(&notes) else { return vec![] };
                get("Note", n).map(|r| vec![update(r, "text", json!(word))]).unwrap_or_default()
            }
            _ => {
                let Some(&t) = self.rng.pick(&tasks) else { return vec![] };
                get("Task", t).map(|r| vec![update(r, "title", json!(word))]).unwrap_or_default()
            }
        }
    }

    /// What `load::moved_subtrees` reads for `committed`, from the store at its seq.
    pub(super) fn moved_by(&mut self, committed: &Committed) -> Moved {
        let mut moved = Moved::new();
        for change in &committed.changes {
            let (Some(before), Some(after)) = (&change.before, &change.after) else { continue };
            if crate::engine::load::moves_subtree(&self.channel, before, after) {
                self.stats.moves += 1;
                moved.insert((self.channel.name.clone(), after.key()), self.store.subtree(after, committed.seq));
            }
        }
        moved
    }

    pub(super) fn fresh_id(&mut self) -> Id {
        self.store.next_id += 1;
        self.store.next_id
    }

    /// The engine's form of read rules `n` (see [`RULES`]).
    pub(super) fn read_rules(&self, n: u8) -> Option<Arc<crate::engine::hub::ContextRules>> {
        use crate::read_rule::ReadRule;
        use crate::stream::{Filters, Lookup};
        let title_starts = |prefix: &str| Filters::new().with("title", Lookup::StartsWith, prefix);
        let rule = match n {
            1 => ReadRule::rows_where(title_starts("w5")),
            2 => ReadRule::all().hide("title"),
            3 => ReadRule::rows_where(title_starts("w")).hide("title"),
            _ => return None,
        };
        let task = self.schema.entity("Task").expect("Task");
        let compiled = rule.compile(task).expect("the rule compiles");
        let key = format!("Task:{};", rule.key());
        Some(Arc::new(crate::engine::hub::ContextRules::new(key, [("Task".to_owned(), compiled)].into())))
    }

    /// The context as a user under rules `n` reads it at `seq`, worked out
    /// here on its own (not with the engine's rule code).
    pub(super) fn model_view(&self, project: Id, seq: Seq, n: u8) -> Option<BTreeMap<RowKey, Fields>> {
        let mut rows = self.store.context(project, seq)?;
        let title = |f: &Fields| f.get("title").and_then(Value::as_str).unwrap_or("").to_owned();
        let reads = |f: &Fields| match n {
            1 => title(f).starts_with("w5"),
            3 => title(f).starts_with('w'),
            _ => true,
        };
        let hidden: BTreeSet<Id> =
            rows.iter().filter(|(k, f)| &*k.ty == "Task" && !reads(f)).map(|(k, _)| k.id).collect();
        rows.retain(|k, f| match &*k.ty {
            "Task" => !hidden.contains(&k.id),
            "Note" => f.get("task").and_then(Value::as_i64).is_none_or(|t| !hidden.contains(&t)),
            _ => true,
        });
        if n >= 2 {
            for (k, f) in rows.iter_mut() {
                if &*k.ty == "Task" {
                    f.remove("title");
                }
            }
        }
        Some(rows)
    }

    /// A subscriber's rules change (what its policy reads changed): the
    /// server gives it a whole state under the new rules.
    pub(super) fn reclass(&mut self) {
        let Some(c) = self.connected() else { return self.advance() };
        let Some(conn) = &self.clients[c].conn else { return };
        let live: Vec<String> = conn
            .live
            .iter()
            .filter(|x| !conn.reclassing.contains_key(*x) && !conn.closing.contains_key(*x))
            .cloned()
            .collect();
        let Some(context) = self.rng.pick(&live).cloned() else { return };
        let now = self.clients[c].views.get(&context).map_or(0, |v| v.rules);
        let rules = (now + 1 + self.rng.below(u64::from(RULES) - 1) as u8) % RULES;
        let read = self.read_rules(rules);
        self.clients[c].rules = rules;
        let Some(conn) = &mut self.clients[c].conn else { return };
        conn.reclassing.insert(context.clone(), rules);
        let id = conn.id;
        self.send(HubMsg::Reclass { conn: id, context, read });
    }
}
