//! Rows: a type, an id, a version and field values; their wire form is a flat
//! map `{"_type": "Task", "id": 2, "_version": 17, ...fields}`.

use crate::ids::{Id, Seq};
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;

/// Field values of a row, by field name.
pub type Fields = serde_json::Map<String, Value>;

/// Identifies one row: its entity type and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub ty: Arc<str>,
    pub id: Id,
}

impl RowKey {
    pub fn new(ty: impl Into<Arc<str>>, id: Id) -> Self {
        Self { ty: ty.into(), id }
    }
}

impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.ty, self.id)
    }
}

/// One stored row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub ty: Arc<str>,
    pub id: Id,
    /// The commit sequence that last changed this row.
    pub version: Seq,
    /// The commit sequence that created this row (the default relation order).
    pub created: Seq,
    pub fields: Fields,
}

impl Row {
    pub fn key(&self) -> RowKey {
        RowKey { ty: self.ty.clone(), id: self.id }
    }

    /// The value of a field, `Null` when absent.
    pub fn get(&self, field: &str) -> &Value {
        self.fields.get(field).unwrap_or(&Value::Null)
    }

    /// The value of an integer (or reference) field.
    pub fn get_i64(&self, field: &str) -> Option<i64> {
        self.fields.get(field).and_then(Value::as_i64)
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len() + 3))?;
        map.serialize_entry("_type", &*self.ty)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("_version", &self.version)?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a row map with _type, id and _version")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
                let (mut ty, mut id, mut version) = (None, None, None);
                let mut fields = Fields::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "_type" => ty = Some(map.next_value::<String>()?),
                        "id" => id = Some(map.next_value::<Id>()?),
                        "_version" => version = Some(map.next_value::<Seq>()?),
                        _ if key.starts_with('_') => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        _ => {
                            let v = map.next_value::<Value>()?;
                            fields.insert(key, v);
                        }
                    }
                }
                Ok(Row {
                    ty: ty.ok_or_else(|| de::Error::missing_field("_type"))?.into(),
                    id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                    version: version.unwrap_or(0),
                    created: 0,
                    fields,
                })
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

/// Builds a `Fields` map from `(name, value)` pairs.
pub fn fields<I, K>(pairs: I) -> Fields
where
    I: IntoIterator<Item = (K, Value)>,
    K: Into<String>,
{
    pairs.into_iter().map(|(k, v)| (k.into(), v)).collect()
}
