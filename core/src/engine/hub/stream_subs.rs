//! The hub's stream subscriptions: subscribe (checked, loaded, registered),
//! unsubscribe, and the routing of each commit to the subscriptions it may
//! concern (see [`crate::engine::streams`] for the registry).

use super::*;

// ---- streams -------------------------------------------------------------

impl Hub {
    pub(super) fn update_stream_gauge(&self) {
        let n = self.streams.len() + self.pending_streams.len();
        self.metrics.stream_subscriptions.store(n as u64, Ordering::Relaxed);
    }

    /// Registers a checked stream subscribe: at once, or after its snapshot
    /// (or `since` replay) is read, buffering the commits delivered meanwhile.
    pub(super) fn stream_subscribe(&mut self, req: StreamSubscribeRequest) {
        if !self.conns.contains_key(&req.sub.conn) {
            return;
        }
        if let Err(e) = self.stream_within_limits(&req.sub) {
            let conn = req.sub.conn;
            return self.send_msg(conn, &ServerMessage::Error(ErrorMessage::new(e, req.rid)));
        }
        let since = req.since.and_then(|(since, ep)| (ep.as_deref() == Some(self.epoch.as_str())).then_some(since));
        let load = match (req.snapshot, since) {
            (true, _) => Some(None),
            (false, Some(since)) if since <= self.seq => Some(Some(since)),
            (false, _) => None,
        };
        let Some(since) = load else {
            return self.register_stream(req.sub, req.rid, self.seq, None);
        };
        let id = req.sub.id;
        let read = match since {
            Some(since) => StreamRead::Since(since),
            None => StreamRead::Snapshot {
                entity: self.schema.entity(&req.sub.stream.ty).cloned(),
                filters: req.sub.filters.clone(),
                limit: self.snapshot_limit,
            },
        };
        self.pending_streams
            .insert(id, PendingSub { sub: req.sub, rid: req.rid, buffered: Vec::new(), registered_at: self.seq });
        self.update_stream_gauge();
        self.io.load_stream(id, read);
    }

    /// The per-connection and per-stream limits a new stream subscription must fit.
    pub(super) fn stream_within_limits(&self, sub: &StreamSub) -> Result<(), WireError> {
        let limits = &self.limits;
        let pending = self.pending_streams.values().filter(|p| p.sub.conn == sub.conn).count();
        if self.streams.count_of_conn(sub.conn) + pending >= limits.stream_subscriptions {
            return Err(WireError::new(
                ErrorReason::RateLimited,
                format!(
                    "this connection holds {} stream subscriptions already, the most allowed; unsubscribe one first",
                    limits.stream_subscriptions
                ),
            ));
        }
        if sub.route.is_none() && self.streams.unindexed_of(&sub.stream.name) >= limits.unindexed_per_stream {
            return Err(WireError::new(
                ErrorReason::RateLimited,
                format!(
                    "stream `{}` has {} subscriptions whose filters fix no indexed field, the most allowed; \
                     filter on the id or an index field",
                    sub.stream.name, limits.unindexed_per_stream
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn stream_loaded(&mut self, id: SubId, result: Result<StreamLoad, WireError>) {
        let Some(pending) = self.pending_streams.remove(&id) else { return };
        self.update_stream_gauge();
        let PendingSub { sub, rid, buffered, registered_at } = pending;
        if !self.conns.contains_key(&sub.conn) {
            return;
        }
        match result {
            Err(e) => self.send_msg(sub.conn, &ServerMessage::Error(ErrorMessage::new(e, rid))),
            Ok(StreamLoad::Snapshot(rows)) => {
                // The rows were read at some point after registration; the commits
                // delivered since then decide every row they touched.
                let mut rows: BTreeMap<Id, Row> =
                    rows.into_iter().filter(|r| sub.matches(r)).map(|r| (r.id, r)).collect();
                for commit in &buffered {
                    for change in commit.changes.iter().filter(|c| *c.key.ty == *sub.stream.ty) {
                        match change.after.as_ref().filter(|r| sub.matches(r)) {
                            Some(after) => rows.insert(after.id, after.clone()),
                            None => rows.remove(&change.key.id),
                        };
                    }
                }
                if rows.len() > self.snapshot_limit {
                    let e = driver::snapshot_too_large(self.snapshot_limit);
                    return self.send_msg(sub.conn, &ServerMessage::Error(ErrorMessage::new(e, rid)));
                }
                let snapshot: Vec<Arc<Row>> = rows.values().map(|r| sub.snapshot_row(r)).collect();
                self.register_stream(sub, rid, self.seq, Some(snapshot));
            }
            Ok(StreamLoad::Log { since, entries }) => {
                let resumable = entries.as_ref().is_some_and(|es| {
                    since <= self.seq && (es.len() < MAX_REPLAY || es.last().is_some_and(|e| e.seq >= registered_at))
                });
                let Some(entries) = entries.filter(|_| resumable) else {
                    return self.register_stream(sub, rid, self.seq, None);
                };
                // The log up to the hub's seq, then what it had not reached yet.
                let mut commits: Vec<(Seq, &[Change])> =
                    entries.iter().filter(|e| e.seq <= self.seq).map(|e| (e.seq, &e.changes[..])).collect();
                let from = commits.last().map_or(since, |c| c.0);
                commits.extend(buffered.iter().filter(|c| c.seq > from).map(|c| (c.seq, &c.changes[..])));
                let mut sub = sub;
                sub.last_seq = since;
                let mut frames = Vec::new();
                for (seq, changes) in commits {
                    for change in changes.iter().filter(|c| *c.key.ty == *sub.stream.ty) {
                        let Some((action, image)) = sub.decide(change) else { continue };
                        let codec = self.conns.get(&sub.conn).map_or(Codec::Json, |c| c.codec);
                        let data = sub.data(image);
                        match EventTail::encode(codec, action, change.key.id, data.as_ref())
                            .and_then(|t| t.frame(&sub.wire, seq, sub.last_seq))
                        {
                            Ok(f) => frames.push(f),
                            Err(e) => tracing::error!(error = %e, "encoding an event failed"),
                        }
                        sub.last_seq = seq;
                    }
                }
                let (conn, last) = (sub.conn, sub.last_seq);
                sub.last_seq = since;
                self.register_stream(sub, rid, since, None);
                self.metrics.stream_events.fetch_add(frames.len() as u64, Ordering::Relaxed);
                self.send_frames(conn, &frames);
                if let Some(s) = self.streams.subs.get_mut(&id) {
                    s.last_seq = last;
                }
            }
        }
    }

    /// Makes a subscription live at `seq` and answers `subscribed`.
    pub(super) fn register_stream(&mut self, mut sub: StreamSub, rid: Rid, seq: Seq, snapshot: Option<Vec<Arc<Row>>>) {
        let Some(codec) = self.conns.get(&sub.conn).map(|c| c.codec) else { return };
        sub.last_seq = seq;
        let conn = sub.conn;
        let msg = Subscribed {
            subscription: sub.wire.to_string(),
            stream: sub.stream.name.clone(),
            seq,
            scope: sub.scope.as_deref().cloned(),
            snapshot,
            part: None,
            last: None,
            rid,
        };
        self.streams.insert(sub);
        self.update_stream_gauge();
        let frames = split_subscribed(codec, msg, self.frame_limit);
        self.send_frames(conn, &frames);
    }

    pub(super) fn stream_unsubscribe(&mut self, conn: ConnId, subscription: String, rid: Rid) {
        let id = crate::engine::streams::parse_wire_name(&subscription);
        let held = id.is_some_and(|id| self.streams.subs.get(&id).is_some_and(|s| s.conn == conn));
        let pending = id.is_some_and(|id| self.pending_streams.get(&id).is_some_and(|p| p.sub.conn == conn));
        match id {
            Some(id) if held => drop(self.streams.remove(id)),
            Some(id) if pending => drop(self.pending_streams.remove(&id)),
            // Not this connection's (or no longer held): nothing to do, and it says so.
            _ => {
                let e = WireError::new(
                    ErrorReason::UnknownStream,
                    format!("this connection holds no stream subscription `{subscription}`"),
                );
                let mut msg = ErrorMessage::new(e, rid);
                msg.subscription = Some(subscription);
                return self.send_msg(conn, &ServerMessage::Error(msg));
            }
        }
        self.update_stream_gauge();
        let msg = Unsubscribed {
            context: None,
            subscription: Some(subscription),
            reason: UnsubscribeReason::ClientRequest,
            rid,
        };
        self.send_msg(conn, &ServerMessage::Unsubscribed(msg));
    }

    /// Decides every change for the stream subscriptions it may concern and
    /// queues their events; each (shape, action, codec) is encoded once.
    pub(super) fn route_streams(&mut self, c: &Committed) {
        if self.streams.is_empty() {
            return;
        }
        let mut out: Vec<(ConnId, Frame)> = Vec::new();
        for change in &c.changes {
            for stream in self.streams.streams_of(&change.key.ty) {
                let candidates = self.streams.candidates(&stream, change);
                self.metrics.stream_evaluations.fetch_add(candidates.len() as u64, Ordering::Relaxed);
                let mut tails: HashMap<(u32, ChangeOp, usize), Option<Arc<EventTail>>> = HashMap::new();
                for id in candidates {
                    let shape = match self.streams.subs.get(&id) {
                        Some(sub) => self.streams.shape(sub),
                        None => continue,
                    };
                    let Some(sub) = self.streams.subs.get_mut(&id) else { continue };
                    let Some((action, image)) = sub.decide(change) else { continue };
                    let Some(codec) = self.conns.get(&sub.conn).map(|e| e.codec) else { continue };
                    let tail = tails.entry((shape, action, codec.index())).or_insert_with(|| {
                        let data = sub.data(image);
                        match EventTail::encode(codec, action, change.key.id, data.as_ref()) {
                            Ok(t) => Some(Arc::new(t)),
                            Err(e) => {
                                tracing::error!(error = %e, "encoding an event failed");
                                None
                            }
                        }
                    });
                    let Some(tail) = tail else { continue };
                    match tail.frame(&sub.wire, c.seq, sub.last_seq) {
                        Ok(frame) => {
                            sub.last_seq = c.seq;
                            out.push((sub.conn, frame));
                        }
                        Err(e) => tracing::error!(error = %e, "encoding an event failed"),
                    }
                }
            }
        }
        self.metrics.stream_events.fetch_add(out.len() as u64, Ordering::Relaxed);
        for (conn, frame) in out {
            self.send_frames(conn, std::slice::from_ref(&frame));
        }
    }
}
