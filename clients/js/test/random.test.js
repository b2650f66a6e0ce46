// Random interleavings of local writes, other users' changes, confirmations
// and refusals (seeded, repeatable): after every step the view equals the
// canonical rows with the remaining pending writes replayed in order (checked
// against a naive replay), keys are unique and stable, and once everything is
// answered the view equals the server's rows.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Replica, rowKey } from '../packages/client/src/replica.js';
import { EPOCH, schema, task } from './helpers.js';

/** A small seeded PRNG (mulberry32). */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FIELDS = ['job', 'name', 'status', 'notes', 'developer', 'assignee', 'created_by'];
const strip = (r) => Object.fromEntries(['_type', 'id', ...FIELDS].filter((k) => k in r).map((k) => [k, r[k]]));

/** A server for one context (job/1) that applies or refuses the client's writes in order. */
class Server {
  constructor(replica, rand) {
    this.replica = replica;
    this.rand = rand;
    this.seq = 1;
    this.nextId = 100;
    this.rows = new Map([['Job:1', { _type: 'Job', id: 1, _version: 1, name: 'J', project: 1, owner: 1 }]]);
    for (let i = 1; i <= 4; i++) this.rows.set(`Task:${i}`, task(i, 1));
    this.inbox = []; // write frames not answered yet
    this.applied = new Set();
  }

  deliver(frame) {
    if (frame.type === 'write') this.inbox.push(frame);
  }

  state() {
    this.replica.receive({
      type: 'state',
      context: 'job/1',
      channel: 'job',
      anchorId: 1,
      epoch: EPOCH,
      seq: this.seq,
      instances: [...this.rows.values()],
    });
    this.prev = this.seq;
  }

  commit(changes, extra = {}) {
    this.seq += 1;
    const wire = [];
    for (const c of changes) {
      const k = rowKey(c._type, c.id);
      if (c.op === 'delete') this.rows.delete(k);
      else if (c.op === 'create') this.rows.set(k, { ...strip(c), _version: this.seq });
      else this.rows.set(k, { ...this.rows.get(k), ...c, op: undefined, _version: this.seq });
      const { op, ...rest } = c;
      wire.push({ op, ...rest, _version: this.seq });
    }
    for (const r of this.rows.values()) delete r.op;
    this.replica.receive({ type: 'delta', context: 'job/1', seq: this.seq, prev: this.prev, changes: wire, ...extra });
    this.prev = this.seq;
  }

  /** Someone else changes, creates or deletes a task. */
  other() {
    const tasks = [...this.rows.values()].filter((r) => r._type === 'Task');
    const pick = tasks[Math.floor(this.rand() * tasks.length)];
    const roll = this.rand();
    if (roll < 0.5 && pick) this.commit([{ op: 'update', _type: 'Task', id: pick.id, notes: `other ${this.seq}` }]);
    else if (roll < 0.8 || !pick) this.commit([{ op: 'create', ...task(this.nextId++, 1, { name: 'theirs' }) }]);
    else this.commit([{ op: 'delete', _type: 'Task', id: pick.id }]);
  }

  /** Answers the oldest write: applies it (delta with writeId, then the response) or refuses it. */
  answer(accept) {
    const f = this.inbox.shift();
    if (!f) return;
    const refuse = (code, reason) =>
      this.replica.receive({ type: 'writeResponse', writeId: f.writeId, success: false, error: { code, reason, message: reason } });
    if ((f.after ?? []).some((a) => !this.applied.has(a))) return refuse(400, 'DEPENDENCY_FAILED');
    if (!accept) return refuse(403, 'DENIED');
    const k = rowKey(f.instanceType, f.instanceId);
    if (f.operation !== 'create' && !this.rows.has(k)) return refuse(400, 'NOT_FOUND');
    let change;
    const created = [];
    if (f.operation === 'save') {
      const cur = this.rows.get(k);
      const diff = Object.fromEntries(Object.entries(f.data).filter(([key, v]) => cur[key] !== v));
      if (Object.keys(diff).length === 0) {
        this.applied.add(f.writeId);
        return this.replica.receive({ type: 'writeResponse', writeId: f.writeId, success: true, seq: this.seq });
      }
      change = { op: 'update', _type: 'Task', id: f.instanceId, ...diff };
    } else if (f.operation === 'create') {
      const id = f.instanceId < 0 ? this.nextId++ : f.instanceId;
      created.push(f.instanceId < 0 ? { _type: 'Task', tempId: f.instanceId, id } : { _type: 'Task', id });
      change = { op: 'create', ...task(id, 1, { created_by: 1, assignee: null, ...f.data }) };
    } else {
      change = { op: 'delete', _type: 'Task', id: f.instanceId };
    }
    this.applied.add(f.writeId);
    this.commit([change], { writeId: f.writeId, ...(created.length ? { created } : {}) });
    this.replica.receive({ type: 'writeResponse', writeId: f.writeId, success: true, seq: this.seq, created, instanceId: created[0]?.id });
  }
}

/** The view by the book: canonical rows, then every pending write not yet retired here, in order. */
function naiveView(replica, ctx) {
  const rows = new Map(ctx.canonical);
  const touched = new Set();
  for (const w of replica.queue) {
    if (!w.optimistic || w.retiredIn.has(ctx.name)) continue;
    for (const op of w.ops) {
      const id = replica.resolve(op.instanceType, op.instanceId);
      const k = rowKey(op.instanceType, id);
      if (op.operation === 'save' && rows.has(k)) {
        rows.set(k, { ...rows.get(k), ...op.data });
        touched.add(k);
      } else if (op.operation === 'create' && rows.has('Job:1')) {
        if (!rows.has(k)) rows.set(k, { _type: 'Task', id, ...replica.defaults('Task'), ...op.data, job: 1 });
        touched.add(k);
      } else if (op.operation === 'delete') {
        rows.delete(k);
      }
    }
  }
  return [...rows].map(([k, r]) => ({ ...strip(r), _pending: touched.has(k) }));
}

function run(seed, ids) {
  const rand = prng(seed);
  let server;
  const replica = new Replica({ schema, user: { id: 1 }, ids, send: (f) => server.deliver(structuredClone(f)) });
  server = new Server(replica, rand);
  replica.connected({ type: 'welcome', user: { id: 1 }, schema, epoch: EPOCH, applied: [] });
  const ctx = replica.subscribe('job', 1);
  server.state();
  const handles = [];
  const keys = new Map(); // first id → key seen, to check keys never change
  const check = (step) => {
    const view = ctx.rows().map((r) => ({ ...strip(r), _pending: r._pending }));
    assert.deepEqual(view, naiveView(replica, ctx), `seed ${seed} step ${step}`);
    const seen = new Set();
    for (const r of ctx.rows()) {
      const vk = `${r._type}:${r._key}`;
      assert.ok(!seen.has(vk), `seed ${seed} step ${step}: key ${vk} twice`);
      seen.add(vk);
      if (keys.has(vk)) assert.equal(keys.get(vk), r._key);
      keys.set(vk, r._key);
    }
  };
  for (let step = 0; step < 300; step++) {
    const roll = rand();
    const rows = ctx.rows('Task');
    const pick = rows[Math.floor(rand() * rows.length)];
    if (roll < 0.2 && pick) {
      handles.push(ctx.save('Task', pick._key, { status: ['todo', 'doing', 'done'][Math.floor(rand() * 3)] }));
    } else if (roll < 0.3 && pick) {
      handles.push(ctx.save('Task', pick._key, { notes: `mine ${step}` }, { optimistic: rand() < 0.8 }));
    } else if (roll < 0.42) {
      handles.push(ctx.create('Task', { name: `new ${step}` }));
    } else if (roll < 0.5 && pick) {
      handles.push(ctx.delete('Task', pick._key));
    } else if (roll < 0.65) {
      server.other();
    } else {
      server.answer(rand() < 0.7);
    }
    check(step);
  }
  while (server.inbox.length) {
    server.answer(rand() < 0.7);
    check('drain');
  }
  assert.deepEqual(replica.pendingWrites(), [], `seed ${seed}: every write answered`);
  assert.equal(replica.queue.length, 0);
  const final = ctx.rows().map((r) => strip(r));
  assert.deepEqual(final, [...server.rows.values()].map(strip), `seed ${seed}: the view is the server's state`);
  assert.ok(ctx.rows().every((r) => !r._pending));
  return Promise.allSettled(handles);
}

test('random interleavings keep view = canonical ⊕ pending, and end at the server state (client-minted ids)', async () => {
  for (let seed = 1; seed <= 25; seed++) await run(seed, 'minted');
});

test('the same with temp ids (swapped in place, dependent writes held until mapped)', async () => {
  for (let seed = 101; seed <= 125; seed++) await run(seed, 'temp');
});
