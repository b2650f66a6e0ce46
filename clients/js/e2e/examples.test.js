// The example apps (examples/react-tasks and examples/svelte-tasks, built)
// in headless Chromium against the real server binary: alice's and bob's
// pages see each other's writes; a forbidden write rolls back with its code
// and reason shown; a write made offline survives a reload and is confirmed
// exactly once when the server is back (checked in the server's data); two
// tabs as alice share one queue, and closing the leading tab mid-write loses
// and doubles nothing. StrictMode and quick job changes leave no duplicate
// subscription on the server (its /metrics).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, launchBrowser, startServer } from './support.js';
import { serve } from '../../../examples/serve.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The rows of job 1 as the server holds them, read by a fresh client (carol, an admin). */
async function serverTasks() {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(`${server.http}/healthz`);
    return await page.evaluate(async (ws) => {
      const { StatecastClient } = await import('/statecast.js');
      const client = new StatecastClient({ url: ws, token: 'carol' });
      await client.connect();
      const out = [];
      for (const j of [1, 2]) {
        const ctx = client.subscribe('job', j);
        await ctx.ready;
        out.push(...ctx.rows('Task').map((t) => ({ id: t.id, name: t.name, status: t.status })));
      }
      client.close();
      return out;
    }, server.ws);
  } finally {
    await context.close();
  }
}

async function metric(name) {
  const text = await (await fetch(`${server.http}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

const until = async (what, cond, ms = 15_000) => {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

for (const example of ['react-tasks', 'svelte-tasks']) {
  describe(example, () => {
    let site;
    const dist = join(REPO, 'examples', example, 'dist');

    before(async () => {
      if (!existsSync(join(dist, 'main.js'))) {
        throw new Error(`${dist} is not built: run \`npm ci && npm run build\` in examples/${example} (.ci/e2e does)`);
      }
      site = await serve(dist);
    });

    after(async () => {
      await site?.close();
    });

    /** A page of the app signed in as `token` (in `context`, else a browser context of its own). */
    async function app(token, context) {
      const ctx = context ?? (await browser.newContext());
      const page = await ctx.newPage();
      const errors = [];
      page.on('pageerror', (e) => errors.push(e));
      await page.goto(`${site.url}/?token=${token}&ws=${encodeURIComponent(server.ws)}`);
      await page.locator('.status[data-status="open"]').waitFor();
      await page.locator('.tasks li').first().waitFor();
      return { page, errors, context: ctx, close: () => (context ? page.close() : ctx.close()) };
    }

    const row = (page, name) => page.locator(`.tasks li[data-name="${name}"]`);
    async function create(page, name) {
      await page.getByLabel('new task').fill(name);
      await page.getByRole('button', { name: 'Add' }).click();
    }
    const pendingCount = (page) => page.locator('.pending li').count();

    test('alice and bob see each other’s writes; StrictMode and job changes leave one subscription each', { timeout: 90_000 }, async () => {
      // Pages of earlier tests are gone: their subscriptions end with their sockets.
      await until('no subscription left from earlier tests', async () => (await metric('statecast_subscriptions')) === 0 && (await metric('statecast_stream_subscriptions')) === 0);
      const alice = await app('alice');
      const bob = await app('bob');
      try {
        const name = `Alice’s task (${example})`;
        await create(alice.page, name);
        await row(bob.page, name).waitFor();
        await until('the create confirmed', async () => (await pendingCount(alice.page)) === 0);
        await bob.page.getByLabel('status of Fix bug').selectOption('doing');
        await alice.page.locator('.tasks li[data-name="Fix bug"][data-status="doing"]').waitFor();
        // Quick job changes: job 2 and back, twice.
        for (let i = 0; i < 2; i++) {
          await alice.page.getByLabel('job').selectOption('2');
          await alice.page.getByLabel('job').selectOption('1');
        }
        await alice.page.locator('.tasks li[data-name="Write docs"]').waitFor();
        await new Promise((r) => setTimeout(r, 1_500)); // past the linger: job 2 is let go
        // Each page holds job/1 and my-tasks once (StrictMode mounted everything twice).
        assert.equal(await metric('statecast_subscriptions'), 2);
        assert.equal(await metric('statecast_stream_subscriptions'), 2);
        assert.deepEqual([...alice.errors, ...bob.errors], []);
      } finally {
        await alice.close();
        await bob.close();
      }
    });

    test('a forbidden write rolls back and shows its code and reason', { timeout: 90_000 }, async () => {
      const bob = await app('bob');
      try {
        // Task 1 was created by alice: only she (or an admin) may delete it.
        await bob.page.getByLabel('delete Write docs').click();
        const refused = bob.page.locator('.refused li[data-code="403"][data-reason="DENIED"]');
        await refused.waitFor();
        assert.match(await refused.innerText(), /403 DENIED/);
        await row(bob.page, 'Write docs').waitFor();
        assert.equal(await pendingCount(bob.page), 0);
        assert.ok((await serverTasks()).some((t) => t.name === 'Write docs'));
      } finally {
        await bob.close();
      }
    });

    test('offline, a write, a reload, online: the write is confirmed exactly once', { timeout: 90_000 }, async () => {
      const alice = await app('alice');
      const name = `Offline task (${example})`;
      try {
        await server.kill();
        await alice.page.locator('.status[data-status="reconnecting"]').waitFor();
        await create(alice.page, name);
        await row(alice.page, name).waitFor();
        assert.equal(await pendingCount(alice.page), 1);
        await alice.page.reload();
        await alice.page.locator('.status[data-status="reconnecting"]').waitFor();
        await until('the restored write listed', async () => (await pendingCount(alice.page)) === 1);
        await server.restart();
        await alice.page.locator('.status[data-status="open"]').waitFor({ timeout: 20_000 });
        await until('the write confirmed', async () => (await pendingCount(alice.page)) === 0);
        await row(alice.page, name).waitFor();
        assert.equal(await alice.page.locator(`.tasks li.pending`).count(), 0);
        // Reload once more: nothing is sent again.
        await alice.page.reload();
        await alice.page.locator('.status[data-status="open"]').waitFor();
        await row(alice.page, name).waitFor();
        const tasks = await serverTasks();
        assert.equal(tasks.filter((t) => t.name === name).length, 1, JSON.stringify(tasks));
        assert.deepEqual(alice.errors, []);
      } finally {
        await alice.close();
      }
    });

    test('two tabs as alice share one queue; closing the leading tab mid-write loses and doubles nothing', { timeout: 90_000 }, async () => {
      const context = await browser.newContext();
      try {
        const a = await app('alice', context);
        await a.page.locator('.role[data-role="leader"]').waitFor();
        const b = await app('alice', context);
        await b.page.locator('.role[data-role="follower"]').waitFor();
        const ids = await Promise.all([a.page, b.page].map((p) => p.evaluate(() => window.statecast.clientId)));
        assert.equal(ids[0], ids[1], 'one client id');
        // A write through the leader, seen by both.
        const first = `Tab B first (${example})`;
        await create(b.page, first);
        await row(a.page, first).waitFor();
        await row(b.page, first).waitFor();
        await until('confirmed', async () => (await pendingCount(b.page)) === 0);
        // Mid-write: the follower writes, the leader writes, and the leader closes at once.
        const names = [1, 2, 3].map((i) => `Tab B ${i} (${example})`);
        for (const n of names) await create(b.page, n);
        const fromA = `Tab A (${example})`;
        await create(a.page, fromA);
        // Its own write has left for the server (or is answered already); the follower's may not have.
        await a.page.waitForFunction((n) => !window.statecast.pendingWrites().some((w) => w.status === 'pending' && w.ops[0]?.data?.name === n), fromA, { timeout: 10_000 });
        await a.page.close();
        await b.page.locator('.role[data-role="leader"]').waitFor({ timeout: 10_000 });
        await b.page.locator('.status[data-status="open"]').waitFor();
        await until('the queue drained', async () => (await pendingCount(b.page)) === 0, 20_000);
        for (const n of [...names, fromA]) await row(b.page, n).waitFor();
        const tasks = await serverTasks();
        for (const n of [first, ...names, fromA]) {
          assert.equal(tasks.filter((t) => t.name === n).length, 1, `${n} exactly once: ${JSON.stringify(tasks.map((t) => t.name))}`);
        }
        assert.deepEqual(b.errors, []);
      } finally {
        await context.close();
      }
    });
  });
}
