// The packages as a user gets them: `npm pack` in each package, the tarballs
// installed into an empty directory (with the frameworks they name as peers),
// then imported in Node 20 and type-checked by the TypeScript compiler
// against their own declarations.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const require = createRequire(import.meta.url);
const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const versionOf = (name) => require(`${name}/package.json`).version;

test('each package packs to a tarball that installs into an empty directory, imports in Node and type-checks', { timeout: 240_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'statecast-pack-'));
  try {
    const packs = join(dir, 'packs');
    const app = join(dir, 'app');
    execFileSync('mkdir', ['-p', packs, app]);
    const tarballs = {};
    for (const pkg of ['client', 'react', 'svelte']) {
      const out = JSON.parse(npm(['pack', '--json', '--pack-destination', packs], join(ROOT, 'packages', pkg)));
      tarballs[pkg] = join(packs, out[0].filename);
      const files = out[0].files.map((f) => f.path);
      assert.ok(files.includes('src/index.d.ts') || files.includes('src/statecast.d.ts'), `${pkg} ships its type declarations: ${files}`);
      assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('node_modules/')), `${pkg} ships only its sources: ${files}`);
    }
    assert.deepEqual(readdirSync(packs).sort(), Object.values(tarballs).map((t) => t.slice(packs.length + 1)).sort());
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    npm(
      [
        'install',
        '--no-audit',
        '--no-fund',
        '--prefer-offline',
        '--loglevel=error',
        tarballs.client,
        tarballs.react,
        tarballs.svelte,
        `react@${versionOf('react')}`,
        `svelte@${versionOf('svelte')}`,
        `typescript@${versionOf('typescript')}`,
        `@types/react@${versionOf('@types/react')}`,
      ],
      app,
    );
    // The core client has no runtime dependencies.
    const client = JSON.parse(execFileSync('cat', [join(app, 'node_modules/@statecast/client/package.json')], { encoding: 'utf8' }));
    assert.equal(client.dependencies, undefined);
    const script = `
      import { StatecastClient, StatecastError, TabClient } from '@statecast/client';
      import { contextSource, presenceSource, writesSource } from '@statecast/client/store';
      import { StatecastProvider, useContext, usePresence, useStream, useWrites } from '@statecast/react';
      import { contextStore, presenceStore, streamStore, writesStore } from '@statecast/svelte';
      const out = [StatecastClient, StatecastError, TabClient, contextSource, presenceSource, writesSource, StatecastProvider, useContext, usePresence, useStream, useWrites, contextStore, presenceStore, streamStore, writesStore].map((f) => typeof f);
      console.log(JSON.stringify(out));
    `;
    const printed = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: app, encoding: 'utf8' });
    assert.deepEqual(JSON.parse(printed), Array(15).fill('function'));
    // The declarations, as a TypeScript app resolves them (strict, NodeNext).
    writeFileSync(
      join(app, 'app.ts'),
      `
      import { StatecastClient, TabClient, type PresenceEntry, type PresenceEvent, type ViewRow } from '@statecast/client';
      import { useContext, usePresence, useStream, useWrites } from '@statecast/react';
      import { contextStore, presenceStore, writesStore } from '@statecast/svelte';
      import type { Readable } from 'svelte/store';
      const client = new StatecastClient({ url: 'ws://127.0.0.1:7100/ws', token: 'alice' });
      const tabs = new TabClient({ url: 'ws://127.0.0.1:7100/ws', token: 'alice', storage: 'indexeddb' });
      export function App() {
        const job = useContext('job', 1);
        const rows: ViewRow[] = job.rows('Task');
        const mine = useStream('my-tasks');
        const { pending, refused } = useWrites();
        const codes: number[] = refused.map((r) => r.code);
        void job.save('Task', 1, { status: 'done' });
        const { presence, myPresence, setPresence } = usePresence<{ editing: number }>('job', 1);
        const editing: number[] = presence.map((p) => p.data.editing);
        const names: string[] = presence.map((p) => \`\${p.user.name} \${p.user.id} \${p.connectionId}\`);
        setPresence({ editing: 1 });
        setPresence(null);
        return [rows.length, mine.status, pending.length, codes, editing, names, myPresence?.editing];
      }
      const store = contextStore(client, 'job', 1);
      const writes: Readable<{ refused: { reason: string }[] }> = writesStore(tabs);
      const here: Readable<{ presence: ReadonlyArray<PresenceEntry<{ x: number }>> }> = presenceStore<{ x: number }>(tabs, 'job', 1);
      const ctx = client.subscribe('job', 1);
      ctx.setPresence({ cursor: [1, 2] });
      const off = ctx.onPresence((e: PresenceEvent) => e.cause === 'left' && e.entry?.user.name);
      client.on('presence', (e) => e.presence.length);
      client.setPresence('job/1', null);
      const tabJob = tabs.subscribe('job', 1);
      tabJob.setPresence({ tab: 1 });
      const who: string[] = tabJob.presence().map((p) => p.user.name).concat(tabs.presence('job/1').map((p) => p.connectionId));
      void [store, writes, here, off, who, ctx.myPresence];
      `,
    );
    writeFileSync(
      join(app, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', lib: ['es2022', 'dom'], skipLibCheck: false }, files: ['app.ts'] }),
    );
    execFileSync(process.execPath, [join(app, 'node_modules/typescript/bin/tsc'), '-p', app], { cwd: app, encoding: 'utf8' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
