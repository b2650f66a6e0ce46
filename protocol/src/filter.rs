//! Stream filters: `field[__lookup]` → value, as django-graphex takes them,
//! checked against the schema once (at subscribe) and then decided in memory
//! against a row image — the committed row or its before-image — with no
//! store read per event.

use crate::error::WireError;
use crate::ids::{Id, is_safe_int};
use crate::row::Row;
use crate::schema::{EntityType, FieldKind};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::fmt;
use std::time::SystemTime;

/// The most values an `in` lookup may list.
pub const MAX_IN_VALUES: usize = 1000;

/// A lookup: how a field's value is compared with the filter's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lookup {
    Exact,
    IExact,
    Contains,
    IContains,
    StartsWith,
    In,
    Gt,
    Gte,
    Lt,
    Lte,
    IsNull,
}

impl Lookup {
    pub const ALL: [Lookup; 11] = [
        Lookup::Exact,
        Lookup::IExact,
        Lookup::Contains,
        Lookup::IContains,
        Lookup::StartsWith,
        Lookup::In,
        Lookup::Gt,
        Lookup::Gte,
        Lookup::Lt,
        Lookup::Lte,
        Lookup::IsNull,
    ];

    /// The lookup's name in a filter key (`name__icontains`).
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Exact => "exact",
            Lookup::IExact => "iexact",
            Lookup::Contains => "contains",
            Lookup::IContains => "icontains",
            Lookup::StartsWith => "startswith",
            Lookup::In => "in",
            Lookup::Gt => "gt",
            Lookup::Gte => "gte",
            Lookup::Lt => "lt",
            Lookup::Lte => "lte",
            Lookup::IsNull => "isnull",
        }
    }

    pub fn parse(name: &str) -> Option<Lookup> {
        Lookup::ALL.into_iter().find(|l| l.as_str() == name)
    }
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition: `field` (a field of the type, or `id`) `lookup` `value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub field: String,
    pub lookup: Lookup,
    pub value: Value,
}

impl Filter {
    /// The filter's key as the wire spells it: `job`, `name__icontains`.
    pub fn key(&self) -> String {
        match self.lookup {
            Lookup::Exact => self.field.clone(),
            l => format!("{}__{l}", self.field),
        }
    }
}

/// A set of conditions, all of which must hold (AND). Not yet checked against
/// a type: a stream (core's `Stream`) compiles them at subscribe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    filters: Vec<Filter>,
}

/// Why filters were refused; every variant names the offending key.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error("`{ty}` has no field `{field}` to filter on")]
    UnknownField { key: String, ty: String, field: String },
    #[error(
        "unknown lookup `{lookup}` in `{key}`; use one of exact, iexact, contains, icontains, startswith, in, gt, gte, lt, lte, isnull"
    )]
    UnknownLookup { key: String, lookup: String },
    #[error("lookup `{lookup}` does not apply to `{field}` ({kind} field)")]
    LookupNotApplicable { key: String, field: String, lookup: Lookup, kind: &'static str },
    #[error("`{key}` needs {expected}")]
    BadValue { key: String, expected: String },
}

impl FilterError {
    /// The key the error is about.
    pub fn key(&self) -> &str {
        match self {
            FilterError::UnknownField { key, .. }
            | FilterError::UnknownLookup { key, .. }
            | FilterError::LookupNotApplicable { key, .. }
            | FilterError::BadValue { key, .. } => key,
        }
    }

    /// As the protocol carries it: 400 `INVALID_DATA` naming the key.
    pub fn to_wire(&self) -> WireError {
        WireError::invalid_data(self.key(), self.to_string())
    }
}

impl Filters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `field == value` (`exact`).
    pub fn eq(self, field: &str, value: impl Into<Value>) -> Self {
        self.with(field, Lookup::Exact, value)
    }

    /// Adds `field <lookup> value`.
    pub fn with(mut self, field: &str, lookup: Lookup, value: impl Into<Value>) -> Self {
        self.push(Filter { field: field.to_owned(), lookup, value: value.into() });
        self
    }

    /// Adds a filter, replacing one with the same field and lookup.
    pub fn push(&mut self, filter: Filter) {
        match self.filters.iter_mut().find(|f| f.field == filter.field && f.lookup == filter.lookup) {
            Some(existing) => *existing = filter,
            None => self.filters.push(filter),
        }
    }

    /// Parses the wire form `{"job": 1, "name__icontains": "bug"}` (keys only;
    /// fields and values are checked against the type when compiled).
    pub fn parse(map: &Map<String, Value>) -> Result<Self, FilterError> {
        let mut out = Filters::new();
        for (key, value) in map {
            let (field, lookup) = match key.rsplit_once("__") {
                Some((field, name)) => {
                    let lookup = Lookup::parse(name)
                        .ok_or_else(|| FilterError::UnknownLookup { key: key.clone(), lookup: name.to_owned() })?;
                    (field, lookup)
                }
                None => (key.as_str(), Lookup::Exact),
            };
            out.push(Filter { field: field.to_owned(), lookup, value: value.clone() });
        }
        Ok(out)
    }

    /// `self` (the server's scope) merged over `client`: the scope's conditions
    /// all stay, replacing a client condition with the same field and lookup;
    /// the client's others are added (AND), so they can only narrow.
    pub fn merged_over(&self, client: &Filters) -> Filters {
        let mut out = client.clone();
        for f in &self.filters {
            out.push(f.clone());
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = &Filter> {
        self.filters.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Checks every condition against `ty` and compiles it for evaluation.
    pub fn compile(&self, ty: &EntityType) -> Result<CompiledFilters, FilterError> {
        let preds = self.filters.iter().map(|f| compile_one(ty, f)).collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledFilters { preds })
    }
}

/// The kind of values a filtered field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Id,
    Int,
    Float,
    Str,
    Bool,
    Time,
    Json,
}

impl Kind {
    fn of(kind: &FieldKind) -> Kind {
        match kind {
            FieldKind::String => Kind::Str,
            FieldKind::Int | FieldKind::Reference { .. } => Kind::Int,
            FieldKind::Float => Kind::Float,
            FieldKind::Bool => Kind::Bool,
            FieldKind::Json => Kind::Json,
            FieldKind::Timestamp => Kind::Time,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Id => "id",
            Kind::Int => "integer",
            Kind::Float => "float",
            Kind::Str => "string",
            Kind::Bool => "boolean",
            Kind::Time => "timestamp",
            Kind::Json => "json",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Id | Kind::Int => "an integer within ±(2^53−1)",
            Kind::Float => "a finite number",
            Kind::Str => "a string",
            Kind::Bool => "a boolean",
            Kind::Time => "an RFC 3339 UTC timestamp string",
            Kind::Json => "a JSON value",
        }
    }

    /// A value of this kind, or None (null, or of another type).
    fn scalar(self, v: &Value) -> Option<Scalar> {
        match self {
            Kind::Id | Kind::Int => v.as_i64().filter(|i| is_safe_int(*i)).map(Scalar::Int),
            Kind::Float => v.as_f64().filter(|f| f.is_finite()).map(Scalar::Float),
            Kind::Str => v.as_str().map(|s| Scalar::Str(s.to_owned())),
            Kind::Bool => v.as_bool().map(Scalar::Bool),
            Kind::Time => v.as_str().and_then(|s| humantime::parse_rfc3339(s).ok()).map(Scalar::Time),
            Kind::Json => (!v.is_null()).then(|| Scalar::Json(v.clone())),
        }
    }
}

/// A comparable value.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Time(SystemTime),
    Json(Value),
}

impl Scalar {
    fn cmp(&self, other: &Scalar) -> Option<Ordering> {
        match (self, other) {
            (Scalar::Int(a), Scalar::Int(b)) => Some(a.cmp(b)),
            (Scalar::Float(a), Scalar::Float(b)) => a.partial_cmp(b),
            (Scalar::Str(a), Scalar::Str(b)) => Some(a.cmp(b)),
            (Scalar::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
            (Scalar::Time(a), Scalar::Time(b)) => Some(a.cmp(b)),
            (Scalar::Json(a), Scalar::Json(b)) => (a == b).then_some(Ordering::Equal),
            _ => None,
        }
    }

    /// The routing key of an equality value, for kinds that have one.
    fn index_key(&self) -> Option<IndexKey> {
        match self {
            Scalar::Int(i) => Some(IndexKey::Int(*i)),
            Scalar::Str(s) => Some(IndexKey::Str(s.clone())),
            Scalar::Bool(b) => Some(IndexKey::Bool(*b)),
            _ => None,
        }
    }
}

/// An equality value that routes a change to a group of subscribers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IndexKey {
    Null,
    Int(i64),
    Str(String),
    Bool(bool),
}

impl IndexKey {
    /// The key of a row's value for `field` (`None` = the id).
    pub fn of_row(row: &Row, field: Option<&str>) -> Option<IndexKey> {
        let Some(field) = field else { return Some(IndexKey::Int(row.id)) };
        match row.get(field) {
            Value::Null => Some(IndexKey::Null),
            Value::Bool(b) => Some(IndexKey::Bool(*b)),
            Value::String(s) => Some(IndexKey::Str(s.clone())),
            Value::Number(n) => n.as_i64().map(IndexKey::Int),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
enum Test {
    Eq(Scalar),
    IEq(String),
    Contains(String),
    IContains(String),
    StartsWith(String),
    In(Vec<Scalar>),
    Cmp(Lookup, Scalar),
    IsNull(bool),
}

#[derive(Clone, Debug)]
struct Pred {
    /// `None` is the row's id.
    field: Option<String>,
    kind: Kind,
    test: Test,
}

impl Pred {
    fn matches(&self, row: &Row) -> bool {
        let raw = match &self.field {
            None => return self.test_scalar(Some(Scalar::Int(row.id))),
            Some(f) => row.get(f),
        };
        let value = if raw.is_null() { None } else { self.kind.scalar(raw) };
        self.test_scalar(value)
    }

    fn test_scalar(&self, value: Option<Scalar>) -> bool {
        match (&self.test, value) {
            (Test::IsNull(want), v) => v.is_none() == *want,
            (_, None) => false,
            (Test::Eq(want), Some(v)) => v.cmp(want) == Some(Ordering::Equal),
            (Test::In(list), Some(v)) => list.iter().any(|w| v.cmp(w) == Some(Ordering::Equal)),
            (Test::Cmp(lookup, want), Some(v)) => match (v.cmp(want), lookup) {
                (Some(o), Lookup::Gt) => o == Ordering::Greater,
                (Some(o), Lookup::Gte) => o != Ordering::Less,
                (Some(o), Lookup::Lt) => o == Ordering::Less,
                (Some(o), Lookup::Lte) => o != Ordering::Greater,
                _ => false,
            },
            (Test::IEq(want), Some(Scalar::Str(s))) => s.to_lowercase() == *want,
            (Test::Contains(want), Some(Scalar::Str(s))) => s.contains(want.as_str()),
            (Test::IContains(want), Some(Scalar::Str(s))) => s.to_lowercase().contains(want.as_str()),
            (Test::StartsWith(want), Some(Scalar::Str(s))) => s.starts_with(want.as_str()),
            _ => false,
        }
    }
}

fn compile_one(ty: &EntityType, f: &Filter) -> Result<Pred, FilterError> {
    let key = f.key();
    let (field, kind, nullable) = if f.field == "id" {
        (None, Kind::Id, false)
    } else {
        let def = ty.field(&f.field).ok_or_else(|| FilterError::UnknownField {
            key: key.clone(),
            ty: ty.name.clone(),
            field: f.field.clone(),
        })?;
        (Some(f.field.clone()), Kind::of(&def.kind), def.nullable)
    };
    let not_applicable = || FilterError::LookupNotApplicable {
        key: key.clone(),
        field: f.field.clone(),
        lookup: f.lookup,
        kind: kind.name(),
    };
    let bad = |expected: String| FilterError::BadValue { key: key.clone(), expected };
    let scalar = |v: &Value| kind.scalar(v).ok_or_else(|| bad(kind.expected().to_owned()));
    let string = |v: &Value| v.as_str().map(str::to_owned).ok_or_else(|| bad("a string".to_owned()));
    let test = match f.lookup {
        Lookup::Exact if f.value.is_null() => {
            if !nullable {
                return Err(bad(format!("{} (`{}` is never null)", kind.expected(), f.field)));
            }
            Test::IsNull(true)
        }
        Lookup::Exact => Test::Eq(scalar(&f.value)?),
        Lookup::IExact | Lookup::Contains | Lookup::IContains | Lookup::StartsWith => {
            if kind != Kind::Str {
                return Err(not_applicable());
            }
            let s = string(&f.value)?;
            match f.lookup {
                Lookup::IExact => Test::IEq(s.to_lowercase()),
                Lookup::Contains => Test::Contains(s),
                Lookup::IContains => Test::IContains(s.to_lowercase()),
                _ => Test::StartsWith(s),
            }
        }
        Lookup::In => {
            let list = f
                .value
                .as_array()
                .filter(|a| a.len() <= MAX_IN_VALUES)
                .ok_or_else(|| bad(format!("a list of at most {MAX_IN_VALUES} values")))?;
            let values = list
                .iter()
                .map(|v| kind.scalar(v).ok_or_else(|| bad(format!("a list of values, each {}", kind.expected()))))
                .collect::<Result<Vec<_>, _>>()?;
            Test::In(values)
        }
        Lookup::Gt | Lookup::Gte | Lookup::Lt | Lookup::Lte => {
            if matches!(kind, Kind::Bool | Kind::Json) {
                return Err(not_applicable());
            }
            Test::Cmp(f.lookup, scalar(&f.value)?)
        }
        Lookup::IsNull => Test::IsNull(f.value.as_bool().ok_or_else(|| bad("a boolean".to_owned()))?),
    };
    Ok(Pred { field, kind, test })
}

/// Filters checked against a type, ready to decide rows in memory.
#[derive(Clone, Debug, Default)]
pub struct CompiledFilters {
    preds: Vec<Pred>,
}

impl CompiledFilters {
    /// Does the row pass every condition?
    pub fn matches(&self, row: &Row) -> bool {
        self.preds.iter().all(|p| p.matches(row))
    }

    /// The equality values the filters fix on `field` (`None` = id): one value
    /// for `exact` (or `isnull: true`), the list for `in`; None when unconstrained
    /// (or constrained by a value kind that doesn't route).
    pub fn fixed_values(&self, field: Option<&str>) -> Option<Vec<IndexKey>> {
        self.preds.iter().filter(|p| p.field.as_deref() == field).find_map(|p| match &p.test {
            Test::Eq(v) => v.index_key().map(|k| vec![k]),
            Test::IsNull(true) => Some(vec![IndexKey::Null]),
            Test::In(list) => list.iter().map(Scalar::index_key).collect(),
            _ => None,
        })
    }

    /// Checks a row against where the hub looks for it: when the filters match
    /// `row`, every routing slot (the id, then any field of `ty`) whose values
    /// they fix holds the row's value, and so do the ids or the reference a
    /// snapshot reads by. `Err` says which would miss the row. For fuzzing;
    /// not an API.
    #[doc(hidden)]
    pub fn check_routing(&self, ty: &EntityType, row: &Row) -> Result<(), String> {
        if !self.matches(row) {
            return Ok(());
        }
        let slots = std::iter::once(None).chain(ty.fields.iter().map(|f| Some(f.name.as_str())));
        for field in slots {
            if let Some(keys) = self.fixed_values(field) {
                let key = IndexKey::of_row(row, field);
                if !key.as_ref().is_some_and(|k| keys.contains(k)) {
                    return Err(format!("slot {field:?} is fixed to {keys:?}; the matching row routes as {key:?}"));
                }
            }
        }
        if let Some(ids) = self.fixed_ids()
            && !ids.contains(&row.id)
        {
            return Err(format!("the snapshot reads ids {ids:?}; the matching row is #{}", row.id));
        }
        if let Some((field, ids)) = self.fixed_reference(ty)
            && !row.get_i64(field).is_some_and(|v| ids.contains(&v))
        {
            return Err(format!("the snapshot reads `{field}` in {ids:?}; the matching row has {}", row.get(field)));
        }
        Ok(())
    }

    /// The ids the filters fix (`id` or `id__in`), if any.
    pub fn fixed_ids(&self) -> Option<Vec<Id>> {
        let keys = self.fixed_values(None)?;
        keys.into_iter().map(|k| if let IndexKey::Int(i) = k { Some(i) } else { None }).collect()
    }

    /// A reference field the filters fix to a list of ids, for the snapshot.
    pub fn fixed_reference<'a>(&self, ty: &'a EntityType) -> Option<(&'a str, Vec<Id>)> {
        ty.fields.iter().filter(|f| f.target().is_some()).find_map(|f| {
            let keys = self.fixed_values(Some(&f.name))?;
            let ids: Option<Vec<Id>> =
                keys.into_iter().map(|k| if let IndexKey::Int(i) = k { Some(i) } else { None }).collect();
            Some((f.name.as_str(), ids?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;
    use serde_json::json;

    fn task() -> EntityType {
        let schema = Schema::builder()
            .entity("Task", |t| {
                t.string("name");
                t.int("points").nullable();
                t.float("weight").default(1.0);
                t.bool("done").default(false);
                t.timestamp("due").nullable();
                t.json("meta").nullable();
            })
            .build()
            .expect("schema");
        schema.entity("Task").cloned().expect("Task")
    }

    fn row(id: Id, v: Value) -> Row {
        Row { ty: "Task".into(), id, version: 1, created: 1, fields: v.as_object().cloned().unwrap_or_default() }
    }

    fn check(filters: Value, row: &Row) -> bool {
        let map = filters.as_object().cloned().unwrap_or_default();
        Filters::parse(&map).expect("parses").compile(&task()).expect("compiles").matches(row)
    }

    #[test]
    fn lookups_decide_rows() {
        let r = row(
            7,
            json!({"name": "Fix Bug", "points": 3, "weight": 2.5, "done": false, "due": "2026-01-02T00:00:00Z", "meta": null}),
        );
        assert!(check(json!({"id": 7}), &r));
        assert!(!check(json!({"id": 8}), &r));
        assert!(check(json!({"id__in": [1, 7]}), &r));
        assert!(check(json!({"name": "Fix Bug"}), &r));
        assert!(check(json!({"name__iexact": "fix bug"}), &r));
        assert!(!check(json!({"name__contains": "bug"}), &r));
        assert!(check(json!({"name__icontains": "BUG"}), &r));
        assert!(check(json!({"name__startswith": "Fix"}), &r));
        assert!(check(json!({"points__gt": 2, "points__lt": 4, "points__gte": 3, "points__lte": 3}), &r));
        assert!(!check(json!({"points__gt": 3}), &r));
        assert!(check(json!({"weight__gte": 2}), &r));
        assert!(check(json!({"done": false}), &r));
        assert!(check(json!({"due__lt": "2026-01-03T00:00:00Z"}), &r));
        assert!(check(json!({"due__gt": "2026-01-01T23:00:00+00:00"}), &r));
        assert!(check(json!({"meta__isnull": true, "due__isnull": false}), &r));
        assert!(check(json!({"meta": null}), &r));
        let empty = row(8, json!({"name": "x", "points": null}));
        assert!(!check(json!({"points__gt": 0}), &empty));
        assert!(check(json!({"points__isnull": true}), &empty));
    }

    #[test]
    fn bad_filters_name_their_key() {
        let ty = task();
        for (filters, key) in [
            (json!({"nope": 1}), "nope"),
            (json!({"name__like": "x"}), "name__like"),
            (json!({"points": "three"}), "points"),
            (json!({"points__contains": "3"}), "points__contains"),
            (json!({"done__gt": true}), "done__gt"),
            (json!({"name__in": "x"}), "name__in"),
            (json!({"name__in": [1]}), "name__in"),
            (json!({"name": null}), "name"),
            (json!({"points__isnull": 1}), "points__isnull"),
            (json!({"due__gt": "tomorrow"}), "due__gt"),
            (json!({"id": 9007199254740993_i64}), "id"),
        ] {
            let map = filters.as_object().cloned().unwrap_or_default();
            let err = Filters::parse(&map).and_then(|f| f.compile(&ty).map(|_| ())).expect_err("refused");
            assert_eq!(err.key(), key, "{err}");
            assert_eq!(err.to_wire().code, 400);
        }
    }

    #[test]
    fn the_scope_wins_and_the_rest_narrows() {
        let scope = Filters::new().eq("points", 2);
        let client = Filters::new().eq("points", 1).with("name", Lookup::IContains, "x");
        let merged = scope.merged_over(&client);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().any(|f| f.field == "points" && f.value == json!(2)));
    }
}
