//! Live revocation: a commit that changes what a channel's policy reads
//! decides the channel's subscriptions again, and those no longer allowed
//! end with `unsubscribed` `REVOKED`.
//!
//! The hub only notes which channels a delivered commit touched (a lookup
//! per changed row, see [`Watch`]) and hands their names to the revalidator
//! task, so delivery never waits on a policy. The revalidator merges what
//! queued up meanwhile, asks the hub who holds those channels' contexts, and
//! decides each (user, context) pair once however many connections share it.

use super::Inner;
use super::hub::{ContextRules, Holders, HubMsg};
use super::read::context_rules;
use super::session::{resolve_context, stream_decision};
use crate::channel::Channel;
use crate::error::ErrorReason;
use crate::store::Committed;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot};

/// Channels and streams whose subscriptions must be decided again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Touched {
    pub channels: BTreeSet<String>,
    pub streams: BTreeSet<String>,
}

impl Touched {
    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.streams.is_empty()
    }

    fn extend(&mut self, other: Touched) {
        self.channels.extend(other.channels);
        self.streams.extend(other.streams);
    }
}

/// Which channels and streams a change to a row of each type may revoke.
#[derive(Default)]
pub(crate) struct Watch {
    channels: HashMap<String, Vec<String>>,
    streams: HashMap<String, Vec<String>>,
}

impl Watch {
    /// The types each channel's policy depends on (and its anchor type), and
    /// the types each stream's policy depends on.
    pub(crate) fn new(
        channels: &BTreeMap<String, Arc<Channel>>,
        streams: &BTreeMap<String, Arc<crate::stream::Stream>>,
    ) -> Self {
        let mut watch = Watch::default();
        for (name, channel) in channels {
            let depends = channel.policy.depends_on();
            if depends.is_empty() {
                continue;
            }
            let types: BTreeSet<&str> = depends.iter().copied().chain([channel.anchor.as_str()]).collect();
            for ty in types {
                watch.channels.entry(ty.to_owned()).or_default().push(name.clone());
            }
        }
        for (name, stream) in streams {
            for ty in stream.policy.depends_on().iter().copied().collect::<BTreeSet<&str>>() {
                watch.streams.entry(ty.to_owned()).or_default().push(name.clone());
            }
        }
        watch
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.streams.is_empty()
    }

    /// The channels and streams a commit may have revoked subscriptions of.
    pub(crate) fn touched(&self, committed: &Committed) -> Touched {
        let mut touched = Touched::default();
        for change in &committed.changes {
            if let Some(channels) = self.channels.get(&*change.key.ty) {
                touched.channels.extend(channels.iter().cloned());
            }
            if let Some(streams) = self.streams.get(&*change.key.ty) {
                touched.streams.extend(streams.iter().cloned());
            }
        }
        touched
    }
}

/// Runs the revalidator until the engine is gone.
pub(crate) fn spawn(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Touched>) {
    tokio::spawn(async move {
        while let Some(mut touched) = rx.recv().await {
            // Commits that came meanwhile are decided in the same pass.
            while let Ok(more) = rx.try_recv() {
                touched.extend(more);
            }
            let Some(inner) = inner.upgrade() else { return };
            let mut revoked = 0;
            if !touched.channels.is_empty() {
                revoked += revalidate_channels(&inner, &touched.channels).await;
            }
            if !touched.streams.is_empty() {
                revoked += revalidate_streams(&inner, &touched.streams).await;
            }
            if revoked > 0 {
                tracing::debug!(revoked, ?touched, "subscriptions ended after a commit");
            }
        }
    });
}

/// Decides every subscription of `streams` again: one no longer allowed ends
/// with `REVOKED`, one whose scope or read rule changed with `RESCOPED` (its
/// client subscribes again and gets a fresh snapshot). Returns how many ended.
async fn revalidate_streams(inner: &Inner, streams: &BTreeSet<String>) -> usize {
    use crate::protocol::v1::UnsubscribeReason;
    let (reply, answer) = oneshot::channel();
    inner.hub.send(HubMsg::StreamHolders { streams: streams.clone(), reply });
    let Ok(holders) = answer.await else { return 0 };
    // One decision per (user, stream, client filters and ids).
    let mut decided: HashMap<(crate::ids::Id, String, String), Option<String>> = HashMap::new();
    let mut ended = 0;
    for h in holders {
        let key = (h.user.id, h.stream.name.clone(), format!("{:?}", h.client));
        let now = match decided.get(&key) {
            Some(now) => now.clone(),
            None => {
                let now = match stream_decision(inner, &h.user, &h.stream, &h.client.0, &h.client.1).await {
                    Ok(d) => Some(d.key),
                    Err(e) if e.code >= 500 => {
                        tracing::warn!(error = %e, stream = %h.stream.name, "can't decide a stream subscription again now; it stays");
                        Some(h.decision.clone())
                    }
                    Err(_) => None,
                };
                decided.insert(key, now.clone());
                now
            }
        };
        let reason = match now {
            None => UnsubscribeReason::Revoked,
            Some(key) if key != h.decision => UnsubscribeReason::Rescoped,
            Some(_) => continue,
        };
        ended += 1;
        inner.hub.send(HubMsg::StreamEnd { conn: h.conn, sub: h.sub, reason });
    }
    ended
}

/// Decides every subscription of `channels` again; returns how many ended.
async fn revalidate_channels(inner: &Inner, channels: &BTreeSet<String>) -> usize {
    let (reply, answer) = oneshot::channel();
    inner.hub.send(HubMsg::Holders { channels: channels.clone(), reply });
    let Ok(holders) = answer.await else { return 0 };
    type Decision = (bool, Option<Option<Arc<ContextRules>>>);
    let mut decided: HashMap<(crate::ids::Id, String), Decision> = HashMap::new();
    let mut revoked = 0;
    for Holders { conn, user, contexts } in holders {
        for (context, class) in contexts {
            let key = (user.id, context.clone());
            let (allowed, read) = match decided.get(&key) {
                Some(decision) => decision.clone(),
                None => {
                    let decision = match resolve_context(inner, &user, &context).await {
                        // What the user reads may have changed too (an admin no more).
                        Ok(ctx) => match context_rules(inner, &user, &ctx.channel).await {
                            Ok(read) => (true, Some(read)),
                            Err(e) => {
                                tracing::warn!(error = %e, %context, "can't decide the read rules again now");
                                (true, None)
                            }
                        },
                        // The anchor's delete ends the context on its own (`ANCHOR_DELETED`).
                        Err(e) if e.reason == ErrorReason::AnchorNotFound => (true, None),
                        Err(e) if e.code >= 500 => {
                            tracing::warn!(error = %e, %context, "can't decide a subscription again now; it stays");
                            (true, None)
                        }
                        Err(_) => (false, None),
                    };
                    decided.insert(key, decision.clone());
                    decision
                }
            };
            // Only a subscriber whose rules changed is told (the hub checks again).
            if let (true, Some(read)) = (allowed, read)
                && read.as_ref().map(|r| &r.key) != class.as_ref()
            {
                inner.hub.send(HubMsg::Reclass { conn, context: context.clone(), read });
            }
            if !allowed {
                revoked += 1;
                inner.hub.send(HubMsg::Revoke {
                    conn,
                    context,
                    reason: crate::protocol::v1::UnsubscribeReason::Revoked,
                });
            }
        }
    }
    revoked
}
