// The shared behaviour spec: every scenario in spec/client/*.json and every
// filter case in spec/filters/*.json, run against the JS client's pure state
// machine (`Replica`). The Rust client runs the same files
// (client/tests/spec.rs); the format is described in spec/README.md.

import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { Replica, compileFilters } from '../packages/client/src/replica.js';

const SPEC = new URL('../../../spec/', import.meta.url).pathname;
const read = (file) => JSON.parse(readFileSync(file, 'utf8'));
const schema = read(join(SPEC, 'client', 'schema.json'));
const flush = () => new Promise((r) => setImmediate(r));
/** Frame keys that must be absent when a scenario does not name them. */
const STRICT = ['since', 'epoch', 'snapshot', 'after'];

// ---- filters ------------------------------------------------------------------

for (const file of readdirSync(join(SPEC, 'filters')).filter((f) => f.endsWith('.json')).sort()) {
  test(`filters: ${file}`, () => {
    const spec = read(join(SPEC, 'filters', file));
    const fields = Object.entries(spec.fields).map(([name, f]) => ({ name, ...f }));
    assert.ok(spec.cases.length > 0);
    spec.cases.forEach((c, i) => {
      const row = spec.rows[c.row];
      const got = compileFilters(c.filters, fields).matches(row);
      assert.equal(got, c.matches, `case ${i}: ${JSON.stringify(c.filters)} on ${c.row}`);
    });
  });
}

// ---- scenarios ----------------------------------------------------------------

/** Does `actual` hold every key of `expected` with an equal value? */
function subset(actual, expected, where) {
  for (const [k, v] of Object.entries(expected)) {
    assert.deepEqual(actual?.[k], v, `${where}: \`${k}\` in ${JSON.stringify(actual)}`);
  }
}

function rowJson(r) {
  return { ...r };
}

class Runner {
  constructor(name) {
    this.name = name;
    this.time = 1_000;
    this.frames = [];
    this.replica = new Replica({
      clientId: 'spec',
      send: (f) => this.frames.push(structuredClone(f)),
      now: () => this.time,
      writeTimeout: 30_000,
    });
    this.contexts = new Map(); // name → the latest Context object
    this.streams = new Map(); // alias → StreamView
    this.writes = new Map(); // alias → {writeId, result}
    this.changes = new Map(); // context or stream alias → ["added:5", …]
  }

  track(alias, handle) {
    const entry = { writeId: handle.writeId, id: handle.id, result: null };
    handle.then(
      () => {
        entry.result = 'ok';
      },
      (e) => {
        entry.result ??= e.reason;
      },
    );
    if (alias) this.writes.set(alias, entry);
  }

  listen(key, target) {
    this.changes.set(key, []);
    target.onChange((e) => {
      const out = this.changes.get(key);
      for (const r of e.added) out.push(`added:${r._type}:${r._key}`);
      for (const r of e.updated) out.push(`updated:${r._type}:${r._key}`);
      for (const r of e.removed) out.push(`removed:${r._type}:${r._key}`);
    });
  }

  ctx(name) {
    const c = this.replica.contexts.get(name);
    assert.ok(c, `${this.name}: not subscribed to ${name}`);
    return c;
  }

  createOptions(c) {
    const o = {};
    if (c.parent) {
      o.parent = { type: c.parent.type, id: c.parent.id };
      o.relation = c.parent.relation;
    }
    if (c.id != null) o.id = c.id;
    if (c.temp) o.tempId = true;
    if (c.optimistic === false) o.optimistic = false;
    return o;
  }

  async step(s, i) {
    const at = `${this.name} step ${i} (${Object.keys(s)[0]})`;
    if (s.welcome) {
      this.replica.connected({ type: 'welcome', connectionId: 'c', user: { id: 1, name: 'alice' }, schema, ...s.welcome });
    } else if (s.disconnect) {
      this.replica.disconnected();
    } else if (s.subscribe) {
      const [channel, anchor] = s.subscribe.split('/');
      const c = this.replica.subscribe(channel, Number(anchor));
      this.contexts.set(s.subscribe, c);
      this.listen(s.subscribe, c);
    } else if (s.unsubscribe) {
      this.replica.unsubscribe(s.unsubscribe);
    } else if (s.save) {
      const w = s.save;
      const o = w.optimistic === false ? { optimistic: false } : {};
      this.track(s.as, this.ctx(w.context).save(w.type, w.id, w.data, o));
    } else if (s.delete) {
      const w = s.delete;
      this.track(s.as, this.ctx(w.context).delete(w.type, w.id));
    } else if (s.create) {
      const w = s.create;
      this.track(s.as, this.ctx(w.context).create(w.type, w.data ?? {}, this.createOptions(w)));
    } else if (s.batch) {
      const w = s.batch;
      const h = this.ctx(w.context).batch((b) => {
        for (const op of w.ops) {
          if (op.op === 'save') b.save(op.type, op.id, op.data);
          else if (op.op === 'delete') b.delete(op.type, op.id);
          else b.create(op.type, op.data ?? {}, this.createOptions(op));
        }
      });
      this.track(s.as, h);
    } else if (s.server) {
      this.replica.receive(structuredClone(s.server));
    } else if (s.backoff_passes) {
      this.time += 1_000; // past a first retry's backoff, well before any timeout
      this.replica.tick();
    } else if (s.time_passes) {
      this.time += 30_001;
      this.replica.tick();
    } else if (s.stream) {
      const v = this.replica.stream(s.stream.name, s.stream);
      this.streams.set(s.as, v);
      this.listen(s.as, v);
    } else if (s.close_stream) {
      this.streams.get(s.close_stream).close();
    } else if (s.expect_frames) {
      const got = this.frames;
      this.frames = [];
      assert.equal(got.length, s.expect_frames.length, `${at}: frames ${JSON.stringify(got)}`);
      s.expect_frames.forEach((f, j) => {
        subset(got[j], f, `${at} frame ${j}`);
        for (const k of STRICT) if (!(k in f)) assert.ok(!(k in got[j]), `${at} frame ${j}: unexpected \`${k}\` in ${JSON.stringify(got[j])}`);
      });
    } else if (s.expect_view) {
      const e = s.expect_view;
      const target = e.context ? this.replica.contexts.get(e.context) : this.streams.get(e.stream);
      const rows = (target && target.status !== 'closed' ? target.rows() : []).map(rowJson);
      rows.sort((a, b) => (a._type < b._type ? -1 : a._type > b._type ? 1 : a._key - b._key));
      const want = [...e.rows].sort((a, b) => (a._type < b._type ? -1 : a._type > b._type ? 1 : (a._key ?? a.id) - (b._key ?? b.id)));
      assert.equal(rows.length, want.length, `${at}: rows ${JSON.stringify(rows.map((r) => `${r._type}:${r._key}`))}`);
      want.forEach((r, j) => subset(rows[j], r, `${at} row ${j}`));
    } else if (s.expect_changes) {
      const e = s.expect_changes;
      const key = e.context ?? e.stream;
      const got = this.changes.get(key) ?? [];
      this.changes.set(key, []);
      assert.deepEqual([...new Set(got)].sort(), [...e.changes].sort(), `${at}: changes of ${key}`);
    } else if (s.expect_settled) {
      await flush();
      for (const [alias, want] of Object.entries(s.expect_settled)) {
        assert.equal(this.writes.get(alias)?.result ?? null, want, `${at}: write ${alias}`);
      }
    } else if (s.expect_status) {
      for (const [key, want] of Object.entries(s.expect_status)) {
        const target = this.streams.get(key) ?? this.replica.contexts.get(key);
        const status = target ? target.status : 'closed';
        assert.equal(status, want, `${at}: status of ${key}`);
      }
    } else if (s.expect_pending) {
      assert.deepEqual(this.replica.pendingWriteIds(), s.expect_pending, `${at}: hello.pending`);
    } else if (s.note) {
      // a comment
    } else {
      assert.fail(`${at}: unknown step ${JSON.stringify(s)}`);
    }
  }
}

const scenarios = readdirSync(join(SPEC, 'client'))
  .filter((f) => f.endsWith('.json') && f !== 'schema.json')
  .sort();

test('the spec has scenarios', () => {
  assert.ok(scenarios.length >= 11, `only ${scenarios.length} scenarios`);
});

for (const file of scenarios) {
  const scenario = read(join(SPEC, 'client', file));
  test(`spec: ${file} — ${scenario.name}`, async () => {
    const r = new Runner(file);
    for (const [i, s] of scenario.steps.entries()) await r.step(s, i);
    await flush();
  });
}
