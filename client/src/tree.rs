//! What the client knows of the schema: each channel's tree (from `welcome`)
//! and which fields are references.

use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

/// One edge of a channel's tree: `parent.relation` holds `child` rows whose `field` names the parent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub parent: String,
    pub relation: String,
    pub child: String,
    pub field: String,
    #[serde(default)]
    pub order_by: Option<String>,
}

/// A channel's anchor type and tree.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Tree {
    pub name: String,
    pub anchor: String,
    #[serde(rename = "tree", default)]
    pub edges: Vec<Edge>,
}

impl Tree {
    pub fn edges_into<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = (usize, &'a Edge)> + 'a {
        self.edges.iter().enumerate().filter(move |(_, e)| e.child == ty)
    }
}

/// The schema facts the optimistic layer needs.
#[derive(Clone, Debug, Default)]
pub struct SchemaInfo {
    pub channels: HashMap<String, Tree>,
    /// type → (reference field → target type)
    pub references: HashMap<String, HashMap<String, String>>,
}

impl SchemaInfo {
    /// Reads `welcome.schema`: `{types: {T: {fields: [{name, kind, target?}]}}, channels: [..]}`.
    pub fn from_welcome(schema: &Value) -> SchemaInfo {
        let mut info = SchemaInfo::default();
        if let Some(channels) = schema.get("channels").and_then(Value::as_array) {
            for c in channels {
                if let Ok(tree) = serde_json::from_value::<Tree>(c.clone()) {
                    info.channels.insert(tree.name.clone(), tree);
                }
            }
        }
        if let Some(types) = schema.get("types").and_then(Value::as_object) {
            for (name, ty) in types {
                let refs = ty
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|f| f.get("kind").and_then(Value::as_str) == Some("reference"))
                    .filter_map(|f| Some((f.get("name")?.as_str()?.to_owned(), f.get("target")?.as_str()?.to_owned())))
                    .collect();
                info.references.insert(name.clone(), refs);
            }
        }
        info
    }

    /// The target type if `ty.field` is a reference.
    pub fn reference_target(&self, ty: &str, field: &str) -> Option<&str> {
        self.references.get(ty)?.get(field).map(String::as_str)
    }
}
