// The inspector's streams page and its fixes, in headless Chromium against
// the real server: pick a stream, lookups, actions and snapshot; see the live
// rows and the events with pending writes marked; references show the
// referenced row's name where the page holds it; a delete the policy refused
// takes that row's delete button away with the answer; minted ids don't wrap
// the tree; the header keeps one line while reconnecting; no demo tokens.

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

test('the streams page shows a stream’s live rows and events, pending writes marked', { timeout: 60_000 }, async () => {
  const alice = await inspector(browser, server, 'alice');
  const bob = await inspector(browser, server, 'bob');
  try {
    const p = alice.page;
    await p.getByRole('button', { name: 'Streams' }).click();
    await p.locator('#stream').selectOption('tasks');
    for (const [field, value] of [['job', '1'], ['status', 'todo']]) {
      await p.locator('#add-filter').click();
      const row = p.locator('#stream-filters .filter').last();
      await row.locator('[name=filter-field]').selectOption(field);
      await row.locator('[name=filter-value]').fill(value);
    }
    await p.locator('input[name=field][value=name]').check();
    await p.locator('input[name=field][value=status]').check();
    await p.locator('#open-stream').click();
    await p.locator('#stream-state', { hasText: 'subscribed' }).waitFor();
    await p.locator('tr[data-stream-row="1"]').waitFor();
    await p.locator('tr[data-stream-row="2"]').waitFor();
    // Only the fields asked for.
    assert.deepEqual(await p.locator('#stream-rows thead th').allInnerTexts(), ['id', 'name', 'status', 'version']);

    // bob's save of his task 2 to doing: an update that stops matching arrives as a delete.
    await bob.page.evaluate(() => window.statecastInspector.ctx.save('Task', 2, { status: 'doing' }));
    await p.locator('#stream-events li[data-kind="delete"]', { hasText: '#2' }).waitFor();
    await p.locator('tr[data-stream-row="2"]').waitFor({ state: 'detached' });

    // alice's own save: the row leaves at once (a pending event), then the server's delete.
    await p.evaluate(() => window.statecastInspector.ctx.save('Task', 1, { status: 'done' }));
    await p.locator('#stream-events li[data-kind="pending"]', { hasText: 'out: 1' }).waitFor();
    await p.locator('#stream-events li[data-kind="delete"]', { hasText: '#1' }).waitFor();
    // Back to todo: in at once, marked pending until confirmed.
    const back = p.evaluate(() => window.statecastInspector.ctx.save('Task', 1, { status: 'todo' }));
    await p.locator('#stream-events li[data-kind="pending"]', { hasText: 'in: 1' }).waitFor();
    await back;
    await p.locator('tr[data-stream-row="1"]:not(.pending)').waitFor();

    // A filter the server's lookups refuse is refused before subscribing, with the reason.
    await p.locator('#add-filter').click();
    const bad = p.locator('#stream-filters .filter').last();
    await bad.locator('[name=filter-field]').selectOption('job');
    await bad.locator('[name=filter-lookup]').selectOption('icontains');
    await bad.locator('[name=filter-value]').fill('x');
    await p.locator('#open-stream').click();
    await p.locator('.notice', { hasText: 'INVALID_FILTER' }).waitFor();
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  } finally {
    await alice.close();
    await bob.close();
  }
});

test('references show names, a refused delete takes its button away, minted ids stay on one line, no demo tokens', { timeout: 60_000 }, async () => {
  const bob = await inspector(browser, server, 'bob');
  try {
    const p = bob.page;
    // Task 3's creator is bob himself: his name; its assignee alice: a row bob's page does not hold.
    await p.locator('tr[data-type="Task"][data-id="2"] td[data-field="created_by"]', { hasText: 'bob (#2)' }).waitFor();
    // Task 1 was created by alice: the policy refuses bob's delete.
    const row = p.locator('tr[data-type="Task"][data-id="1"]');
    await row.locator('button', { hasText: 'delete' }).click();
    await row.locator('[data-denied="403 DENIED"]').waitFor();
    assert.equal(await row.locator('button', { hasText: 'delete' }).count(), 0);
    await p.locator('.notice', { hasText: '403 DENIED' }).waitFor();
    assert.match(await p.locator('.notice', { hasText: '403 DENIED' }).first().innerText(), /may not delete/);
    // A task with a minted (16-digit) id: its tree node keeps one line.
    const id = await p.evaluate(() => window.statecastInspector.ctx.create('Task', { name: 'A task with a long id' }).id);
    assert.ok(id >= 2 ** 52);
    const node = p.locator('.tree .node:not(.pending)', { hasText: 'A task with a long id' });
    await node.waitFor();
    await p.waitForFunction(() => window.statecastInspector.client.pendingWrites().length === 0);
    const box = await node.boundingBox();
    const line = await node.evaluate((el) => Number.parseFloat(getComputedStyle(el).lineHeight) || 20);
    assert.ok(box.height < line * 1.6, `one line: ${box.height}px`);
    // No tokens are suggested.
    assert.equal(await p.locator('datalist option').count(), 0);
    // The header keeps its height while reconnecting.
    const header = p.locator('header.bar');
    const before = (await header.boundingBox()).height;
    await server.kill();
    await p.locator('#status[data-status="reconnecting"]').waitFor();
    assert.equal((await header.boundingBox()).height, before);
    await server.restart();
    await p.locator('#status[data-status="open"]').waitFor({ timeout: 20_000 });
    assert.deepEqual(bob.errors, []);
  } finally {
    await bob.close();
  }
});
