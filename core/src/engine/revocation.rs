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
use super::session::resolve_context;
use crate::channel::Channel;
use crate::error::ErrorReason;
use crate::store::Committed;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot};

/// Channel names whose subscriptions must be decided again.
pub(crate) type Touched = BTreeSet<String>;

/// Which channels a change to a row of each type may revoke.
#[derive(Default)]
pub(crate) struct Watch {
    by_type: HashMap<String, Vec<String>>,
}

impl Watch {
    /// The types each channel's policy depends on, and its anchor type.
    pub(crate) fn new(channels: &BTreeMap<String, Arc<Channel>>) -> Self {
        let mut by_type: HashMap<String, Vec<String>> = HashMap::new();
        for (name, channel) in channels {
            let depends = channel.policy.depends_on();
            if depends.is_empty() {
                continue;
            }
            let types: BTreeSet<&str> = depends.iter().copied().chain([channel.anchor.as_str()]).collect();
            for ty in types {
                by_type.entry(ty.to_owned()).or_default().push(name.clone());
            }
        }
        Watch { by_type }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// The channels a commit may have revoked subscriptions of.
    pub(crate) fn touched(&self, committed: &Committed) -> Touched {
        let mut touched = Touched::new();
        for change in &committed.changes {
            if let Some(channels) = self.by_type.get(&*change.key.ty) {
                touched.extend(channels.iter().cloned());
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
            let revoked = revalidate_channels(&inner, &touched).await;
            if revoked > 0 {
                tracing::debug!(revoked, channels = ?touched, "subscriptions revoked after a commit");
            }
        }
    });
}

/// Decides every subscription of `channels` again; returns how many ended.
async fn revalidate_channels(inner: &Inner, channels: &Touched) -> usize {
    let (reply, answer) = oneshot::channel();
    inner.hub.send(HubMsg::Holders { channels: channels.clone(), reply });
    let Ok(holders) = answer.await else { return 0 };
    type Decision = (bool, Option<Option<Arc<ContextRules>>>);
    let mut decided: HashMap<(crate::ids::Id, String), Decision> = HashMap::new();
    let mut revoked = 0;
    for Holders { conn, user, contexts } in holders {
        for context in contexts {
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
            if let (true, Some(read)) = (allowed, read) {
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
