//! What the store knows of each client's exactly-once records: the highest
//! writeId it has recorded and its purge mark. A client sends its writes with
//! rising writeIds, so nearly every write asks "was this applied?" of an id
//! above everything recorded: with the ceiling known, the answer is "no"
//! without a read (in an LSM engine a read that finds nothing still looks
//! through every level).
//!
//! Exact because of where it changes: a client's entry is learned from the
//! key space and raised by each commit, both under the commit lock, and a
//! purge updates the mark under the same lock. Reads outside the lock may see
//! an entry a moment before a commit raises it, which is the same as reading
//! the key space a moment before the commit: the commit's own check, under
//! the lock, is the one that decides.

use statecast_core::Id;
use statecast_core::store::AppliedKey;
use std::collections::HashMap;

/// Clients remembered at most; past it the map starts over (an entry is only
/// a shortcut, and is learned again on the client's next commit).
const MAX_CLIENTS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Marks {
    /// The highest writeId with an applied record (`None`: no record).
    highest: Option<i64>,
    /// The highest purged writeId (`None`: nothing purged).
    purged: Option<i64>,
}

/// Per client (user and client id), its [`Marks`], once learned.
#[derive(Debug, Default)]
pub(crate) struct ClientMarks {
    known: parking_lot::Mutex<HashMap<(Id, String), Marks>>,
}

impl ClientMarks {
    pub(crate) fn knows(&self, user: Id, client_id: &str) -> bool {
        self.known.lock().contains_key(&(user, client_id.to_owned()))
    }

    /// Records what the key space holds for a client (under the commit lock).
    pub(crate) fn learn(&self, user: Id, client_id: &str, highest: Option<i64>, purged: Option<i64>) {
        let mut known = self.known.lock();
        if known.len() >= MAX_CLIENTS {
            known.clear();
        }
        known.insert((user, client_id.to_owned()), Marks { highest, purged });
    }

    /// True when `key` is above every writeId recorded for its client.
    pub(crate) fn never_applied(&self, key: &AppliedKey) -> bool {
        let known = self.known.lock();
        match known.get(&(key.user, key.client_id.clone())) {
            Some(marks) => marks.highest.is_none_or(|highest| key.write_id > highest),
            None => false,
        }
    }

    /// The client's purge mark, when known (`Some(None)`: nothing purged).
    pub(crate) fn purge_mark(&self, user: Id, client_id: &str) -> Option<Option<i64>> {
        self.known.lock().get(&(user, client_id.to_owned())).map(|m| m.purged)
    }

    /// A commit recorded `key` (under the commit lock, after it was applied).
    pub(crate) fn recorded(&self, key: &AppliedKey) {
        if let Some(marks) = self.known.lock().get_mut(&(key.user, key.client_id.clone())) {
            marks.highest = Some(marks.highest.map_or(key.write_id, |h| h.max(key.write_id)));
        }
    }

    /// A purge moved the client's mark to `write_id` (under the commit lock).
    /// The highest recorded writeId stays a bound: purging removes records.
    pub(crate) fn purged(&self, user: Id, client_id: &str, write_id: i64) {
        if let Some(marks) = self.known.lock().get_mut(&(user, client_id.to_owned())) {
            marks.purged = Some(write_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(write_id: i64) -> AppliedKey {
        AppliedKey { user: 1, client_id: "tab".into(), write_id }
    }

    #[test]
    fn an_unknown_client_is_never_answered_from_memory() {
        let marks = ClientMarks::default();
        assert!(!marks.never_applied(&key(1)));
        assert_eq!(marks.purge_mark(1, "tab"), None);
        marks.recorded(&key(5));
        assert!(!marks.never_applied(&key(6)), "a commit does not make a client known");
    }

    #[test]
    fn ids_above_the_highest_record_were_never_applied() {
        let marks = ClientMarks::default();
        marks.learn(1, "tab", None, None);
        assert!(marks.never_applied(&key(-7)), "no record at all");
        marks.recorded(&key(4));
        assert!(marks.never_applied(&key(5)));
        assert!(!marks.never_applied(&key(4)));
        assert!(!marks.never_applied(&key(2)), "below the ceiling: the key space decides");
        marks.recorded(&key(2));
        assert!(marks.never_applied(&key(5)), "an older id does not lower the ceiling");
        assert!(!marks.never_applied(&AppliedKey { client_id: "other".into(), ..key(9) }));
    }

    #[test]
    fn a_purge_moves_the_mark_of_a_known_client_only() {
        let marks = ClientMarks::default();
        marks.purged(1, "tab", 3);
        assert_eq!(marks.purge_mark(1, "tab"), None);
        marks.learn(1, "tab", Some(9), None);
        assert_eq!(marks.purge_mark(1, "tab"), Some(None));
        marks.purged(1, "tab", 3);
        assert_eq!(marks.purge_mark(1, "tab"), Some(Some(3)));
        assert!(marks.never_applied(&key(10)));
    }
}
