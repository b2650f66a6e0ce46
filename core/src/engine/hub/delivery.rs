//! Commits into the hub: waiting for durability (one process) or the
//! shared log's tailer (several), delivering in seq order, routing each
//! commit to the live contexts it touches (per read class) and answering
//! its writer.

use super::*;

impl Hub {
    /// Shared log: a local commit waits for the tailer to deliver its seq.
    pub(super) fn await_tail(&mut self, a: Awaiting) {
        if a.committed.seq <= self.reported {
            // Delivered already (never expected: the tailer hands entries over
            // under the commit lock): only the writer is left to answer.
            self.answer_writer(a.writer, Ok(()), &a.committed);
            return;
        }
        self.awaiting.insert(a.committed.seq, a);
    }

    /// Shared log: entries read by the tailer (any process's commits), in
    /// seq order. Each is delivered once, from the local copy when this
    /// process made it (it knows the writer to answer).
    pub(super) fn tailed(&mut self, entries: Vec<LogEntry>, through: Seq) {
        let now = self.io.now();
        for entry in entries {
            self.awaiting.entry(entry.seq).or_insert_with(|| Awaiting {
                committed: Committed { seq: entry.seq, changes: entry.changes, created: Vec::new() },
                writer: None,
                started: now,
                moved: None,
            });
        }
        // Local commits the log no longer shows (trimmed past) go from the
        // local copy: their writers are answered.
        self.tail_through = self.tail_through.max(through);
        self.pump();
    }

    /// One process: a commit waits until it is durable (the driver waits
    /// off the hub's loop); meanwhile subscribes, answers and other
    /// connections go on.
    pub(super) fn await_durable(&mut self, a: Awaiting) {
        let seq = a.committed.seq;
        self.awaiting.insert(seq, a);
        self.io.wait_durable(seq);
    }

    /// Every commit up to `through` is durable (or the store failed to make
    /// it so): delivered in seq order, or its writer told.
    pub(super) fn durable(&mut self, through: Seq, result: Result<(), crate::store::StoreError>) {
        match result {
            Ok(()) => self.durable_through = self.durable_through.max(through),
            Err(e) => {
                // Commits known durable (still waiting for a moved subtree)
                // go out as usual; the ones after them are refused.
                let durable = self.durable_through;
                let failed: Vec<Seq> =
                    self.awaiting.range(durable + 1..=through.max(durable)).map(|(s, _)| *s).collect();
                for seq in failed {
                    let Some(Awaiting { committed, writer, .. }) = self.awaiting.remove(&seq) else { continue };
                    tracing::error!(error = %e, seq, "the store could not make a commit durable");
                    self.healthy.store(false, Ordering::SeqCst);
                    self.answer_writer(writer, Err(crate::error::commit_not_durable(&e)), &committed);
                }
                if self.moves_loading.is_some_and(|seq| seq > durable) {
                    self.moves_loading = None; // its load's answer will find nothing to do
                }
            }
        }
        self.pump();
        self.replay_deferred();
    }

    /// The seq up to which awaiting commits may go out.
    fn ready_through(&self) -> Seq {
        if self.shared_log { self.tail_through } else { self.durable_through }
    }

    /// A load (of a context or a stream) read the store after every commit
    /// up to `durable` was durable and had reached the hub. Those commits
    /// must be delivered before the load is used, so that its rows and the
    /// commits delivered after it meet at one seq (no event twice, none
    /// lost). Delivers what it can; true when one of them is still waiting
    /// for its moved subtrees (the load then waits for it too).
    pub(super) fn must_wait(&mut self, durable: Seq) -> bool {
        if !self.shared_log {
            self.durable_through = self.durable_through.max(durable);
        }
        self.pump();
        let ready = self.ready_through();
        self.moves_loading.is_some() && self.awaiting.first_key_value().is_some_and(|(seq, _)| *seq <= ready)
    }

    /// Loads held back by `must_wait`, in arrival order, once delivery moved on.
    fn replay_deferred(&mut self) {
        if self.deferred.is_empty() || self.moves_loading.is_some() {
            return;
        }
        for msg in std::mem::take(&mut self.deferred) {
            self.handle(msg);
        }
    }

    /// Delivers the ready commits in seq order, until one needs a moved
    /// subtree read: that read runs elsewhere and the commit (and those
    /// after it) waits for `MovesLoaded`.
    pub(super) fn pump(&mut self) {
        let ready = self.ready_through();
        while self.moves_loading.is_none() {
            let Some((&seq, next)) = self.awaiting.first_key_value() else { break };
            if seq > ready {
                break;
            }
            if next.moved.is_none() {
                let loads = self.moves_to_load(&next.committed);
                if !loads.is_empty() {
                    self.moves_loading = Some(seq);
                    self.io.load_moves(seq, loads);
                    break;
                }
            }
            let Some(a) = self.awaiting.remove(&seq) else { break };
            self.deliver_with(a.committed, a.writer, a.started, a.moved.unwrap_or_default());
        }
        let caught_up = self.moves_loading.is_none() && self.awaiting.first_key_value().is_none_or(|(s, _)| *s > ready);
        if self.shared_log && caught_up {
            // The log is settled up to here, gaps included.
            self.seq = self.seq.max(ready);
        }
        if self.seq > self.reported {
            self.reported = self.seq;
            self.io.delivered(self.seq);
        }
        if self.awaiting.is_empty() {
            for done in self.barriers.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// The moved subtrees of commit `seq` were read: it goes, then the rest.
    pub(super) fn moves_loaded(&mut self, seq: Seq, moved: Moved) {
        if self.moves_loading != Some(seq) {
            return; // its commit was refused meanwhile (see `durable`)
        }
        self.moves_loading = None;
        if let Some(a) = self.awaiting.remove(&seq) {
            self.deliver_with(a.committed, a.writer, a.started, moved);
        }
        self.pump();
        self.replay_deferred();
    }

    /// Routes a durable commit to contexts and streams, then answers its writer.
    pub(super) fn deliver_with(
        &mut self,
        committed: Committed,
        writer: Option<WriterTag>,
        started: Instant,
        moved: Moved,
    ) {
        let delivered = self.io.now();
        self.metrics.observe_commit(delivered.saturating_duration_since(started));
        let committed = Arc::new(parents_first(&self.schema, committed));
        let moved = Arc::new(moved);
        self.seq = self.seq.max(committed.seq);
        for slot in self.contexts.values_mut() {
            if let Slot::Loading { buffered, .. } = slot {
                buffered.push((committed.clone(), moved.clone()));
            }
        }
        if let Some(watch) = &self.watch {
            let touched = watch.touched(&committed);
            if !touched.is_empty() {
                self.io.revalidate(touched);
            }
        }
        let writer_conn = match &writer {
            Some(WriterTag { target: ReplyTarget::Conn(c), write_id, .. }) => Some((*c, *write_id)),
            _ => None,
        };
        for context in self.candidate_contexts(&committed) {
            self.route(&context, &committed, &moved, writer_conn);
        }
        for pending in self.pending_streams.values_mut() {
            pending.buffered.push(committed.clone());
        }
        self.route_streams(&committed);
        self.answer_writer(writer, Ok(()), &committed);
        self.metrics.observe_delivery(self.io.now().saturating_duration_since(delivered));
    }

    pub(super) fn answer_writer(&mut self, writer: Option<WriterTag>, result: Result<(), WireError>, c: &Committed) {
        let Some(w) = writer else { return };
        let resp = match result {
            Ok(()) => WriteResponse {
                write_id: w.write_id,
                success: true,
                seq: Some(c.seq),
                created: c.created.clone(),
                instance_id: if w.single_create { c.created.first().map(|c| c.id) } else { None },
                rid: w.rid.clone(),
                ..Default::default()
            },
            Err(e) => WriteResponse {
                write_id: w.write_id,
                success: false,
                error: Some(e),
                rid: w.rid.clone(),
                ..Default::default()
            },
        };
        self.metrics.count_write(resp.error.as_ref());
        match w.target {
            // In its turn: behind earlier answers and a state that may carry this write.
            ReplyTarget::Conn(conn) => match self.conns.get_mut(&conn) {
                Some(entry) => {
                    let ready =
                        entry.answers.write_answered(w.write_id, ServerMessage::WriteResponse(resp), w.in_flight);
                    self.send_answers(conn, ready);
                }
                None => release(w.in_flight),
            },
            ReplyTarget::Oneshot(tx) => {
                let _ = tx.send(match resp.error.clone() {
                    Some(e) => Err(e),
                    None => Ok(resp),
                });
                if let Some(n) = w.in_flight {
                    n.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Live contexts that hold a changed row or the row a changed row now references.
    pub(super) fn candidate_contexts(&self, c: &Committed) -> Vec<Arc<str>> {
        let mut out = BTreeSet::new();
        for change in &c.changes {
            if let Some(set) = self.index.get(&change.key) {
                out.extend(set.iter().cloned());
            }
            let Some(after) = &change.after else { continue };
            let Some(entity) = self.schema.entity(&after.ty) else {
                continue;
            };
            for field in &entity.fields {
                if let (Some(target), Some(id)) = (field.target(), after.get_i64(&field.name))
                    && let Some(set) = self.index.get(&RowKey::new(target, id))
                {
                    out.extend(set.iter().cloned());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Rows that moved to another parent in a channel held here (live or
    /// loading) and hang rows under them there: their subtrees must be read
    /// before the commit is routed (a row that moves brings its subtree
    /// along). A change that moves nothing needs no read. Only for commits
    /// whose writer did not read them: another process's, on a shared log,
    /// read here as the store is then (see [`load::moved_subtrees`]).
    ///
    /// [`load::moved_subtrees`]: crate::engine::load::moved_subtrees
    pub(super) fn moves_to_load(&self, c: &Committed) -> Vec<MoveLoad> {
        let mut out = Vec::new();
        for change in &c.changes {
            let (Some(before), Some(after)) = (&change.before, &change.after) else {
                continue;
            };
            let mut channels: HashMap<&str, &Arc<Channel>> = HashMap::new();
            for slot in self.contexts.values() {
                let channel = match slot {
                    Slot::Live(ctx) => &ctx.channel,
                    Slot::Loading { channel, .. } => channel,
                };
                if crate::engine::load::moves_subtree(channel, before, after) {
                    channels.insert(channel.name.as_str(), channel);
                }
            }
            for (name, channel) in channels {
                out.push(MoveLoad { channel: channel.clone(), name: name.to_owned(), row: after.clone() });
            }
        }
        out
    }

    pub(super) fn route(&mut self, context: &str, c: &Committed, moved: &Moved, writer: Option<(ConnId, i64)>) {
        let Some(Slot::Live(ctx)) = self.contexts.get_mut(context) else {
            return;
        };
        let mut changes = Vec::new();
        let mut anchor_gone = false;
        for change in &c.changes {
            if ctx.apply(&mut self.index, c.seq, change, moved, &mut changes) {
                anchor_gone = true;
                break;
            }
        }
        if anchor_gone {
            return self.end_context(context);
        }
        if changes.is_empty() {
            return;
        }
        let changes = Arc::new(changes);
        let delta = Delta {
            context: ctx.name.to_string(),
            seq: c.seq,
            prev: ctx.last_seq,
            changes: changes.clone(),
            write_id: None,
            created: Vec::new(),
            part: None,
            last: None,
        };
        ctx.last_seq = c.seq;
        ctx.state_cache = [None, None];
        let limit = self.frame_limit;
        let own = writer.map(|(conn, write_id)| (conn, write_id, c.created.clone()));
        let mut failed: Vec<(ConnId, SendError)> = Vec::new();
        let everyone = ctx.subscribers.iter().copied().filter(|conn| !ctx.read.is_restricted(*conn));
        let mut delivered = fan_out(&self.conns, everyone, &delta, own.as_ref(), limit, &mut failed);
        // Each read class: decided once, encoded once per codec, its own `prev` chain.
        let mut ids: Vec<u32> = ctx.read.classes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(mut class) = ctx.read.classes.remove(&id) else { continue };
            let seen = ctx.class_changes(&mut class, c.seq, &changes);
            if !seen.is_empty() {
                let delta = Delta { prev: class.last_seq, changes: Arc::new(seen), ..delta.clone() };
                class.last_seq = c.seq;
                class.state_cache = [None, None];
                let members = class.members.iter().copied();
                delivered += fan_out(&self.conns, members, &delta, own.as_ref(), limit, &mut failed);
            }
            ctx.read.classes.insert(id, class);
        }
        self.metrics.deliveries.fetch_add(delivered, Ordering::Relaxed);
        for (conn, e) in failed {
            self.send_failed(conn, e);
        }
    }

    /// The anchor was deleted: every subscriber is told and the context ends.
    pub(super) fn end_context(&mut self, context: &str) {
        let Some(Slot::Live(ctx)) = self.contexts.get(context) else {
            return;
        };
        let subscribers: Vec<ConnId> = ctx.subscribers.iter().copied().collect();
        self.drop_context(context);
        self.end_presence(context);
        for conn in subscribers {
            if let Some(entry) = self.conns.get(&conn) {
                entry.subs.lock().remove(context);
            }
            let msg = Unsubscribed {
                context: Some(context.to_owned()),
                subscription: None,
                reason: UnsubscribeReason::AnchorDeleted,
                rid: None,
            };
            self.send_msg(conn, &ServerMessage::Unsubscribed(msg));
        }
        self.update_subscription_gauge();
    }
}

/// The commit with each row after the rows of the same commit it refers
/// to. A store lists changes in the order rows were first touched, so a
/// batch that edits a note, creates a task and then moves the note under
/// it lists the note first: routed in that order, the note would look like
/// it left (its new parent not there yet) and be lost. Stable otherwise;
/// a cycle of references keeps its order.
fn parents_first(schema: &Schema, mut c: Committed) -> Committed {
    if c.changes.len() < 2 {
        return c;
    }
    let created: HashSet<RowKey> = c.changes.iter().filter(|ch| ch.after.is_some()).map(|ch| ch.key.clone()).collect();
    let refers_to_pending = |ch: &Change, placed: &HashSet<RowKey>| {
        let Some(after) = &ch.after else { return false };
        let Some(entity) = schema.entity(&after.ty) else { return false };
        entity.fields.iter().any(|f| match (f.target(), after.get_i64(&f.name)) {
            (Some(target), Some(id)) => {
                let parent = RowKey::new(target, id);
                parent != ch.key && created.contains(&parent) && !placed.contains(&parent)
            }
            _ => false,
        })
    };
    let mut placed: HashSet<RowKey> = HashSet::new();
    if !c.changes.iter().any(|ch| refers_to_pending(ch, &placed)) {
        return c; // already in order (the usual case): nothing to move
    }
    let mut rest: Vec<Change> = std::mem::take(&mut c.changes);
    while !rest.is_empty() {
        let before = rest.len();
        let mut i = 0;
        while i < rest.len() {
            if refers_to_pending(&rest[i], &placed) {
                i += 1;
            } else {
                let ch = rest.remove(i);
                placed.insert(ch.key.clone());
                c.changes.push(ch);
            }
        }
        if rest.len() == before {
            c.changes.append(&mut rest); // a cycle: as listed
        }
    }
    c
}
