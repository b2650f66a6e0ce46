//! Commits into the hub: waiting for durability (one process) or the
//! shared log's tailer (several), delivering in seq order, routing each
//! commit to the live contexts it touches (per read class) and answering
//! its writer.

use super::*;

impl Hub {
    /// Shared log: a local commit waits for the tailer to deliver its seq.
    pub(super) fn await_tail(&mut self, committed: Committed, writer: Option<WriterTag>, started: Instant) {
        if committed.seq <= *self.delivered.borrow() {
            // Delivered already (never expected: the tailer hands entries over
            // under the commit lock): only the writer is left to answer.
            self.answer_writer(writer, Ok(()), &committed);
            return;
        }
        self.awaiting.insert(committed.seq, (committed, writer, started));
    }

    /// Shared log: delivers entries read by the tailer, in seq order, each once.
    pub(super) async fn tailed(&mut self, entries: Vec<LogEntry>, through: Seq) {
        for entry in entries {
            let (committed, writer, started) = match self.awaiting.remove(&entry.seq) {
                Some(local) => local,
                None => {
                    (Committed { seq: entry.seq, changes: entry.changes, created: Vec::new() }, None, Instant::now())
                }
            };
            self.deliver(committed, writer, started).await;
        }
        // Local commits the log no longer shows (trimmed past): answer their writers.
        while let Some(entry) = self.awaiting.first_entry() {
            if *entry.key() > through {
                break;
            }
            let (committed, writer, started) = entry.remove();
            self.deliver(committed, writer, started).await;
        }
        if self.awaiting.is_empty() {
            for done in self.barriers.drain(..) {
                let _ = done.send(());
            }
        }
        self.seq = self.seq.max(through);
        self.delivered.send_if_modified(|d| {
            let advance = through > *d;
            if advance {
                *d = through;
            }
            advance
        });
    }

    /// One process: a commit waits, off the hub's loop, until it is durable
    /// (see [`run_durability`]); meanwhile subscribes, answers and other
    /// connections go on.
    pub(super) fn await_durable(&mut self, committed: Committed, writer: Option<WriterTag>, started: Instant) {
        let seq = committed.seq;
        self.awaiting.insert(seq, (committed, writer, started));
        if let Some(tx) = &self.durability {
            let _ = tx.send(seq);
        }
    }

    /// One process: delivers the commits already durable whose `Durable`
    /// has not come yet. A load waited for the durability of everything it
    /// read: delivering those first lets the load's rows and the commits
    /// delivered after it meet at one seq (no event twice, none lost). A
    /// commit whose moved subtree is still loading is read here instead.
    pub(super) async fn deliver_durable(&mut self) {
        if self.shared_log {
            return;
        }
        self.durable_through = self.durable_through.max(self.store.durable_seq());
        loop {
            self.pump();
            let next = self.awaiting.first_key_value().map(|(seq, _)| *seq);
            match next {
                Some(seq) if seq <= self.durable_through && self.moves_loading.is_some() => {
                    let Some((committed, writer, started)) = self.awaiting.remove(&seq) else { break };
                    self.moves_loading = None; // its load's answer will find nothing to do
                    let moved = load_moves(&*self.store, self.moves_to_load(&committed)).await;
                    self.deliver_with(committed, writer, started, moved);
                }
                _ => break,
            }
        }
        self.pump();
    }

    /// Every commit up to `through` is durable (or the store failed to make
    /// it so): delivered in seq order, or its writer told.
    pub(super) fn durable(&mut self, through: Seq, result: Result<(), crate::store::StoreError>) {
        match result {
            Ok(()) => self.durable_through = self.durable_through.max(through),
            Err(e) => {
                while let Some(entry) = self.awaiting.first_entry() {
                    if *entry.key() > through {
                        break;
                    }
                    let (committed, writer, _) = entry.remove();
                    tracing::error!(error = %e, seq = committed.seq, "the store could not make a commit durable");
                    self.healthy.store(false, Ordering::SeqCst);
                    self.answer_writer(writer, Err(crate::error::commit_not_durable(&e)), &committed);
                }
                self.moves_loading = None;
            }
        }
        self.pump();
    }

    /// Delivers the durable commits in seq order, until one needs a moved
    /// subtree read: that read runs off the loop and the commit (and those
    /// after it) waits for `MovesLoaded`.
    pub(super) fn pump(&mut self) {
        while self.moves_loading.is_none() {
            let Some((&seq, next)) = self.awaiting.first_key_value() else { break };
            if seq > self.durable_through {
                break;
            }
            let loads = self.moves_to_load(&next.0);
            if !loads.is_empty() {
                self.moves_loading = Some(seq);
                let (store, me) = (self.store.clone(), self.me.clone());
                tokio::spawn(async move {
                    let moved = load_moves(&*store, loads).await;
                    if let Some(tx) = me.upgrade() {
                        let _ = tx.send(HubMsg::MovesLoaded { seq, moved });
                    }
                });
                break;
            }
            let Some((committed, writer, started)) = self.awaiting.remove(&seq) else { break };
            self.deliver_with(committed, writer, started, Moved::new());
        }
        let seq = self.seq;
        self.delivered.send_if_modified(|d| {
            let advance = seq > *d;
            if advance {
                *d = seq;
            }
            advance
        });
        if self.awaiting.is_empty() {
            for done in self.barriers.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// The moved subtrees of commit `seq` were read: it goes, then the rest.
    pub(super) fn moves_loaded(&mut self, seq: Seq, moved: Moved) {
        if self.moves_loading != Some(seq) {
            return; // delivered meanwhile (see `deliver_durable`)
        }
        self.moves_loading = None;
        if let Some((committed, writer, started)) = self.awaiting.remove(&seq) {
            self.deliver_with(committed, writer, started, moved);
        }
        self.pump();
    }

    /// Shared log: loads what the commit moved, then delivers it.
    pub(super) async fn deliver(&mut self, committed: Committed, writer: Option<WriterTag>, started: Instant) {
        let moved = load_moves(&*self.store, self.moves_to_load(&committed)).await;
        self.deliver_with(committed, writer, started, moved);
    }

    /// Routes a durable commit to contexts and streams, then answers its writer.
    pub(super) fn deliver_with(
        &mut self,
        committed: Committed,
        writer: Option<WriterTag>,
        started: Instant,
        moved: Moved,
    ) {
        self.metrics.observe_commit(started.elapsed());
        let delivered = Instant::now();
        let committed = Arc::new(committed);
        self.seq = self.seq.max(committed.seq);
        for slot in self.contexts.values_mut() {
            if let Slot::Loading { buffered, .. } = slot {
                buffered.push(committed.clone());
            }
        }
        if let Some(revalidate) = &self.revalidate {
            let touched = revalidate.watch.touched(&committed);
            if !touched.is_empty() {
                let _ = revalidate.tx.send(touched);
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
        self.metrics.observe_delivery(delivered.elapsed());
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

    /// Rows whose fields changed and that hang rows under them in a live
    /// channel: their subtrees must be read before the commit is routed
    /// (a row that moved to a new parent brings its subtree along).
    pub(super) fn moves_to_load(&self, c: &Committed) -> Vec<MoveLoad> {
        let mut out = Vec::new();
        for change in &c.changes {
            let (Some(before), Some(after)) = (&change.before, &change.after) else {
                continue;
            };
            if before.fields == after.fields {
                continue;
            }
            let channels: HashMap<&str, &Arc<Channel>> = self
                .contexts
                .values()
                .filter_map(|s| match s {
                    Slot::Live(ctx) => Some((ctx.channel.name.as_str(), &ctx.channel)),
                    Slot::Loading { .. } => None,
                })
                .filter(|(_, ch)| ch.edges_from(&after.ty).next().is_some())
                .collect();
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
