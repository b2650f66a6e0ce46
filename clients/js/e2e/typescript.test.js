// `statecast-server schema --ts` and statecast.d.ts together pass the
// TypeScript compiler (strict), and the generated types catch wrong values;
// the unit tests' schema fixture is what the server sends.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, serverBin } from './support.js';

const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const client = join(REPO, 'clients/js/packages/client/src/statecast.js');

const usage = `
import { Replica, StatecastClient, StatecastError, isPending, type ChangeEvent, type PresenceEntry, type ViewRow } from ${JSON.stringify(client)};
import type { Channels, Entities, Task, TaskCreate, TaskSave } from './schema.js';

const client = new StatecastClient<Entities>({ url: 'ws://127.0.0.1:7100/ws', token: 'alice', ids: 'temp' });
const job = client.subscribe('job', 1);
const tasks: ViewRow<Task, 'Task'>[] = job.rows('Task');
for (const t of tasks) {
  const status: 'todo' | 'doing' | 'done' = t.status;
  const key: number = t._key;
  const pending: boolean = t._pending || isPending(t);
  const who: number | null = t.assignee;
  void [status, key, pending, who];
}
const data: TaskCreate = { name: 'Write the changelog' };
const created = job.create('Task', data, { parent: ['Job', 1], relation: 'tasks' });
const id: number = created.id;
const change: TaskSave = { status: 'done' };
job.save('Task', id, change).then((r) => r.seq).catch((e: unknown) => {
  if (e instanceof StatecastError) {
    const code: number = e.code;
    const reason: string = e.reason;
    void [code, reason];
  }
});
// @ts-expect-error: "blocked" is not an allowed status
job.save('Task', 1, { status: 'blocked' });
// @ts-expect-error: created_by is read-only, not part of TaskCreate
const bad: TaskCreate = { name: 'x', created_by: 1 };
void bad;
job.onChange((e: ChangeEvent) => e.added.length + e.removed.length);
const batch = job.batch((b) => {
  const t = b.create('Task', { name: 'In a batch' });
  b.save('Task', t, { notes: 'named by a later op' });
  b.delete('Task', 2);
});
const ids: number[] = batch.ids;
const anchor: Channels['job']['anchor'] = 'Job';
client.on('write', (w) => w.status === 'refused' && w.error?.reason);
job.setPresence({ editing: id });
const here: ReadonlyArray<PresenceEntry<{ editing: number }>> = job.presence<{ editing: number }>();
const names: string[] = here.map((p) => \`\${p.user.name} \${p.user.id} \${p.connectionId} \${p.data.editing}\`);
job.onPresence((e) => e.cause === 'left' && e.entry?.connectionId);
client.setPresence('job/1', null);
// @ts-expect-error: presence() entries are read-only
here[0].data = { editing: 2 };
void names;
void [ids, anchor];
const frames: Array<Record<string, unknown>> = [];
const replica = new Replica<Entities>({ send: (f) => frames.push(f) });
replica.connected({ epoch: 'e', applied: [] });
replica.subscribe('job', 1).save('Task', 1, { notes: 'offline' });
replica.receive({ type: 'writeResponse', writeId: 1, success: true, seq: 2 });
`;

test('the generated interfaces and the client declarations type-check together (strict)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'statecast-ts-'));
  try {
    const schema = execFileSync(serverBin(), ['schema', '--ts'], { encoding: 'utf8' });
    assert.match(schema, /export interface Task \{/);
    writeFileSync(join(dir, 'schema.ts'), schema);
    writeFileSync(join(dir, 'usage.ts'), usage);
    writeFileSync(join(dir, 'package.json'), '{"type": "module"}');
    const args = [tsc, '--noEmit', '--strict', '--target', 'es2022', '--module', 'nodenext', '--lib', 'es2022,dom'];
    try {
      execFileSync(process.execPath, [...args, join(dir, 'usage.ts'), join(dir, 'schema.ts')], { encoding: 'utf8' });
    } catch (e) {
      assert.fail(`tsc found errors:\n${e.stdout}${e.stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the unit tests run on the schema the server sends (test/demo-schema.json)', () => {
  const served = JSON.parse(execFileSync(serverBin(), ['schema'], { encoding: 'utf8' }));
  const fixture = JSON.parse(readFileSync(join(REPO, 'clients/js/test/demo-schema.json'), 'utf8'));
  assert.deepEqual(fixture, served, 'refresh it: statecast-server schema > clients/js/test/demo-schema.json');
});
