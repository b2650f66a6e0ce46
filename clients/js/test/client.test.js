// StatecastClient over a fake WebSocket (no network): hello with a stable
// clientId, reconnect with backoff after a drop or a goaway, `pending` in the
// new hello and resend with the original writeIds, a refused token, close().

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StatecastClient } from '../packages/client/src/statecast.js';
import { EPOCH, schema, settle, task } from './helpers.js';

/** A WebSocket double: the test plays the server through it. */
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
    this.sent.push(JSON.parse(text));
  }
  close() {
    if (this.closed) return;
    this.closed = true;
    setImmediate(() => this.onclose?.({ code: 1000 }));
  }
  // ---- the server's side
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

const welcome = (applied = []) => ({ type: 'welcome', connectionId: 'c', user: { id: 1, name: 'alice' }, schema, epoch: EPOCH, applied });
const state = (seq, rows) => ({ type: 'state', context: 'job/1', channel: 'job', anchorId: 1, epoch: EPOCH, seq, instances: rows });

function newClient(options = {}) {
  FakeSocket.all = [];
  return new StatecastClient({
    url: 'ws://test/ws',
    token: 'alice',
    WebSocket: FakeSocket,
    minReconnectDelay: 1,
    maxReconnectDelay: 5,
    ...options,
  });
}

const noRid = ({ rid, ...f }) => f;

test('hello, welcome, subscribe and a write; a drop reconnects and resends with the same writeId', async () => {
  const client = newClient();
  const statuses = [];
  client.on('status', (s) => statuses.push(s));
  const frames = [];
  client.on('frame', (f) => frames.push(f));
  const connected = client.connect();
  await until(() => FakeSocket.last()?.sent.length === 1, 'hello');
  const ws1 = FakeSocket.last();
  const hello = ws1.sent[0];
  assert.equal(hello.type, 'hello');
  assert.equal(hello.protocol, 1);
  assert.equal(hello.token, 'alice');
  assert.match(hello.clientId, /^[0-9a-f]{32}$/);
  assert.equal(hello.pending, undefined);
  ws1.deliver(welcome());
  assert.equal((await connected).user.name, 'alice');
  assert.equal(client.status, 'open');

  const job = client.subscribe('job', 1);
  assert.deepEqual(noRid(ws1.sent.at(-1)), { type: 'subscribe', channel: 'job', anchorId: 1 });
  ws1.deliver(state(5, [{ _type: 'Job', id: 1, _version: 1, name: 'Launch', project: 1, owner: 1 }, task(1, 1)]));
  await job.ready;
  const w = job.save('Task', 1, { status: 'doing' });
  assert.equal(ws1.sent.at(-1).writeId, w.writeId);
  assert.ok(frames.some((f) => f.dir === 'out' && JSON.parse(f.text).type === 'write'));
  assert.ok(frames.some((f) => f.dir === 'in' && JSON.parse(f.text).type === 'state'));

  ws1.drop();
  assert.equal(client.status, 'reconnecting');
  assert.equal(job.get('Task', 1).status, 'doing', 'still shown while offline');
  await until(() => FakeSocket.all.length === 2 && FakeSocket.last().sent.length === 1, 'the second hello');
  const ws2 = FakeSocket.last();
  assert.equal(ws2.sent[0].clientId, hello.clientId, 'the same clientId');
  assert.deepEqual(ws2.sent[0].pending, [w.writeId]);
  ws2.deliver(welcome());
  assert.deepEqual(ws2.sent.slice(1).map(noRid), [
    { type: 'subscribe', channel: 'job', anchorId: 1, since: 5, epoch: EPOCH },
    { type: 'write', writeId: w.writeId, context: 'job/1', operation: 'save', instanceType: 'Task', instanceId: 1, data: { status: 'doing' } },
  ]);
  ws2.deliver({ ...state(6, [task(1, 1, { status: 'doing', _version: 6 })]), incremental: true, removed: [] });
  ws2.deliver({ type: 'writeResponse', writeId: w.writeId, success: true, seq: 6, duplicate: true });
  assert.equal((await w).duplicate, true);
  assert.equal(job.isPending('Task', 1), false);
  assert.deepEqual(statuses, ['connecting', 'open', 'reconnecting', 'open']);
  client.close();
});

test('a resume names the read rules its state was read under (view)', async () => {
  const client = newClient();
  const connected = client.connect();
  await until(() => FakeSocket.last()?.sent.length === 1, 'hello');
  const ws1 = FakeSocket.last();
  ws1.deliver(welcome());
  await connected;
  const job = client.subscribe('job', 1);
  ws1.deliver({ ...state(5, [{ _type: 'Job', id: 1, _version: 1, name: 'Launch', project: 1, owner: 1 }]), view: 'a1b2c3d4e5f60718' });
  await job.ready;
  assert.equal(job.viewTag, 'a1b2c3d4e5f60718');
  ws1.drop();
  await until(() => FakeSocket.all.length === 2 && FakeSocket.last().sent.length === 1, 'the second hello');
  const ws2 = FakeSocket.last();
  ws2.deliver(welcome());
  assert.deepEqual(ws2.sent.slice(1).map(noRid), [
    { type: 'subscribe', channel: 'job', anchorId: 1, since: 5, epoch: EPOCH, view: 'a1b2c3d4e5f60718' },
  ]);
  // A whole state read in full: no tag any more, and none sent next time.
  ws2.deliver(state(6, [{ _type: 'Job', id: 1, _version: 1, name: 'Launch', project: 1, owner: 1 }]));
  assert.equal(job.viewTag, null);
  client.close();
});

test('goaway: the client reconnects and resumes', async () => {
  const client = newClient();
  const connected = client.connect();
  await until(() => FakeSocket.last()?.sent.length === 1, 'hello');
  FakeSocket.last().deliver(welcome());
  await connected;
  FakeSocket.last().deliver({ type: 'goaway', reason: 'draining' });
  await until(() => FakeSocket.all.length === 2 && FakeSocket.last().sent.length === 1, 'a new hello');
  FakeSocket.last().deliver(welcome());
  assert.equal(client.status, 'open');
  client.close();
});

test('a refused token ends the client: connect rejects, nothing retries, queued writes fail', async () => {
  const client = newClient({ token: 'mallory' });
  const job = client.subscribe('job', 1);
  const w = job.save('Task', 1, { status: 'done' }, { optimistic: false });
  const connected = client.connect();
  await until(() => FakeSocket.last()?.sent.length === 1, 'hello');
  FakeSocket.last().deliver({ type: 'error', code: 401, reason: 'UNAUTHENTICATED', message: 'unknown token' });
  const err = await connected.catch((e) => e);
  assert.equal(err.code, 401);
  assert.equal(err.reason, 'UNAUTHENTICATED');
  assert.equal((await settle(w)).error.reason, 'UNAUTHENTICATED');
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(FakeSocket.all.length, 1, 'no reconnect with a refused token');
  assert.equal(client.status, 'closed');
});

test('close() fails what is unsettled and stops reconnecting', async () => {
  const client = newClient();
  const connected = client.connect();
  await until(() => FakeSocket.last()?.sent.length === 1, 'hello');
  FakeSocket.last().deliver(welcome());
  await connected;
  const job = client.subscribe('job', 1);
  FakeSocket.last().deliver(state(5, [{ _type: 'Job', id: 1, _version: 1, name: 'Launch', project: 1, owner: 1 }]));
  const w = job.create('Task', { name: 'Never answered' });
  client.close();
  const r = await settle(w);
  assert.equal(r.error.code, 499);
  assert.equal(r.error.reason, 'CLIENT_CLOSED');
  await new Promise((res) => setTimeout(res, 30));
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(client.status, 'closed');
});
