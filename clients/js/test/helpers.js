// Test support: the demo schema, a Replica wired to a recording `send` and a
// fake clock, and a fake server that numbers states and deltas like the real one.

import { readFileSync } from 'node:fs';
import { Replica } from '../packages/client/src/replica.js';

/** `statecast-server schema` output (what `welcome.schema` carries). */
export const schema = JSON.parse(readFileSync(new URL('./demo-schema.json', import.meta.url), 'utf8'));

export const EPOCH = 'epoch-1';

export const job = (id, extra = {}) => ({ _type: 'Job', id, _version: 1, name: `Job ${id}`, project: 1, owner: 1, ...extra });

export const task = (id, jobId, extra = {}) => ({
  _type: 'Task',
  id,
  _version: 1,
  job: jobId,
  name: `Task ${id}`,
  status: 'todo',
  notes: '',
  developer: null,
  assignee: 1,
  created_by: 1,
  ...extra,
});

/**
 * A replica signed in as alice and a fake server holding job 1 (tasks 1, 2, 3)
 * and job 2 (task 4). `server.state(ctx)` sends the whole state;
 * `server.delta(ctx, changes, extra)` the next delta (seq and prev kept).
 */
export function setup(options = {}) {
  const sent = [];
  let time = 1_000;
  const replica = new Replica({
    send: (f) => sent.push(structuredClone(f)),
    now: () => time,
    clientId: 'c0ffee00c0ffee00c0ffee00c0ffee00',
    ...options,
  });
  const server = new FakeServer(replica);
  const clock = {
    advance(ms) {
      time += ms;
      replica.tick();
    },
  };
  replica.connected(server.welcome());
  return { replica, sent, server, clock };
}

export class FakeServer {
  constructor(replica) {
    this.replica = replica;
    this.seq = 10;
    this.epoch = EPOCH;
    this.rows = new Map();
    this.prev = new Map(); // context → seq of the last state/delta sent
    for (const r of [job(1), task(1, 1), task(2, 1), task(3, 1), job(2), task(4, 2)]) this.rows.set(`${r._type}:${r.id}`, r);
  }

  welcome(applied = []) {
    return { type: 'welcome', connectionId: 'c-1', user: { id: 1, name: 'alice' }, schema, epoch: this.epoch, applied };
  }

  contextRows(context) {
    const anchor = Number(context.split('/')[1]);
    const out = [];
    const j = this.rows.get(`Job:${anchor}`);
    if (j) out.push(j);
    for (const r of this.rows.values()) if (r._type === 'Task' && r.job === anchor) out.push(r);
    return out;
  }

  /** Sends the whole state of `context` (default job/1). */
  state(context = 'job/1', extra = {}) {
    const anchorId = Number(context.split('/')[1]);
    const msg = {
      type: 'state',
      context,
      channel: 'job',
      anchorId,
      epoch: this.epoch,
      seq: this.seq,
      instances: this.contextRows(context),
      ...extra,
    };
    this.prev.set(context, msg.seq);
    this.replica.receive(structuredClone(msg));
    return msg;
  }

  /** Commits `changes` (applied to the server's rows) and sends them as one delta to `context`. */
  delta(context, changes, extra = {}) {
    this.seq += 1;
    const seq = this.seq;
    const wire = changes.map((c) => {
      const k = `${c._type}:${c.id}`;
      const { op, ...fields } = c;
      if (op === 'delete') this.rows.delete(k);
      else if (op === 'create') this.rows.set(k, { ...fields, _version: seq });
      else this.rows.set(k, { ...this.rows.get(k), ...fields, _version: seq });
      return { ...c, _version: seq };
    });
    const msg = { type: 'delta', context, seq, prev: this.prev.get(context) ?? 0, changes: wire, ...extra };
    this.prev.set(context, seq);
    this.replica.receive(structuredClone(msg));
    return msg;
  }

  /** Answers write `writeId` with success at the current seq. */
  ok(writeId, extra = {}) {
    const msg = { type: 'writeResponse', writeId, success: true, seq: this.seq, ...extra };
    this.replica.receive(msg);
    return msg;
  }

  refuse(writeId, code = 403, reason = 'DENIED', message = 'denied by the policy') {
    const msg = { type: 'writeResponse', writeId, success: false, error: { code, reason, message } };
    this.replica.receive(msg);
    return msg;
  }
}

/** The view's rows as compact `Type:id` strings, in order. */
export const ids = (ctx, type) => ctx.rows(type).map((r) => `${r._type}:${r.id}`);

/** Waits for promise callbacks to run. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** Settles a handle into `{ok, value|error}` without throwing. */
export const settle = (p) => p.then((value) => ({ ok: true, value }), (error) => ({ ok: false, error }));
