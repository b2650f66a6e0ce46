//! The schema: entity types with typed fields, references and has-many
//! relations, declared in Rust with a builder and checked when built.

use crate::error::WireError;
use crate::ids::is_safe_int;
use crate::row::Fields;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The type of a field's values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum FieldKind {
    String,
    Int,
    Float,
    Bool,
    Json,
    /// An RFC 3339 UTC timestamp string (`2026-11-23T16:00:00Z`).
    Timestamp,
    /// The id of a row of another (or the same) type.
    Reference {
        target: String,
    },
}

/// What happens to a row whose reference points at a deleted row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum OnDelete {
    /// Delete the referencing row too (and what references it).
    Cascade,
    /// Refuse the delete while referencing rows exist.
    Restrict,
    /// Set the reference to null (nullable fields only).
    SetNull,
}

/// A value the server sets on create, whatever the client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ServerValue {
    /// The id of the user who made the write.
    UserId,
    /// The commit time as an RFC 3339 UTC timestamp.
    Now,
}

/// One field of an entity type.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Field {
    pub name: String,
    #[serde(flatten)]
    pub kind: FieldKind,
    pub nullable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<Value>>,
    /// Clients may not set this field (the server may).
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_value: Option<ServerValue>,
    /// For references: what a delete of the target does to this row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_delete: Option<OnDelete>,
}

impl Field {
    fn new(name: &str, kind: FieldKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            nullable: false,
            default: None,
            min_len: None,
            max_len: None,
            min: None,
            max: None,
            allowed: None,
            read_only: false,
            server_value: None,
            on_delete: None,
        }
    }

    /// Null is allowed (and is the default when no other default is given).
    pub fn nullable(&mut self) -> &mut Self {
        self.nullable = true;
        self
    }
    /// The value used when a create omits the field.
    pub fn default(&mut self, v: impl Into<Value>) -> &mut Self {
        self.default = Some(v.into());
        self
    }
    /// String length limits, in characters.
    pub fn len(&mut self, min: usize, max: usize) -> &mut Self {
        self.min_len = Some(min);
        self.max_len = Some(max);
        self
    }
    pub fn max_len(&mut self, max: usize) -> &mut Self {
        self.max_len = Some(max);
        self
    }
    /// Numeric limits (inclusive).
    pub fn range(&mut self, min: f64, max: f64) -> &mut Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }
    /// The only values the field may take.
    pub fn one_of<I, V>(&mut self, values: I) -> &mut Self
    where
        I: IntoIterator<Item = V>,
        V: Into<Value>,
    {
        self.allowed = Some(values.into_iter().map(Into::into).collect());
        self
    }
    /// Clients may not set the field.
    pub fn read_only(&mut self) -> &mut Self {
        self.read_only = true;
        self
    }
    /// The server sets the field on create (implies read-only).
    pub fn server_value(&mut self, v: ServerValue) -> &mut Self {
        self.server_value = Some(v);
        self.read_only = true;
        self
    }
    /// For references: what deleting the referenced row does to this one.
    pub fn on_delete(&mut self, action: OnDelete) -> &mut Self {
        self.on_delete = Some(action);
        self
    }

    /// The referenced type, for reference fields.
    pub fn target(&self) -> Option<&str> {
        match &self.kind {
            FieldKind::Reference { target } => Some(target),
            _ => None,
        }
    }

    /// The effective delete action of a reference field.
    pub fn delete_action(&self) -> OnDelete {
        self.on_delete.unwrap_or(if self.nullable { OnDelete::SetNull } else { OnDelete::Restrict })
    }

    /// The value a create stores when the field is omitted, if it has one.
    pub fn implicit_default(&self) -> Option<Value> {
        self.default.clone().or_else(|| self.nullable.then_some(Value::Null))
    }

    /// Checks one value against the field's type and limits.
    /// Reference values may be negative (temp ids) here; the engine resolves them.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        if value.is_null() {
            return if self.nullable { Ok(()) } else { Err(format!("`{}` may not be null", self.name)) };
        }
        match &self.kind {
            FieldKind::String => {
                let s = value.as_str().ok_or_else(|| self.type_error("a string"))?;
                let n = s.chars().count();
                if self.min_len.is_some_and(|m| n < m) || self.max_len.is_some_and(|m| n > m) {
                    return Err(format!(
                        "`{}` must be {}–{} characters long, got {n}",
                        self.name,
                        self.min_len.unwrap_or(0),
                        self.max_len.map_or("∞".to_owned(), |m| m.to_string())
                    ));
                }
            }
            FieldKind::Int | FieldKind::Reference { .. } => {
                let v = value.as_i64().ok_or_else(|| self.type_error("an integer"))?;
                if !is_safe_int(v) {
                    return Err(format!("`{}` is outside ±(2^53−1)", self.name));
                }
                self.check_range(v as f64)?;
            }
            FieldKind::Float => {
                let v = value.as_f64().ok_or_else(|| self.type_error("a number"))?;
                if !v.is_finite() {
                    return Err(format!("`{}` must be finite", self.name));
                }
                self.check_range(v)?;
            }
            FieldKind::Bool => {
                value.as_bool().ok_or_else(|| self.type_error("a boolean"))?;
            }
            FieldKind::Json => {}
            FieldKind::Timestamp => {
                let s = value.as_str().ok_or_else(|| self.type_error("an RFC 3339 UTC timestamp string"))?;
                humantime::parse_rfc3339(s)
                    .map_err(|e| format!("`{}` is not an RFC 3339 UTC timestamp: {e}", self.name))?;
            }
        }
        if let Some(allowed) = &self.allowed
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(format!("`{}` must be one of {}, got {value}", self.name, list.join(", ")));
        }
        Ok(())
    }

    fn check_range(&self, v: f64) -> Result<(), String> {
        if self.min.is_some_and(|m| v < m) || self.max.is_some_and(|m| v > m) {
            return Err(format!("`{}` is out of range", self.name));
        }
        Ok(())
    }

    fn type_error(&self, expected: &str) -> String {
        format!("`{}` must be {expected}", self.name)
    }
}

/// A named has-many from a parent type to a child type through a reference
/// field on the child, ordered by a declared field or else by creation.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Relation {
    pub name: String,
    pub parent: String,
    pub child: String,
    /// The reference field on the child that points at the parent.
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
}

/// An entity type: a name and its fields.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityType {
    pub name: String,
    pub fields: Vec<Field>,
    /// Relations whose parent is this type, by name.
    pub relations: BTreeMap<String, Relation>,
}

impl EntityType {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Adds a field and returns it for further settings.
    pub fn add(&mut self, name: &str, kind: FieldKind) -> &mut Field {
        self.fields.push(Field::new(name, kind));
        let last = self.fields.len() - 1;
        &mut self.fields[last]
    }
    pub fn string(&mut self, name: &str) -> &mut Field {
        self.add(name, FieldKind::String)
    }
    pub fn int(&mut self, name: &str) -> &mut Field {
        self.add(name, FieldKind::Int)
    }
    pub fn float(&mut self, name: &str) -> &mut Field {
        self.add(name, FieldKind::Float)
    }
    pub fn bool(&mut self, name: &str) -> &mut Field {
        self.add(name, FieldKind::Bool)
    }
    pub fn json(&mut self, name: &str) -> &mut Field {
        self.add(name, FieldKind::Json)
    }
    pub fn timestamp(&mut self, name: &str) -> &mut Field {
        self.add(name, FieldKind::Timestamp)
    }
    pub fn reference(&mut self, name: &str, target: &str) -> &mut Field {
        self.add(name, FieldKind::Reference { target: target.to_owned() })
    }

    /// Validates the data of a save: known, client-writable fields with valid values.
    pub fn check_save_data(&self, data: &Fields) -> Result<(), WireError> {
        self.check_save_data_as(data, false)
    }

    /// Like [`check_save_data`](Self::check_save_data); system writes may set read-only fields.
    pub fn check_save_data_as(&self, data: &Fields, allow_read_only: bool) -> Result<(), WireError> {
        for (name, value) in data {
            let field = self.writable_field(name, allow_read_only)?;
            field.check(value).map_err(|m| WireError::invalid_data(name, m))?;
        }
        Ok(())
    }

    /// Validates the data of a create and fills defaults; returns the full field set.
    /// Server-set fields are left to the caller.
    pub fn check_create_data(&self, data: &Fields) -> Result<Fields, WireError> {
        self.check_create_data_as(data, false)
    }

    /// Like [`check_create_data`](Self::check_create_data); system writes may set
    /// read-only fields, and server-set fields they omit get their defaults.
    pub fn check_create_data_as(&self, data: &Fields, system: bool) -> Result<Fields, WireError> {
        let mut out = Fields::new();
        for (name, value) in data {
            let field = self.writable_field(name, system)?;
            field.check(value).map_err(|m| WireError::invalid_data(name, m))?;
            out.insert(name.clone(), value.clone());
        }
        for field in &self.fields {
            if out.contains_key(&field.name) || (field.server_value.is_some() && !system) {
                continue;
            }
            match field.implicit_default() {
                Some(v) => {
                    out.insert(field.name.clone(), v);
                }
                None => {
                    return Err(WireError::invalid_data(&field.name, format!("`{}` is required", field.name)));
                }
            }
        }
        Ok(out)
    }

    fn writable_field(&self, name: &str, allow_read_only: bool) -> Result<&Field, WireError> {
        let field = self
            .field(name)
            .ok_or_else(|| WireError::invalid_data(name, format!("`{}` has no field `{name}`", self.name)))?;
        if field.read_only && !allow_read_only {
            return Err(WireError::invalid_data(name, format!("`{name}` is read-only")));
        }
        Ok(field)
    }
}

/// Why a schema (or channel) declaration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("type name `{0}` is invalid: use letters, digits and `_`, starting with a letter")]
    BadTypeName(String),
    #[error("type `{0}` is declared twice")]
    DuplicateType(String),
    #[error("`{ty}.{field}`: field names may not be `id` or `op`, start with `_`, or repeat")]
    BadFieldName { ty: String, field: String },
    #[error("`{ty}.{field}` references unknown type `{target}`")]
    UnknownTarget { ty: String, field: String, target: String },
    #[error("`{ty}.{field}`: {message}")]
    BadField { ty: String, field: String, message: String },
    #[error("relation `{parent}.{name}`: {message}")]
    BadRelation { parent: String, name: String, message: String },
    #[error("channel `{channel}`: {message}")]
    BadChannel { channel: String, message: String },
    #[error("stream `{stream}`: {message}")]
    BadStream { stream: String, message: String },
}

/// Declares a schema.
#[derive(Default)]
pub struct SchemaBuilder {
    types: Vec<EntityType>,
    relations: Vec<Relation>,
}

impl SchemaBuilder {
    /// Declares an entity type; `define` adds its fields.
    pub fn entity(mut self, name: &str, define: impl FnOnce(&mut EntityType)) -> Self {
        let mut ty = EntityType { name: name.to_owned(), fields: Vec::new(), relations: BTreeMap::new() };
        define(&mut ty);
        self.types.push(ty);
        self
    }

    /// Declares a has-many `parent.name` of `child` rows through `child.field`,
    /// in creation order.
    pub fn relation(self, parent: &str, name: &str, child: &str, field: &str) -> Self {
        self.relation_ordered(parent, name, child, field, None)
    }

    /// Like [`relation`](Self::relation), ordered by a field of the child.
    pub fn relation_ordered(
        mut self,
        parent: &str,
        name: &str,
        child: &str,
        field: &str,
        order_by: Option<&str>,
    ) -> Self {
        self.relations.push(Relation {
            name: name.to_owned(),
            parent: parent.to_owned(),
            child: child.to_owned(),
            field: field.to_owned(),
            order_by: order_by.map(str::to_owned),
        });
        self
    }

    pub fn build(self) -> Result<Arc<Schema>, SchemaError> {
        let mut types = BTreeMap::new();
        for ty in self.types {
            check_type_name(&ty.name)?;
            check_fields(&ty)?;
            if types.insert(ty.name.clone(), ty.clone()).is_some() {
                return Err(SchemaError::DuplicateType(ty.name));
            }
        }
        for ty in types.values() {
            for f in &ty.fields {
                check_field_settings(&types, ty, f)?;
            }
        }
        for rel in self.relations {
            check_relation(&types, &rel)?;
            let parent = types.get_mut(&rel.parent).ok_or_else(|| bad_relation(&rel, "unknown parent type"))?;
            if parent.relations.insert(rel.name.clone(), rel.clone()).is_some() {
                return Err(bad_relation(&rel, "declared twice"));
            }
        }
        Ok(Arc::new(Schema { types }))
    }
}

fn check_type_name(name: &str) -> Result<(), SchemaError> {
    let mut chars = name.chars();
    let ok =
        chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok { Ok(()) } else { Err(SchemaError::BadTypeName(name.to_owned())) }
}

fn check_fields(ty: &EntityType) -> Result<(), SchemaError> {
    let mut seen = std::collections::HashSet::new();
    for f in &ty.fields {
        let bad = f.name.is_empty() || f.name == "id" || f.name == "op" || f.name.starts_with('_');
        if bad || !seen.insert(f.name.as_str()) {
            return Err(SchemaError::BadFieldName { ty: ty.name.clone(), field: f.name.clone() });
        }
    }
    Ok(())
}

fn check_field_settings(types: &BTreeMap<String, EntityType>, ty: &EntityType, f: &Field) -> Result<(), SchemaError> {
    let bad = |message: String| SchemaError::BadField { ty: ty.name.clone(), field: f.name.clone(), message };
    if let Some(target) = f.target()
        && !types.contains_key(target)
    {
        return Err(SchemaError::UnknownTarget { ty: ty.name.clone(), field: f.name.clone(), target: target.into() });
    }
    if f.on_delete.is_some() && f.target().is_none() {
        return Err(bad("on_delete applies to references only".into()));
    }
    if f.on_delete == Some(OnDelete::SetNull) && !f.nullable {
        return Err(bad("on_delete = set_null needs a nullable field".into()));
    }
    if let Some(d) = &f.default {
        f.check(d).map_err(|m| bad(format!("default is invalid: {m}")))?;
    }
    if let Some(allowed) = &f.allowed {
        for v in allowed {
            let mut unrestricted = f.clone();
            unrestricted.allowed = None;
            unrestricted.check(v).map_err(|m| bad(format!("allowed value is invalid: {m}")))?;
        }
    }
    match (f.server_value, &f.kind) {
        (Some(ServerValue::UserId), FieldKind::Reference { .. } | FieldKind::Int) => {}
        (Some(ServerValue::Now), FieldKind::Timestamp) => {}
        (Some(_), _) => return Err(bad("server value does not fit the field type".into())),
        (None, _) => {}
    }
    Ok(())
}

fn bad_relation(rel: &Relation, message: &str) -> SchemaError {
    SchemaError::BadRelation { parent: rel.parent.clone(), name: rel.name.clone(), message: message.to_owned() }
}

fn check_relation(types: &BTreeMap<String, EntityType>, rel: &Relation) -> Result<(), SchemaError> {
    if !types.contains_key(&rel.parent) {
        return Err(bad_relation(rel, "unknown parent type"));
    }
    let child = types.get(&rel.child).ok_or_else(|| bad_relation(rel, "unknown child type"))?;
    let field = child
        .field(&rel.field)
        .ok_or_else(|| bad_relation(rel, &format!("`{}` has no field `{}`", rel.child, rel.field)))?;
    if field.target() != Some(rel.parent.as_str()) {
        return Err(bad_relation(rel, &format!("`{}.{}` does not reference `{}`", rel.child, rel.field, rel.parent)));
    }
    if let Some(order) = &rel.order_by
        && child.field(order).is_none()
    {
        return Err(bad_relation(rel, &format!("order field `{order}` does not exist")));
    }
    Ok(())
}

/// A checked schema: entity types with typed fields, and the relations
/// (named has-many through a reference field) that channels nest.
///
/// ```
/// use statecast_protocol::{OnDelete, Schema, ServerValue};
///
/// let schema = Schema::builder()
///     .entity("User", |t| {
///         t.string("name").len(1, 200);
///     })
///     .entity("Job", |t| {
///         t.string("name");
///     })
///     .entity("Task", |t| {
///         t.reference("job", "Job").on_delete(OnDelete::Cascade);
///         t.string("name").len(1, 200);
///         t.string("status").one_of(["todo", "doing", "done"]).default("todo");
///         t.reference("created_by", "User").nullable().server_value(ServerValue::UserId);
///         t.timestamp("created_at").nullable().server_value(ServerValue::Now);
///     })
///     .relation("Job", "tasks", "Task", "job") // Job.tasks, through Task.job
///     .build()?;
/// assert!(schema.entity("Task").is_some_and(|t| t.field("created_by").is_some_and(|f| f.read_only)));
/// assert_eq!(schema.relation("Job", "tasks").map(|r| r.field.as_str()), Some("job"));
/// # Ok::<(), statecast_protocol::SchemaError>(())
/// ```
#[derive(Debug, Serialize)]
pub struct Schema {
    pub types: BTreeMap<String, EntityType>,
}

impl Schema {
    pub fn builder() -> SchemaBuilder {
        SchemaBuilder::default()
    }

    pub fn entity(&self, name: &str) -> Option<&EntityType> {
        self.types.get(name)
    }

    /// The relation `parent.name`, if declared.
    pub fn relation(&self, parent: &str, name: &str) -> Option<&Relation> {
        self.types.get(parent)?.relations.get(name)
    }

    /// Every `(type, field)` whose reference points at `target`.
    pub fn references_to<'a>(&'a self, target: &'a str) -> impl Iterator<Item = (&'a EntityType, &'a Field)> + 'a {
        self.types
            .values()
            .flat_map(move |t| t.fields.iter().filter(move |f| f.target() == Some(target)).map(move |f| (t, f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Result<Arc<Schema>, SchemaError> {
        Schema::builder()
            .entity("Job", |t| {
                t.string("name").len(1, 50);
            })
            .entity("Task", |t| {
                t.reference("job", "Job").on_delete(OnDelete::Cascade);
                t.string("name").len(1, 200);
                t.string("status").one_of(["todo", "doing", "done"]).default("todo");
                t.int("points").range(0.0, 100.0).nullable();
                t.timestamp("due").nullable();
                t.reference("created_by", "Job").nullable().server_value(ServerValue::UserId);
            })
            .relation("Job", "tasks", "Task", "job")
            .build()
    }

    #[test]
    fn a_valid_schema_builds() {
        let s = schema().expect("schema");
        assert_eq!(s.relation("Job", "tasks").map(|r| r.field.as_str()), Some("job"));
        assert_eq!(s.references_to("Job").count(), 2);
    }

    #[test]
    fn bad_declarations_are_refused() {
        let r = Schema::builder().entity("Bad Name", |_| {}).build();
        assert!(matches!(r, Err(SchemaError::BadTypeName(_))));
        let r = Schema::builder().entity("T", |t| {
            t.string("_x");
        });
        assert!(matches!(r.build(), Err(SchemaError::BadFieldName { .. })));
        let r = Schema::builder().entity("T", |t| {
            t.reference("u", "User");
        });
        assert!(matches!(r.build(), Err(SchemaError::UnknownTarget { .. })));
        let r = Schema::builder().entity("T", |t| {
            t.string("s").one_of(["a"]).default("b");
        });
        assert!(matches!(r.build(), Err(SchemaError::BadField { .. })));
        let r = Schema::builder().entity("T", |t| {
            t.string("s");
        });
        assert!(matches!(r.relation("T", "x", "T", "s").build(), Err(SchemaError::BadRelation { .. })));
    }

    #[test]
    fn create_data_is_checked_and_defaults_filled() {
        let s = schema().expect("schema");
        let task = s.entity("Task").expect("Task");
        let data = crate::row::fields([("job", json!(1)), ("name", json!("x"))]);
        let full = task.check_create_data(&data).expect("valid");
        assert_eq!(full.get("status"), Some(&json!("todo")));
        assert_eq!(full.get("points"), Some(&json!(null)));
        assert!(!full.contains_key("created_by"));

        let cases = [
            (json!({"job": 1}), "name"),
            (json!({"job": 1, "name": ""}), "name"),
            (json!({"job": 1, "name": "x", "status": "gone"}), "status"),
            (json!({"job": 1, "name": "x", "points": 1.5}), "points"),
            (json!({"job": 1, "name": "x", "points": 101}), "points"),
            (json!({"job": 1, "name": "x", "due": "yesterday"}), "due"),
            (json!({"job": 1, "name": "x", "nope": 1}), "nope"),
            (json!({"job": 1, "name": "x", "created_by": 1}), "created_by"),
            (json!({"job": 1, "name": 5}), "name"),
        ];
        for (data, field) in cases {
            let data = data.as_object().cloned().unwrap_or_default();
            let err = task.check_create_data(&data).expect_err("must be refused");
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert_eq!(err.code, 400);
        }
    }
}
