//! The durability watermark a store reports: the seq up to which every
//! commit is durable, and whether a flush has failed (which is fatal). Shared
//! by the stores so waiting, advancing and failing behave the same in each.

use super::StoreError;
use crate::ids::Seq;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone, Debug, Default)]
struct State {
    seq: Seq,
    failed: Option<Arc<str>>,
}

/// A durable-up-to watermark with a fatal failure flag.
#[derive(Debug)]
pub struct DurableWatermark {
    tx: watch::Sender<State>,
}

impl DurableWatermark {
    /// Starts durable through `seq`.
    pub fn new(seq: Seq) -> Self {
        Self { tx: watch::Sender::new(State { seq, failed: None }) }
    }

    /// The seq up to which every commit is durable.
    pub fn seq(&self) -> Seq {
        self.tx.borrow().seq
    }

    /// The failure recorded by [`fail`](Self::fail), if any.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.tx.borrow().failed.clone()
    }

    /// Moves the watermark up to `seq` (never down).
    pub fn advance(&self, seq: Seq) {
        self.tx.send_if_modified(|s| {
            let advance = seq > s.seq;
            if advance {
                s.seq = seq;
            }
            advance
        });
    }

    /// Records a failed flush: every waiter, now and later, gets `FlushFailed`.
    pub fn fail(&self, message: &str) -> StoreError {
        self.tx.send_modify(|s| s.failed = Some(message.into()));
        StoreError::flush_failed(message.to_owned())
    }

    /// Waits until the watermark reaches `seq` (or a flush fails).
    pub async fn wait(&self, seq: Seq) -> Result<(), StoreError> {
        let mut rx = self.tx.subscribe();
        let state = rx
            .wait_for(|s| s.failed.is_some() || s.seq >= seq)
            .await
            .map_err(|_| StoreError::unavailable("the store is closed"))?;
        match &state.failed {
            Some(msg) => Err(StoreError::flush_failed(msg.to_string())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_advance_and_fail() {
        let w = Arc::new(DurableWatermark::new(3));
        assert!(w.wait(2).await.is_ok());
        let waiter = tokio::spawn({
            let w = w.clone();
            async move { w.wait(5).await }
        });
        w.advance(4);
        w.advance(1);
        assert_eq!(w.seq(), 4, "never moves down");
        w.advance(5);
        assert!(waiter.await.expect("join").is_ok());
        let _ = w.fail("disk gone");
        assert!(matches!(w.wait(1).await, Err(StoreError::FlushFailed { message, .. }) if message == "disk gone"));
        assert_eq!(w.failure().as_deref(), Some("disk gone"));
    }
}
