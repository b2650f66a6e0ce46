//! One session per connection: `hello` first, then requests handled strictly
//! in arrival order. Writes are pipelined (the next is checked while the
//! previous waits for durability); answers that could overtake an earlier
//! write's answer go through the hub's ordered queue.

use super::hub::{ConnId, HubMsg, ReplyTarget, SharedSubs, StreamSubscribeRequest, SubscribeRequest};
use super::presence::PresenceOutbox;
use super::streams::{Actions, StreamRule, StreamSub, route_of};
use super::write::{self, ClientInfo, Outcome, WriteContext};
use super::{Actor, Inner};
use crate::auth::{AuthError, User};
use crate::channel::parse_context;
use crate::error::{ErrorReason, WireError};
use crate::policy::PolicyContext;
use crate::protocol::Codec;
use crate::protocol::v1::{
    AppliedOutcome, Auth, Authenticated, ClientMessage, ErrorMessage, Get, Hello, MAX_PRESENCE_BYTES, Operation,
    PROTOCOL_VERSION, Ping, Rid, Rows, ServerMessage, SetPresence, Subscribe, Unsubscribe, UnsubscribeReason,
    Unsubscribed, Welcome, Write, WriteResponse,
};
use crate::store::AppliedKey;
use crate::stream::{CompiledFilters, Filters, Payload, Stream, StreamRequest};
use crate::transport::{Connection, Frame, Incoming, Outbox, SendError, close_code};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

/// The most `pending` writeIds a `hello` may list.
const MAX_PENDING: usize = 10_000;

enum Flow {
    Continue,
    Close,
}

struct Session {
    inner: Arc<Inner>,
    id: ConnId,
    outbox: Outbox,
    codec: Option<Codec>,
    user: Option<User>,
    expires: Option<Instant>,
    client_id: String,
    subs: SharedSubs,
    in_flight: Arc<AtomicUsize>,
    /// Paces this connection's presence updates.
    presence: PresenceOutbox,
}

pub(crate) async fn run(inner: Arc<Inner>, conn: Connection) {
    let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
    let Connection { info, mut incoming, outbox } = conn;
    tracing::debug!(conn = id, transport = info.transport, peer = %info.peer, "connection opened");
    let mut s = Session {
        inner,
        id,
        outbox,
        codec: None,
        user: None,
        expires: None,
        client_id: String::new(),
        subs: Arc::new(parking_lot::Mutex::new(Default::default())),
        in_flight: Arc::new(AtomicUsize::new(0)),
        presence: PresenceOutbox::default(),
    };
    let hello_by = Instant::now() + s.inner.config.hello_timeout;
    loop {
        // Before `hello` the deadline is the hello's; after, the token's expiry.
        let deadline = if s.user.is_none() { Some(hello_by) } else { s.expires };
        let flow = tokio::select! {
            // Boxed: handling a message (a write, a subscribe) is a large
            // future, and held inline it would make every idle connection's
            // task that large too.
            msg = incoming.recv() => match msg {
                Some(m) => Box::pin(s.on_incoming(m)).await,
                None => Flow::Close,
            },
            _ = sleep_until(deadline) => match s.user {
                None => s.hello_timed_out(),
                Some(_) => s.token_expired(),
            },
            _ = sleep_until(s.presence.due().map(Instant::from_std)) => s.presence_due(),
            _ = s.outbox.closed() => Flow::Close,
        };
        if let Flow::Close = flow {
            break;
        }
    }
    if s.user.is_some() {
        s.inner.hub.send(HubMsg::Disconnect { conn: s.id });
    }
    tracing::debug!(conn = id, "connection closed");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn error_msg(error: WireError, rid: Rid) -> ServerMessage {
    ServerMessage::Error(ErrorMessage::new(error, rid))
}

fn context_error(error: WireError, context: Option<String>, rid: Rid) -> ServerMessage {
    let mut msg = ErrorMessage::new(error, rid);
    msg.context = context;
    ServerMessage::Error(msg)
}

impl Session {
    async fn on_incoming(&mut self, incoming: Incoming) -> Flow {
        match incoming {
            Incoming::TooLarge { size, limit } => {
                let e = WireError::new(
                    ErrorReason::FrameTooLarge,
                    format!("a frame of {size} bytes exceeds the limit of {limit} bytes"),
                );
                self.reply(error_msg(e, None), self.codec.unwrap_or(Codec::Json));
                Flow::Continue
            }
            Incoming::Frame(frame) => self.on_frame(frame).await,
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Flow {
        let codec = self.codec.unwrap_or(Codec::for_frame(frame.kind));
        let msg = match codec.decode_client(&frame) {
            Ok(m) => m,
            Err(e) => {
                // Answer in the connection's codec (or, before hello, the frame's).
                self.reply(error_msg(e.to_wire(), None), codec);
                return Flow::Continue;
            }
        };
        if self.user.is_none() {
            return match msg {
                ClientMessage::Hello(h) => self.hello(h, codec).await,
                other => {
                    let e = WireError::new(ErrorReason::Unauthenticated, "send `hello` with a token first");
                    self.reply(error_msg(e, other.rid()), codec);
                    Flow::Continue
                }
            };
        }
        match msg {
            ClientMessage::Hello(h) => {
                let e = WireError::new(ErrorReason::BadFrame, "this connection has already said hello");
                self.reply(error_msg(e, h.rid), codec);
            }
            ClientMessage::Subscribe(s) => self.subscribe(s).await,
            ClientMessage::Unsubscribe(u) => self.unsubscribe(u),
            ClientMessage::Write(w) => self.write(w).await,
            ClientMessage::Get(g) => self.get(g).await,
            ClientMessage::Auth(a) => self.auth(a).await,
            ClientMessage::Ping(p) => self.reply(ServerMessage::Pong(Ping { rid: p.rid }), codec),
            ClientMessage::Presence(p) => self.presence(p),
        }
        Flow::Continue
    }

    /// A presence update: checked here, paced here, announced by the hub.
    fn presence(&mut self, p: SetPresence) {
        let codec = self.codec();
        if !self.subs.lock().contains(&p.context) {
            let e = WireError::new(
                ErrorReason::NotSubscribed,
                format!(
                    "presence is shown in a context this connection subscribes to; subscribe to {} first",
                    p.context
                ),
            );
            return self.reply(context_error(e, Some(p.context), p.rid), codec);
        }
        let size = serde_json::to_vec(&p.data).map_or(usize::MAX, |v| v.len());
        if size > MAX_PRESENCE_BYTES {
            let e = WireError::invalid_data(
                "data",
                format!("presence `data` is at most {MAX_PRESENCE_BYTES} bytes as JSON, got {size}"),
            );
            return self.reply(context_error(e, Some(p.context), p.rid), codec);
        }
        if let Some((context, data)) = self.presence.offer(p.context, p.data, std::time::Instant::now()) {
            self.inner.hub.send(HubMsg::Presence { conn: self.id, context, data });
        }
    }

    /// A presence update that waited for its turn.
    fn presence_due(&mut self) -> Flow {
        if let Some((context, data)) = self.presence.take_due(std::time::Instant::now()) {
            self.inner.hub.send(HubMsg::Presence { conn: self.id, context, data });
        }
        Flow::Continue
    }

    /// Sends an answer: directly when no write of this connection is still
    /// waiting for its answer, else behind those answers (through the hub).
    fn reply(&mut self, msg: ServerMessage, codec: Codec) {
        if self.user.is_some() && self.in_flight.load(Ordering::SeqCst) > 0 {
            self.inner.hub.send(HubMsg::Reply { conn: self.id, msg: Box::new(msg) });
            return;
        }
        let frame = match codec.encode(&msg) {
            Ok(f) => f,
            Err(e) => return tracing::error!(error = %e, "encoding an answer failed"),
        };
        if let Err(SendError::Full) = self.outbox.try_send(frame) {
            self.outbox.abort(close_code::SLOW_CONSUMER, "SLOW_CONSUMER");
        }
    }

    fn codec(&self) -> Codec {
        self.codec.unwrap_or(Codec::Json)
    }

    async fn hello(&mut self, hello: Hello, codec: Codec) -> Flow {
        if hello.protocol != PROTOCOL_VERSION {
            let mut msg = ErrorMessage::new(
                WireError::new(
                    ErrorReason::UnsupportedProtocol,
                    format!("protocol {} is not supported; this server speaks {PROTOCOL_VERSION}", hello.protocol),
                ),
                hello.rid,
            );
            msg.supported = Some(vec![PROTOCOL_VERSION]);
            self.reply(ServerMessage::Error(msg), codec);
            self.outbox.close(close_code::POLICY, "UNSUPPORTED_PROTOCOL");
            return Flow::Close;
        }
        let user = match self.inner.auth.authenticate(&hello.token).await {
            Ok(u) => u,
            Err(e) => {
                let e = auth_error(e);
                self.note_refusal("hello", &e);
                self.reply(error_msg(e, hello.rid), codec);
                self.outbox.close(close_code::UNAUTHENTICATED, "UNAUTHENTICATED");
                return Flow::Close;
            }
        };
        let client_id = match hello.client_id {
            Some(c) if c.is_empty() || c.len() > 128 => {
                let e = WireError::invalid_data("clientId", "`clientId` must be 1 to 128 bytes (UTF-8)");
                self.reply(error_msg(e, hello.rid), codec);
                return Flow::Continue;
            }
            Some(c) => c,
            None => format!("{:032x}", rand::random::<u128>()),
        };
        let applied = match applied_outcomes(&self.inner, &user, &client_id, &hello.pending).await {
            Ok(applied) => applied,
            Err(e) => {
                self.reply(error_msg(e, hello.rid), codec);
                return Flow::Continue;
            }
        };
        self.expires = user.time_left().and_then(|d| Instant::now().checked_add(d));
        self.codec = Some(codec);
        self.client_id = client_id;
        self.inner.hub.send(HubMsg::Connect {
            conn: self.id,
            user: Arc::new(user.clone()),
            outbox: self.outbox.clone(),
            codec,
            subs: self.subs.clone(),
        });
        let welcome = Welcome {
            connection_id: format!("c{}{}", self.id, self.inner.conn_suffix),
            user: user.clone(),
            schema: self.inner.schema_info.clone(),
            epoch: self.inner.store.epoch().to_owned(),
            applied,
            rid: hello.rid,
        };
        self.user = Some(user);
        self.reply(ServerMessage::Welcome(welcome), codec);
        Flow::Continue
    }

    fn hello_timed_out(&mut self) -> Flow {
        let secs = self.inner.config.hello_timeout.as_secs_f32();
        let e = WireError::new(ErrorReason::Unauthenticated, format!("no `hello` within {secs} s"));
        tracing::debug!(conn = self.id, "closing a connection that never said hello");
        self.reply(error_msg(e, None), self.codec());
        self.outbox.close(close_code::UNAUTHENTICATED, "HELLO_TIMEOUT");
        Flow::Close
    }

    fn token_expired(&mut self) -> Flow {
        let e = WireError::new(ErrorReason::TokenExpired, "the token has expired; reconnect with a new one");
        self.reply(error_msg(e, None), self.codec());
        self.outbox.close(close_code::UNAUTHENTICATED, "TOKEN_EXPIRED");
        Flow::Close
    }

    async fn auth(&mut self, auth: Auth) {
        let codec = self.codec();
        let current = self.user.as_ref().map(|u| u.id);
        match self.inner.auth.authenticate(&auth.token).await {
            Ok(user) if Some(user.id) == current => {
                self.expires = user.time_left().and_then(|d| Instant::now().checked_add(d));
                self.user = Some(user.clone());
                self.inner.hub.send(HubMsg::Reauth { conn: self.id, user: Arc::new(user.clone()) });
                self.reply(ServerMessage::Authenticated(Authenticated { user: user.clone(), rid: auth.rid }), codec);
                // The new token's claims may grant less: check what the connection holds.
                let engine = super::Engine { inner: self.inner.clone() };
                tokio::spawn(async move { engine.revalidate(&user).await });
            }
            Ok(_) => {
                let e = WireError::new(ErrorReason::Unauthenticated, "the new token names another user");
                self.reply(error_msg(e, auth.rid), codec);
            }
            Err(e) => self.reply(error_msg(auth_error(e), auth.rid), codec),
        }
    }

    async fn subscribe(&mut self, sub: Subscribe) {
        let codec = self.codec();
        if sub.stream.is_some() {
            return self.subscribe_stream(sub).await;
        }
        let (Some(channel), Some(anchor_id)) = (&sub.channel, sub.anchor_id) else {
            let e = WireError::invalid_data("channel", "`subscribe` needs `channel` and `anchorId` (or `stream`)");
            return self.reply(error_msg(e, sub.rid), codec);
        };
        let name = format!("{channel}/{anchor_id}");
        let Some(user) = self.user.clone() else { return };
        let resolved = match resolve_context(&self.inner, &user, &name).await {
            Ok(ctx) => super::read::context_rules(&self.inner, &user, &ctx.channel).await.map(|read| (ctx, read)),
            Err(e) => Err(e),
        };
        match resolved {
            Ok((ctx, read)) => {
                self.subs.lock().insert(name.clone());
                self.inner.hub.send(HubMsg::Subscribe(SubscribeRequest {
                    conn: self.id,
                    channel: ctx.channel,
                    anchor_id,
                    context: name,
                    rid: sub.rid,
                    since: sub.since.map(|s| (s, sub.epoch)),
                    view: sub.view,
                    read,
                }));
            }
            Err(e) => {
                self.note_refusal("subscribe", &e);
                self.reply(context_error(e, Some(name), sub.rid), codec)
            }
        }
    }

    fn unsubscribe(&mut self, u: Unsubscribe) {
        let codec = self.codec();
        match (u.context, u.subscription) {
            (Some(context), _) => {
                self.presence.forget(&context);
                let held = self.subs.lock().remove(&context);
                if held {
                    self.inner.hub.send(HubMsg::Unsubscribe { conn: self.id, context, rid: u.rid });
                } else {
                    let msg = Unsubscribed {
                        context: Some(context),
                        subscription: None,
                        reason: UnsubscribeReason::ClientRequest,
                        rid: u.rid,
                    };
                    self.reply(ServerMessage::Unsubscribed(msg), codec);
                }
            }
            (None, Some(subscription)) => {
                // Through the hub: after every event already queued for it.
                self.inner.hub.send(HubMsg::StreamUnsubscribe { conn: self.id, subscription, rid: u.rid });
            }
            (None, None) => {
                let e = WireError::invalid_data("context", "`unsubscribe` needs `context` or `subscription`");
                self.reply(error_msg(e, u.rid), codec);
            }
        }
    }

    /// A stream subscribe: 404 unknown stream, 400 bad input, 403 denied —
    /// and nothing subscribed — or the hub registers it and answers `subscribed`.
    async fn subscribe_stream(&mut self, sub: Subscribe) {
        let codec = self.codec();
        let rid = sub.rid.clone();
        let Some(user) = self.user.clone() else { return };
        match check_stream_subscribe(&self.inner, &user, sub).await {
            Ok((stream, filters, req)) => {
                let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
                let route = route_of(&stream, &filters, self.inner.config.stream_index);
                let actions = req.actions.as_deref().map_or(Actions::ALL, Actions::of);
                let projection = req.projection;
                let mut sub = StreamSub::new(id, self.id, stream, filters, actions, projection, route);
                sub.scope = req.scope.map(Arc::new);
                sub.rule = req.rule;
                sub.decision = req.decision;
                sub.client = Arc::new((req.client, req.ids));
                self.inner.hub.send(HubMsg::StreamSubscribe(Box::new(StreamSubscribeRequest {
                    sub,
                    rid: req.rid,
                    snapshot: req.snapshot,
                    since: req.since,
                })));
            }
            Err(e) => {
                self.note_refusal("subscribe", &e);
                self.reply(error_msg(e, rid), codec)
            }
        }
    }

    /// `get`: the rows asked for that the stream's policy and scope let the user
    /// see, answered through the hub once every commit they may reflect is durable.
    async fn get(&mut self, g: Get) {
        let codec = self.codec();
        let Some(user) = self.user.clone() else { return };
        let rows = match get_rows(&self.inner, &user, &g).await {
            Ok(rows) => rows,
            Err(e) => return self.reply(error_msg(e, g.rid), codec),
        };
        // Answered behind every commit the reads may have seen, once durable.
        self.inner.hub.settle.reads().await;
        if let Err(e) = write::reads_durable(&self.inner).await {
            return self.reply(error_msg(e, g.rid), codec);
        }
        let msg = ServerMessage::Rows(Rows { stream: g.stream, rows, rid: g.rid });
        self.inner.hub.send(HubMsg::Reply { conn: self.id, msg: Box::new(msg) });
    }

    /// The context a write is checked against: the one it names, or the only one held.
    fn write_context(&self, w: &Write) -> Result<WriteContext, WireError> {
        let subs = self.subs.lock();
        let name = match &w.context {
            Some(c) if subs.contains(c) => c.clone(),
            Some(c) => {
                return Err(WireError::new(
                    ErrorReason::NotInContext,
                    format!("this connection is not subscribed to `{c}`"),
                ));
            }
            None if subs.len() == 1 => subs.iter().next().cloned().unwrap_or_default(),
            None => {
                return Err(WireError::new(
                    ErrorReason::NotInContext,
                    "name the `context` of the write (this connection holds none or several)",
                ));
            }
        };
        let (channel, anchor_id) =
            parse_context(&name).ok_or_else(|| WireError::new(ErrorReason::NotInContext, "bad context name"))?;
        let channel = self
            .inner
            .channels
            .get(channel)
            .cloned()
            .ok_or_else(|| WireError::new(ErrorReason::UnknownChannel, format!("unknown channel `{channel}`")))?;
        Ok(WriteContext { channel, anchor_id })
    }

    async fn write(&mut self, w: Write) {
        let codec = self.codec();
        let Some(user) = self.user.clone() else { return };
        let context = match self.write_context(&w) {
            Ok(c) => c,
            Err(e) => return self.refuse(&w, e, codec),
        };
        let client = ClientInfo { client_id: self.client_id.clone(), in_flight: self.in_flight.clone() };
        let actor = Actor::User(user);
        match write::run(&self.inner, &actor, Some(&client), Some(context), &w, ReplyTarget::Conn(self.id)).await {
            Outcome::Committed => {}
            Outcome::Duplicate(rec) => {
                self.inner.metrics.writes_duplicate.fetch_add(1, Ordering::Relaxed);
                let single_create = w.operation == Operation::Create;
                let resp = WriteResponse {
                    write_id: w.write_id,
                    success: true,
                    seq: Some(rec.seq),
                    instance_id: if single_create { rec.created.first().map(|c| c.id) } else { None },
                    created: rec.created,
                    duplicate: true,
                    rid: w.rid.clone(),
                    ..Default::default()
                };
                // Behind the original's answer, if that is still on its way.
                self.inner.hub.send(HubMsg::Reply { conn: self.id, msg: Box::new(ServerMessage::WriteResponse(resp)) });
            }
            Outcome::Refused(e) => self.refuse(&w, e, codec),
        }
    }

    /// Logs (at debug, with the user and the reason) and counts a refusal.
    fn note_refusal(&self, what: &'static str, e: &WireError) {
        let user = self.user.as_ref().map(|u| u.id);
        tracing::debug!(conn = self.id, ?user, what, code = e.code, reason = e.reason.as_str(), message = %e.message, "refused");
        self.inner.metrics.refused(what, e);
    }

    fn refuse(&mut self, w: &Write, e: WireError, codec: Codec) {
        self.note_refusal("write", &e);
        self.inner.metrics.count_write(Some(&e));
        let resp = WriteResponse {
            write_id: w.write_id,
            success: false,
            error: Some(e),
            rid: w.rid.clone(),
            ..Default::default()
        };
        self.reply(ServerMessage::WriteResponse(resp), codec);
    }
}

fn auth_error(e: AuthError) -> WireError {
    match e {
        AuthError::Expired => WireError::new(ErrorReason::TokenExpired, "the token has expired"),
        AuthError::Invalid => WireError::new(ErrorReason::Unauthenticated, "unknown or invalid token"),
        AuthError::Malformed(m) => WireError::new(ErrorReason::Unauthenticated, format!("invalid token: {m}")),
    }
}

/// Checks that `name` is a context the user may subscribe to.
pub(crate) async fn resolve_context(inner: &Inner, user: &User, name: &str) -> Result<WriteContext, WireError> {
    let (channel_name, anchor_id) = parse_context(name)
        .ok_or_else(|| WireError::new(ErrorReason::UnknownChannel, format!("`{name}` is not a context name")))?;
    let channel = inner
        .channels
        .get(channel_name)
        .cloned()
        .ok_or_else(|| WireError::new(ErrorReason::UnknownChannel, format!("unknown channel `{channel_name}`")))?;
    let anchor = inner.store.get(&channel.anchor, anchor_id).await.map_err(WireError::from)?.ok_or_else(|| {
        WireError::new(ErrorReason::AnchorNotFound, format!("{}#{anchor_id} does not exist", channel.anchor))
    })?;
    let cx = PolicyContext::new(&*inner.store, user);
    let allowed = channel.policy.has_permission(&cx, &anchor).await.map_err(WireError::from)?;
    if !allowed {
        return Err(WireError::new(ErrorReason::Denied, format!("you may not subscribe to `{name}`")));
    }
    Ok(WriteContext { channel, anchor_id })
}

/// What a checked stream subscribe asks for besides its filters.
struct StreamAsk {
    actions: Option<Vec<crate::protocol::v1::ChangeOp>>,
    projection: Option<Arc<[String]>>,
    snapshot: bool,
    since: Option<(crate::ids::Seq, Option<String>)>,
    rid: Rid,
    /// The policy's scope in wire form (for `subscribed.scope`), when it has one.
    scope: Option<serde_json::Map<String, serde_json::Value>>,
    /// The policy's read rule, unless it reads everything.
    rule: Option<Arc<StreamRule>>,
    /// What names the policy's decision (see [`StreamDecision`]).
    decision: String,
    /// The client's own filters and ids (decided again after commits).
    client: Filters,
    ids: Vec<crate::ids::Id>,
}

fn find_stream(inner: &Inner, name: &str) -> Result<Arc<Stream>, WireError> {
    inner
        .streams
        .get(name)
        .cloned()
        .ok_or_else(|| WireError::new(ErrorReason::UnknownStream, format!("unknown stream `{name}`")))
}

/// The scope of `request` for `user`, merged over the client's filters and compiled.
async fn scoped_filters(
    stream: &Stream,
    entity: &crate::schema::EntityType,
    cx: &PolicyContext<'_>,
    request: &StreamRequest<'_>,
    client: &Filters,
) -> Result<(CompiledFilters, Filters), WireError> {
    let allowed = stream.policy.has_permission(cx, request).await.map_err(WireError::from)?;
    if !allowed {
        return Err(WireError::new(ErrorReason::Denied, format!("you may not use stream `{}`", stream.name)));
    }
    let scope = stream.policy.scope(cx, request).await.map_err(WireError::from)?;
    let compiled = scope.merged_over(client).compile(entity).map_err(|e| {
        tracing::error!(stream = %stream.name, error = %e, "a stream's scope does not fit its type");
        WireError::internal(format!("the scope of stream `{}` is invalid", stream.name))
    })?;
    Ok((compiled, scope))
}

/// Filters are held and decided for every change of the stream's type: their
/// size is bounded (measured as JSON, whatever the codec).
fn check_filter_size(filters: &serde_json::Map<String, serde_json::Value>, limit: usize) -> Result<(), WireError> {
    let size = serde_json::to_vec(filters).map_or(usize::MAX, |v| v.len());
    if size > limit {
        return Err(WireError::invalid_data(
            "filters",
            format!("the filters take {size} bytes as JSON; at most {limit} are allowed"),
        ));
    }
    Ok(())
}

async fn check_stream_subscribe(
    inner: &Inner,
    user: &User,
    sub: Subscribe,
) -> Result<(Arc<Stream>, CompiledFilters, StreamAsk), WireError> {
    let name = sub.stream.unwrap_or_default();
    let stream = find_stream(inner, &name)?;
    let entity = inner
        .schema
        .entity(&stream.ty)
        .ok_or_else(|| WireError::internal(format!("the type of stream `{name}` is not in the schema")))?;
    let mut client = match &sub.filters {
        Some(map) => {
            check_filter_size(map, inner.config.limits.filter_bytes)?;
            Filters::parse(map).map_err(|e| e.to_wire())?
        }
        None => Filters::new(),
    };
    if let Some(id) = sub.id {
        client.push(crate::stream::Filter {
            field: "id".into(),
            lookup: crate::stream::Lookup::Exact,
            value: id.into(),
        });
    }
    // The client's own filters must be valid whatever the scope replaces.
    client.compile(entity).map_err(|e| e.to_wire())?;
    if sub.actions.as_ref().is_some_and(Vec::is_empty) {
        return Err(WireError::invalid_data("actions", "`actions` must name at least one of create, update, delete"));
    }
    let projection = match (&sub.fields, stream.payload) {
        (None, _) => None,
        (Some(_), Payload::Id) => {
            return Err(WireError::invalid_data(
                "fields",
                format!("stream `{name}` sends ids only; `fields` applies to full-payload streams"),
            ));
        }
        (Some(fields), Payload::Full) => {
            let mut names = Vec::with_capacity(fields.len());
            for f in fields {
                if f == "id" {
                    continue;
                }
                if entity.field(f).is_none() {
                    return Err(WireError::invalid_data("fields", format!("`{}` has no field `{f}`", entity.name)));
                }
                names.push(f.clone());
            }
            names.sort();
            names.dedup();
            Some(Arc::from(names))
        }
    };
    let ids: Vec<crate::ids::Id> = sub.id.into_iter().collect();
    let StreamDecision { filters, scope, rule, key } = stream_decision(inner, user, &stream, &client, &ids).await?;
    let scope = (!scope.is_empty()).then(|| scope.iter().map(|f| (f.key(), f.value.clone())).collect());
    let ask = StreamAsk {
        scope,
        rule,
        decision: key,
        client,
        ids,
        actions: sub.actions,
        projection,
        snapshot: sub.snapshot,
        since: sub.since.map(|s| (s, sub.epoch)),
        rid: sub.rid,
    };
    Ok((stream, filters, ask))
}

/// The pending writes (of `hello`) already applied, with their outcomes.
/// Only durable ones are named: a write named here is retired by the client
/// for good, so one a failed flush may still lose must stay pending.
async fn applied_outcomes(
    inner: &Inner,
    user: &User,
    client_id: &str,
    pending: &[i64],
) -> Result<Vec<AppliedOutcome>, WireError> {
    let mut records = Vec::new();
    for &write_id in pending.iter().take(MAX_PENDING) {
        let key = AppliedKey { user: user.id, client_id: client_id.to_owned(), write_id };
        if let Some(rec) = inner.store.applied(&key).await.map_err(WireError::from)? {
            records.push((write_id, rec));
        }
    }
    if let Some(newest) = records.iter().map(|(_, rec)| rec.seq).max()
        && let Err(e) = inner.store.wait_durable(newest).await
    {
        tracing::warn!(error = %e, "applied writes are not durable; `welcome` names only the durable ones");
        let durable = inner.store.durable_seq();
        records.retain(|(_, rec)| rec.seq <= durable);
    }
    Ok(records.iter().map(|(write_id, rec)| AppliedOutcome::new(*write_id, rec)).collect())
}

async fn get_rows(inner: &Inner, user: &User, g: &Get) -> Result<Vec<Arc<crate::row::Row>>, WireError> {
    let stream = find_stream(inner, &g.stream)?;
    let entity = inner
        .schema
        .entity(&stream.ty)
        .ok_or_else(|| WireError::internal(format!("the type of stream `{}` is not in the schema", g.stream)))?;
    let limit = inner.config.get_limit;
    if g.ids.len() > limit {
        return Err(WireError::invalid_data("ids", format!("`get` takes at most {limit} ids, got {}", g.ids.len())));
    }
    if let Some(bad) = g.ids.iter().find(|id| !crate::ids::is_safe_int(**id)) {
        return Err(WireError::invalid_data("ids", format!("id {bad} is outside ±(2^53−1)")));
    }
    let client = Filters::new();
    let request = StreamRequest { stream: &stream.name, ty: &stream.ty, filters: &client, ids: &g.ids };
    let cx = PolicyContext::new(&*inner.store, user);
    let (filters, _) = scoped_filters(&stream, entity, &cx, &request, &client).await?;
    let rule = stream_rule(&stream, entity, &cx, &request).await?;
    let mut ids = g.ids.clone();
    ids.sort_unstable();
    ids.dedup();
    let rows = inner.store.get_many(&stream.ty, &ids).await.map_err(WireError::from)?;
    Ok(rows
        .into_iter()
        .filter(|r| filters.matches(r))
        .filter_map(|r| match &rule {
            Some(rule) => rule.rule.view(&r),
            None => Some(r),
        })
        .map(Arc::new)
        .collect())
}

/// What a stream's policy decides for a subscription now: its merged
/// filters, the scope it forced, its read rule, and a key naming the
/// decision (equal keys, equal decisions). 403 when it is denied.
pub(crate) struct StreamDecision {
    pub filters: CompiledFilters,
    pub scope: Filters,
    pub rule: Option<Arc<StreamRule>>,
    pub key: String,
}

pub(crate) async fn stream_decision(
    inner: &Inner,
    user: &User,
    stream: &Stream,
    client: &Filters,
    ids: &[crate::ids::Id],
) -> Result<StreamDecision, WireError> {
    let entity = inner
        .schema
        .entity(&stream.ty)
        .ok_or_else(|| WireError::internal(format!("the type of stream `{}` is not in the schema", stream.name)))?;
    let request = StreamRequest { stream: &stream.name, ty: &stream.ty, filters: client, ids };
    let cx = PolicyContext::new(&*inner.store, user);
    let (filters, scope) = scoped_filters(stream, entity, &cx, &request, client).await?;
    let rule = stream_rule(stream, entity, &cx, &request).await?;
    let scope_key: Vec<String> = scope.iter().map(|f| format!("{}={}", f.key(), f.value)).collect();
    let key = format!("{} | {}", scope_key.join("&"), rule.as_ref().map_or("*", |r| &*r.key));
    Ok(StreamDecision { filters, scope, rule, key })
}

/// The stream policy's read rule for this user, compiled (None: it reads everything).
async fn stream_rule(
    stream: &Stream,
    entity: &crate::schema::EntityType,
    cx: &PolicyContext<'_>,
    request: &StreamRequest<'_>,
) -> Result<Option<Arc<StreamRule>>, WireError> {
    let rule = stream.policy.read_rule(cx, request).await.map_err(WireError::from)?;
    if rule.is_all() {
        return Ok(None);
    }
    let compiled = rule
        .compile(entity)
        .map_err(|e| WireError::internal(format!("the read rule of stream `{}` is invalid: {e}", stream.name)))?;
    Ok(Some(Arc::new(StreamRule { key: Arc::from(rule.key()), rule: compiled })))
}
