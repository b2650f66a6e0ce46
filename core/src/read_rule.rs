//! Read rules: which rows of a type a user may read inside a context or a
//! stream, and which of their fields.
//!
//! A policy answers once per user and type at subscribe with a [`ReadRule`]:
//! a row predicate (any of several filter groups, each compiled like a
//! stream's filters) and the fields hidden from that user (each unless the
//! row matches its own predicate). The engine decides changes per *class*:
//! subscribers whose rules are equal share one decision and one encoding of
//! every change, so a commit costs one check per class, not per subscriber.
//!
//! ```
//! use statecast_core::read_rule::ReadRule;
//! use statecast_core::stream::Filters;
//!
//! // Non-admins read public tasks, and private ones they are assigned to or created.
//! let me = 2;
//! let tasks = ReadRule::rows_where(Filters::new().eq("private", false))
//!     .or_where(Filters::new().eq("assignee", me))
//!     .or_where(Filters::new().eq("created_by", me));
//! // Users' e-mail addresses are hidden, but for one's own.
//! let users = ReadRule::all().hide_unless("email", Filters::new().eq("id", me));
//! assert!(!tasks.is_all() && !users.is_all());
//! ```

use crate::protocol::filter::{CompiledFilters, FilterError, Filters};
use crate::row::{Fields, Row};
use crate::schema::EntityType;
use std::fmt::Write as _;

/// Which rows: every row, or those matching any of the groups (none: no row).
#[derive(Clone, Debug, Default, PartialEq)]
enum RowSet {
    #[default]
    All,
    AnyOf(Vec<Filters>),
}

/// What a user may read of a type's rows. See the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadRule {
    rows: RowSet,
    /// Hidden fields, each shown only on rows matching its exception (if any).
    hidden: Vec<(String, Option<Filters>)>,
}

impl ReadRule {
    /// Every row, every field (the default).
    pub fn all() -> Self {
        Self::default()
    }

    /// No row at all.
    pub fn nothing() -> Self {
        Self { rows: RowSet::AnyOf(Vec::new()), hidden: Vec::new() }
    }

    /// Only the rows matching `filters` (all of its conditions).
    pub fn rows_where(filters: Filters) -> Self {
        Self { rows: RowSet::AnyOf(vec![filters]), hidden: Vec::new() }
    }

    /// Also the rows matching `filters`: a row is read if it matches any group.
    pub fn or_where(mut self, filters: Filters) -> Self {
        match &mut self.rows {
            RowSet::All => {}
            RowSet::AnyOf(groups) => groups.push(filters),
        }
        self
    }

    /// Hides `field` on every row.
    pub fn hide(mut self, field: impl Into<String>) -> Self {
        self.hidden.push((field.into(), None));
        self
    }

    /// Hides `field` on the rows that do not match `filters` (say, an
    /// e-mail address hidden but on the user's own row). The exception
    /// should rest on fields that do not change (an id): a row whose
    /// exception flips keeps what it showed until it changes again.
    pub fn hide_unless(mut self, field: impl Into<String>, filters: Filters) -> Self {
        self.hidden.push((field.into(), Some(filters)));
        self
    }

    /// True when the rule lets every row and field through.
    pub fn is_all(&self) -> bool {
        self.rows == RowSet::All && self.hidden.is_empty()
    }

    /// A canonical text of the rule: equal rules, equal keys (the class of
    /// the users that share it).
    pub fn key(&self) -> String {
        let mut out = String::new();
        match &self.rows {
            RowSet::All => out.push('*'),
            RowSet::AnyOf(groups) => {
                let mut keys: Vec<String> = groups.iter().map(filters_key).collect();
                keys.sort();
                keys.dedup();
                let _ = write!(out, "any[{}]", keys.join("|"));
            }
        }
        let mut hidden: Vec<String> = self
            .hidden
            .iter()
            .map(|(f, unless)| format!("{f}~{}", unless.as_ref().map(filters_key).unwrap_or_default()))
            .collect();
        hidden.sort();
        let _ = write!(out, " hide[{}]", hidden.join("|"));
        out
    }

    /// Checks the rule against `ty` (every field exists, every value fits).
    pub fn compile(&self, ty: &EntityType) -> Result<CompiledReadRule, FilterError> {
        let rows = match &self.rows {
            RowSet::All => None,
            RowSet::AnyOf(groups) => Some(groups.iter().map(|f| f.compile(ty)).collect::<Result<Vec<_>, _>>()?),
        };
        let mut hidden = Vec::with_capacity(self.hidden.len());
        for (field, unless) in &self.hidden {
            if ty.field(field).is_none() {
                return Err(FilterError::UnknownField {
                    key: field.clone(),
                    ty: ty.name.clone(),
                    field: field.clone(),
                });
            }
            hidden.push((field.clone(), unless.as_ref().map(|f| f.compile(ty)).transpose()?));
        }
        Ok(CompiledReadRule { rows, hidden })
    }
}

fn filters_key(f: &Filters) -> String {
    let mut parts: Vec<String> = f.iter().map(|c| format!("{}={}", c.key(), c.value)).collect();
    parts.sort();
    parts.join("&")
}

/// A [`ReadRule`] checked against its type, deciding rows in memory.
#[derive(Clone, Debug, Default)]
pub struct CompiledReadRule {
    rows: Option<Vec<CompiledFilters>>,
    hidden: Vec<(String, Option<CompiledFilters>)>,
}

impl CompiledReadRule {
    /// May the row be read?
    pub fn can_read(&self, row: &Row) -> bool {
        self.rows.as_ref().is_none_or(|groups| groups.iter().any(|g| g.matches(row)))
    }

    /// Is `field` hidden on `row`?
    pub fn hides(&self, row: &Row, field: &str) -> bool {
        self.hidden.iter().any(|(f, unless)| f == field && !unless.as_ref().is_some_and(|u| u.matches(row)))
    }

    /// True when some field may be hidden.
    pub fn hides_any(&self) -> bool {
        !self.hidden.is_empty()
    }

    /// Removes the fields hidden on `row` from `fields` (its own or a change's).
    pub fn strip(&self, row: &Row, fields: &mut Fields) {
        for (field, unless) in &self.hidden {
            if !unless.as_ref().is_some_and(|u| u.matches(row)) {
                fields.remove(field);
            }
        }
    }

    /// The row as this rule shows it: None when unreadable, else without its hidden fields.
    pub fn view(&self, row: &Row) -> Option<Row> {
        if !self.can_read(row) {
            return None;
        }
        let mut shown = row.clone();
        self.strip(row, &mut shown.fields);
        Some(shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;
    use serde_json::json;

    fn schema() -> std::sync::Arc<Schema> {
        Schema::builder()
            .entity("Task", |t| {
                t.bool("private").default(false);
                t.int("assignee").nullable();
                t.string("notes").default("");
            })
            .build()
            .expect("schema")
    }

    fn task(id: i64, private: bool, assignee: i64) -> Row {
        let fields =
            crate::row::fields([("private", json!(private)), ("assignee", json!(assignee)), ("notes", json!("n"))]);
        Row { ty: "Task".into(), id, version: 1, created: 1, fields }
    }

    #[test]
    fn rows_match_any_group_and_hidden_fields_go_unless_excepted() {
        let schema = schema();
        let ty = schema.entity("Task").expect("Task");
        let rule = ReadRule::rows_where(Filters::new().eq("private", false))
            .or_where(Filters::new().eq("assignee", 2))
            .hide_unless("notes", Filters::new().eq("assignee", 2))
            .compile(ty)
            .expect("compiles");
        assert!(rule.can_read(&task(1, false, 1)));
        assert!(rule.can_read(&task(2, true, 2)));
        assert!(!rule.can_read(&task(3, true, 1)));
        let shown = rule.view(&task(1, false, 1)).expect("readable");
        assert!(!shown.fields.contains_key("notes"), "hidden: {shown:?}");
        assert!(rule.view(&task(2, true, 2)).expect("readable").fields.contains_key("notes"), "excepted");
        assert!(rule.view(&task(3, true, 1)).is_none());
        assert!(ReadRule::nothing().compile(ty).is_ok_and(|r| !r.can_read(&task(1, false, 1))));
    }

    #[test]
    fn equal_rules_have_equal_keys_whatever_the_order() {
        let a = ReadRule::rows_where(Filters::new().eq("private", false)).or_where(Filters::new().eq("assignee", 2));
        let b = ReadRule::rows_where(Filters::new().eq("assignee", 2)).or_where(Filters::new().eq("private", false));
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), ReadRule::rows_where(Filters::new().eq("assignee", 3)).key());
        assert_ne!(ReadRule::all().key(), ReadRule::nothing().key());
        assert_ne!(ReadRule::all().key(), ReadRule::all().hide("notes").key());
    }

    #[test]
    fn a_rule_naming_an_unknown_field_is_refused() {
        let schema = schema();
        let ty = schema.entity("Task").expect("Task");
        assert!(ReadRule::all().hide("nope").compile(ty).is_err());
        assert!(ReadRule::rows_where(Filters::new().eq("nope", 1)).compile(ty).is_err());
    }
}
