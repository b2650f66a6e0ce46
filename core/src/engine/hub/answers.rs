//! The order of one connection's answers, as a plain state machine: answers
//! go out in the order of the requests they answer, though a write's answer
//! comes only once its commit is durable and delivered (the hub does not
//! wait for that in its loop), and nothing overtakes a `state` that carries
//! a write's effect.
//!
//! - A write whose commit reaches the hub while nothing is held goes
//!   *directly*: its answer is sent when it comes, and everything held
//!   after it waits until every direct write is answered.
//! - A write whose commit arrives while something is held (or a subscribe
//!   awaits its state) takes a place in the queue; its answer fills it.
//! - Any other answer (a refusal decided at once, a pong behind a write in
//!   flight) is queued behind what is pending.

use crate::protocol::v1::ServerMessage;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// A write in flight's counter, released when its answer is sent.
pub(crate) type InFlight = Option<Arc<AtomicUsize>>;

enum Held {
    Answer(Box<ServerMessage>, InFlight),
    /// The place of a write's answer, by write id.
    Write(i64),
}

/// One connection's answer queue. See the module docs.
#[derive(Default)]
pub(crate) struct AnswerQueue {
    held: VecDeque<Held>,
    /// Writes to be answered directly, not answered yet (by write id).
    direct: Vec<i64>,
    /// Subscribes whose `state` has not been sent yet.
    awaiting_states: u32,
}

impl AnswerQueue {
    /// A commit of this connection's write reached the hub.
    pub fn write_committed(&mut self, write_id: i64) {
        if self.awaiting_states > 0 || !self.held.is_empty() {
            self.held.push_back(Held::Write(write_id));
        } else {
            self.direct.push(write_id);
        }
    }

    /// A write's answer: what to send now, in order.
    pub fn write_answered(
        &mut self,
        write_id: i64,
        msg: ServerMessage,
        in_flight: InFlight,
    ) -> Vec<(ServerMessage, InFlight)> {
        let place = self.held.iter_mut().find(|h| matches!(h, Held::Write(id) if *id == write_id));
        let mut out = Vec::new();
        match place {
            Some(place) => *place = Held::Answer(Box::new(msg), in_flight),
            None if self.direct.contains(&write_id) => {
                if let Some(at) = self.direct.iter().position(|id| *id == write_id) {
                    self.direct.remove(at);
                }
                out.push((msg, in_flight));
            }
            // Never registered (not committed through the hub): an ordinary answer.
            None => return self.answer(msg, in_flight),
        }
        out.extend(self.release());
        out
    }

    /// Any other answer: what to send now (it, or nothing while others go first).
    pub fn answer(&mut self, msg: ServerMessage, in_flight: InFlight) -> Vec<(ServerMessage, InFlight)> {
        if self.awaiting_states > 0 || !self.direct.is_empty() || !self.held.is_empty() {
            self.held.push_back(Held::Answer(Box::new(msg), in_flight));
            return Vec::new();
        }
        vec![(msg, in_flight)]
    }

    /// A subscribe now waits for its state.
    pub fn park(&mut self) {
        self.awaiting_states += 1;
    }

    /// A subscribe's state (or error) was sent, or it was withdrawn.
    pub fn unpark(&mut self) -> Vec<(ServerMessage, InFlight)> {
        self.awaiting_states = self.awaiting_states.saturating_sub(1);
        self.release()
    }

    /// The held answers whose turn has come.
    fn release(&mut self) -> Vec<(ServerMessage, InFlight)> {
        let mut out = Vec::new();
        while self.direct.is_empty() && self.awaiting_states == 0 {
            match self.held.front() {
                Some(Held::Answer(..)) => {
                    if let Some(Held::Answer(msg, in_flight)) = self.held.pop_front() {
                        out.push((*msg, in_flight));
                    }
                }
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::v1::{Ping, WriteResponse};

    fn resp(id: i64) -> ServerMessage {
        ServerMessage::WriteResponse(WriteResponse { write_id: id, success: true, ..Default::default() })
    }

    fn pong(tag: &str) -> ServerMessage {
        ServerMessage::Pong(Ping { rid: Some(tag.into()) })
    }

    fn names(out: Vec<(ServerMessage, InFlight)>) -> Vec<String> {
        out.into_iter()
            .map(|(m, _)| match m {
                ServerMessage::WriteResponse(r) => format!("w{}", r.write_id),
                ServerMessage::Pong(p) => p.rid.and_then(|r| r.as_str().map(str::to_owned)).unwrap_or_default(),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn an_answer_behind_a_write_in_flight_waits_for_it() {
        let mut q = AnswerQueue::default();
        q.write_committed(1);
        assert!(q.answer(pong("a"), None).is_empty(), "held behind write 1");
        q.write_committed(2);
        assert_eq!(names(q.write_answered(1, resp(1), None)), ["w1", "a"]);
        assert_eq!(names(q.write_answered(2, resp(2), None)), ["w2"]);
        assert_eq!(names(q.answer(pong("b"), None)), ["b"], "nothing pending: at once");
    }

    #[test]
    fn direct_writes_go_first_and_held_ones_keep_their_place() {
        let mut q = AnswerQueue::default();
        q.write_committed(1); // direct
        q.write_committed(2); // direct
        assert!(q.answer(pong("a"), None).is_empty());
        q.write_committed(3); // held behind "a"
        assert_eq!(names(q.write_answered(1, resp(1), None)), ["w1"], "a waits for write 2 too");
        assert!(q.write_answered(3, resp(3), None).is_empty(), "3 fills its place behind a");
        assert_eq!(names(q.write_answered(2, resp(2), None)), ["w2", "a", "w3"]);
    }

    #[test]
    fn a_pending_state_holds_what_comes_after_the_subscribe() {
        let mut q = AnswerQueue::default();
        q.write_committed(1); // before the subscribe: direct
        q.park();
        q.write_committed(2); // after: must not overtake the state
        assert_eq!(names(q.write_answered(1, resp(1), None)), ["w1"]);
        assert!(q.write_answered(2, resp(2), None).is_empty());
        assert!(q.answer(pong("a"), None).is_empty());
        assert_eq!(names(q.unpark()), ["w2", "a"]);
    }

    #[test]
    fn an_answer_for_a_write_never_committed_queues_like_any_other() {
        let mut q = AnswerQueue::default();
        q.write_committed(1);
        assert!(q.write_answered(9, resp(9), None).is_empty(), "a refusal of write 9 waits behind write 1");
        assert_eq!(names(q.write_answered(1, resp(1), None)), ["w1", "w9"]);
    }
}
