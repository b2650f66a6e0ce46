// TabClient in headless Chromium against the real server: two pages of one
// browser context are two tabs of one app. They share one client id and one
// queue; one leads (Web Locks, or BroadcastChannel heartbeats where the test
// turns locks off), the other writes through it; when the leader closes, the
// other takes over and every write is on the server exactly once. And
// StatecastClient.open with storage 'indexeddb' keeps an offline write
// across a reload.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, launchBrowser, launchPersistent, startServer } from './support.js';
import { serve } from '../../../examples/serve.mjs';

let server;
let browser;
/** The client's modules on a static origin of their own, which stays up while the server is down. */
let site;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  site = await serve(join(REPO, 'clients/js/packages/client/src'));
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await site?.close();
});

/** A tab of the server's origin running a TabClient as alice (`locks` as given). */
async function tab(context, locks) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${server.http}/healthz`);
  await page.evaluate(
    async ({ ws, locks }) => {
      const { TabClient } = await import('/statecast.js');
      const client = new TabClient({ url: ws, token: 'alice', name: `tabs-test:${locks}`, ...(locks ? {} : { locks: false }), maxReconnectDelay: 1000 });
      window.tabs = client;
      window.job = client.subscribe('job', 1);
      await client.connect();
      await window.job.ready;
    },
    { ws: server.ws, locks },
  );
  return { page, errors };
}

async function serverNames() {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.http}/healthz`);
  const names = await page.evaluate(async (ws) => {
    const { StatecastClient } = await import('/statecast.js');
    const client = new StatecastClient({ url: ws, token: 'carol' });
    await client.connect();
    const ctx = client.subscribe('job', 1);
    await ctx.ready;
    const out = ctx.rows('Task').map((t) => t.name);
    client.close();
    return out;
  }, server.ws);
  await context.close();
  return names;
}

for (const locks of [true, false]) {
  test(`two tabs share one client id and queue; the follower takes over from a closed leader (${locks ? 'Web Locks' : 'BroadcastChannel election'})`, { timeout: 60_000 }, async () => {
    const context = await browser.newContext();
    try {
      const a = await tab(context, locks);
      assert.equal(await a.page.evaluate(() => window.tabs.role), 'leader');
      const b = await tab(context, locks);
      await b.page.waitForFunction(() => window.tabs.role === 'follower' && window.tabs.status === 'open');
      const [ida, idb] = await Promise.all([a, b].map((t) => t.page.evaluate(() => window.tabs.clientId)));
      assert.equal(ida, idb);
      const tag = locks ? 'locks' : 'bc';
      // The follower's write shows in both tabs and is confirmed.
      const first = await b.page.evaluate(async (tag) => {
        const h = window.job.create('Task', { name: `B0 ${tag}` });
        const r = await h;
        return { id: h.id, writeId: r.writeId };
      }, tag);
      assert.ok(first.writeId > 0);
      await a.page.waitForFunction((id) => window.job.get('Task', id)?._pending === false, first.id);
      await b.page.waitForFunction((id) => window.job.get('Task', id)?._pending === false, first.id);
      // A refusal through the leader reaches the follower with its code and reason.
      const refused = await b.page.evaluate(() => window.job.save('Task', 2, { status: 'done' }).then(() => null, (e) => `${e.code} ${e.reason}`));
      assert.equal(refused, '403 DENIED');
      // Writes in flight from the follower while the leader closes.
      await b.page.evaluate((tag) => {
        window.handles = [1, 2, 3].map((i) => window.job.create('Task', { name: `B${i} ${tag}` }));
      }, tag);
      await a.page.close();
      await b.page.waitForFunction(() => window.tabs.role === 'leader', null, { timeout: 15_000 });
      const results = await b.page.evaluate(() => Promise.all(window.handles.map((h) => h.then((r) => r.writeId))));
      assert.equal(new Set(results).size, 3);
      const names = await serverNames();
      for (const n of [0, 1, 2, 3]) assert.equal(names.filter((x) => x === `B${n} ${tag}`).length, 1, `B${n} once: ${names}`);
      assert.deepEqual(b.errors, []);
    } finally {
      await context.close();
    }
  });
}

test("StatecastClient.open with storage 'indexeddb': an offline write survives a reload and is confirmed once", { timeout: 60_000 }, async () => {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(`${site.url}/`); // any page of that origin (a 404 is enough)
    const start = (ws) =>
      page.evaluate(async (ws) => {
        const { StatecastClient } = await import('/statecast.js');
        const client = await StatecastClient.open({ url: ws, token: 'alice', storage: 'indexeddb', maxReconnectDelay: 500 });
        window.client = client;
        window.job = client.subscribe('job', 1);
        client.connect().catch(() => {});
        return client.pendingWrites().length;
      }, ws);
    assert.equal(await start(server.ws), 0);
    await page.evaluate(() => window.job.ready);
    await server.kill();
    await page.waitForFunction(() => window.client.status === 'reconnecting');
    await page.evaluate(() => {
      window.job.create('Task', { name: 'IDB offline' }).catch(() => {});
    });
    // Committed to IndexedDB before anything is sent: wait for the commit, then reload.
    await page.waitForTimeout(200);
    await page.reload();
    assert.equal(await start(server.ws), 1, 'the write came back from IndexedDB');
    await server.restart();
    await page.waitForFunction(() => window.client.status === 'open' && window.client.pendingWrites().length === 0, null, { timeout: 20_000 });
    const names = await serverNames();
    assert.equal(names.filter((n) => n === 'IDB offline').length, 1, String(names));
  } finally {
    await context.close();
  }
});

test('a TabClient write made offline survives a browser restart and is confirmed once', { timeout: 90_000 }, async () => {
  const profile = mkdtempSync(join(tmpdir(), 'statecast-profile-'));
  const open = async (ctx) => {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    await page.goto(`${site.url}/`); // any page of that origin (a 404 is enough)
    await page.evaluate(async (ws) => {
      const { TabClient } = await import('/statecast.js');
      window.tabs = new TabClient({ url: ws, token: 'alice', name: 'restart-test', maxReconnectDelay: 500 });
      window.job = window.tabs.subscribe('job', 1);
      window.tabs.connect().catch(() => {});
    }, server.ws);
    await page.waitForFunction(() => window.tabs.role === 'leader');
    return page;
  };
  let ctx;
  try {
    ctx = await launchPersistent(profile);
    let page = await open(ctx);
    await page.waitForFunction(() => window.job.status === 'ready');
    await server.kill();
    await page.waitForFunction(() => window.tabs.status === 'reconnecting');
    await page.evaluate(() => {
      window.job.create('Task', { name: 'Across a browser restart' }).catch(() => {});
    });
    await page.waitForFunction(() => window.tabs.pendingWrites().length === 1);
    await page.waitForTimeout(300); // the IndexedDB commit
    await ctx.close(); // the browser ends
    ctx = null;
    ctx = await launchPersistent(profile);
    page = await open(ctx);
    assert.equal(await page.evaluate(() => window.tabs.pendingWrites().length), 1, 'the write is back from IndexedDB');
    await server.restart();
    await page.waitForFunction(() => window.tabs.status === 'open' && window.tabs.pendingWrites().length === 0, null, { timeout: 20_000 });
    await ctx.close();
    ctx = null;
    const names = await serverNames();
    assert.equal(names.filter((n) => n === 'Across a browser restart').length, 1, String(names));
  } finally {
    await ctx?.close();
    rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  }
});
