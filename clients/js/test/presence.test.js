// Presence per context without a network: the state's list, the server's
// presence messages (set, update, clear, left), this client's own presence
// (sent once the context is ready, at most 20 frames a second with the
// latest data last, sent again after a reconnect), the size check, the list
// emptied when a context closes or the connection drops, refusals; then the
// StatecastClient over a fake socket, TabClient tabs over a fake
// BroadcastChannel, and the React and Svelte bindings.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createElement as h, StrictMode, act } from 'react';
import TestRenderer from 'react-test-renderer';
import { get } from 'svelte/store';
import { MAX_PRESENCE_BYTES, PRESENCE_RATE, StatecastClient, StatecastError, TabClient } from '../packages/client/src/statecast.js';
import { StatecastProvider, usePresence } from '@statecast/react';
import { presenceStore } from '@statecast/svelte';
import { EPOCH, schema, setup, task } from './helpers.js';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;

const bob = { id: 2, name: 'bob' };
const carol = { id: 3, name: 'carol' };
const entry = (connectionId, user, data) => ({ connectionId, user, data });
const presenceMsg = (connectionId, user, data, extra = {}) => ({ type: 'presence', context: 'job/1', connectionId, user, data, ...extra });
const presenceFrames = (sent) => sent.filter((f) => f.type === 'presence');
const noRid = ({ rid, ...f }) => f;

/** A replica with job/1 subscribed and ready, its presence events recorded, `wake` calls recorded. */
function ready(stateExtra = {}) {
  const wakes = [];
  const t = setup({ wake: (ms) => wakes.push(ms) });
  const ctx = t.replica.subscribe('job', 1);
  const events = [];
  ctx.onPresence((e) => events.push(e));
  t.server.state('job/1', stateExtra);
  t.sent.length = 0;
  return { ...t, ctx, events, wakes };
}

test("the state's presence list fills presence(); a missing key is an empty list", () => {
  const { replica, server } = setup();
  const ctx = replica.subscribe('job', 1);
  assert.deepEqual(ctx.presence(), []);
  const events = [];
  ctx.onPresence((e) => events.push(e));
  server.state('job/1', { presence: [entry('c2', bob, { editing: 1 }), entry('c3', carol, { cursor: [1, 2] })] });
  assert.deepEqual(ctx.presence(), [entry('c2', bob, { editing: 1 }), entry('c3', carol, { cursor: [1, 2] })]);
  assert.ok(Object.isFrozen(ctx.presence()) && Object.isFrozen(ctx.presence()[0]));
  assert.equal(ctx.presence(), ctx.presence(), 'the same array until something changes');
  assert.deepEqual(events.map((e) => [e.context, e.cause, e.presence.length, e.entry]), [['job/1', 'state', 2, null]]);

  // Another context's state without a presence key: none.
  const other = replica.subscribe('job', 2);
  server.state('job/2');
  assert.deepEqual(other.presence(), []);
  // A later (incremental) state of job/1 replaces the whole list: without the key, it empties.
  server.state('job/1', { incremental: true, removed: [] });
  assert.deepEqual(ctx.presence(), []);
  assert.deepEqual(events.map((e) => e.cause), ['state', 'state']);
});

test('an incremental state carries the whole current list and replaces the one held', () => {
  const { ctx, server, events } = ready({ presence: [entry('c2', bob, { a: 1 }), entry('c3', carol, { b: 1 })] });
  server.state('job/1', { incremental: true, removed: [], presence: [entry('c3', carol, { b: 2 })] });
  assert.deepEqual(ctx.presence(), [entry('c3', carol, { b: 2 })]);
  assert.equal(events.at(-1).cause, 'state');
});

test('presence messages add, update in place, clear and remove on left; unknown contexts are ignored', () => {
  const { replica, ctx, events } = ready();
  const changes = [];
  replica.onPresence((e) => changes.push(`${e.context} ${e.cause} ${e.entry?.connectionId ?? '-'}`));
  replica.receive(presenceMsg('c2', bob, { editing: 1 }));
  replica.receive(presenceMsg('c3', carol, { editing: 2 }));
  assert.deepEqual(ctx.presence(), [entry('c2', bob, { editing: 1 }), entry('c3', carol, { editing: 2 })]);
  const before = ctx.presence();
  replica.receive(presenceMsg('c2', bob, { editing: 3 }));
  assert.notEqual(ctx.presence(), before, 'a new array after a change');
  assert.deepEqual(ctx.presence().map((e) => [e.connectionId, e.data.editing]), [['c2', 3], ['c3', 2]], 'an update keeps its place');
  replica.receive(presenceMsg('c2', bob, null));
  assert.deepEqual(ctx.presence().map((e) => e.connectionId), ['c3']);
  replica.receive(presenceMsg('c2', bob, { editing: 4 }));
  assert.deepEqual(ctx.presence().map((e) => e.connectionId), ['c3', 'c2'], 'back after a clear: at the end');
  replica.receive(presenceMsg('c3', carol, null, { left: true }));
  assert.deepEqual(ctx.presence(), [entry('c2', bob, { editing: 4 })]);
  // Nothing to remove, and a context not held: no change, no event.
  replica.receive(presenceMsg('c9', bob, null, { left: true }));
  replica.receive({ ...presenceMsg('c5', bob, { x: 1 }), context: 'job/7' });
  assert.deepEqual(changes, ['job/1 set c2', 'job/1 set c3', 'job/1 set c2', 'job/1 cleared c2', 'job/1 set c2', 'job/1 left c3']);
  assert.deepEqual(events.map((e) => e.cause), ['set', 'set', 'set', 'cleared', 'set', 'left']);
  assert.deepEqual(events[3].entry, entry('c2', bob, { editing: 3 }), 'a clear names the entry it removed');
});

test('a state in parts: the presence of part 0 applies at once, later messages are kept, the rows at the last part', () => {
  const { replica, server } = setup();
  const ctx = replica.subscribe('job', 1);
  const rows = server.contextRows('job/1');
  const base = { type: 'state', context: 'job/1', channel: 'job', anchorId: 1, epoch: EPOCH, seq: server.seq };
  replica.receive({ ...base, part: 0, instances: rows.slice(0, 2), presence: [entry('c2', bob, { a: 1 })] });
  assert.deepEqual(ctx.presence(), [entry('c2', bob, { a: 1 })]);
  assert.equal(ctx.status, 'loading');
  replica.receive(presenceMsg('c3', carol, { b: 1 }));
  replica.receive({ ...base, part: 1, last: true, instances: rows.slice(2) });
  assert.equal(ctx.status, 'ready');
  assert.equal(ctx.rows().length, rows.length);
  assert.deepEqual(ctx.presence().map((e) => e.connectionId), ['c2', 'c3'], 'the later part did not reset the list');
});

test('setPresence sends a presence frame once the context is ready; myPresence is a copy; the same data again sends nothing', () => {
  const { replica, sent, server } = setup();
  const ctx = replica.subscribe('job', 1);
  const events = [];
  ctx.onPresence((e) => events.push(e.cause));
  const data = { editing: 1 };
  ctx.setPresence(data);
  data.editing = 99;
  assert.deepEqual(ctx.myPresence, { editing: 1 });
  assert.deepEqual(presenceFrames(sent), [], 'not before the state: the server would refuse it');
  server.state('job/1');
  assert.deepEqual(presenceFrames(sent).map(noRid), [{ type: 'presence', context: 'job/1', data: { editing: 1 } }]);
  assert.ok(Number.isInteger(presenceFrames(sent)[0].rid));
  ctx.setPresence({ editing: 1 });
  assert.equal(presenceFrames(sent).length, 1);
  assert.deepEqual(events, ['self']);
});

test('setting and clearing before the state sends nothing at all', () => {
  const { replica, sent, server } = setup();
  const ctx = replica.subscribe('job', 1);
  ctx.setPresence({ editing: 1 });
  ctx.setPresence(null);
  server.state('job/1');
  assert.deepEqual(presenceFrames(sent), []);
  assert.equal(ctx.myPresence, null);
});

test('coalescing: at most 20 frames a second, each context its latest data, the last value always goes out', () => {
  const { ctx, sent, clock, wakes, replica } = ready();
  assert.equal(PRESENCE_RATE, 20);
  const start = replica.now();
  const at = [];
  const origSend = replica.transmit;
  replica.transmit = (f) => {
    if (f.type === 'presence') at.push(replica.now() - start);
    origSend(f);
  };
  // A pointer moving every 2 ms for one second: 500 calls.
  for (let i = 1; i <= 500; i++) {
    ctx.setPresence({ x: i });
    clock.advance(2);
  }
  clock.advance(100);
  const now = replica.now() - start;
  const frames = presenceFrames(sent);
  assert.ok(frames.length <= 21 && frames.length >= 19, `about 20 frames in that second: ${frames.length}`);
  for (let i = 1; i < at.length; i++) assert.ok(at[i] - at[i - 1] >= 50, `frames 50 ms apart at least: ${at}`);
  for (let start = 0; start <= now; start += 2) {
    assert.ok(at.filter((t) => t >= start && t < start + 1000).length <= 20, 'never more than 20 in a second');
  }
  assert.deepEqual(frames[0].data, { x: 1 }, 'the first goes at once');
  assert.deepEqual(frames.at(-1).data, { x: 500 }, 'the latest goes last');
  const xs = frames.map((f) => f.data.x);
  assert.deepEqual(xs, [...xs].sort((a, b) => a - b), 'in order');
  assert.ok(wakes.length > 0 && wakes.every((ms) => ms > 0 && ms <= 50), `the driver is asked to come back: ${wakes.slice(0, 5)}`);
  // Nothing more goes out once the latest is sent.
  clock.advance(500);
  assert.equal(presenceFrames(sent).length, frames.length);
});

test('coalescing across contexts: one frame per turn, each context once with its latest data', () => {
  const { replica, sent, server, clock } = setup();
  const one = replica.subscribe('job', 1);
  const two = replica.subscribe('job', 2);
  server.state('job/1');
  server.state('job/2');
  one.setPresence({ v: 1 }); // at once
  two.setPresence({ v: 1 });
  one.setPresence({ v: 2 });
  two.setPresence({ v: 2 });
  one.setPresence({ v: 3 });
  assert.deepEqual(presenceFrames(sent).map((f) => `${f.context}=${f.data.v}`), ['job/1=1']);
  clock.advance(50);
  assert.deepEqual(presenceFrames(sent).map((f) => `${f.context}=${f.data.v}`), ['job/1=1', 'job/2=2'], 'job/2 waited longest');
  clock.advance(50);
  assert.deepEqual(presenceFrames(sent).map((f) => `${f.context}=${f.data.v}`), ['job/1=1', 'job/2=2', 'job/1=3']);
  // Set back to what the server holds before its turn: nothing to send.
  one.setPresence({ v: 4 });
  clock.advance(10);
  one.setPresence({ v: 3 });
  clock.advance(100);
  assert.equal(presenceFrames(sent).length, 3);
});

test('size: 1024 bytes of JSON pass, more throw INVALID_DATA at once (UTF-8 bytes, not characters); non-JSON throws', () => {
  const { ctx, sent } = ready();
  assert.equal(MAX_PRESENCE_BYTES, 1024);
  const exact = 'a'.repeat(1024 - 2); // "…" with its quotes
  ctx.setPresence(exact);
  assert.equal(presenceFrames(sent).length, 1);
  const tooBig = (data) => {
    let err;
    assert.throws(
      () => ctx.setPresence(data),
      (e) => {
        err = e;
        return e instanceof StatecastError;
      },
    );
    return err;
  };
  const e = tooBig({ note: 'x'.repeat(1020) });
  assert.equal(e.code, 400);
  assert.equal(e.reason, 'INVALID_DATA');
  assert.equal(e.field, 'data');
  assert.equal(e.context, 'job/1');
  assert.match(e.message, /1031 bytes.*1024/);
  // 'é' takes two bytes: 512 of them are 1026 bytes with the quotes.
  assert.equal(tooBig('é'.repeat(512)).reason, 'INVALID_DATA');
  ctx.setPresence('é'.repeat(511)); // 1024 bytes
  assert.equal(tooBig(undefined).reason, 'INVALID_DATA');
  assert.equal(tooBig(() => 1).reason, 'INVALID_DATA');
  assert.equal(tooBig({ n: 10n }).reason, 'INVALID_DATA');
  const cyclic = {};
  cyclic.self = cyclic;
  assert.equal(tooBig(cyclic).reason, 'INVALID_DATA');
  assert.equal(ctx.myPresence, 'é'.repeat(511), 'a refused value changes nothing');
});

test('the list empties when the context closes (by the client or the server) and when the connection drops', () => {
  const { replica, ctx, events } = ready({ presence: [entry('c2', bob, { a: 1 })] });
  replica.disconnected();
  assert.deepEqual(ctx.presence(), []);
  assert.equal(events.at(-1).cause, 'disconnected');
  replica.connected({ type: 'welcome', epoch: EPOCH, applied: [] });
  replica.receive({ type: 'state', context: 'job/1', channel: 'job', anchorId: 1, epoch: EPOCH, seq: 10, instances: [], rid: ctx.rid, presence: [entry('c2', bob, { a: 1 })] });
  assert.equal(ctx.presence().length, 1);
  ctx.close();
  assert.deepEqual(ctx.presence(), []);
  assert.equal(events.at(-1).cause, 'closed');
  assert.throws(() => ctx.setPresence({ a: 1 }), (e) => e.code === 410 && e.reason === 'CONTEXT_CLOSED');

  // Revoked by the server.
  const again = replica.subscribe('job', 1);
  replica.receive({ type: 'state', context: 'job/1', channel: 'job', anchorId: 1, epoch: EPOCH, seq: 10, instances: [], rid: again.rid, presence: [entry('c3', carol, { b: 1 })] });
  assert.equal(again.presence().length, 1);
  const causes = [];
  again.onPresence((e) => causes.push(e.cause));
  replica.receive({ type: 'unsubscribed', context: 'job/1', reason: 'REVOKED' });
  assert.equal(again.status, 'closed');
  assert.deepEqual(again.presence(), []);
  assert.deepEqual(causes, ['closed']);
});

test('own presence is sent again after a reconnect, once the state is back; a cleared one is not', () => {
  const { replica, sent, server, clock } = setup();
  const one = replica.subscribe('job', 1);
  const two = replica.subscribe('job', 2);
  server.state('job/1');
  server.state('job/2');
  one.setPresence({ editing: 1 });
  assert.equal(presenceFrames(sent).length, 1);
  two.setPresence({ editing: 2 }); // waits for its turn…
  replica.disconnected(); // …and the connection drops first
  sent.length = 0;
  two.setPresence({ editing: 3 }); // offline: kept
  replica.connected(server.welcome());
  assert.deepEqual(sent.map((f) => f.type), ['subscribe', 'subscribe'], 'subscribes first, no presence before the states');
  server.state('job/1', { rid: one.rid, incremental: true, removed: [] });
  assert.deepEqual(presenceFrames(sent).map(noRid), [{ type: 'presence', context: 'job/1', data: { editing: 1 } }]);
  server.state('job/2', { rid: two.rid });
  // The server forgot the connection's presence: job/2's latest goes when its turn comes.
  const frames = () => presenceFrames(sent).map((f) => `${f.context}=${JSON.stringify(f.data)}`);
  assert.deepEqual(frames(), ['job/1={"editing":1}']);
  one.setPresence(null);
  clock.advance(50);
  assert.deepEqual(frames(), ['job/1={"editing":1}', 'job/2={"editing":3}']);
  clock.advance(50);
  assert.deepEqual(frames(), ['job/1={"editing":1}', 'job/2={"editing":3}', 'job/1=null']);

  // Another drop: job/1 has no presence now, job/2 has one.
  replica.disconnected();
  sent.length = 0;
  replica.connected(server.welcome());
  clock.advance(60);
  server.state('job/1', { rid: one.rid });
  server.state('job/2', { rid: two.rid });
  clock.advance(60);
  assert.deepEqual(frames(), ['job/2={"editing":3}']);
});

test('a gap resubscribe on the same connection sends the presence again after the new state', () => {
  const { ctx, sent, server, replica, clock } = ready();
  ctx.setPresence({ editing: 1 });
  // A delta that skips a seq: the context resubscribes with since.
  replica.receive({ type: 'delta', context: 'job/1', seq: server.seq + 5, prev: server.seq + 4, changes: [] });
  assert.equal(sent.at(-1).type, 'subscribe');
  assert.equal(ctx.status, 'loading');
  sent.length = 0;
  clock.advance(60);
  server.state('job/1', { rid: ctx.rid, incremental: true, removed: [] });
  assert.deepEqual(presenceFrames(sent).map(noRid), [{ type: 'presence', context: 'job/1', data: { editing: 1 } }]);
});

test('a refused presence (NOT_SUBSCRIBED) does not close the context', () => {
  const { ctx, sent, replica } = ready({ presence: [entry('c2', bob, { a: 1 })] });
  ctx.setPresence({ a: 1 });
  const rid = presenceFrames(sent)[0].rid;
  assert.equal(replica.isPresenceError({ type: 'error', rid }), true);
  replica.receive({ type: 'error', code: 400, reason: 'NOT_SUBSCRIBED', message: 'not subscribed', context: 'job/1', rid });
  assert.equal(ctx.status, 'ready');
  assert.equal(ctx.presence().length, 1);
  // A context's own error still closes it.
  replica.receive({ type: 'error', code: 403, reason: 'DENIED', message: 'no', context: 'job/1', rid: ctx.rid });
  assert.equal(ctx.status, 'closed');
});

// ---- StatecastClient over a fake socket -------------------------------------------

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = false;
    FakeSocket.all.push(this);
    setImmediate(() => this.onopen?.());
  }
  send(text) {
    if (this.closed) throw new Error('closed');
    const msg = JSON.parse(text);
    this.sent.push(msg);
    this.onSend?.(msg);
  }
  close() {
    if (this.closed) return;
    this.closed = true;
    setImmediate(() => this.onclose?.({ code: 1000 }));
  }
  deliver(msg) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  drop() {
    this.closed = true;
    this.onclose?.({ code: 1006 });
  }
  static last() {
    return FakeSocket.all.at(-1);
  }
}

const until = async (cond, what) => {
  for (let i = 0; i < 500; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 2));
  }
  assert.fail(`timed out waiting for ${what}`);
};

const welcome = () => ({ type: 'welcome', connectionId: 'c1', user: { id: 1, name: 'alice' }, schema, epoch: EPOCH, applied: [] });
const state = (rid, seq, presence) => ({
  type: 'state',
  rid,
  context: 'job/1',
  channel: 'job',
  anchorId: 1,
  epoch: EPOCH,
  seq,
  instances: [{ _type: 'Job', id: 1, _version: 1, name: 'Launch', project: 1, owner: 1 }, task(1, 1)],
  ...(presence ? { presence } : {}),
});

test('StatecastClient: setPresence, the trailing frame through its timer, re-sent after a reconnect, refusals on `error`', async () => {
  FakeSocket.all = [];
  const client = new StatecastClient({ url: 'ws://test/ws', token: 'alice', WebSocket: FakeSocket, minReconnectDelay: 1, maxReconnectDelay: 5 });
  const connected = client.connect();
  await until(() => FakeSocket.last()?.sent.length === 1, 'hello');
  const ws1 = FakeSocket.last();
  ws1.deliver(welcome());
  await connected;
  assert.throws(() => client.setPresence('job/1', { a: 1 }), (e) => e.code === 400 && e.reason === 'NOT_SUBSCRIBED' && e.context === 'job/1');
  assert.deepEqual(client.presence('job/1'), []);
  const job = client.subscribe('job', 1);
  const seen = [];
  client.on('presence', (e) => seen.push(`${e.context} ${e.cause}`));
  ws1.deliver(state(ws1.sent.at(-1).rid, 5, [entry('c2', bob, { editing: 2 })]));
  await job.ready;
  assert.deepEqual(client.presence('job/1'), [entry('c2', bob, { editing: 2 })]);

  for (let i = 1; i <= 30; i++) client.setPresence('job/1', { editing: i });
  assert.deepEqual(presenceFrames(ws1.sent).map((f) => f.data), [{ editing: 1 }], 'the first at once');
  await until(() => presenceFrames(ws1.sent).length === 2, 'the trailing frame');
  assert.deepEqual(presenceFrames(ws1.sent)[1].data, { editing: 30 }, 'the latest');
  await new Promise((r) => setTimeout(r, 80));
  assert.equal(presenceFrames(ws1.sent).length, 2, 'and nothing after it');

  // A refusal of a presence frame: the `error` event, the context stays.
  const errors = [];
  client.on('error', (e) => errors.push(e));
  ws1.deliver({ type: 'error', code: 400, reason: 'NOT_SUBSCRIBED', message: 'job/1 is not subscribed', context: 'job/1', rid: presenceFrames(ws1.sent)[1].rid });
  assert.deepEqual(errors.map((e) => [e.code, e.reason, e.context]), [[400, 'NOT_SUBSCRIBED', 'job/1']]);
  assert.equal(job.status, 'ready');

  // The connection drops: the list empties; after the reconnect's state, the presence goes again.
  ws1.drop();
  assert.deepEqual(job.presence(), []);
  await until(() => FakeSocket.all.length === 2 && FakeSocket.last().sent.length === 1, 'the second hello');
  const ws2 = FakeSocket.last();
  ws2.deliver(welcome());
  const sub = ws2.sent.find((f) => f.type === 'subscribe');
  assert.equal(sub.since, 5);
  assert.deepEqual(presenceFrames(ws2.sent), []);
  ws2.deliver({ ...state(sub.rid, 6, [entry('c3', carol, { editing: 1 })]), incremental: true, removed: [] });
  assert.deepEqual(job.presence(), [entry('c3', carol, { editing: 1 })]);
  await until(() => presenceFrames(ws2.sent).length === 1, 'the presence sent again');
  assert.deepEqual(presenceFrames(ws2.sent)[0].data, { editing: 30 });
  assert.equal(seen.filter((s) => s.endsWith('self')).length, 30);
  assert.deepEqual(seen.filter((s) => !s.endsWith('self')), ['job/1 state', 'job/1 disconnected', 'job/1 state']);
  client.close();
});

// ---- TabClient: tabs over a fake BroadcastChannel and a fake lock ---------------------

/** BroadcastChannels of one "browser": messages go to the other instances of the same name, asynchronously. */
class FakeChannel {
  static all = new Set();
  constructor(name) {
    this.name = name;
    FakeChannel.all.add(this);
  }
  postMessage(msg) {
    const data = structuredClone(msg);
    for (const other of FakeChannel.all) {
      if (other !== this && other.name === this.name) setImmediate(() => FakeChannel.all.has(other) && other.onmessage?.({ data }));
    }
  }
  close() {
    FakeChannel.all.delete(this);
  }
}

/** A Web Locks double: one holder at a time, the next request granted when it releases. */
function fakeLocks() {
  const queue = [];
  let held = false;
  const next = () => {
    if (held || !queue.length) return;
    held = true;
    const { fn, done } = queue.shift();
    Promise.resolve()
      .then(fn)
      .finally(() => {
        held = false;
        done();
        next();
      });
  };
  return {
    request(_name, fn) {
      return new Promise((done) => {
        queue.push({ fn, done });
        next();
      });
    },
  };
}

test('TabClient: each tab sets its own presence; the latest tab wins, the next latest when it clears or leaves; followers see the list', async () => {
  FakeSocket.all = [];
  const locks = fakeLocks();
  const options = { url: 'ws://test/ws', token: 'alice', WebSocket: FakeSocket, BroadcastChannel: FakeChannel, locks, storage: null, pageLifecycle: false, name: 'presence-test' };
  const a = new TabClient(options);
  const jobA = a.subscribe('job', 1);
  a.connect();
  await until(() => a.role === 'leader' && FakeSocket.last()?.sent.length === 1, 'the leader and its hello');
  const ws = FakeSocket.last();
  ws.onSend = (f) => {
    if (f.type === 'subscribe') setImmediate(() => ws.deliver(state(f.rid, 5, [entry('c2', bob, { editing: 2 })])));
  };
  ws.deliver(welcome());
  await jobA.ready;
  const b = new TabClient(options);
  const jobB = b.subscribe('job', 1);
  const bEvents = [];
  jobB.onPresence((e) => bEvents.push(e.cause));
  const tabEvents = [];
  b.on('presence', (e) => tabEvents.push(e.cause));
  b.connect();
  await until(() => b.role === 'follower' && jobB.status === 'ready', 'the follower');
  await until(() => jobB.presence().length === 1, "the follower gets the leader's list");
  assert.deepEqual(jobB.presence(), [entry('c2', bob, { editing: 2 })]);
  assert.deepEqual(jobA.presence(), [entry('c2', bob, { editing: 2 })]);

  const sentData = () => presenceFrames(ws.sent).map((f) => JSON.stringify(f.data));
  jobA.setPresence({ tab: 'A' });
  assert.deepEqual(jobA.myPresence, { tab: 'A' });
  await until(() => sentData().length === 1, "A's presence");
  b.setPresence('job/1', { tab: 'B' });
  assert.deepEqual(jobB.myPresence, { tab: 'B' });
  await until(() => sentData().at(-1) === '{"tab":"B"}', "B's presence (the latest tab)");
  jobB.setPresence(null);
  await until(() => sentData().at(-1) === '{"tab":"A"}', "back to A's when B clears");
  jobB.setPresence({ tab: 'B2' });
  await until(() => sentData().at(-1) === '{"tab":"B2"}', 'B again');
  jobB.close(); // B leaves the context: A's again
  await until(() => sentData().at(-1) === '{"tab":"A"}', "A's when B leaves");
  const jobB2 = b.subscribe('job', 1);
  await until(() => jobB2.presence().length === 1, 'B holds it again');

  // Another connection's presence reaches both tabs; the connection's own never shows.
  ws.deliver(presenceMsg('c3', carol, { editing: 1 }));
  await until(() => jobB2.presence().length === 2, 'carol in the follower');
  assert.deepEqual(jobA.presence().map((e) => e.connectionId), ['c2', 'c3']);
  assert.deepEqual(jobB2.presence().map((e) => e.connectionId), ['c2', 'c3']);
  ws.deliver(presenceMsg('c2', bob, null, { left: true }));
  await until(() => jobB2.presence().length === 1, 'bob left');
  assert.deepEqual(jobB2.presence(), [entry('c3', carol, { editing: 1 })]);
  jobA.setPresence(null);
  await until(() => sentData().at(-1) === 'null', 'cleared when no tab shows one');
  assert.ok(bEvents.includes('self') && bEvents.includes('state'));
  assert.ok(tabEvents.includes('self'));
  assert.throws(() => jobB.setPresence({ a: 1 }), (e) => e.reason === 'CONTEXT_CLOSED');
  assert.throws(() => jobB2.setPresence('x'.repeat(2000)), (e) => e.reason === 'INVALID_DATA');
  b.close();
  a.close();
});

test("TabClient: a new leader's connection shows the remaining tab's presence; the follower's list is the new connection's", async () => {
  FakeSocket.all = [];
  const locks = fakeLocks();
  const options = { url: 'ws://test/ws', token: 'alice', WebSocket: FakeSocket, BroadcastChannel: FakeChannel, locks, storage: null, pageLifecycle: false, name: 'presence-leader-test' };
  const answer = (ws, presence) => {
    ws.onSend = (f) => {
      if (f.type === 'hello') setImmediate(() => ws.deliver(welcome()));
      if (f.type === 'subscribe') setImmediate(() => ws.deliver(state(f.rid, 5, presence)));
    };
    for (const f of ws.sent) ws.onSend(f); // what went out before the test got the socket
  };
  const a = new TabClient(options);
  const jobA = a.subscribe('job', 1);
  a.connect();
  await until(() => FakeSocket.all.length === 1, 'the first socket');
  answer(FakeSocket.last(), [entry('c2', bob, { editing: 2 })]);
  await jobA.ready;
  const b = new TabClient(options);
  const jobB = b.subscribe('job', 1);
  b.connect();
  await until(() => jobB.presence().length === 1, 'the follower sees bob');
  jobA.setPresence({ tab: 'A' });
  jobB.setPresence({ tab: 'B' });
  await until(() => presenceFrames(FakeSocket.all[0].sent).at(-1)?.data?.tab === 'B', "B's presence on the first connection");

  // A's tab ends: B leads on a connection of its own, which shows B's presence; carol is there now, bob is not.
  a.close();
  await until(() => b.role === 'leader' && FakeSocket.all.length === 2, 'B leads');
  answer(FakeSocket.last(), [entry('c3', carol, { editing: 1 })]);
  await until(() => presenceFrames(FakeSocket.last().sent).length === 1, "B's presence sent on the new connection");
  assert.deepEqual(presenceFrames(FakeSocket.last().sent)[0].data, { tab: 'B' });
  await until(() => jobB.presence()[0]?.connectionId === 'c3', "the new connection's list");
  assert.deepEqual(jobB.presence(), [entry('c3', carol, { editing: 1 })]);
  b.close();
});

// ---- the bindings -------------------------------------------------------------------

class AnsweringSocket {
  static last = null;
  constructor() {
    this.sent = [];
    AnsweringSocket.last = this;
    setImmediate(() => this.onopen?.());
  }
  send(text) {
    const msg = JSON.parse(text);
    this.sent.push(msg);
    if (msg.type === 'hello') this.deliver(welcome());
    if (msg.type === 'subscribe') this.deliver(state(msg.rid, 5, [entry('c2', bob, { editing: 2 })]));
    if (msg.type === 'unsubscribe') this.deliver({ type: 'unsubscribed', rid: msg.rid, context: msg.context, reason: 'CLIENT_REQUEST' });
  }
  deliver(msg) {
    setImmediate(() => this.onmessage?.({ data: JSON.stringify(msg) }));
  }
  close() {}
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

test('React: usePresence renders the list, re-renders on presence (not on rows), and its setter sends', async () => {
  const client = new StatecastClient({ url: 'ws://test/ws', token: 'alice', WebSocket: AnsweringSocket });
  await client.connect();
  const ws = AnsweringSocket.last;
  let api;
  let renders = 0;
  function Who() {
    api = usePresence('job', 1, { linger: 20 });
    renders += 1;
    return h('ul', null, api.presence.map((p) => h('li', { key: p.connectionId }, `${p.user.name}:${JSON.stringify(p.data)}`)));
  }
  let root;
  await act(async () => {
    root = TestRenderer.create(h(StrictMode, null, h(StatecastProvider, { client }, h(Who))));
  });
  for (let i = 0; i < 200 && api.presence.length === 0; i++) await act(() => tick(2));
  const items = () => root.root.findAllByType('li').map((li) => li.props.children);
  assert.deepEqual(items(), ['bob:{"editing":2}']);
  assert.equal(ws.sent.filter((f) => f.type === 'subscribe').length, 1, 'one subscription');

  // A row change does not render the presence again.
  const before = renders;
  await act(async () => {
    ws.deliver({ type: 'delta', context: 'job/1', seq: 6, prev: 5, changes: [{ op: 'update', _type: 'Task', id: 1, _version: 6, status: 'done' }] });
    await tick(10);
  });
  assert.equal(client.context('job/1').get('Task', 1).status, 'done');
  assert.equal(renders, before, 'no render for a row change');

  await act(async () => {
    ws.deliver(presenceMsg('c3', carol, { editing: 1 }));
    await tick(10);
  });
  assert.deepEqual(items(), ['bob:{"editing":2}', 'carol:{"editing":1}']);
  await act(async () => api.setPresence({ editing: 7 }));
  assert.deepEqual(api.myPresence, { editing: 7 });
  assert.deepEqual(presenceFrames(ws.sent).map((f) => f.data), [{ editing: 7 }]);
  assert.throws(() => api.setPresence({ big: 'x'.repeat(MAX_PRESENCE_BYTES) }), (e) => e.reason === 'INVALID_DATA');
  await act(async () => root.unmount());
  await act(() => tick(60));
  assert.equal(ws.sent.filter((f) => f.type === 'unsubscribe').length, 1, 'unsubscribed after the linger');
  client.close();
});

test('Svelte: presenceStore shows the list and sets this client presence', async () => {
  const client = new StatecastClient({ url: 'ws://test/ws', token: 'alice', WebSocket: AnsweringSocket });
  await client.connect();
  const ws = AnsweringSocket.last;
  const store = presenceStore(client, 'job', 1, { linger: 20 });
  const seen = [];
  const stop = store.subscribe((v) => seen.push(v.presence.length));
  for (let i = 0; i < 100 && get(store).presence.length === 0; i++) await tick(2);
  assert.deepEqual(get(store).presence, [entry('c2', bob, { editing: 2 })]);
  get(store).setPresence({ editing: 3 });
  assert.deepEqual(get(store).myPresence, { editing: 3 });
  assert.deepEqual(presenceFrames(ws.sent).map((f) => f.data), [{ editing: 3 }]);
  ws.deliver(presenceMsg('c2', bob, null));
  await tick(10);
  assert.deepEqual(get(store).presence, []);
  stop();
  await tick(60);
  assert.equal(ws.sent.filter((f) => f.type === 'unsubscribe').length, 1);
  assert.ok(seen.includes(1) && seen.at(-1) === 0);
  client.close();
});
