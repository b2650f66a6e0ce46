// The optimistic layer (Replica) without a network: the cases DESIGN.md lists
// for the client — writes shown at once, retired by their delta, rolled back
// when refused, dependent writes, reconnect and resend, incremental states, gaps.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MINTED_END, MINTED_MIN, Replica, StatecastError } from '../packages/client/src/replica.js';
import { EPOCH, flush, ids, settle, setup, task } from './helpers.js';

function subscribed(options) {
  const t = setup(options);
  const ctx = t.replica.subscribe('job', 1);
  t.server.state('job/1');
  t.sent.length = 0;
  return { ...t, ctx };
}

const writes = (sent) => sent.filter((f) => f.type === 'write');

const noRid = ({ rid, ...f }) => f;

test('subscribe sends a subscribe frame and the state fills the view in order', async () => {
  const { replica, sent, server } = setup();
  const ctx = replica.subscribe('job', 1);
  assert.deepEqual(sent.map(noRid), [{ type: 'subscribe', channel: 'job', anchorId: 1 }]);
  assert.ok(sent.every((f) => Number.isInteger(f.rid)), 'every subscribe carries a rid');
  assert.equal(ctx.status, 'loading');
  server.state('job/1');
  assert.equal(ctx.status, 'ready');
  assert.equal(await ctx.ready, ctx);
  assert.deepEqual(ids(ctx), ['Job:1', 'Task:1', 'Task:2', 'Task:3']);
  assert.equal(ctx.get('Task', 2).name, 'Task 2');
  assert.equal(ctx.get('Task', 2)._key, 2);
  assert.equal(ctx.isPending('Task', 2), false);
  const tree = ctx.tree();
  assert.equal(tree.row.id, 1);
  assert.deepEqual(tree.children.tasks.map((n) => n.row.id), [1, 2, 3]);
});

test('a save shows at once, pending, and its delta retires it in the same step', async () => {
  const { replica, ctx, sent, server } = subscribed();
  const events = [];
  ctx.onChange((e) => events.push(e));
  const h = ctx.save('Task', 1, { status: 'doing' });
  assert.equal(ctx.get('Task', 1).status, 'doing');
  assert.equal(ctx.isPending('Task', 1), true);
  assert.deepEqual(writes(sent), [
    { type: 'write', writeId: h.writeId, context: 'job/1', operation: 'save', instanceType: 'Task', instanceId: 1, data: { status: 'doing' } },
  ]);
  assert.equal(events.at(-1).cause, 'write');
  assert.deepEqual(events.at(-1).updated.map((r) => r.id), [1]);

  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 1, status: 'doing' }], { writeId: h.writeId });
  assert.equal(ctx.get('Task', 1).status, 'doing');
  assert.equal(ctx.isPending('Task', 1), false, 'retired by its delta before the response');
  assert.equal(ctx.get('Task', 1)._version, server.seq);
  server.ok(h.writeId);
  const result = await h;
  assert.equal(result.seq, server.seq);
  assert.equal(replica.queue.length, 0);
});

test('a refused save shows the canonical fields and rejects with code, reason and message', async () => {
  const { ctx, server } = subscribed();
  const h = ctx.save('Task', 1, { name: 'Mine' });
  assert.equal(ctx.get('Task', 1).name, 'Mine');
  server.refuse(h.writeId, 403, 'DENIED', 'alice may change status and notes only');
  assert.equal(ctx.get('Task', 1).name, 'Task 1');
  assert.equal(ctx.isPending('Task', 1), false);
  const err = await h.catch((e) => e);
  assert.ok(err instanceof StatecastError);
  assert.equal(err.code, 403);
  assert.equal(err.reason, 'DENIED');
  assert.equal(err.message, 'alice may change status and notes only');
  assert.equal(err.writeId, h.writeId);
});

test("another user's change during a pending save is kept, and shows after the save is refused", async () => {
  const { ctx, server } = subscribed();
  const h = ctx.save('Task', 1, { name: 'Mine' });
  // bob changes the name and the status while alice's save is in flight
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 1, name: 'Bobs', status: 'done' }]);
  assert.equal(ctx.get('Task', 1).name, 'Mine', 'the pending save is replayed over the new canonical row');
  assert.equal(ctx.get('Task', 1).status, 'done', "bob's other field shows at once");
  server.refuse(h.writeId);
  await settle(h);
  assert.equal(ctx.get('Task', 1).name, 'Bobs', "the rollback shows bob's value, not a snapshot");
  assert.equal(ctx.get('Task', 1).status, 'done');
});

test('a create (client-minted id) appears at once at the end and keeps its key when confirmed', async () => {
  const { ctx, sent, server } = subscribed();
  const h = ctx.create('Task', { name: 'New' });
  assert.ok(h.id >= MINTED_MIN && h.id < MINTED_END && Number.isInteger(h.id), `${h.id}`);
  assert.deepEqual(ids(ctx), ['Job:1', 'Task:1', 'Task:2', 'Task:3', `Task:${h.id}`]);
  const ghost = ctx.get('Task', h.id);
  assert.equal(ghost._pending, true);
  assert.equal(ghost.job, 1);
  assert.equal(ghost.status, 'todo', 'defaults from the schema');
  assert.equal(ghost.created_by, 1, 'server-set user id filled with the signed-in user');
  const frame = writes(sent)[0];
  assert.equal(frame.operation, 'create');
  assert.equal(frame.instanceId, h.id);
  assert.deepEqual([frame.parentType, frame.parentId, frame.relationName], ['Job', 1, 'tasks']);
  assert.deepEqual(frame.data, { name: 'New' });

  server.delta('job/1', [{ op: 'create', ...task(h.id, 1, { name: 'New' }) }], {
    writeId: h.writeId,
    created: [{ _type: 'Task', id: h.id }],
  });
  assert.deepEqual(ids(ctx), ['Job:1', 'Task:1', 'Task:2', 'Task:3', `Task:${h.id}`]);
  assert.equal(ctx.get('Task', h.id)._pending, false);
  assert.equal(ctx.get('Task', h.id)._key, h.id);
  server.ok(h.writeId, { created: [{ _type: 'Task', id: h.id }], instanceId: h.id });
  assert.equal((await h).id, h.id);
});

test('a temp id is swapped in place: same key and position, never both rows or neither', async () => {
  const { ctx, server } = subscribed({ ids: 'temp' });
  const seen = [];
  ctx.onChange(() => seen.push(ctx.rows('Task').map((r) => `${r.id}/${r._key}`)));
  const h = ctx.create('Task', { name: 'Temp' });
  const h2 = ctx.create('Task', { name: 'After' });
  assert.equal(h.id, -1);
  assert.equal(h2.id, -2);
  server.delta('job/1', [{ op: 'create', ...task(40, 1, { name: 'Temp' }) }], {
    writeId: h.writeId,
    created: [{ _type: 'Task', tempId: -1, id: 40 }],
  });
  assert.deepEqual(ctx.rows('Task').map((r) => `${r.id}/${r._key}`), ['1/1', '2/2', '3/3', '40/-1', '-2/-2']);
  assert.equal(ctx.get('Task', -1).id, 40, 'the temp id still finds its row');
  assert.equal(ctx.get('Task', 40)._pending, false);
  server.ok(h.writeId, { created: [{ _type: 'Task', tempId: -1, id: 40 }], instanceId: 40 });
  assert.equal((await h).id, 40);
  for (const view of seen) {
    const rows = view.filter((r) => r.endsWith('/-1'));
    assert.equal(rows.length, 1, `exactly one row for key -1 in ${view}`);
  }
});

test('a refused create disappears', async () => {
  const { ctx, server } = subscribed();
  const h = ctx.create('Task', { name: 'Sneaky' });
  assert.equal(ctx.rows('Task').length, 4);
  server.refuse(h.writeId, 403, 'DENIED');
  assert.deepEqual(ids(ctx, 'Task'), ['Task:1', 'Task:2', 'Task:3']);
  assert.equal((await settle(h)).error.reason, 'DENIED');
});

test('a delete hides the row; refused, the row is back at its position', async () => {
  const { ctx, server } = subscribed();
  const events = [];
  ctx.onChange((e) => events.push(e));
  const h = ctx.delete('Task', 2);
  assert.deepEqual(ids(ctx, 'Task'), ['Task:1', 'Task:3']);
  assert.deepEqual(events.at(-1).removed.map((r) => r.id), [2]);
  server.refuse(h.writeId, 403, 'DENIED');
  assert.deepEqual(ids(ctx, 'Task'), ['Task:1', 'Task:2', 'Task:3']);
  assert.deepEqual(events.at(-1).added.map((r) => r.id), [2]);
  assert.equal(events.at(-1).cause, 'reject');
  await settle(h);
});

test('a confirmed delete is retired by its delta', async () => {
  const { replica, ctx, server } = subscribed();
  const h = ctx.delete('Task', 2);
  server.delta('job/1', [{ op: 'delete', _type: 'Task', id: 2 }], { writeId: h.writeId });
  server.ok(h.writeId);
  await h;
  assert.deepEqual(ids(ctx, 'Task'), ['Task:1', 'Task:3']);
  assert.equal(replica.queue.length, 0);
});

test('writes that depend on a refused create carry `after` and are refused with it', async () => {
  const { ctx, sent, server } = subscribed();
  const c = ctx.create('Task', { name: 'Parent' });
  const s = ctx.save('Task', c.id, { status: 'doing' });
  const d = ctx.delete('Task', c.id);
  const other = ctx.save('Task', 1, { status: 'done' });
  const frames = writes(sent);
  assert.deepEqual(frames[1].after, [c.writeId]);
  assert.deepEqual(frames[2].after, [c.writeId]);
  assert.equal(frames[3].after, undefined);
  server.refuse(c.writeId, 403, 'DENIED');
  const [rc, rs, rd] = await Promise.all([settle(c), settle(s), settle(d)]);
  assert.equal(rc.error.reason, 'DENIED');
  for (const r of [rs, rd]) {
    assert.equal(r.ok, false);
    assert.equal(r.error.code, 400);
    assert.equal(r.error.reason, 'DEPENDENCY_FAILED');
  }
  assert.equal(ctx.get('Task', c.id), undefined);
  assert.equal(ctx.get('Task', 1).status, 'done', 'an unrelated write stays');
  // The server refuses the dependents too; their answers find nothing to settle.
  server.refuse(s.writeId, 400, 'DEPENDENCY_FAILED');
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 1, status: 'done' }], { writeId: other.writeId });
  server.ok(other.writeId);
  await other;
});

test('with temp ids, a write naming an unconfirmed temp id waits, then goes out with the real id', async () => {
  const { ctx, sent, server } = subscribed({ ids: 'temp' });
  const c = ctx.create('Task', { name: 'T' });
  const s = ctx.save('Task', c.id, { notes: 'n' });
  assert.equal(ctx.get('Task', -1).notes, 'n', 'both shown at once');
  assert.equal(writes(sent).length, 1, 'the save waits for the temp id to be mapped');
  server.delta('job/1', [{ op: 'create', ...task(50, 1, { name: 'T' }) }], {
    writeId: c.writeId,
    created: [{ _type: 'Task', tempId: -1, id: 50 }],
  });
  assert.equal(ctx.get('Task', 50).notes, 'n', 'the pending save now replays on the real row');
  server.ok(c.writeId, { created: [{ _type: 'Task', tempId: -1, id: 50 }], instanceId: 50 });
  const frame = writes(sent)[1];
  assert.equal(frame.instanceId, 50);
  assert.deepEqual(frame.after, [c.writeId]);
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 50, notes: 'n' }], { writeId: s.writeId });
  server.ok(s.writeId);
  await Promise.all([c, s]);
  assert.equal(ctx.get('Task', -1)._key, -1);
});

test('a batch is one write; a later op may name an earlier create', async () => {
  const { ctx, sent, server } = subscribed({ ids: 'temp' });
  const h = ctx.batch((b) => {
    const id = b.create('Task', { name: 'B1' });
    b.save('Task', id, { status: 'done' });
    b.delete('Task', 3);
  });
  assert.deepEqual(h.ids, [-1]);
  assert.equal(ctx.get('Task', -1).status, 'done');
  assert.equal(ctx.get('Task', 3), undefined);
  const f = writes(sent)[0];
  assert.equal(f.operation, 'batch');
  assert.equal(f.ops.length, 3);
  assert.equal(f.ops[1].instanceId, -1, 'the batch names its own temp id');
  server.refuse(h.writeId, 400, 'INVALID_DATA');
  assert.equal(ctx.get('Task', -1), undefined);
  assert.ok(ctx.get('Task', 3));
  assert.equal((await settle(h)).error.reason, 'INVALID_DATA');
});

test('a write that changes nothing is retired by its writeResponse', async () => {
  const { replica, ctx, server } = subscribed();
  const h = ctx.save('Task', 1, { status: 'todo' });
  assert.equal(ctx.isPending('Task', 1), true);
  server.ok(h.writeId);
  await h;
  assert.equal(ctx.isPending('Task', 1), false);
  assert.equal(replica.queue.length, 0);
});

test('optimistic: false shows nothing until the server confirms', async () => {
  const { ctx, server } = subscribed();
  const h = ctx.save('Task', 1, { status: 'done' }, { optimistic: false });
  assert.equal(ctx.get('Task', 1).status, 'todo');
  assert.equal(ctx.isPending('Task', 1), false);
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 1, status: 'done' }], { writeId: h.writeId });
  server.ok(h.writeId);
  await h;
  assert.equal(ctx.get('Task', 1).status, 'done');
});

test("someone else's delete under a pending save or create: no effect, hidden, still pending", async () => {
  const { ctx, server } = subscribed();
  const s = ctx.save('Task', 2, { notes: 'x' });
  server.delta('job/1', [{ op: 'delete', _type: 'Task', id: 2 }]);
  assert.equal(ctx.get('Task', 2), undefined, 'a save whose target is gone shows nothing');
  server.refuse(s.writeId, 400, 'NOT_FOUND');
  await settle(s);

  const t = setup();
  const job1 = t.replica.subscribe('job', 1);
  t.server.state('job/1');
  const c = job1.create('Task', { name: 'Orphan' });
  assert.ok(job1.get('Task', c.id));
  t.server.delta('job/1', [{ op: 'delete', _type: 'Job', id: 1 }]);
  assert.equal(job1.get('Task', c.id), undefined, 'a create whose parent is gone is hidden');
  assert.equal(t.replica.pendingWrites().length, 1, 'and stays pending until answered');
  t.server.refuse(c.writeId, 400, 'NOT_FOUND');
  await settle(c);
});

test('a pending save that changes the parent moves the row between views', async () => {
  const t = setup();
  const j1 = t.replica.subscribe('job', 1);
  const j2 = t.replica.subscribe('job', 2);
  t.server.state('job/1');
  t.server.state('job/2');
  const h = j1.save('Task', 1, { job: 2 });
  assert.equal(j1.get('Task', 1), undefined);
  assert.equal(j2.get('Task', 1).job, 2);
  assert.equal(j2.get('Task', 1)._pending, true);
  t.server.refuse(h.writeId, 403, 'DENIED');
  await settle(h);
  assert.equal(j1.get('Task', 1).job, 1);
  assert.equal(j2.get('Task', 1), undefined);
});

test('a timeout rejects the handle with TIMEOUT; the write stays queued and pending until the server answers', async () => {
  const { replica, ctx, clock, server, sent } = subscribed({ writeTimeout: 5_000 });
  replica.disconnected();
  const h = ctx.save('Task', 1, { status: 'done' });
  clock.advance(4_999);
  assert.equal(replica.pendingWrites().length, 1);
  clock.advance(1);
  const r = await settle(h);
  assert.equal(r.error.code, 408);
  assert.equal(r.error.reason, 'TIMEOUT');
  assert.match(r.error.message, /stays queued/);
  assert.equal(ctx.get('Task', 1).status, 'done', 'still shown: it may yet be applied');
  assert.equal(ctx.get('Task', 1)._pending, true);
  assert.equal(replica.pendingWrites().length, 1);
  sent.length = 0;
  replica.connected(server.welcome());
  const resent = writes(sent);
  assert.deepEqual(resent.map((w) => w.writeId), [h.writeId], 'resent with its writeId after the reconnect');
  server.state();
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 1, status: 'done' }], { writeId: h.writeId });
  server.ok(h.writeId);
  assert.equal(ctx.get('Task', 1).status, 'done');
  assert.equal(ctx.get('Task', 1)._pending, false);
  assert.equal(replica.pendingWrites().length, 0);
});

test('writes made while offline queue, show, and go out in order after the welcome', async () => {
  const { replica, ctx, sent, server } = subscribed();
  replica.disconnected();
  const a = ctx.save('Task', 1, { status: 'doing' });
  const b = ctx.create('Task', { name: 'Offline' });
  assert.equal(writes(sent).length, 0);
  assert.equal(ctx.get('Task', 1).status, 'doing');
  replica.connected(server.welcome());
  assert.deepEqual(
    sent.map((f) => f.type),
    ['subscribe', 'write', 'write'],
    'resubscribe first, then the writes without waiting for the state',
  );
  assert.deepEqual(writes(sent).map((f) => f.writeId), [a.writeId, b.writeId]);
  assert.equal(sent[0].since, 10);
  assert.equal(sent[0].epoch, EPOCH);
});

test("reconnect: hello's pending, retire what welcome.applied reports, resend the rest with their writeIds", async () => {
  const { replica, ctx, sent, server } = subscribed();
  const a = ctx.save('Task', 1, { status: 'doing' });
  const b = ctx.save('Task', 2, { status: 'done' });
  // a was applied (seq 11) but the connection died before its delta and answer
  server.seq += 1;
  server.rows.set('Task:1', { ...server.rows.get('Task:1'), status: 'doing', _version: server.seq });
  replica.disconnected();
  assert.deepEqual(replica.pendingWriteIds(), [a.writeId, b.writeId]);
  sent.length = 0;
  replica.connected(server.welcome([{ writeId: a.writeId, seq: 11 }]));
  const ra = await a;
  assert.equal(ra.duplicate, true);
  assert.equal(ra.seq, 11);
  assert.equal(ctx.get('Task', 1).status, 'doing', 'still shown until the state includes it');
  assert.deepEqual(sent.map((f) => f.type), ['subscribe', 'write']);
  assert.equal(sent[1].writeId, b.writeId, 'the original writeId');
  // the incremental state: task 1 changed at seq 11
  replica.receive({
    type: 'state',
    context: 'job/1',
    channel: 'job',
    anchorId: 1,
    epoch: EPOCH,
    seq: 11,
    incremental: true,
    instances: [server.rows.get('Task:1')],
    removed: [],
  });
  server.prev.set('job/1', 11);
  assert.equal(ctx.get('Task', 1).status, 'doing');
  assert.equal(ctx.get('Task', 1)._pending, false, 'retired by the state that includes it');
  assert.equal(ctx.get('Task', 2)._pending, true);
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 2, status: 'done' }], { writeId: b.writeId });
  server.ok(b.writeId);
  await b;
  assert.equal(replica.queue.length, 0);
});

test('an incremental state updates changed rows in place, appends joined rows and drops removed ones', () => {
  const { replica, ctx } = subscribed();
  replica.disconnected();
  replica.connected({ type: 'welcome', epoch: EPOCH, applied: [] });
  replica.receive({
    type: 'state',
    context: 'job/1',
    channel: 'job',
    anchorId: 1,
    epoch: EPOCH,
    seq: 15,
    incremental: true,
    instances: [task(1, 1, { name: 'Renamed', _version: 12 }), task(9, 1, { _version: 14 })],
    removed: [{ _type: 'Task', id: 2 }],
  });
  assert.deepEqual(ids(ctx), ['Job:1', 'Task:1', 'Task:3', 'Task:9']);
  assert.equal(ctx.get('Task', 1).name, 'Renamed');
  assert.equal(ctx.seq, 15);
});

test('a new epoch asks for a whole state (no since)', () => {
  const { replica, sent, server } = subscribed();
  replica.disconnected();
  server.epoch = 'epoch-2';
  replica.connected(server.welcome());
  assert.deepEqual(sent.map(noRid), [{ type: 'subscribe', channel: 'job', anchorId: 1 }]);
  assert.ok(sent.every((f) => Number.isInteger(f.rid)), 'every subscribe carries a rid');
});

test('a gap in prev resubscribes with since, ignores deltas until the state, then goes on', () => {
  const { ctx, sent, server } = subscribed();
  server.prev.set('job/1', 99); // the next delta names a prev the client never saw
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 1, name: 'Lost' }]);
  assert.deepEqual(sent.map(noRid), [{ type: 'subscribe', channel: 'job', anchorId: 1, since: 10, epoch: EPOCH }]);
  assert.equal(ctx.get('Task', 1).name, 'Task 1', 'the gapped delta is not applied');
  assert.equal(ctx.status, 'loading');
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 2, name: 'Ignored' }]);
  assert.equal(ctx.get('Task', 2).name, 'Task 2', 'deltas before the state are covered by it');
  server.state('job/1');
  assert.equal(ctx.get('Task', 1).name, 'Lost');
  assert.equal(ctx.get('Task', 2).name, 'Ignored');
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 3, name: 'Next' }]);
  assert.equal(ctx.get('Task', 3).name, 'Next');
});

test('a change applies to a row only if its seq is above the row version', () => {
  const { ctx, replica } = subscribed();
  replica.receive({
    type: 'delta',
    context: 'job/1',
    seq: 11,
    prev: 10,
    changes: [{ op: 'update', _type: 'Task', id: 1, _version: 11, name: 'New' }],
  });
  // an incremental state at seq 11 carrying an older copy of the row does not win
  replica.receive({
    type: 'state',
    context: 'job/1',
    channel: 'job',
    anchorId: 1,
    epoch: EPOCH,
    seq: 11,
    incremental: true,
    instances: [task(1, 1, { name: 'Old', _version: 5 })],
  });
  assert.equal(ctx.get('Task', 1).name, 'New');
  // a delete of an unknown row is ignored
  replica.receive({ type: 'delta', context: 'job/1', seq: 12, prev: 11, changes: [{ op: 'delete', _type: 'Task', id: 77, _version: 12 }] });
  assert.equal(ctx.seq, 12);
});

test('a multi-part state is applied at its last part, at once', () => {
  const { replica, server } = setup();
  const ctx = replica.subscribe('job', 1);
  const rows = server.contextRows('job/1');
  const base = { type: 'state', context: 'job/1', channel: 'job', anchorId: 1, epoch: EPOCH, seq: 10 };
  replica.receive({ ...base, part: 0, instances: rows.slice(0, 2) });
  assert.equal(ctx.status, 'loading');
  assert.deepEqual(ctx.rows(), []);
  replica.receive({ ...base, part: 1, instances: rows.slice(2), last: true });
  assert.equal(ctx.status, 'ready');
  assert.deepEqual(ids(ctx), ['Job:1', 'Task:1', 'Task:2', 'Task:3']);
});

test('OUTCOME_UNKNOWN keeps the write pending and sends it again with the same writeId', async () => {
  const { ctx, sent, server, clock } = subscribed();
  const h = ctx.save('Task', 1, { status: 'done' });
  server.refuse(h.writeId, 503, 'OUTCOME_UNKNOWN', 'the store failed');
  assert.equal(ctx.get('Task', 1).status, 'done', 'still shown');
  clock.advance(1_000);
  const frames = writes(sent);
  assert.equal(frames.length, 2);
  assert.equal(frames[1].writeId, h.writeId);
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 1, status: 'done' }], { writeId: h.writeId });
  server.ok(h.writeId);
  await h;
});

test('unsubscribed: the view empties, unsent writes fail with CONTEXT_CLOSED, sent ones settle by their answer', async () => {
  const { replica, ctx, sent, server } = subscribed({ ids: 'temp' });
  const create = ctx.create('Task', { name: 'On the wire' });
  const unsent = ctx.save('Task', create.id, { notes: 'waits for the temp id' });
  assert.equal(writes(sent).length, 1);
  const closed = [];
  ctx.onChange((e) => closed.push(e));
  replica.receive({ type: 'unsubscribed', context: 'job/1', reason: 'ANCHOR_DELETED' });
  assert.equal(ctx.status, 'closed');
  assert.equal(ctx.closeReason, 'ANCHOR_DELETED');
  assert.deepEqual(ctx.rows(), []);
  assert.equal(closed.at(-1).cause, 'closed');
  const r = await settle(unsent);
  assert.equal(r.error.code, 410);
  assert.equal(r.error.reason, 'CONTEXT_CLOSED');
  server.ok(create.writeId, { created: [{ _type: 'Task', tempId: -1, id: 60 }], instanceId: 60 });
  assert.equal((await create).id, 60);
  assert.equal(replica.queue.length, 0);
});

test('a subscribe refused by the server rejects ready with its code', async () => {
  const { replica } = setup();
  const ctx = replica.subscribe('job', 99);
  replica.receive({ type: 'error', code: 404, reason: 'ANCHOR_NOT_FOUND', message: 'no Job 99', context: 'job/99' });
  const err = await ctx.ready.catch((e) => e);
  assert.equal(err.code, 404);
  assert.equal(err.reason, 'ANCHOR_NOT_FOUND');
  assert.equal(ctx.status, 'closed');
  const w = await settle(ctx.save('Task', 1, { notes: 'x' }));
  assert.equal(w.error.reason, 'CONTEXT_CLOSED');
});

test('change events name what changed, and unchanged rows keep their identity', () => {
  const { ctx, server } = subscribed();
  const before = ctx.get('Task', 2);
  const events = [];
  ctx.onChange((e) => events.push(e));
  server.delta('job/1', [
    { op: 'update', _type: 'Task', id: 1, status: 'done' },
    { op: 'create', ...task(8, 1) },
    { op: 'delete', _type: 'Task', id: 3 },
  ]);
  assert.equal(events.length, 1);
  const e = events[0];
  assert.equal(e.context, 'job/1');
  assert.equal(e.cause, 'delta');
  assert.deepEqual(e.updated.map((r) => r.id), [1]);
  assert.deepEqual(e.added.map((r) => r.id), [8]);
  assert.deepEqual(e.removed.map((r) => r.id), [3]);
  assert.equal(ctx.get('Task', 2), before, 'untouched rows are the same objects');
  assert.ok(Object.isFrozen(before));
});

test('the pending queue is one for the whole client, in order across contexts', async () => {
  const t = setup();
  const j1 = t.replica.subscribe('job', 1);
  const j2 = t.replica.subscribe('job', 2);
  t.server.state('job/1');
  t.server.state('job/2');
  t.sent.length = 0;
  const a = j1.save('Task', 1, { status: 'done' });
  const b = j2.save('Task', 4, { status: 'done' });
  const c = j1.save('Task', 2, { status: 'done' });
  assert.deepEqual(t.replica.pendingWrites().map((w) => [w.writeId, w.context]), [
    [a.writeId, 'job/1'],
    [b.writeId, 'job/2'],
    [c.writeId, 'job/1'],
  ]);
  assert.deepEqual(writes(t.sent).map((f) => f.writeId), [1, 2, 3]);
  for (const h of [a, b, c]) t.server.ok(h.writeId);
  await Promise.all([a, b, c]);
  await flush();
});

test('with storage, unanswered writes survive a restart: same clientId, resent with their writeIds', async () => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const first = setup({ storage, clientId: undefined });
  const ctx = first.replica.subscribe('job', 1);
  first.server.state('job/1');
  const sent = ctx.save('Task', 1, { status: 'doing' }); // on the wire when the app dies
  first.replica.disconnected();
  const offline = ctx.create('Task', { name: 'Made offline' }); // never sent
  void sent.catch(() => {});
  void offline.catch(() => {});
  const clientId = first.replica.clientId;

  // The app restarts: a new replica on the same storage. Its hello names only the write that may have reached the server.
  assert.deepEqual(new Replica({ storage }).pendingWriteIds(), [sent.writeId]);
  const again = setup({ storage, clientId: undefined });
  assert.equal(again.replica.clientId, clientId);
  const restored = again.replica.contexts.get('job/1');
  assert.ok(restored, 'the writes subscribe their context');
  assert.deepEqual(again.sent.filter((f) => f.type === 'write').map((f) => f.writeId), [sent.writeId, offline.writeId]);
  again.server.state('job/1');
  assert.equal(restored.get('Task', 1).status, 'doing');
  assert.equal(restored.get('Task', offline.id).name, 'Made offline');
  const next = restored.save('Task', 2, { notes: 'new' });
  assert.equal(next.writeId, offline.writeId + 1, 'the writeId counter goes on');
  for (const w of [sent, offline, next]) again.server.ok(w.writeId);
  assert.deepEqual(again.replica.pendingWrites(), []);
  assert.deepEqual(JSON.parse(store.get('statecast')).writes, [], 'answered writes leave the storage');
  await flush();
});

test('restored writes of another user are refused, never sent under the new token', async () => {
  const store = new Map();
  const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v) };
  const first = setup({ storage, clientId: undefined });
  const ctx = first.replica.subscribe('job', 1);
  first.server.state('job/1');
  first.replica.disconnected();
  ctx.save('Task', 1, { status: 'done' }).catch(() => {});

  const events = [];
  const again = new Replica({ storage, send: (f) => events.push(f) });
  again.onWrite((w) => events.push(w));
  again.connected({ type: 'welcome', user: { id: 2, name: 'bob' }, schema: first.replica.schema, epoch: EPOCH, applied: [] });
  assert.deepEqual(events.filter((f) => f.type === 'write'), []);
  const refused = events.find((e) => e.status === 'refused');
  assert.equal(refused.error.reason, 'USER_CHANGED');
  assert.deepEqual(again.pendingWrites(), []);
});

test('a confirmed write stays shown in a context still loading until its state reaches the seq', async () => {
  const { replica, ctx, server } = subscribed();
  const h = ctx.save('Task', 1, { notes: 'mine' });
  server.prev.set('job/1', 99);
  server.delta('job/1', [{ op: 'update', _type: 'Task', id: 2, notes: 'gap' }]); // a gap: job/1 resubscribes
  assert.equal(ctx.status, 'loading');
  // the write commits; its delta is dropped (the state will cover it); the answer arrives
  server.seq += 1;
  server.rows.set('Task:1', { ...server.rows.get('Task:1'), notes: 'mine', _version: server.seq });
  server.ok(h.writeId);
  await h;
  assert.equal(ctx.get('Task', 1).notes, 'mine', 'still shown over the stale canonical row');
  assert.equal(ctx.isPending('Task', 1), true);
  assert.equal(replica.queue.length, 1, 'kept until the context catches up');
  server.state('job/1');
  assert.equal(ctx.get('Task', 1).notes, 'mine');
  assert.equal(ctx.isPending('Task', 1), false);
  assert.equal(replica.queue.length, 0);
});
