//! The world outside the hub: its requests, answered on the simulated clock
//! from the model store (reads, durability, the shared log's tailer, crashes).

use super::*;

/// A request the hub made, as the simulator's [`HubIo`] recorded it.
pub(super) enum Request {
    Load { context: String, anchor_id: Id },
    ReadLog { req: SubscribeRequest, since: Seq, upto: Seq },
    Moves { seq: Seq, loads: Vec<MoveLoad> },
    Stream { sub: SubId, read: StreamRead },
    Durable(Seq),
    Delivered(Seq),
}

#[derive(Default)]
pub(super) struct Outside {
    pub(super) requests: Vec<Request>,
    pub(super) clock: Duration,
}

pub(super) struct SimIo {
    pub(super) outside: Arc<parking_lot::Mutex<Outside>>,
    pub(super) base: Instant,
}

impl HubIo for SimIo {
    fn now(&self) -> Instant {
        self.base + self.outside.lock().clock
    }
    fn load_context(&mut self, context: String, _channel: Arc<Channel>, anchor_id: Id) {
        self.outside.lock().requests.push(Request::Load { context, anchor_id });
    }
    fn read_log(&mut self, req: SubscribeRequest, since: Seq, upto: Seq) {
        self.outside.lock().requests.push(Request::ReadLog { req, since, upto });
    }
    fn load_moves(&mut self, seq: Seq, loads: Vec<MoveLoad>) {
        self.outside.lock().requests.push(Request::Moves { seq, loads });
    }
    fn load_stream(&mut self, sub: SubId, read: StreamRead) {
        self.outside.lock().requests.push(Request::Stream { sub, read });
    }
    fn wait_durable(&mut self, seq: Seq) {
        self.outside.lock().requests.push(Request::Durable(seq));
    }
    fn delivered(&mut self, seq: Seq) {
        self.outside.lock().requests.push(Request::Delivered(seq));
    }
    fn revalidate(&mut self, _touched: Touched) {}
    fn publish(&mut self, _text: String) {}
    fn free(&mut self, _ctx: Box<LiveContext>) {}
}

/// A read the hub asked for, answered when its time comes.
pub(super) enum Pending {
    /// A context read at `read_seq`; answered once that is durable.
    Loaded {
        context: String,
        result: Result<Vec<Row>, WireError>,
        read_seq: Seq,
        at: Duration,
    },
    Load {
        context: String,
        anchor_id: Id,
        at: Duration,
    },
    ReadLog {
        req: SubscribeRequest,
        since: Seq,
        upto: Seq,
        at: Duration,
    },
    Moves {
        seq: Seq,
        loads: Vec<MoveLoad>,
        at: Duration,
    },
    Stream {
        sub: SubId,
        read: StreamRead,
        at: Duration,
    },
    /// A stream read done at `read_seq`; answered once that is durable.
    StreamRead {
        sub: SubId,
        result: Result<StreamLoad, WireError>,
        read_seq: Seq,
        at: Duration,
    },
}

impl Pending {
    pub(super) fn at(&self) -> Duration {
        match self {
            Pending::Loaded { at, .. }
            | Pending::Load { at, .. }
            | Pending::ReadLog { at, .. }
            | Pending::Moves { at, .. }
            | Pending::Stream { at, .. }
            | Pending::StreamRead { at, .. } => *at,
        }
    }
}

impl Sim {
    // ---- the store's side ------------------------------------------------

    /// The store flushes: everything committed becomes durable, or the
    /// flush fails and the process goes down (restarting from what is durable).
    pub(super) fn flush(&mut self, fails: bool) {
        if fails && self.store.durable < self.store.last_seq() {
            if let Some(through) = self.durable_wanted.take() {
                let e = StoreError::unavailable("the simulated disk is full");
                self.send(HubMsg::Durable { through, result: Err(e) });
            }
            self.drain_all();
            return self.restart();
        }
        self.store.durable = self.store.last_seq();
    }

    /// Shared log: the tailer hands the hub what was committed since its last read.
    pub(super) fn tail(&mut self) {
        if !self.shared || self.tail_sent >= self.store.last_seq() {
            return;
        }
        let through = self.store.last_seq();
        let entries = self.store.log.iter().filter(|e| e.seq > self.tail_sent).cloned().collect();
        self.tail_sent = through;
        self.send(HubMsg::Tailed { entries, through });
    }

    /// A load's answer goes behind every commit its read may have seen:
    /// durable ones (one process), delivered ones (a shared log).
    pub(super) fn settled(&self, read_seq: Seq) -> bool {
        if self.shared { self.delivered >= read_seq } else { self.store.durable >= read_seq }
    }

    /// Tells the hub the durability it waits for, once the store has it.
    pub(super) fn answer_durable(&mut self) {
        if let Some(through) = self.durable_wanted
            && through <= self.store.durable
        {
            self.durable_wanted = None;
            self.send(HubMsg::Durable { through, result: Ok(()) });
        }
    }

    pub(super) fn advance(&mut self) {
        self.outside.lock().clock += Duration::from_millis(1 + self.rng.below(20));
        self.complete_due();
    }

    /// Answers the reads whose time came, in a seeded order.
    pub(super) fn complete_due(&mut self) {
        let now = self.now();
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].at() <= now {
                due.push(self.pending.swap_remove(i));
            } else {
                i += 1;
            }
        }
        while !due.is_empty() {
            let p = due.swap_remove(self.rng.below(due.len() as u64) as usize);
            self.complete(p);
        }
    }

    pub(super) fn complete(&mut self, p: Pending) {
        match p {
            Pending::Load { context, anchor_id, .. } => {
                // The read happens now; its answer waits until what it read is durable.
                let read_seq = self.store.last_seq();
                let result = match self.store.context(anchor_id, read_seq) {
                    Some(_) => Ok(self.read_context(anchor_id)),
                    None => {
                        Err(WireError::new(ErrorReason::AnchorNotFound, format!("Project#{anchor_id} does not exist")))
                    }
                };
                let at = self.later();
                self.pending.push(Pending::Loaded { context, result, read_seq, at });
            }
            Pending::Loaded { context, result, read_seq, at } => {
                if !self.settled(read_seq) {
                    let at = at + Duration::from_millis(5);
                    return self.pending.push(Pending::Loaded { context, result, read_seq, at });
                }
                let durable = self.store.durable;
                self.send(HubMsg::Loaded { context, result, durable });
            }
            Pending::Stream { sub, read, .. } => {
                let read_seq = self.store.last_seq();
                let result = Ok(match read {
                    StreamRead::Since(since) => StreamLoad::Log {
                        since,
                        entries: Some(self.store.log.iter().filter(|e| e.seq > since).cloned().collect()),
                    },
                    StreamRead::Snapshot { filters, .. } => StreamLoad::Snapshot(
                        self.store
                            .rows()
                            .values()
                            .filter(|r| &*r.ty == "Task" && filters.matches(r))
                            .cloned()
                            .collect(),
                    ),
                });
                let at = self.later();
                self.pending.push(Pending::StreamRead { sub, result, read_seq, at });
            }
            Pending::StreamRead { sub, result, read_seq, at } => {
                if !self.settled(read_seq) {
                    let at = at + Duration::from_millis(5);
                    return self.pending.push(Pending::StreamRead { sub, result, read_seq, at });
                }
                let durable = self.store.durable;
                self.send(HubMsg::StreamLoaded { sub, result, durable });
            }
            Pending::ReadLog { req, since, upto, .. } => {
                let entries = self.store.log.iter().filter(|e| e.seq > since && e.seq <= upto).cloned().collect();
                self.send(HubMsg::Backfilled { req, upto, entries: Some(entries) });
            }
            Pending::Moves { seq, loads, .. } => {
                // Read as of the commit: this checks the hub's side of the
                // read (commits and loads wait for it, in order). A real
                // store reads later and may show later commits: why writers
                // read the subtrees themselves whenever they can.
                self.stats.hub_moves += 1;
                let mut moved = Moved::new();
                for MoveLoad { name, row, .. } in loads {
                    moved.insert((name, row.key()), self.store.subtree(&row, seq));
                }
                self.send(HubMsg::MovesLoaded { seq, moved });
            }
        }
    }

    /// The anchor and its tree as the store reads it now, parents first.
    pub(super) fn read_context(&self, project: Id) -> Vec<Row> {
        let rows = self.store.rows();
        let mut out: Vec<Row> = rows.get(&RowKey::new("Project", project)).cloned().into_iter().collect();
        let tasks: Vec<Row> =
            rows.values().filter(|r| &*r.ty == "Task" && r.get_i64("project") == Some(project)).cloned().collect();
        for t in &tasks {
            out.extend(rows.values().filter(|r| &*r.ty == "Note" && r.get_i64("task") == Some(t.id)).cloned());
        }
        tasks.into_iter().rev().for_each(|t| out.insert(1, t));
        out
    }

    /// kill -9 and start again from what is durable.
    pub(super) fn restart(&mut self) {
        self.stats.restarts += 1;
        if let Some(lost) = self.confirmed.iter().find(|s| **s > self.store.durable) {
            self.fail(format_args!(
                "write at seq {lost} was confirmed but is not durable (durable {})",
                self.store.durable
            ));
        }
        self.store.crash();
        self.store.next_id += 1000; // ids are never reused here (a store may; not this check's concern)
        self.pending.clear();
        self.durable_wanted = None;
        self.outside.lock().requests.clear();
        for client in &mut self.clients {
            client.conn = None;
        }
        self.refused.clear();
        self.presence.clear();
        self.confirmed.clear();
        self.hub = Self::start_hub(&self.schema, &self.store, &self.outside, self.base, self.shared);
        self.tail_sent = self.store.durable;
        self.delivered = self.store.durable;
    }
}
