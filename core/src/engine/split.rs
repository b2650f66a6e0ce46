//! Splitting a message whose rows or changes would make a frame over the
//! frame limit into numbered parts (`part`, `last`), each under the limit
//! where one row allows it.
//!
//! The number of parts is estimated from a sample before anything is
//! encoded, so a large state is usually encoded once rather than once whole
//! and again in parts; a part that still comes out over the limit doubles the
//! count and encodes again.

use crate::protocol::Codec;
use crate::protocol::v1::{Delta, ServerMessage, State, Subscribed};
use crate::transport::Frame;
use std::sync::Arc;

/// Rows encoded to estimate the size of the rest.
const SAMPLE: usize = 32;

/// Where a part stands among the parts of one message.
#[derive(Clone, Copy)]
struct PartOf {
    index: usize,
    count: usize,
}

impl PartOf {
    /// `part` on the wire: set only when there are several.
    fn part(self) -> Option<u32> {
        (self.count > 1).then_some(self.index as u32)
    }
    /// `last` on the wire: set only when there are several.
    fn last(self) -> Option<bool> {
        (self.count > 1).then_some(self.is_last())
    }
    fn is_last(self) -> bool {
        self.index + 1 == self.count
    }
}

/// Encodes `items` in as few parts as keep every frame within `limit` (a
/// single item over the limit still goes, alone in its part).
fn split_into_parts<T>(items: &[T], limit: usize, encode: impl Fn(&[T], PartOf) -> Option<Frame>) -> Vec<Frame> {
    let mut parts = estimated_parts(items, limit, &encode);
    loop {
        let chunk = items.len().div_ceil(parts).max(1);
        let chunks: Vec<&[T]> = if items.is_empty() { vec![items] } else { items.chunks(chunk).collect() };
        let count = chunks.len();
        let frames: Vec<Frame> =
            chunks.iter().enumerate().filter_map(|(index, part)| encode(part, PartOf { index, count })).collect();
        if frames.iter().all(|f| f.len() <= limit) || chunk == 1 {
            return frames;
        }
        parts = count * 2;
    }
}

/// Parts needed by the sampled size per item; 1 for few items.
fn estimated_parts<T>(items: &[T], limit: usize, encode: &impl Fn(&[T], PartOf) -> Option<Frame>) -> usize {
    if items.len() <= SAMPLE || limit == 0 {
        return 1;
    }
    let Some(sample) = encode(&items[..SAMPLE], PartOf { index: 0, count: 2 }) else { return 1 };
    let estimate = sample.len() as u128 * items.len() as u128 / SAMPLE as u128;
    usize::try_from(estimate.div_ceil(limit as u128)).unwrap_or(usize::MAX).clamp(1, items.len())
}

/// A state, split into parts when it exceeds the frame limit (the removed ids ride on the last part).
pub(crate) fn split_state(codec: Codec, state: State, limit: usize) -> Vec<Frame> {
    split_into_parts(&state.instances, limit, |rows, at| {
        let part = State {
            instances: rows.to_vec(),
            removed: if at.is_last() { state.removed.clone() } else { Vec::new() },
            presence: if at.index == 0 { state.presence.clone() } else { Vec::new() },
            part: at.part(),
            last: at.last(),
            ..state.clone()
        };
        codec.encode(&ServerMessage::State(part)).ok()
    })
}

/// A delta, split into parts when it exceeds the frame limit.
pub(crate) fn split_delta(codec: Codec, delta: Delta, limit: usize) -> Vec<Frame> {
    split_into_parts(&delta.changes, limit, |changes, at| {
        let part = Delta { changes: Arc::new(changes.to_vec()), part: at.part(), last: at.last(), ..delta.clone() };
        codec.encode(&ServerMessage::Delta(part)).ok()
    })
}

/// A `subscribed`, its snapshot split into parts over the frame limit.
pub(crate) fn split_subscribed(codec: Codec, msg: Subscribed, limit: usize) -> Vec<Frame> {
    let Some(rows) = msg.snapshot.clone() else {
        return codec.encode(&ServerMessage::Subscribed(msg)).map(|f| vec![f]).unwrap_or_default();
    };
    split_into_parts(&rows, limit, |rows, at| {
        let part = Subscribed { snapshot: Some(rows.to_vec()), part: at.part(), last: at.last(), ..msg.clone() };
        codec.encode(&ServerMessage::Subscribed(part)).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::v1::Removed;
    use crate::row::Row;
    use serde_json::{Value, json};

    fn row(id: i64, name_len: usize) -> Arc<Row> {
        let fields = json!({ "name": "x".repeat(name_len) }).as_object().cloned().unwrap_or_default();
        Arc::new(Row { ty: "Task".into(), id, version: 1, created: 1, fields })
    }

    fn state(rows: Vec<Arc<Row>>) -> State {
        State {
            context: "job/1".into(),
            channel: "job".into(),
            anchor_id: 1,
            epoch: "e".into(),
            seq: 7,
            instances: rows,
            incremental: true,
            removed: vec![Removed { ty: "Task".into(), id: 99 }],
            presence: Vec::new(),
            view: None,
            part: None,
            last: None,
            rid: None,
        }
    }

    fn parse(codec: Codec, frames: &[Frame]) -> Vec<Value> {
        frames.iter().map(|f| codec.parse(f).expect("a frame the codec reads")).collect()
    }

    /// Every frame within the limit, parts numbered in order, `last` only on
    /// the final one, the removed ids on the last part, and every row once in order.
    fn assert_parts(codec: Codec, frames: &[Frame], limit: usize, ids: &[i64]) {
        assert!(frames.len() > 1, "expected several parts");
        let msgs = parse(codec, frames);
        let mut seen = Vec::new();
        for (i, (frame, msg)) in frames.iter().zip(&msgs).enumerate() {
            assert!(frame.len() <= limit, "part {i} is {} bytes, over {limit}", frame.len());
            assert_eq!(msg["part"], json!(i));
            assert_eq!(msg["last"], json!(i + 1 == frames.len()));
            let removed = msg.get("removed").and_then(Value::as_array).map_or(0, Vec::len);
            assert_eq!(removed, usize::from(i + 1 == frames.len()), "removed ids ride on the last part only");
            seen.extend(msg["instances"].as_array().expect("instances").iter().map(|r| r["id"].as_i64().expect("id")));
        }
        assert_eq!(seen, ids);
    }

    #[test]
    fn a_state_over_the_limit_is_split_into_parts_within_it() {
        for codec in [Codec::Json, Codec::MsgPack] {
            let rows: Vec<_> = (1..=500).map(|id| row(id, 40 + (id as usize % 7) * 30)).collect();
            let ids: Vec<i64> = (1..=500).collect();
            let limit = 8 * 1024;
            let frames = split_state(codec, state(rows), limit);
            assert_parts(codec, &frames, limit, &ids);
        }
    }

    #[test]
    fn a_state_within_the_limit_is_one_frame_without_part_numbers() {
        let frames = split_state(Codec::Json, state((1..=100).map(|id| row(id, 10)).collect()), 1 << 20);
        assert_eq!(frames.len(), 1);
        let msg = &parse(Codec::Json, &frames)[0];
        assert!(msg.get("part").is_none() && msg.get("last").is_none(), "{msg}");
        assert_eq!(msg["instances"].as_array().map(Vec::len), Some(100));
        assert_eq!(msg["removed"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn rows_larger_than_the_sample_suggests_still_end_within_the_limit() {
        // The sample (the first rows) is small; the rest is large: the first
        // estimate is too low and the count doubles until every part fits.
        let rows: Vec<_> = (1..=300).map(|id| row(id, if id <= SAMPLE as i64 { 5 } else { 400 })).collect();
        let ids: Vec<i64> = (1..=300).collect();
        let limit = 16 * 1024;
        let frames = split_state(Codec::Json, state(rows), limit);
        assert_parts(Codec::Json, &frames, limit, &ids);
    }

    #[test]
    fn a_delta_over_the_limit_is_split_with_the_writer_tag_on_every_part() {
        use crate::protocol::v1::{ChangeOp, DeltaChange};
        let changes: Vec<DeltaChange> = (1..=200)
            .map(|id| DeltaChange {
                op: ChangeOp::Create,
                ty: "Task".into(),
                id,
                version: 9,
                fields: json!({ "name": "y".repeat(100) }).as_object().cloned().unwrap_or_default(),
            })
            .collect();
        let delta = Delta {
            context: "job/1".into(),
            seq: 9,
            prev: 8,
            changes: Arc::new(changes),
            write_id: Some(3),
            created: Vec::new(),
            part: None,
            last: None,
        };
        let limit = 4096;
        let frames = split_delta(Codec::Json, delta, limit);
        assert!(frames.len() > 1);
        let mut ids = Vec::new();
        for (i, (frame, msg)) in frames.iter().zip(parse(Codec::Json, &frames)).enumerate() {
            assert!(frame.len() <= limit, "part {i} is {} bytes", frame.len());
            assert_eq!((msg["part"].clone(), msg["last"].clone()), (json!(i), json!(i + 1 == frames.len())));
            assert_eq!(
                (msg["seq"].clone(), msg["prev"].clone(), msg["writeId"].clone()),
                (json!(9), json!(8), json!(3))
            );
            ids.extend(msg["changes"].as_array().expect("changes").iter().map(|c| c["id"].as_i64().expect("id")));
        }
        assert_eq!(ids, (1..=200).collect::<Vec<i64>>());
    }

    #[test]
    fn a_single_row_over_the_limit_goes_alone() {
        let rows = vec![row(1, 10), row(2, 5000), row(3, 10)];
        let frames = split_state(Codec::Json, state(rows), 1024);
        let sizes: Vec<usize> =
            parse(Codec::Json, &frames).iter().map(|m| m["instances"].as_array().map_or(0, Vec::len)).collect();
        assert_eq!(sizes, vec![1, 1, 1], "each row in its own part");
        assert!(frames[1].len() > 1024, "the big row can't be made smaller");
    }
}
