//! The async shell around the optimistic state: connects, says hello,
//! resubscribes with `since`, resends unanswered writes in order with their
//! original writeIds, reconnects with backoff and jitter, and turns the
//! state's effects into settled handles and change notifications.

use crate::state::Effect;
use crate::{ClientError, Command, Shared, StreamViewEvent, ViewEvent};
use rand::Rng;
use statecast_protocol::error::ErrorReason;
use statecast_protocol::v1::{ClientMessage, Hello, PROTOCOL_VERSION, ServerMessage};
use statecast_transport::{Connection, Incoming};
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
    let effects = shared.state.lock().connected(&welcome);
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
    // `connected` queued one subscribe per context and stream view: send them, then the writes.
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

/// Sends the queued subscribes and unsubscribes, then every write that is ready, in queue order.
async fn flush(shared: &Shared, live: &mut Live) -> Result<(), ()> {
    let (control, writes) = {
        let mut state = shared.state.lock();
        (state.take_control(), state.take_sendable())
    };
    for msg in control {
        send(shared, live, &msg).await?;
    }
    for w in writes {
        send(shared, live, &ClientMessage::Write(w)).await?;
    }
    Ok(())
}

fn handle(shared: &Arc<Shared>, msg: ServerMessage) -> Flow {
    let mut state = shared.state.lock();
    match &msg {
        ServerMessage::Goaway(_) => return Flow::Lost,
        ServerMessage::Error(e) if state.stream_for_rid(&e.rid).is_none() => match &e.context {
            Some(context) if state.is_current_answer(context, &e.rid) => {
                for w in shared.loading.lock().remove(context).unwrap_or_default() {
                    let _ = w.send(Err(ClientError::Refused(e.error.clone())));
                }
                tracing::warn!(%context, error = %e.error, "subscription refused");
            }
            Some(_) => {}
            None => tracing::warn!(error = %e.error, "error from the server"),
        },
        _ => {}
    }
    let loaded = match &msg {
        ServerMessage::State(s) => Some(s.context.clone()),
        _ => None,
    };
    let effects = state.receive(msg);
    if let Some(context) = loaded
        && state.is_loaded(&context)
    {
        for w in shared.loading.lock().remove(&context).unwrap_or_default() {
            let _ = w.send(Ok(()));
        }
    }
    drop(state);
    dispatch(shared, effects);
    Flow::Stop
}

/// Turns the state's effects into settled handles, notifications and commands.
pub(crate) fn dispatch(shared: &Arc<Shared>, effects: Vec<Effect>) {
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
            Effect::Resync { .. } => {
                // The state queued the subscribe with `since`; it goes with the next flush.
                let _ = shared.commands.send(Command::Flush);
            }
            Effect::Closed { context, reason } => {
                for w in shared.loading.lock().remove(&context).unwrap_or_default() {
                    let _ = w.send(Err(ClientError::Closed));
                }
                notify(shared, &context, ViewEvent::Closed(reason));
            }
            Effect::EpochChanged { context } => notify(shared, &context, ViewEvent::Reset),
            Effect::PresenceChanged { context } => notify(shared, &context, ViewEvent::Presence),
            Effect::StreamResubscribe { .. } => {
                let _ = shared.commands.send(Command::Flush);
            }
            Effect::RetryLater { write_id, attempt, error } => {
                tracing::info!(write_id, attempt, error = %error, "the server is not sure yet; the write will be sent again");
                let delay = Duration::from_millis(250u64.saturating_mul(1 << attempt.min(7)).min(30_000))
                    .mul_f64(rand::rng().random_range(0.5..=1.0));
                let (weak, commands) = (Arc::downgrade(shared), shared.commands.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(shared) = weak.upgrade() {
                        shared.state.lock().retry_due(write_id);
                        let _ = commands.send(Command::Flush);
                    }
                });
            }
            Effect::StreamReady { stream, result } => {
                if let Some(w) = shared.stream_waiters.lock().remove(&stream) {
                    let _ = w.send(result.map_err(ClientError::Refused));
                }
            }
            Effect::StreamChanged { stream, changes } => {
                // Before the view is handed out (its first snapshot) the rows are read, not announced.
                if shared.stream_waiters.lock().contains_key(&stream) {
                    continue;
                }
                if let Some(tx) = shared.stream_events.lock().get(&stream) {
                    let _ = tx.send(StreamViewEvent::Changed(changes));
                }
            }
            Effect::StreamClosed { stream, reason } => {
                if let Some(w) = shared.stream_waiters.lock().remove(&stream) {
                    let _ = w.send(Err(ClientError::Closed));
                }
                if let Some(tx) = shared.stream_events.lock().remove(&stream) {
                    let _ = tx.send(StreamViewEvent::Closed(reason));
                }
            }
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
