// A measurement (not a test): a stream view of 10,000 rows with 100 pending
// writes; the cost of applying one event and recomputing what changed.
//   node clients/js/bench/stream-view.mjs
// The numbers go to docs/BENCHMARKS.md.

import { readFileSync } from 'node:fs';
import { Replica } from '../packages/client/src/replica.js';

const ROWS = 10_000;
const PENDING = 100;
const EVENTS = 5_000;
const schema = JSON.parse(readFileSync(new URL('../../../spec/client/schema.json', import.meta.url), 'utf8'));

const task = (id, version) => ({
  _type: 'Task',
  id,
  _version: version,
  job: 1 + (id % 50),
  name: `Task ${id}`,
  status: 'todo',
  notes: '',
  developer: null,
  assignee: 1 + (id % 4),
  created_by: 1,
});

const replica = new Replica({ clientId: 'bench', send: () => {} });
replica.connected({ type: 'welcome', connectionId: 'c', user: { id: 1, name: 'alice' }, schema, epoch: 'e', applied: [] });
const job = replica.subscribe('job', 1);
replica.receive({ type: 'state', context: 'job/1', channel: 'job', anchorId: 1, epoch: 'e', seq: 10, rid: job.rid,
  instances: [{ _type: 'Job', id: 1, _version: 1, name: 'Launch', project: 1, owner: 1 }] });
const view = replica.stream('tasks', { filters: { status__in: ['todo', 'doing'] }, snapshot: true });
replica.receive({ type: 'subscribed', subscription: 's1', stream: 'tasks', seq: 10, rid: view.rid,
  snapshot: Array.from({ length: ROWS }, (_, i) => task(i + 1, 1)) });
if (view.rows().length !== ROWS) throw new Error(`the view holds ${view.rows().length} rows`);
for (let i = 0; i < PENDING; i += 1) job.save('Task', 1 + i * 97, { notes: `pending ${i}` }).catch(() => {});
if (replica.pendingWrites().length !== PENDING) throw new Error('pending writes missing');

const times = [];
let seq = 10;
for (let i = 0; i < EVENTS; i += 1) {
  const id = 1 + ((i * 7919) % ROWS);
  const del = i % 10 === 0;
  const msg = { type: 'event', subscription: 's1', seq: seq + 1, prev: seq, action: del ? 'delete' : 'update', id,
    data: { ...task(id, seq + 1), status: del ? 'done' : 'doing' } };
  seq += 1;
  const start = process.hrtime.bigint();
  replica.receive(msg);
  times.push(Number(process.hrtime.bigint() - start) / 1e3);
}
// Reading the whole list after a change (it is sorted again on the first read).
const reads = [];
for (let i = 0; i < 50; i += 1) {
  const id = 1 + ((i * 31) % ROWS);
  replica.receive({ type: 'event', subscription: 's1', seq: seq + 1, prev: seq, action: 'update', id, data: { notes: `r${i}` } });
  seq += 1;
  const start = process.hrtime.bigint();
  view.rows();
  reads.push(Number(process.hrtime.bigint() - start) / 1e3);
}
reads.sort((a, b) => a - b);
times.sort((a, b) => a - b);
const median = times[times.length >> 1];
const p99 = times[Math.floor(times.length * 0.99)];
console.log(
  `node ${process.version}: stream view of ${ROWS} rows, ${PENDING} pending writes: one event applied and recomputed: ` +
    `median ${median.toFixed(1)} µs, p99 ${p99.toFixed(1)} µs (${EVENTS} events; the view holds ${view.rows().length} rows); ` +
    `rows() after a change: median ${(reads[reads.length >> 1] / 1e3).toFixed(2)} ms`,
);
