// Random interleavings of local saves, other users' changes, confirmations
// and refusals against a small simulated server, with a stream view open:
// after every step the incremental view equals the view decided from scratch
// (every row the view or a context holds, or a pending write names), and once
// everything settles it equals the server's matching rows.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Replica, rowKey } from '../packages/client/src/replica.js';
import { schema, task } from './helpers.js';

const STATUSES = ['todo', 'doing', 'done'];
const SCHEMA = { ...schema, streams: [{ name: 'tasks', type: 'Task', payload: 'full', indexFields: ['job'] }] };

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The view decided from scratch, in key order. */
function fromScratch(replica, view) {
  const type = 'Task';
  const keys = new Set(view.canonical.keys());
  for (const ctx of replica.contexts.values()) for (const k of ctx.canonical.keys()) if (k.startsWith('Task:')) keys.add(k);
  for (const w of replica.queue) for (const op of w.ops) keys.add(rowKey(op.instanceType, op.instanceId));
  const out = [];
  for (const k of keys) {
    const id = Number(k.slice(5));
    const row = replica.decideStreamRow(view, type, k, id, id);
    if (row) out.push(row);
  }
  return out.sort((a, b) => a._key - b._key);
}

for (let seed = 1; seed <= 150; seed += 1) {
  test(`a stream view kept incrementally equals the view from scratch, seed ${seed}`, () => {
    const random = rng(seed);
    const pick = (n) => Math.floor(random() * n);
    let seq = 10;
    const rows = new Map(); // id → {job, status, v}
    for (let id = 1; id <= 6; id += 1) rows.set(id, { job: 1 + (id % 2), status: STATUSES[id % 3], v: 1 });
    const prev = new Map([['job/1', 10], ['job/2', 10]]);
    let streamPrev = 10;
    const queue = [];
    const replica = new Replica({ clientId: 'r', send: () => {} });
    replica.connected({ type: 'welcome', connectionId: 'c', user: { id: 1 }, schema: SCHEMA, epoch: 'e', applied: [] });
    const ctxs = {};
    for (const j of [1, 2]) {
      const ctx = replica.subscribe('job', j);
      ctxs[j] = ctx;
      const instances = [{ _type: 'Job', id: j, _version: 1, name: 'J', project: 1, owner: 1 }];
      for (const [id, r] of rows) if (r.job === j) instances.push(task(id, j, { status: r.status, _version: r.v }));
      replica.receive({ type: 'state', context: `job/${j}`, channel: 'job', anchorId: j, epoch: 'e', seq: 10, instances, rid: ctx.rid });
    }
    const view = replica.stream('tasks', { filters: { status: 'todo' }, snapshot: true });
    const snapshot = [...rows].filter(([, r]) => r.status === 'todo').map(([id, r]) => task(id, r.job, { status: r.status, _version: r.v }));
    replica.receive({ type: 'subscribed', subscription: 's1', stream: 'tasks', seq: 10, snapshot, rid: view.rid });
    const commit = (id, status, writeId) => {
      seq += 1;
      const r = rows.get(id);
      const before = r.status === 'todo';
      rows.set(id, { ...r, status, v: seq });
      const context = `job/${r.job}`;
      const delta = { type: 'delta', context, seq, prev: prev.get(context), changes: [{ op: 'update', _type: 'Task', id, _version: seq, status }] };
      prev.set(context, seq);
      if (writeId !== undefined) delta.writeId = writeId;
      replica.receive(delta);
      const after = status === 'todo';
      const action = before && after ? 'update' : after ? 'create' : before ? 'delete' : null;
      if (action) {
        const { _type, id: _id, _version, ...data } = task(id, r.job, { status });
        replica.receive({ type: 'event', subscription: 's1', seq, prev: streamPrev, action, id, data });
        streamPrev = seq;
      }
      if (writeId !== undefined) replica.receive({ type: 'writeResponse', writeId, success: true, seq });
    };
    const check = (where) => assert.deepEqual(view.rows(), fromScratch(replica, view), where);
    check('start');
    for (let i = 0; i < 40; i += 1) {
      const r = random();
      if (r < 0.4) {
        const id = 1 + pick(6);
        const status = STATUSES[pick(3)];
        const h = ctxs[rows.get(id).job].save('Task', id, { status });
        h.catch(() => {});
        queue.push({ writeId: h.writeId, id, status });
      } else if (r < 0.7) {
        commit(1 + pick(6), STATUSES[pick(3)]);
      } else if (queue.length) {
        const w = queue.shift();
        if (random() < 0.6) commit(w.id, w.status, w.writeId);
        else replica.receive({ type: 'writeResponse', writeId: w.writeId, success: false, error: { code: 403, reason: 'DENIED', message: 'no' } });
      }
      check(`step ${i}`);
    }
    while (queue.length) {
      const w = queue.shift();
      commit(w.id, w.status, w.writeId);
      check('settling');
    }
    const shown = view.rows().map((r) => [r.id, r.status, r._pending]);
    const server = [...rows].filter(([, r]) => r.status === 'todo').map(([id, r]) => [id, r.status, false]);
    assert.deepEqual(shown, server);
  });
}
