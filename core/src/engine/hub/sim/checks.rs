//! What the clients receive, and every check made against the model.

use super::*;

impl Sim {
    // ---- what the clients receive ----------------------------------------

    pub(super) fn drain_all(&mut self) {
        for c in 0..self.clients.len() {
            self.drain(c);
        }
    }

    pub(super) fn drain(&mut self, c: usize) {
        loop {
            let Some(conn) = &mut self.clients[c].conn else { return };
            if conn.rx.is_aborted() {
                // Cut off as a slow consumer: the client reconnects later.
                self.stats.slow_consumers += 1;
                let id = conn.id;
                self.clients[c].conn = None;
                self.forget_presence(id);
                return self.send(HubMsg::Disconnect { conn: id });
            }
            if conn.stalled {
                return;
            }
            let Some(frame) = conn.rx.try_next_frame() else { return };
            let msg = match self.clients[c].codec.decode_server(&frame) {
                Ok(Some(msg)) => msg,
                Ok(None) => continue,
                Err(e) => self.fail(format_args!("a frame does not decode: {e}")),
            };
            self.receive(c, msg);
        }
    }

    pub(super) fn receive(&mut self, c: usize, msg: ServerMessage) {
        if self.trace {
            eprintln!("  client {c} <- {}", serde_json::to_string(&msg).unwrap_or_default());
        }
        let closing = |context: &str| self.clients[c].conn.as_ref().is_some_and(|k| k.closing.contains_key(context));
        match &msg {
            ServerMessage::State(s) if closing(&s.context) => return,
            ServerMessage::Delta(d) if closing(&d.context) => return,
            ServerMessage::Presence(p) if closing(&p.context) => return,
            ServerMessage::Event(e) if self.stream_closing(c, &e.subscription) => return,
            ServerMessage::Subscribed(s) if self.stream_closing(c, &s.subscription) => return,
            _ => {}
        }
        match msg {
            ServerMessage::State(state) => {
                self.stats.states += 1;
                self.check_durable(state.seq, "state");
                let rules = match state.rid.as_ref().and_then(Value::as_u64) {
                    Some(rules) => rules as u8,
                    None => match self.clients[c].conn.as_mut().and_then(|k| k.reclassing.remove(&state.context)) {
                        Some(rules) => rules,
                        None => self.fail(format_args!("a state of {} with no rid, and no reclass", state.context)),
                    },
                };
                let before = self.clients[c].views.get(&state.context).map(|v| v.rules);
                if state.incremental && before.is_some_and(|b| b != rules) {
                    self.fail(format_args!(
                        "an incremental state of {} under rules {rules} onto a view read under {before:?}",
                        state.context
                    ));
                }
                let tag = self.read_rules(rules).map(|r| r.tag.clone());
                if state.view != tag {
                    self.fail(format_args!("a state under rules {rules} carries view {:?}, not {tag:?}", state.view));
                }
                let client = &mut self.clients[c];
                let view = client.views.entry(state.context.clone()).or_default();
                view.rules = rules;
                view.tag = tag;
                if !state.incremental {
                    view.rows.clear();
                }
                for r in &state.instances {
                    view.rows.insert(r.key(), r.fields.clone());
                }
                for r in &state.removed {
                    view.rows.remove(&RowKey::new(r.ty.as_str(), r.id));
                }
                view.seq = state.seq;
                if let Some(conn) = &mut client.conn {
                    conn.live.insert(state.context.clone());
                    // Every state lists the others' presence in full.
                    let shown = state.presence.iter().map(|e| (e.connection_id.clone(), e.data.clone())).collect();
                    conn.presence.insert(state.context.clone(), shown);
                }
                self.check_view(c, &state.context, "after a state");
            }
            ServerMessage::Delta(delta) => {
                self.stats.deltas += 1;
                self.check_durable(delta.seq, "delta");
                let live = self.clients[c].conn.as_ref().is_some_and(|k| k.live.contains(&delta.context));
                if !live {
                    self.fail(format_args!("a delta for {} before its state on this connection", delta.context));
                }
                let view = self.clients[c].views.get(&delta.context).cloned().unwrap_or_default();
                if delta.prev != view.seq {
                    self.fail(format_args!(
                        "delta {} of {} has prev {}, the view is at {}",
                        delta.seq, delta.context, delta.prev, view.seq
                    ));
                }
                let project = project_of(&delta.context);
                if self.model_view(project, delta.seq - 1, view.rules).as_ref() != Some(&view.rows) {
                    self.fail(format_args!(
                        "{} changed between seq {} and {} without a delta",
                        delta.context, view.seq, delta.seq
                    ));
                }
                if let Some(w) = delta.write_id {
                    let ours = self.clients[c].conn.as_ref().and_then(|k| k.writes.get(&w)) == Some(&delta.seq);
                    if !ours {
                        self.fail(format_args!(
                            "delta {} is tagged with write {w}, not this client's commit",
                            delta.seq
                        ));
                    }
                }
                let view = self.clients[c].views.get_mut(&delta.context).expect("held");
                let mut bad = None;
                for ch in delta.changes.iter() {
                    let key = RowKey::new(ch.ty.clone(), ch.id);
                    match ch.op {
                        ChangeOp::Create => {
                            if view.rows.insert(key.clone(), ch.fields.clone()).is_some() {
                                bad = Some(format!("create of {key}, which the view holds"));
                            }
                        }
                        ChangeOp::Update => match view.rows.get_mut(&key) {
                            Some(fields) => fields.extend(ch.fields.clone()),
                            None => bad = Some(format!("update of {key}, which the view lacks")),
                        },
                        ChangeOp::Delete => {
                            if view.rows.remove(&key).is_none() {
                                bad = Some(format!("delete of {key}, which the view lacks"));
                            }
                        }
                    }
                }
                view.seq = delta.seq;
                if let Some(bad) = bad {
                    self.fail(format_args!("delta {} of {}: {bad}", delta.seq, delta.context));
                }
                self.check_view(c, &delta.context, "after a delta");
            }
            ServerMessage::WriteResponse(resp) => {
                let Some(conn) = &mut self.clients[c].conn else { return };
                let (seq, live) = (conn.writes.remove(&resp.write_id), conn.live.clone());
                let Some(seq) = seq else {
                    self.fail(format_args!("an answer to write {} nobody is waiting for", resp.write_id))
                };
                if !resp.success {
                    self.stats.refused += 1;
                    self.refused.insert(seq);
                    return;
                }
                self.stats.confirmed += 1;
                if resp.seq != Some(seq) {
                    self.fail(format_args!(
                        "write {} answered with seq {:?}, committed at {seq}",
                        resp.write_id, resp.seq
                    ));
                }
                self.check_durable(seq, "writeResponse");
                self.confirmed.insert(seq);
                // Every change the commit made to a context held here came first.
                for context in live {
                    let p = project_of(&context);
                    let (at, rules) = self.clients[c].views.get(&context).map_or((0, 0), |v| (v.seq, v.rules));
                    let changed = self.model_view(p, seq, rules) != self.model_view(p, seq - 1, rules);
                    if changed && at < seq {
                        self.fail(format_args!(
                            "the answer to write {} (seq {seq}) came before its change to {context} (view at {at})",
                            resp.write_id
                        ));
                    }
                }
            }
            ServerMessage::Subscribed(sub) => self.stream_subscribed(c, sub),
            ServerMessage::Event(event) => self.stream_event(c, event),
            ServerMessage::Unsubscribed(Unsubscribed { subscription: Some(wire), .. }) => {
                let Some(conn) = &mut self.clients[c].conn else { return };
                if !conn.streams_closing.remove(&wire) {
                    self.fail(format_args!("stream {wire} unsubscribed, but the client did not ask"));
                }
            }
            ServerMessage::Presence(p) => {
                self.stats.presence += 1;
                let Some(conn) = &mut self.clients[c].conn else { return };
                if !conn.live.contains(&p.context) {
                    self.fail(format_args!("presence in {}, which this connection has no state of", p.context));
                }
                let shown = conn.presence.entry(p.context).or_default();
                if p.left || p.data.is_null() {
                    shown.remove(&p.connection_id);
                } else {
                    shown.insert(p.connection_id, p.data);
                }
            }
            ServerMessage::Unsubscribed(u) => {
                let Some(context) = u.context else { return };
                let client = &mut self.clients[c];
                if let Some(conn) = &mut client.conn {
                    if u.reason == UnsubscribeReason::ClientRequest {
                        match conn.closing.get_mut(&context) {
                            Some(n) if *n > 1 => *n -= 1,
                            Some(_) => drop(conn.closing.remove(&context)),
                            None => self.fail(format_args!("{context} unsubscribed, but the client did not ask")),
                        }
                        return;
                    }
                    conn.live.remove(&context);
                }
                if u.reason == UnsubscribeReason::AnchorDeleted {
                    client.views.remove(&context);
                    if self.store.rows().contains_key(&RowKey::new("Project", project_of(&context))) {
                        self.fail(format_args!("{context} ended as deleted, but its anchor exists"));
                    }
                }
            }
            ServerMessage::Error(e) if e.context.is_none() && e.rid.is_some() => {
                self.fail(format_args!("a stream subscribe refused: {:?}", e.error));
            }
            ServerMessage::Error(e) => {
                let Some(context) = e.context else {
                    self.fail(format_args!("an error with no context: {:?}", e.error));
                };
                let client = &mut self.clients[c];
                if let Some(conn) = &mut client.conn {
                    conn.live.remove(&context);
                }
                match e.error.reason {
                    ErrorReason::AnchorNotFound => {
                        client.views.remove(&context);
                    }
                    ErrorReason::RateLimited => {}
                    other => self.fail(format_args!("an unexpected error for {context}: {other:?}")),
                }
            }
            other => self.fail(format_args!("an unexpected message: {other:?}")),
        }
    }

    pub(super) fn stream_closing(&self, c: usize, wire: &str) -> bool {
        self.clients[c].conn.as_ref().is_some_and(|k| k.streams_closing.contains(wire))
    }

    pub(super) fn stream_subscribed(&mut self, c: usize, sub: crate::protocol::v1::Subscribed) {
        self.stats.states += 1;
        self.check_durable(sub.seq, "subscribed");
        let client = &mut self.clients[c];
        let Some(conn) = &mut client.conn else { return };
        let Some(&project) = conn.streams.get(&sub.subscription) else {
            self.fail(format_args!("subscribed to {}, which the client did not ask for", sub.subscription))
        };
        conn.streams_live.insert(sub.subscription.clone());
        let view = client.stream_views.entry(project).or_default();
        let resumed_at = view.seq;
        match sub.snapshot {
            Some(rows) => view.rows = rows.iter().map(|r| (r.key(), r.fields.clone())).collect(),
            // A resume: the events after `since` follow.
            None if resumed_at == sub.seq => {}
            None => self.fail(format_args!(
                "a resume of {} at {resumed_at} answered without a snapshot at {}",
                sub.subscription, sub.seq
            )),
        }
        if let Some(view) = self.clients[c].stream_views.get_mut(&project) {
            view.seq = sub.seq;
        }
        self.check_stream_view(c, project, "after subscribed");
    }

    pub(super) fn stream_event(&mut self, c: usize, event: crate::protocol::v1::Event) {
        self.stats.events += 1;
        self.check_durable(event.seq, "event");
        let Some(conn) = &self.clients[c].conn else { return };
        let Some(&project) = conn.streams.get(&event.subscription) else {
            self.fail(format_args!("an event for {}, which the client does not hold", event.subscription))
        };
        if !conn.streams_live.contains(&event.subscription) {
            self.fail(format_args!("an event for {} before its subscribed", event.subscription));
        }
        let view = self.clients[c].stream_views.get(&project).cloned().unwrap_or_default();
        if event.prev != view.seq {
            self.fail(format_args!(
                "event {} of {} has prev {}, the view is at {}",
                event.seq, event.subscription, event.prev, view.seq
            ));
        }
        // A new commit: the one before it is complete, and nothing changed in between.
        if event.seq > view.seq
            && (self.stream_rows(project, view.seq) != view.rows
                || self.stream_rows(project, event.seq - 1) != view.rows)
        {
            self.fail(format_args!(
                "stream {} changed between seq {} and {} without an event",
                event.subscription, view.seq, event.seq
            ));
        }
        let key = RowKey::new("Task", event.id);
        let fields = event.data.unwrap_or_default();
        let Some(view) = self.clients[c].stream_views.get_mut(&project) else { return };
        let fits = match event.action {
            ChangeOp::Create => view.rows.insert(key, fields).is_none(),
            ChangeOp::Update => view.rows.insert(key, fields).is_some(),
            ChangeOp::Delete => view.rows.remove(&key).is_some(),
        };
        view.seq = event.seq;
        if !fits {
            self.fail(format_args!("event {:?} of Task#{} does not fit the view", event.action, event.id));
        }
    }

    /// The tasks of `project` at `seq`, as the stream shows them.
    pub(super) fn stream_rows(&self, project: Id, seq: Seq) -> BTreeMap<RowKey, Fields> {
        let rows = self.store.at(seq).values();
        let of_project = |r: &&Row| &*r.ty == "Task" && r.get_i64("project") == Some(project);
        rows.filter(of_project).map(|r| (r.key(), r.fields.clone())).collect()
    }

    pub(super) fn check_stream_view(&self, c: usize, project: Id, when: &str) {
        let view = &self.clients[c].stream_views[&project];
        if self.stream_rows(project, view.seq) != view.rows {
            self.fail(format_args!(
                "{when}, client {c}'s tasks of project {project} at seq {} differ from the store",
                view.seq
            ));
        }
    }

    pub(super) fn check_durable(&self, seq: Seq, what: &str) {
        if seq > self.store.durable {
            self.fail(format_args!(
                "a {what} at seq {seq} shows a commit not yet durable (durable {})",
                self.store.durable
            ));
        }
        if self.refused.contains(&seq) {
            self.fail(format_args!("a {what} shows the refused commit {seq}"));
        }
    }

    pub(super) fn check_view(&self, c: usize, context: &str, when: &str) {
        let view = &self.clients[c].views[context];
        let model = self.model_view(project_of(context), view.seq, view.rules);
        if model.as_ref() != Some(&view.rows) {
            self.fail(format_args!(
                "{when}, client {c}'s view of {context} at seq {} differs from the store:\n  view:  {:?}\n  store: {:?}",
                view.seq,
                view.rows.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
                model.map(|m| m.keys().map(|k| k.to_string()).collect::<Vec<_>>())
            ));
        }
    }

    /// Once all is quiet, every subscriber holds the context as it is now.
    pub(super) fn check_settled(&self) {
        for (c, client) in self.clients.iter().enumerate() {
            let Some(conn) = &client.conn else { continue };
            let held = conn.subs.lock().clone();
            for context in held {
                if !conn.live.contains(&context) {
                    self.fail(format_args!("client {c} holds {context} but never got its state"));
                }
                let view = &client.views[&context];
                let now = self.model_view(project_of(&context), self.store.last_seq(), view.rules);
                if now.as_ref() != Some(&view.rows) {
                    self.fail(format_args!("client {c}'s view of {context} is behind the store once settled"));
                }
            }
            for context in &conn.live {
                let others: BTreeMap<String, Value> = self
                    .presence
                    .get(context)
                    .into_iter()
                    .flatten()
                    .filter(|(id, _)| **id != conn.id)
                    .map(|(id, data)| (format!("c{id}"), data.clone()))
                    .collect();
                if conn.presence.get(context).cloned().unwrap_or_default() != others {
                    self.fail(format_args!(
                        "client {c} sees presence {:?} in {context}, the others show {others:?}",
                        conn.presence.get(context)
                    ));
                }
            }
            for (wire, project) in &conn.streams {
                if !conn.streams_live.contains(wire) {
                    self.fail(format_args!("client {c} holds stream {wire} but never got its subscribed"));
                }
                let view = &client.stream_views[project];
                if self.stream_rows(*project, self.store.last_seq()) != view.rows {
                    self.fail(format_args!(
                        "client {c}'s tasks of project {project} are behind the store once settled"
                    ));
                }
            }
            if let Some((w, seq)) = conn.writes.first_key_value() {
                self.fail(format_args!("client {c}'s write {w} (seq {seq}) was never answered"));
            }
        }
    }
}
