//! The async shell around the optimistic state: connects, says hello,
//! resubscribes with `since`, resends unanswered writes in order with their
//! original writeIds, reconnects with backoff and jitter, and turns the
//! state's effects into settled handles and change notifications.

use crate::state::Effect;
use crate::tree::SchemaInfo;
use crate::{ClientError, Command, Shared, ViewEvent};
use rand::Rng;
use statecast_core::error::ErrorReason;
use statecast_core::protocol::v1::{ClientMessage, Hello, PROTOCOL_VERSION, ServerMessage, Subscribe, Unsubscribe};
use statecast_core::transport::{Connection, Incoming};
use statecast_transport_quic::QuicClientConfig;
use statecast_transport_ws::WsClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) struct Live {
    conn: Connection,
}

enum Flow {
    Stop,
    Lost,
}

/// One connection attempt through `welcome`.
pub(crate) async fn connect_once(shared: &Arc<Shared>) -> Result<Live, ClientError> {
    let cfg = &shared.config;
    let connect_err = |reason: String| ClientError::Connect { url: cfg.url.clone(), reason };
    let mut conn = if cfg.is_quic() {
        let trust = cfg.quic_trust.clone().ok_or_else(|| {
            connect_err("quic:// needs a trust setting: a CA file, a certificate fingerprint, or insecure-dev".into())
        })?;
        let mut quic = QuicClientConfig::new(trust);
        quic.frame_limit = cfg.frame_limit;
        quic.connect_timeout = cfg.connect_timeout;
        statecast_transport_quic::connect(&cfg.url, &quic).await.map_err(|e| connect_err(e.to_string()))?
    } else {
        let ws = WsClientConfig {
            frame_limit: cfg.frame_limit,
            connect_timeout: cfg.connect_timeout,
            ca_file: cfg.tls_ca_file.clone(),
            ..Default::default()
        };
        statecast_transport_ws::connect(&cfg.url, &ws).await.map_err(|e| connect_err(e.to_string()))?
    };
    let (client_id, pending) = {
        let state = shared.state.lock();
        (state.client_id.clone(), state.pending_write_ids())
    };
    let hello = ClientMessage::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        token: cfg.token.clone(),
        client_id: Some(client_id),
        pending,
        rid: None,
    });
    let frame = cfg.codec.encode(&hello).map_err(|e| connect_err(e.to_string()))?;
    conn.outbox.send(frame).await.map_err(|e| connect_err(e.to_string()))?;
    let welcome = tokio::time::timeout(cfg.connect_timeout, async {
        loop {
            match conn.incoming.recv().await {
                Some(Incoming::Frame(f)) => match cfg.codec.decode_server(&f) {
                    Ok(Some(ServerMessage::Welcome(w))) => return Ok(w),
                    Ok(Some(ServerMessage::Error(e))) => {
                        return Err(match e.error.reason {
                            ErrorReason::Unauthenticated | ErrorReason::TokenExpired => {
                                ClientError::Unauthenticated(e.error)
                            }
                            _ => connect_err(e.error.to_string()),
                        });
                    }
                    Ok(_) => continue,
                    Err(e) => return Err(connect_err(format!("unreadable answer to hello: {e}"))),
                },
                Some(Incoming::TooLarge { .. }) => continue,
                None => return Err(connect_err("the server closed the connection during hello".into())),
            }
        }
    })
    .await
    .map_err(|_| connect_err("no welcome in time".into()))??;
    *shared.epoch.lock() = Some(welcome.epoch.clone());
    let effects = {
        let mut state = shared.state.lock();
        state.set_schema(SchemaInfo::from_welcome(&welcome.schema));
        state.on_applied(&welcome.applied)
    };
    dispatch(shared, effects);
    Ok(Live { conn })
}

/// Serves connections until the client is closed, reconnecting with backoff.
pub(crate) async fn run(shared: Arc<Shared>, first: Live, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut live = Some(first);
    let mut attempt: u32 = 0;
    loop {
        if let Some(l) = live.take() {
            attempt = 0;
            if let Flow::Stop = session(&shared, l, &mut commands).await {
                return;
            }
            shared.state.lock().connection_lost();
            tracing::info!(url = %shared.config.url, "connection lost; reconnecting");
        }
        let delay = backoff(&shared, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            cmd = commands.recv() => match cmd {
                Some(Command::Close(done)) => {
                    let _ = done.send(());
                    return;
                }
                None => return,
                Some(_) => continue, // subscriptions and writes wait in the state for the next connection
            },
        }
        match connect_once(&shared).await {
            Ok(l) => live = Some(l),
            Err(e) => tracing::warn!(error = %e, attempt, "reconnect failed"),
        }
    }
}

fn backoff(shared: &Shared, attempt: u32) -> Duration {
    let (min, max) = (shared.config.backoff_min, shared.config.backoff_max);
    let base = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

async fn session(shared: &Arc<Shared>, mut live: Live, commands: &mut mpsc::UnboundedReceiver<Command>) -> Flow {
    let contexts: Vec<String> = shared.state.lock().contexts().map(str::to_owned).collect();
    for context in contexts {
        if send_subscribe(shared, &mut live, &context).await.is_err() {
            return Flow::Lost;
        }
    }
    let locals: Vec<u64> = {
        let mut streams = shared.streams.lock();
        streams.by_server.clear();
        for e in streams.entries.values_mut() {
            e.server_id = None;
        }
        streams.entries.keys().copied().collect()
    };
    for local in locals {
        if send_stream_subscribe(shared, &mut live, local).await.is_err() {
            return Flow::Lost;
        }
    }
    if flush(shared, &mut live).await.is_err() {
        return Flow::Lost;
    }
    loop {
        tokio::select! {
            incoming = live.conn.incoming.recv() => match incoming {
                Some(Incoming::Frame(frame)) => {
                    match shared.config.codec.decode_server(&frame) {
                        Ok(Some(msg)) => {
                            if let Flow::Lost = handle(shared, msg) {
                                live.conn.outbox.close(1000, "GOAWAY");
                                return Flow::Lost;
                            }
                        }
                        Ok(None) => {} // a message type this client doesn't know
                        Err(e) => tracing::warn!(error = %e, "unreadable frame from the server"),
                    }
                    if flush(shared, &mut live).await.is_err() {
                        return Flow::Lost;
                    }
                }
                Some(Incoming::TooLarge { size, limit }) => {
                    tracing::error!(size, limit, "the server sent a frame over the limit");
                }
                None => return Flow::Lost,
            },
            cmd = commands.recv() => {
                let sent = match cmd {
                    None => return Flow::Stop,
                    Some(Command::Close(done)) => {
                        live.conn.outbox.close(1000, "CLIENT_CLOSED");
                        let _ = done.send(());
                        return Flow::Stop;
                    }
                    Some(Command::Flush) => flush(shared, &mut live).await,
                    Some(Command::Subscribe { context, .. }) => match send_subscribe(shared, &mut live, &context).await {
                        Ok(()) => flush(shared, &mut live).await,
                        Err(e) => Err(e),
                    },
                    Some(Command::Stream { local }) => send_stream_subscribe(shared, &mut live, local).await,
                    Some(Command::StreamUnsubscribe { local }) => {
                        let server_id = shared.streams.lock().entries.remove(&local).and_then(|e| e.server_id);
                        match server_id {
                            Some(subscription) => {
                                shared.streams.lock().by_server.remove(&subscription);
                                let msg = ClientMessage::Unsubscribe(Unsubscribe { context: None, subscription: Some(subscription), rid: None });
                                send(shared, &mut live, &msg).await
                            }
                            None => Ok(()),
                        }
                    }
                    Some(Command::Unsubscribe { context }) => {
                        let msg = ClientMessage::Unsubscribe(Unsubscribe { context: Some(context), subscription: None, rid: None });
                        send(shared, &mut live, &msg).await
                    }
                };
                if sent.is_err() {
                    return Flow::Lost;
                }
            }
        }
    }
}

async fn send(shared: &Shared, live: &mut Live, msg: &ClientMessage) -> Result<(), ()> {
    let frame = shared.config.codec.encode(msg).map_err(|e| tracing::error!(error = %e, "encoding failed"))?;
    live.conn.outbox.send(frame).await.map_err(|_| ())
}

async fn send_subscribe(shared: &Shared, live: &mut Live, context: &str) -> Result<(), ()> {
    let Some((channel, anchor)) = statecast_core::channel::parse_context(context) else { return Ok(()) };
    let resume = shared.state.lock().resume_point(context);
    let msg = ClientMessage::Subscribe(Subscribe {
        channel: Some(channel.to_owned()),
        anchor_id: Some(anchor),
        since: resume.as_ref().map(|(s, _)| *s),
        epoch: resume.and_then(|(_, e)| e),
        ..Default::default()
    });
    send(shared, live, &msg).await
}

async fn send_stream_subscribe(shared: &Shared, live: &mut Live, local: u64) -> Result<(), ()> {
    let epoch = shared.epoch.lock().clone();
    let msg = {
        let streams = shared.streams.lock();
        let Some(entry) = streams.entries.get(&local) else { return Ok(()) };
        let since = entry.seq.map(|s| (s, epoch));
        ClientMessage::Subscribe(entry.request.message(local, since))
    };
    send(shared, live, &msg).await
}

/// Sends every write that is ready, in queue order.
async fn flush(shared: &Shared, live: &mut Live) -> Result<(), ()> {
    let writes = shared.state.lock().take_sendable();
    for w in writes {
        send(shared, live, &ClientMessage::Write(w)).await?;
    }
    Ok(())
}

fn handle(shared: &Arc<Shared>, msg: ServerMessage) -> Flow {
    let effects = match msg {
        ServerMessage::State(s) => {
            let context = s.context.clone();
            let effects = shared.state.lock().apply_state(s);
            if shared.state.lock().is_loaded(&context) {
                for w in shared.loading.lock().remove(&context).unwrap_or_default() {
                    let _ = w.send(Ok(()));
                }
            }
            effects
        }
        ServerMessage::Delta(d) => shared.state.lock().apply_delta(d),
        ServerMessage::WriteResponse(r) => shared.state.lock().on_response(&r),
        ServerMessage::Subscribed(sub) => {
            on_subscribed(shared, sub);
            Vec::new()
        }
        ServerMessage::Event(event) => {
            let mut streams = shared.streams.lock();
            if let Some(local) = streams.by_server.get(&event.subscription).copied()
                && let Some(entry) = streams.entries.get_mut(&local)
            {
                entry.seq = Some(event.seq);
                let _ = entry.events.send(event.into());
            }
            Vec::new()
        }
        ServerMessage::Unsubscribed(u) if u.subscription.is_some() => {
            let mut streams = shared.streams.lock();
            if let Some(local) = u.subscription.as_ref().and_then(|s| streams.by_server.remove(s)) {
                streams.entries.remove(&local);
            }
            Vec::new()
        }
        ServerMessage::Unsubscribed(u) => match u.context {
            Some(c) => shared.state.lock().on_unsubscribed(&c, u.reason),
            None => Vec::new(),
        },
        ServerMessage::Error(e) if stream_rid(shared, &e.rid).is_some() => {
            if let Some(local) = stream_rid(shared, &e.rid)
                && let Some(mut entry) = shared.streams.lock().entries.remove(&local)
                && let Some(w) = entry.waiter.take()
            {
                let _ = w.send(Err(ClientError::Refused(e.error.clone())));
            }
            Vec::new()
        }
        ServerMessage::Error(e) => match e.context {
            Some(context) => {
                for w in shared.loading.lock().remove(&context).unwrap_or_default() {
                    let _ = w.send(Err(ClientError::Refused(e.error.clone())));
                }
                tracing::warn!(%context, error = %e.error, "subscription refused");
                let reason = statecast_core::protocol::v1::UnsubscribeReason::PermissionLost;
                shared.state.lock().on_unsubscribed(&context, reason)
            }
            None => {
                tracing::warn!(error = %e.error, "error from the server");
                Vec::new()
            }
        },
        ServerMessage::Goaway(_) => return Flow::Lost,
        ServerMessage::Welcome(_)
        | ServerMessage::Pong(_)
        | ServerMessage::Authenticated(_)
        | ServerMessage::Rows(_) => Vec::new(),
    };
    dispatch(shared, effects);
    Flow::Stop
}

/// The local stream id a request id names, if it is one of ours still waiting.
fn stream_rid(shared: &Shared, rid: &Option<serde_json::Value>) -> Option<u64> {
    let local = rid.as_ref()?.as_u64()?;
    shared.streams.lock().entries.get(&local).filter(|e| e.waiter.is_some()).map(|_| local)
}

fn on_subscribed(shared: &Shared, sub: statecast_core::protocol::v1::Subscribed) {
    let Some(local) = sub.rid.as_ref().and_then(serde_json::Value::as_u64) else { return };
    let mut streams = shared.streams.lock();
    streams.by_server.insert(sub.subscription.clone(), local);
    let Some(entry) = streams.entries.get_mut(&local) else { return };
    entry.server_id = Some(sub.subscription);
    entry.seq = Some(entry.seq.map_or(sub.seq, |s| s.max(sub.seq)));
    entry.snapshot.extend(sub.snapshot.unwrap_or_default());
    if sub.part.is_none() || sub.last == Some(true) {
        let rows = std::mem::take(&mut entry.snapshot);
        if let Some(w) = entry.waiter.take() {
            let _ = w.send(Ok(rows));
        }
    }
}

/// Turns the state's effects into settled handles, notifications and commands.
pub(crate) fn dispatch(shared: &Shared, effects: Vec<Effect>) {
    let mut settled_any = false;
    for effect in effects {
        match effect {
            Effect::Settled { write_id, result } => {
                settled_any = true;
                if let Some(w) = shared.waiters.lock().remove(&write_id) {
                    let _ = w.send(result.map_err(ClientError::Refused));
                }
            }
            Effect::Changed { context, changes } => notify(shared, &context, ViewEvent::Changed(changes)),
            Effect::Resync { context, .. } => {
                let _ = shared.commands.send(Command::Subscribe { context });
            }
            Effect::Closed { context, reason } => {
                for w in shared.loading.lock().remove(&context).unwrap_or_default() {
                    let _ = w.send(Err(ClientError::Closed));
                }
                notify(shared, &context, ViewEvent::Closed(reason));
            }
            Effect::EpochChanged { context } => notify(shared, &context, ViewEvent::Reset),
        }
    }
    if settled_any && let Some(q) = &shared.queue {
        let (next, writes) = {
            let state = shared.state.lock();
            (state.next_write_id(), state.unsettled_writes())
        };
        if let Err(e) = q.save_all(next, &writes) {
            tracing::error!(error = %e, "persisting the pending queue failed");
        }
    }
}

fn notify(shared: &Shared, context: &str, event: ViewEvent) {
    if let Some(tx) = shared.watchers.lock().get(context) {
        let _ = tx.send(event);
    }
}
