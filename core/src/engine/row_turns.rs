//! Turns on rows: writes that save or delete the same row check and commit
//! one after another, within this process.
//!
//! Checks run outside the commit lock (hooks may be slow), and a commit
//! succeeds only if the rows its check read are unchanged. On a hot row —
//! several people editing one card — writes running side by side would keep
//! invalidating each other's checks and end in 503 `CONTENDED` after the last
//! attempt. Taking the row's turn first makes them queue instead, each
//! checking the state the one before it committed. Writes to other rows don't
//! wait; no lock is held across a hook except the turns of the rows the
//! write itself changes. Other processes (PostgreSQL) can still commit in
//! between: there `CONTENDED` remains possible, and means "resend".

use crate::Id;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::OwnedMutexGuard;

type RowKey = (String, Id);
type Turn = Arc<tokio::sync::Mutex<()>>;

/// The rows with a write waiting for or holding its turn.
#[derive(Default)]
pub(crate) struct RowTurns {
    rows: Mutex<HashMap<RowKey, Turn>>,
}

/// Held while a write checks and commits: the turns of its rows.
pub(crate) struct Held<'a> {
    turns: &'a RowTurns,
    keys: Vec<RowKey>,
    guards: Vec<OwnedMutexGuard<()>>,
}

impl RowTurns {
    /// Waits for the turns of `rows` (taken in sorted order, so two writes
    /// naming the same rows in different orders can't deadlock).
    pub(crate) async fn take(&self, rows: impl IntoIterator<Item = (String, Id)>) -> Held<'_> {
        let mut keys: Vec<RowKey> = rows.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Held { turns: self, keys, guards: Vec::new() };
        }
        let turns: Vec<Turn> = {
            let mut map = self.rows.lock();
            keys.iter().map(|k| map.entry(k.clone()).or_default().clone()).collect()
        };
        let mut guards = Vec::with_capacity(turns.len());
        for turn in turns {
            guards.push(turn.lock_owned().await);
        }
        Held { turns: self, keys, guards }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.rows.lock().len()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.guards.clear();
        let mut map = self.turns.rows.lock();
        for key in &self.keys {
            // Only the map holds it: nobody waits for this row any more.
            if map.get(key).is_some_and(|t| Arc::strong_count(t) == 1) {
                map.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn row(id: Id) -> (String, Id) {
        ("Task".to_owned(), id)
    }

    #[tokio::test]
    async fn a_second_write_to_the_row_waits_and_other_rows_do_not() {
        let turns = Arc::new(RowTurns::default());
        let first = turns.take([row(1), row(2)]).await;
        let waiting = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _held = turns.take([row(2)]).await;
            })
        };
        let _other = tokio::time::timeout(Duration::from_secs(1), turns.take([row(3)])).await.expect("row 3 is free");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "row 2 is still held");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("row 2 is free now").expect("task");
    }

    #[tokio::test]
    async fn released_rows_are_forgotten() {
        let turns = RowTurns::default();
        let held = turns.take([row(2), row(1), row(2)]).await;
        assert_eq!(held.keys, vec![row(1), row(2)], "sorted, once each");
        assert_eq!(turns.len(), 2);
        drop(held);
        assert_eq!(turns.len(), 0);
    }
}
