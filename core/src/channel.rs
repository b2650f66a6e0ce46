//! Channels: an anchor type, the relations that form its tree, what clients
//! may write, and the policy that decides who may read and write.

use crate::policy::{DenyAll, Policy};
use crate::schema::{Schema, SchemaError};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

pub use statecast_protocol::context::{Op, parse_context};

/// One edge of a channel's tree: `parent.relation` holds `child` rows whose
/// `field` references the parent.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeEdge {
    pub parent: String,
    pub relation: String,
    pub child: String,
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
}

/// A checked channel declaration: a name, an anchor type, the relations
/// that form its tree, what clients may write in it, and its [`Policy`].
/// A context is a channel bound to one anchor id (`"job/1"` on the wire).
///
/// ```
/// use statecast_core::{Channel, Op, Schema};
///
/// let schema = Schema::builder()
///     .entity("Job", |t| { t.string("name"); })
///     .entity("Task", |t| { t.reference("job", "Job"); t.string("name"); })
///     .entity("Note", |t| { t.reference("task", "Task"); t.string("text"); })
///     .relation("Job", "tasks", "Task", "job")
///     .relation("Task", "notes", "Note", "task")
///     .build()?;
/// let job = Channel::builder("job", "Job")
///     .include("tasks.notes") // a job, its tasks and their notes
///     .writable("Task", [Op::Save, Op::Create, Op::Delete])
///     .writable("Note", [Op::Create])
///     // .policy(MyPolicy): without one, every subscribe and write is denied
///     .build(&schema)?;
/// assert!(job.is_writable("Task", Op::Delete) && !job.is_writable("Note", Op::Delete));
/// # Ok::<(), statecast_core::SchemaError>(())
/// ```
#[derive(Clone)]
pub struct Channel {
    pub name: String,
    pub anchor: String,
    pub edges: Vec<TreeEdge>,
    pub writable: BTreeMap<String, BTreeSet<Op>>,
    pub policy: Arc<dyn Policy>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("anchor", &self.anchor)
            .field("edges", &self.edges)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Starts declaring a channel named `name` anchored on rows of type `anchor`.
    pub fn builder(name: &str, anchor: &str) -> ChannelBuilder {
        ChannelBuilder {
            name: name.to_owned(),
            anchor: anchor.to_owned(),
            paths: Vec::new(),
            writable: BTreeMap::new(),
            policy: Arc::new(DenyAll),
        }
    }

    /// The context name of this channel bound to an anchor id: `"job/1"`.
    pub fn context_name(&self, anchor_id: i64) -> String {
        format!("{}/{anchor_id}", self.name)
    }

    /// Is `op` on `ty` declared writable?
    pub fn is_writable(&self, ty: &str, op: Op) -> bool {
        self.writable.get(ty).is_some_and(|ops| ops.contains(&op))
    }

    /// The tree edges whose child type is `ty` (how a row of `ty` hangs in the tree).
    pub fn edges_into<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a TreeEdge> + 'a {
        self.edges.iter().filter(move |e| e.child == ty)
    }

    /// The tree edges whose parent type is `ty`.
    pub fn edges_from<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a TreeEdge> + 'a {
        self.edges.iter().filter(move |e| e.parent == ty)
    }

    /// The edge `parent.relation`, if part of the tree.
    pub fn edge(&self, parent: &str, relation: &str) -> Option<&TreeEdge> {
        self.edges.iter().find(|e| e.parent == parent && e.relation == relation)
    }

    /// Does the tree hold rows of this type at all?
    pub fn holds_type(&self, ty: &str) -> bool {
        ty == self.anchor || self.edges.iter().any(|e| e.child == ty)
    }
}

/// Declares a channel; checked against the schema by [`build`](Self::build).
pub struct ChannelBuilder {
    name: String,
    anchor: String,
    paths: Vec<String>,
    writable: BTreeMap<String, BTreeSet<Op>>,
    policy: Arc<dyn Policy>,
}

impl ChannelBuilder {
    /// Adds a relation path to the tree, from the anchor: `"tasks"`, `"tasks.comments"`.
    pub fn include(mut self, path: &str) -> Self {
        self.paths.push(path.to_owned());
        self
    }

    /// Declares which operations clients may perform on rows of `ty`.
    pub fn writable(mut self, ty: &str, ops: impl IntoIterator<Item = Op>) -> Self {
        self.writable.entry(ty.to_owned()).or_default().extend(ops);
        self
    }

    /// The policy deciding reads and writes (default: deny everything).
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    pub fn build(self, schema: &Schema) -> Result<Channel, SchemaError> {
        let bad = |message: String| SchemaError::BadChannel { channel: self.name.clone(), message };
        if self.name.is_empty() || self.name.contains('/') {
            return Err(bad("a channel name must be non-empty and contain no `/`".into()));
        }
        if schema.entity(&self.anchor).is_none() {
            return Err(bad(format!("unknown anchor type `{}`", self.anchor)));
        }
        let mut edges: Vec<TreeEdge> = Vec::new();
        for path in &self.paths {
            let mut ty = self.anchor.clone();
            for relation in path.split('.') {
                let rel = schema
                    .relation(&ty, relation)
                    .ok_or_else(|| bad(format!("`{ty}` has no relation `{relation}` (in path `{path}`)")))?;
                if !edges.iter().any(|e| e.parent == rel.parent && e.relation == rel.name) {
                    edges.push(TreeEdge {
                        parent: rel.parent.clone(),
                        relation: rel.name.clone(),
                        child: rel.child.clone(),
                        field: rel.field.clone(),
                        order_by: rel.order_by.clone(),
                    });
                }
                ty = rel.child.clone();
            }
        }
        let channel = Channel {
            name: self.name.clone(),
            anchor: self.anchor.clone(),
            edges,
            writable: BTreeMap::new(),
            policy: self.policy.clone(),
        };
        for (ty, ops) in &self.writable {
            if !channel.holds_type(ty) {
                return Err(bad(format!("writable type `{ty}` is not part of the channel's tree")));
            }
            if ops.contains(&Op::Create) && channel.edges_into(ty).next().is_none() {
                return Err(bad(format!("`{ty}` can't be created: it is not the child of a relation in the tree")));
            }
        }
        Ok(Channel { writable: self.writable, ..channel })
    }
}

/// What a client learns of a channel in `welcome.schema`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelInfo {
    pub name: String,
    pub anchor: String,
    pub tree: Vec<TreeEdge>,
    pub writable: BTreeMap<String, BTreeSet<Op>>,
}

impl From<&Channel> for ChannelInfo {
    fn from(c: &Channel) -> Self {
        Self { name: c.name.clone(), anchor: c.anchor.clone(), tree: c.edges.clone(), writable: c.writable.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::OnDelete;

    #[test]
    fn channel_paths_and_writable_are_checked() {
        let schema = Schema::builder()
            .entity("Job", |t| {
                t.string("name");
            })
            .entity("Task", |t| {
                t.reference("job", "Job").on_delete(OnDelete::Cascade);
            })
            .relation("Job", "tasks", "Task", "job")
            .build()
            .expect("schema");
        let ch = Channel::builder("job", "Job")
            .include("tasks")
            .writable("Task", [Op::Save, Op::Create])
            .build(&schema)
            .expect("channel");
        assert!(ch.is_writable("Task", Op::Save));
        assert!(!ch.is_writable("Task", Op::Delete));
        assert_eq!(ch.context_name(7), "job/7");
        assert_eq!(parse_context("job/7"), Some(("job", 7)));
        assert!(Channel::builder("job", "Job").include("nope").build(&schema).is_err());
        assert!(Channel::builder("job", "Job").writable("Task", [Op::Save]).build(&schema).is_err());
        assert!(Channel::builder("job", "Nope").build(&schema).is_err());
        assert!(Channel::builder("job", "Job").writable("Job", [Op::Create]).build(&schema).is_err());
    }
}
