// The React hooks (rendered by react-test-renderer, in StrictMode) and the
// Svelte stores over a StatecastClient whose socket the test plays the
// server through: one subscription however often a component mounts, a write
// shows at once, a refusal rolls back and is listed with its code and
// reason, and a context nobody reads any more is unsubscribed.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createElement as h, StrictMode, useState, act } from 'react';
import TestRenderer from 'react-test-renderer';
import { get } from 'svelte/store';
import { StatecastClient } from '@statecast/client';
import { StatecastProvider, useContext, useStream, useWrites } from '@statecast/react';
import { contextStore, streamStore, writesStore } from '@statecast/svelte';
import { EPOCH, schema, task } from './helpers.js';

globalThis.IS_REACT_ACT_ENVIRONMENT = true;

const SCHEMA = { ...schema, streams: [{ name: 'tasks', type: 'Task', payload: 'full', indexFields: ['job'] }] };

/** A WebSocket the test answers as the server would. */
class Socket {
  static last = null;
  constructor() {
    this.sent = [];
    Socket.last = this;
    setImmediate(() => this.onopen?.());
  }
  send(text) {
    const msg = JSON.parse(text);
    this.sent.push(msg);
    if (msg.type === 'hello') this.deliver({ type: 'welcome', connectionId: 'c', user: { id: 1, name: 'alice' }, schema: SCHEMA, epoch: EPOCH, applied: [] });
    if (msg.type === 'subscribe' && msg.channel) {
      const rows = [{ _type: 'Job', id: 1, _version: 1, name: 'Launch', project: 1, owner: 1 }, task(1, 1), task(2, 1, { assignee: 2 })];
      this.deliver({ type: 'state', rid: msg.rid, context: 'job/1', channel: 'job', anchorId: 1, epoch: EPOCH, seq: 5, instances: rows });
    }
    if (msg.type === 'subscribe' && msg.stream) {
      this.deliver({ type: 'subscribed', rid: msg.rid, subscription: 's1', seq: 5, snapshot: [task(1, 1)] });
    }
    if (msg.type === 'unsubscribe') this.deliver({ type: 'unsubscribed', rid: msg.rid, context: msg.context, subscription: msg.subscription, reason: 'CLIENT_REQUEST' });
  }
  deliver(msg) {
    setImmediate(() => this.onmessage?.({ data: JSON.stringify(msg) }));
  }
  close() {}
  count(pred) {
    return this.sent.filter(pred).length;
  }
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
const until = async (cond, what) => {
  for (let i = 0; i < 400; i++) {
    if (cond()) return;
    await act(() => tick(2));
  }
  assert.fail(`timed out waiting for ${what}`);
};

async function connected() {
  const client = new StatecastClient({ url: 'ws://test/ws', token: 'alice', WebSocket: Socket });
  await client.connect();
  return { client, ws: Socket.last };
}

const subscribes = (ws) => ws.count((f) => f.type === 'subscribe' && f.channel === 'job');

test('React: useContext in StrictMode subscribes once, renders writes at once, and a refusal rolls back with its code and reason', async () => {
  const { client, ws } = await connected();
  let api;
  let writes;
  function Job() {
    const job = useContext('job', 1, { linger: 50 });
    writes = useWrites();
    api = job;
    return h('ul', { 'data-status': job.status }, job.rows('Task').map((t) => h('li', { key: t._key, className: t._pending ? 'pending' : '' }, `${t.name}:${t.status}`)));
  }
  let show;
  function App() {
    const [on, setOn] = useState(true);
    show = setOn;
    return h(StatecastProvider, { client }, on ? h(Job) : null);
  }
  let root;
  await act(async () => {
    root = TestRenderer.create(h(StrictMode, null, h(App)));
  });
  await until(() => api.status === 'ready', 'the first state');
  const items = () => root.root.findAllByType('li').map((li) => `${li.props.children}${li.props.className ? '*' : ''}`);
  assert.deepEqual(items(), ['Task 1:todo', 'Task 2:todo']);
  assert.equal(subscribes(ws), 1, 'StrictMode mounted twice; one subscription');

  // A quick route change away and back keeps the live subscription.
  await act(async () => show(false));
  await act(async () => show(true));
  await act(() => tick(10));
  assert.equal(subscribes(ws), 1);
  assert.equal(ws.count((f) => f.type === 'unsubscribe'), 0);

  // A save shows at once and is pending until the answer.
  let saved;
  await act(async () => {
    saved = api.save('Task', 1, { status: 'doing' });
  });
  assert.deepEqual(items(), ['Task 1:doing*', 'Task 2:todo']);
  assert.equal(writes.pending.length, 1);
  const w1 = ws.sent.find((f) => f.type === 'write' && f.writeId === saved.writeId);
  ws.deliver({ type: 'delta', context: 'job/1', seq: 6, prev: 5, writeId: w1.writeId, changes: [{ op: 'update', _type: 'Task', id: 1, _version: 6, status: 'doing' }] });
  ws.deliver({ type: 'writeResponse', writeId: w1.writeId, success: true, seq: 6 });
  await act(() => saved);
  assert.deepEqual(items(), ['Task 1:doing', 'Task 2:todo']);

  // Bob's task: the server refuses; the row rolls back and the refusal is listed.
  let refused;
  await act(async () => {
    refused = api.save('Task', 2, { status: 'done' });
    refused.catch(() => {});
  });
  assert.deepEqual(items(), ['Task 1:doing', 'Task 2:done*']);
  const w2 = ws.sent.find((f) => f.type === 'write' && f.writeId === refused.writeId);
  ws.deliver({ type: 'writeResponse', writeId: w2.writeId, success: false, error: { code: 403, reason: 'DENIED', message: 'only the assignee may change the status' } });
  await act(() => refused.catch(() => {}));
  assert.deepEqual(items(), ['Task 1:doing', 'Task 2:todo']);
  assert.deepEqual(
    writes.refused.map((r) => [r.writeId, r.code, r.reason]),
    [[w2.writeId, 403, 'DENIED']],
  );
  assert.equal(writes.pending.length, 0);

  // Unmounted for longer than the linger: unsubscribed once.
  await act(async () => show(false));
  await act(() => tick(120));
  assert.equal(ws.count((f) => f.type === 'unsubscribe' && f.context === 'job/1'), 1);
  await act(async () => root.unmount());
  client.close();
});

test('React: useStream shows the stream view with its status', async () => {
  const { client, ws } = await connected();
  let seen;
  function Mine() {
    seen = useStream('tasks', { filters: { job: 1 } }, { linger: 20 });
    return null;
  }
  let root;
  await act(async () => {
    root = TestRenderer.create(h(StrictMode, null, h(StatecastProvider, { client }, h(Mine))));
  });
  await until(() => seen.status === 'ready', 'subscribed');
  assert.deepEqual(seen.rows.map((r) => r.id), [1]);
  assert.equal(seen.error, null);
  assert.equal(ws.count((f) => f.type === 'subscribe' && f.stream === 'tasks'), 1);
  await act(async () => root.unmount());
  client.close();
});

test('Svelte: contextStore, streamStore and writesStore share one subscription and list refusals with code and reason', async () => {
  const { client, ws } = await connected();
  const job = contextStore(client, 'job', 1, { linger: 20 });
  const again = contextStore(client, 'job', 1, { linger: 20 });
  const writes = writesStore(client);
  const seen = [];
  const stop1 = job.subscribe((v) => seen.push(v.status));
  const stop2 = again.subscribe(() => {});
  for (let i = 0; i < 100 && get(job).status !== 'ready'; i++) await tick(2);
  assert.equal(get(job).status, 'ready');
  assert.equal(subscribes(ws), 1);
  assert.deepEqual(get(job).rows('Task').map((t) => t.name), ['Task 1', 'Task 2']);
  const refused = get(job).save('Task', 2, { status: 'done' });
  refused.catch(() => {});
  assert.equal(get(job).get('Task', 2).status, 'done');
  assert.equal(get(writes).pending.length, 1);
  ws.deliver({ type: 'writeResponse', writeId: refused.writeId, success: false, error: { code: 403, reason: 'DENIED', message: 'no' } });
  await refused.catch(() => {});
  assert.equal(get(job).get('Task', 2).status, 'todo');
  assert.deepEqual(get(writes).refused.map((r) => `${r.code} ${r.reason}`), ['403 DENIED']);
  get(writes).dismiss(refused.writeId);
  assert.deepEqual(get(writes).refused, []);

  const mine = streamStore(client, 'tasks', { filters: { job: 1 } }, { linger: 20 });
  const stop3 = mine.subscribe(() => {});
  for (let i = 0; i < 100 && get(mine).status !== 'ready'; i++) await tick(2);
  assert.deepEqual(get(mine).rows.map((r) => r.id), [1]);
  stop1();
  stop2();
  stop3();
  await tick(60);
  assert.equal(ws.count((f) => f.type === 'unsubscribe' && f.context === 'job/1'), 1);
  assert.ok(seen.includes('ready'));
  client.close();
});
