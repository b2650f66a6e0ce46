// The JS client's stream views and subscription identity in headless
// Chromium against the real server binary: a pending write moves a row in
// and out of a stream view at once (and a refusal brings it back), a context
// closed and reopened any number of times keeps the newest subscription, and
// the inspector's Open button on the open context keeps its rows.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { inspector, launchBrowser, startServer } from './support.js';

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

/** A blank page of the server's origin, so that it can import the client modules. */
async function page() {
  const context = await browser.newContext();
  const p = await context.newPage();
  const errors = [];
  p.on('pageerror', (e) => errors.push(e));
  await p.goto(`${server.http}/healthz`);
  return { page: p, errors, close: () => context.close() };
}

test('a pending write moves a row in and out of a stream view at once, and a refusal brings it back', async () => {
  const { page: p, errors, close } = await page();
  try {
    const steps = await p.evaluate(async (wsUrl) => {
      const { StatecastClient } = await import('/statecast.js');
      const client = new StatecastClient({ url: wsUrl, token: 'alice' });
      await client.connect();
      const job = client.subscribe('job', 1);
      await job.ready;
      const view = client.stream('tasks', { filters: { job: 1, status: 'todo' }, snapshot: true });
      await view.ready;
      const ids = () => view.rows().map((r) => `${r.id}${r._pending ? '*' : ''}`);
      const removed = [];
      view.onChange((e) => removed.push(...e.removed.map((r) => r.id)));
      const out = { snapshot: ids() };
      // Task 1 is alice's: the save is allowed; the row leaves the view before the answer.
      const save = job.save('Task', 1, { status: 'done' });
      out.afterSave = ids();
      await save;
      await new Promise((r) => setTimeout(r, 200));
      out.afterConfirm = ids();
      // Back to todo: it moves in at once.
      const back = job.save('Task', 1, { status: 'todo' });
      out.movedIn = ids();
      await back;
      await new Promise((r) => setTimeout(r, 200));
      out.movedInConfirmed = ids();
      // Task 2 is bob's: the demo policy refuses; the row leaves at once and comes back.
      const refused = job.save('Task', 2, { status: 'doing' });
      out.refusedPending = ids();
      out.refusal = await refused.then(() => 'ok', (e) => `${e.code} ${e.reason}`);
      out.afterRefusal = ids();
      // A create under the context shows in the matching view at once.
      const created = job.create('Task', { name: 'Fresh' });
      out.createPending = view.get(created.id)?._pending === true;
      await created;
      await new Promise((r) => setTimeout(r, 200));
      out.createConfirmed = view.get(created.id)?._pending === false;
      out.removedTask1 = removed.filter((id) => id === 1).length;
      client.close();
      return out;
    }, server.ws);
    assert.deepEqual(steps.snapshot, ['1', '2']);
    assert.deepEqual(steps.afterSave, ['2'], 'out at once');
    assert.deepEqual(steps.afterConfirm, ['2'], 'still out: no flicker on confirmation');
    assert.deepEqual(steps.movedIn, ['1*', '2'], 'in at once, pending');
    assert.deepEqual(steps.movedInConfirmed, ['1', '2']);
    assert.deepEqual(steps.refusedPending, ['1'], 'task 2 out while pending');
    assert.equal(steps.refusal, '403 DENIED');
    assert.deepEqual(steps.afterRefusal, ['1', '2'], 'rolled back into the view');
    assert.equal(steps.createPending, true);
    assert.equal(steps.createConfirmed, true);
    assert.equal(steps.removedTask1, 1, 'task 1 left the view once (never left and came back on confirmation)');
    assert.deepEqual(errors, []);
  } finally {
    await close();
  }
});

test('a scoped id stream (my-tasks): the scope the server reports moves rows in and out at once, and never shows another user’s row', async () => {
  const { page: p, errors, close } = await page();
  try {
    const out = await p.evaluate(async (wsUrl) => {
      const { StatecastClient } = await import('/statecast.js');
      // carol is an admin: she may reassign tasks; my-tasks shows her the tasks assigned to her (none yet).
      const client = new StatecastClient({ url: wsUrl, token: 'carol' });
      await client.connect();
      const job = client.subscribe('job', 1);
      await job.ready;
      const mine = client.stream('my-tasks', { snapshot: true });
      await mine.ready;
      const ids = () => mine.rows().map((r) => `${r.id}${r._pending ? '*' : ''}`);
      const out = { scope: mine.scope, start: ids() };
      const take = job.save('Task', 2, { assignee: 3 });
      out.takePending = ids();
      await take;
      await new Promise((r) => setTimeout(r, 300));
      out.taken = ids();
      const give = job.save('Task', 2, { assignee: 1 });
      out.givePending = ids();
      await give;
      await new Promise((r) => setTimeout(r, 300));
      out.given = ids();
      const theirs = job.create('Task', { name: 'For alice', assignee: 1 });
      out.theirs = mine.get(theirs.id) === undefined && job.get('Task', theirs.id) !== undefined;
      await theirs.catch(() => {}); // carol is no member of the project: refused, and gone
      client.close();
      return out;
    }, server.ws);
    assert.deepEqual(out, {
      scope: { assignee: 3 },
      start: [],
      takePending: ['2*'],
      taken: ['2'],
      givePending: [],
      given: [],
      theirs: true,
    });
    assert.deepEqual(errors, []);
  } finally {
    await close();
  }
});

test('closing and reopening a context any number of times keeps the newest subscription; a save then succeeds', async () => {
  const { page: p, errors, close } = await page();
  try {
    const out = await p.evaluate(async (wsUrl) => {
      const { StatecastClient } = await import('/statecast.js');
      const client = new StatecastClient({ url: wsUrl, token: 'alice' });
      await client.connect();
      let ctx;
      // As a route re-entry or StrictMode's double mount does: close and reopen, not waiting for the server.
      for (let i = 0; i < 20; i += 1) {
        ctx = client.subscribe('job', 1);
        if (i % 3 === 0) await new Promise((r) => setTimeout(r, 5)); // some answers arrive in between
        ctx.close();
      }
      ctx = client.subscribe('job', 1);
      const ready = await ctx.ready.then(() => 'ready', (e) => `${e.code} ${e.reason}`);
      await new Promise((r) => setTimeout(r, 300)); // every late answer to the closed ones arrives
      const result = await ctx.save('Task', 1, { notes: 'after reopening' }).then(() => 'ok', (e) => `${e.code} ${e.reason}`);
      const tasks = ctx.rows('Task').map((r) => r.id).sort((a, b) => a - b);
      const out = { ready, status: ctx.status, result, notes: ctx.get('Task', 1)?.notes, tasks };
      // The same with a stream view.
      for (let i = 0; i < 10; i += 1) client.stream('tasks', { filters: { job: 1 }, snapshot: true }).close();
      const view = client.stream('tasks', { filters: { job: 1 }, snapshot: true });
      out.stream = await view.ready.then(() => view.rows().map((r) => r.id).sort((a, b) => a - b), (e) => `${e.code} ${e.reason}`);
      client.close();
      return out;
    }, server.ws);
    const { tasks, stream, ...rest } = out;
    assert.deepEqual(rest, { ready: 'ready', status: 'ready', result: 'ok', notes: 'after reopening' });
    assert.ok(tasks.includes(1) && tasks.includes(2), JSON.stringify(tasks));
    assert.deepEqual(stream, tasks, 'the reopened stream view holds the job-1 tasks');
    assert.deepEqual(errors, []);
  } finally {
    await close();
  }
});

test('the inspector’s Open button on the context already open keeps its rows', async () => {
  const alice = await inspector(browser, server, 'alice');
  try {
    const before = await alice.page.locator('tr[data-type="Task"]').count();
    assert.ok(before > 0);
    await alice.page.locator('#subscribe').click();
    await alice.page.locator('#subscribe').click();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await alice.page.locator('tr[data-type="Task"]').count(), before);
    assert.equal(await alice.page.evaluate(() => window.statecastInspector.ctx.status), 'ready');
    assert.deepEqual(alice.errors, []);
  } finally {
    await alice.close();
  }
});
