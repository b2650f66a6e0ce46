// The server rescopes a stream subscription (what the user may read of the
// stream changed): the view subscribes again on its own for a fresh
// snapshot, keeps its rows until it arrives, then shows what the snapshot
// holds; REVOKED closes the view.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Replica } from '../packages/client/src/replica.js';
import { schema, task } from './helpers.js';

const SCHEMA = { ...schema, streams: [{ name: 'tasks', type: 'Task', payload: 'full', indexFields: ['job'] }] };

function connected() {
  const sent = [];
  const replica = new Replica({ clientId: 'r', send: (f) => sent.push(f) });
  replica.connected({ type: 'welcome', connectionId: 'c', user: { id: 2 }, schema: SCHEMA, epoch: 'e', applied: [] });
  return { replica, sent };
}

test('a rescoped stream view subscribes again and takes the fresh snapshot', () => {
  const { replica, sent } = connected();
  const view = replica.stream('tasks', { snapshot: true });
  replica.receive({ type: 'subscribed', subscription: 's1', stream: 'tasks', seq: 5, snapshot: [task(1, 1), task(2, 1)], rid: view.rid });
  assert.deepEqual(view.rows().map((r) => r.id), [1, 2]);
  sent.length = 0;

  replica.receive({ type: 'unsubscribed', subscription: 's1', reason: 'RESCOPED' });
  assert.equal(view.status, 'ready', 'the view stays open');
  assert.deepEqual(view.rows().map((r) => r.id), [1, 2], 'its rows stay until the snapshot comes');
  const again = sent.filter((f) => f.type === 'subscribe');
  assert.equal(again.length, 1, JSON.stringify(sent));
  assert.equal(again[0].stream, 'tasks');
  assert.equal(again[0].snapshot, true);
  assert.equal(again[0].since, undefined, 'a fresh snapshot, not a resume');
  assert.ok(!sent.some((f) => f.type === 'unsubscribe'), 'the server already ended the old one');

  replica.receive({ type: 'subscribed', subscription: 's2', stream: 'tasks', seq: 9, snapshot: [task(2, 1)], rid: again[0].rid });
  assert.deepEqual(view.rows().map((r) => r.id), [2], 'what the user may read now');
  // Events of the new subscription apply.
  replica.receive({ type: 'event', subscription: 's2', seq: 10, prev: 9, action: 'update', id: 2, data: { job: 1, name: 'T', status: 'done' } });
  assert.equal(view.rows()[0].status, 'done');
});

test('a revoked stream view closes', () => {
  const { replica } = connected();
  const view = replica.stream('tasks', { snapshot: true });
  replica.receive({ type: 'subscribed', subscription: 's1', stream: 'tasks', seq: 5, snapshot: [task(1, 1)], rid: view.rid });
  replica.receive({ type: 'unsubscribed', subscription: 's1', reason: 'REVOKED' });
  assert.equal(view.status, 'closed');
});
