//! Asking a policy what a user may read (see [`crate::read_rule`]): the
//! rules of a channel's types for a subscriber, and the check that a write
//! names only rows its writer may read.

use super::Inner;
use super::hub::ContextRules;
use crate::auth::User;
use crate::channel::Channel;
use crate::error::WireError;
use crate::policy::PolicyContext;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

/// The user's read rules for the channel's types; None when every rule is
/// "everything" (the subscriber then reads the context in full, as before).
pub(crate) async fn context_rules(
    inner: &Inner,
    user: &User,
    channel: &Channel,
) -> Result<Option<Arc<ContextRules>>, WireError> {
    let types: BTreeSet<&str> =
        std::iter::once(channel.anchor.as_str()).chain(channel.edges.iter().map(|e| e.child.as_str())).collect();
    let cx = PolicyContext::new(&*inner.store, user);
    let (mut key, mut by_type) = (String::new(), HashMap::new());
    for ty in types {
        let Some(entity) = inner.schema.entity(ty) else { continue };
        let rule = channel.policy.read_rule(&cx, entity).await.map_err(WireError::from)?;
        if rule.is_all() {
            continue;
        }
        let compiled = rule.compile(entity).map_err(|e| {
            WireError::internal(format!("the read rule of {ty} in channel `{}` is invalid: {e}", channel.name))
        })?;
        let _ = write!(key, "{ty}:{};", rule.key());
        by_type.insert(ty.to_owned(), compiled);
    }
    Ok((!by_type.is_empty()).then(|| Arc::new(ContextRules::new(key, by_type))))
}
