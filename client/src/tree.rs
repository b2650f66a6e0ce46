//! What the client knows of the schema: each channel's tree (from `welcome`)
//! and which fields are references.

use serde::Deserialize;
use serde_json::Value;
use statecast_protocol::schema::{EntityType, FieldKind};
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
    /// Each type's fields (kinds and nullability), to decide stream filters as the server does.
    pub entities: HashMap<String, EntityType>,
    /// Each stream's type and payload mode.
    pub streams: HashMap<String, StreamSchema>,
    /// What a create shows before the server answers, per type: each field's
    /// default, null for nullable fields, the user's id for `serverValue: userId`.
    pub defaults: HashMap<String, Vec<(String, Shown)>>,
}

/// A value a pending create shows for a field its data leaves out.
#[derive(Clone, Debug, PartialEq)]
pub enum Shown {
    Value(Value),
    /// The id of the signed-in user (a field the server sets to the writer).
    UserId,
}

/// What the client knows of a declared stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSchema {
    pub ty: String,
    /// `true` for `full` payloads (rows), `false` for ids only.
    pub full: bool,
}

/// A field's kind from its `welcome.schema` description.
fn field_kind(f: &Value) -> Option<FieldKind> {
    Some(match f.get("kind")?.as_str()? {
        "string" => FieldKind::String,
        "int" => FieldKind::Int,
        "float" => FieldKind::Float,
        "bool" => FieldKind::Bool,
        "json" => FieldKind::Json,
        "timestamp" => FieldKind::Timestamp,
        "reference" => FieldKind::Reference { target: f.get("target")?.as_str()?.to_owned() },
        _ => return None,
    })
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
                let mut entity = EntityType { name: name.clone(), fields: Vec::new(), relations: Default::default() };
                for f in ty.get("fields").and_then(Value::as_array).into_iter().flatten() {
                    let (Some(fname), Some(kind)) = (f.get("name").and_then(Value::as_str), field_kind(f)) else {
                        continue;
                    };
                    let nullable = f.get("nullable").and_then(Value::as_bool) == Some(true);
                    let field = entity.add(fname, kind);
                    if nullable {
                        field.nullable();
                    }
                    let shown = match (f.get("serverValue").and_then(Value::as_str), f.get("default")) {
                        (Some("userId"), _) => Some(Shown::UserId),
                        (Some(_), _) => None,
                        (None, Some(d)) => Some(Shown::Value(d.clone())),
                        (None, None) if nullable => Some(Shown::Value(Value::Null)),
                        (None, None) => None,
                    };
                    if let Some(shown) = shown {
                        info.defaults.entry(name.clone()).or_default().push((fname.to_owned(), shown));
                    }
                }
                info.entities.insert(name.clone(), entity);
            }
        }
        for s in schema.get("streams").and_then(Value::as_array).into_iter().flatten() {
            if let (Some(name), Some(ty)) =
                (s.get("name").and_then(Value::as_str), s.get("type").and_then(Value::as_str))
            {
                let full = s.get("payload").and_then(Value::as_str) == Some("full");
                info.streams.insert(name.to_owned(), StreamSchema { ty: ty.to_owned(), full });
            }
        }
        info
    }

    /// The target type if `ty.field` is a reference.
    pub fn reference_target(&self, ty: &str, field: &str) -> Option<&str> {
        self.references.get(ty)?.get(field).map(String::as_str)
    }
}
