// Subscriptions matched by identity: a context and a stream view opened and
// closed any number of times, in random interleavings with the server's
// in-order replies. At the end the newest subscriptions are live, the server
// holds exactly the ones the client has open (none leaked, none twice), and
// a save on the context goes out.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Replica } from '../packages/client/src/replica.js';
import { schema, job, task } from './helpers.js';

/** A deterministic generator (mulberry32). */
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

const STREAM_SCHEMA = { ...schema, streams: [{ name: 'tasks', type: 'Task', payload: 'full', indexFields: ['job'] }] };

/** The server side of one connection: answers each frame in order, as the real one does. */
class Server {
  constructor() {
    this.inbox = [];
    this.outbox = [];
    this.contexts = new Set();
    this.streams = new Set();
    this.next = 0;
    this.seq = 10;
  }

  process() {
    const f = this.inbox.shift();
    if (!f) return;
    if (f.type === 'subscribe' && f.channel) {
      this.contexts.add(`${f.channel}/${f.anchorId}`);
      const instances = [job(1), task(1, 1), task(2, 1)];
      this.outbox.push({ type: 'state', context: 'job/1', channel: 'job', anchorId: 1, epoch: 'e', seq: this.seq, instances, rid: f.rid });
    } else if (f.type === 'subscribe' && f.stream) {
      const id = `s${++this.next}`;
      this.streams.add(id);
      this.outbox.push({ type: 'subscribed', subscription: id, stream: f.stream, seq: this.seq, snapshot: [task(1, 1), task(2, 1)], rid: f.rid });
    } else if (f.type === 'unsubscribe' && f.context) {
      this.contexts.delete(f.context);
      this.outbox.push({ type: 'unsubscribed', context: f.context, reason: 'CLIENT_REQUEST', rid: f.rid });
    } else if (f.type === 'unsubscribe' && f.subscription) {
      this.streams.delete(f.subscription);
      this.outbox.push({ type: 'unsubscribed', subscription: f.subscription, reason: 'CLIENT_REQUEST', rid: f.rid });
    } else if (f.type === 'write') {
      this.writes = (this.writes ?? 0) + 1;
    }
  }
}

for (let seed = 1; seed <= 300; seed += 1) {
  test(`open/close interleaved with the server's replies, seed ${seed}`, () => {
    const random = rng(seed);
    const server = new Server();
    const replica = new Replica({ clientId: 'ident', send: (f) => server.inbox.push(structuredClone(f)) });
    replica.connected({ type: 'welcome', connectionId: 'c', user: { id: 1 }, schema: STREAM_SCHEMA, epoch: 'e', applied: [] });
    let ctx = null;
    let view = null;
    for (let step = 0; step < 60; step += 1) {
      const r = random();
      if (r < 0.2) {
        if (ctx && ctx.status !== 'closed') ctx.close();
        else ctx = replica.subscribe('job', 1);
      } else if (r < 0.4) {
        if (view && view.status !== 'closed') view.close();
        else view = replica.stream('tasks', { filters: { job: 1 }, snapshot: true });
      } else if (r < 0.7) {
        server.process();
      } else if (server.outbox.length) {
        replica.receive(server.outbox.shift());
      }
    }
    // Everything settles: the server answers all, the client reads all.
    while (server.inbox.length || server.outbox.length) {
      server.process();
      while (server.outbox.length) replica.receive(server.outbox.shift());
    }
    const ctxOpen = ctx !== null && ctx.status !== 'closed';
    assert.equal(server.contexts.has('job/1'), ctxOpen, 'the server holds the context iff the client has it open');
    if (ctxOpen) {
      assert.equal(ctx.status, 'ready');
      assert.equal(replica.contexts.get('job/1'), ctx, 'the newest context object is the live one');
      assert.deepEqual(ctx.rows('Task').map((r) => r.id), [1, 2]);
      ctx.save('Task', 1, { status: 'done' });
      assert.equal(server.inbox.at(-1)?.type, 'write', 'a save goes out');
    }
    const viewOpen = view !== null && view.status !== 'closed';
    assert.deepEqual([...server.streams], viewOpen ? [view.subscription] : [], 'one server subscription per open view, none leaked');
    if (viewOpen) {
      assert.equal(view.status, 'ready');
      assert.deepEqual(view.rows().map((r) => r.id), [1, 2]);
    }
  });
}
