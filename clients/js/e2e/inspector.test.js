// The inspector in headless Chromium against the real server binary: two
// pages see each other's writes, writes the demo policy refuses roll back on
// screen with their code and reason, the frames are viewable, and a
// screenshot is left in target/e2e/inspector.png.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { artifactDir, inspector, launchBrowser, startServer } from './support.js';

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

const taskRow = (page, id) => page.locator(`tr[data-type="Task"][data-id="${id}"]`);
const taskCell = (page, id, field) => taskRow(page, id).locator(`td[data-field="${field}"]`);
const exactly = (text) => new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);

/** Waits until the cell shows exactly `text`. */
const cellShows = (page, id, field, text) =>
  page.locator(`tr[data-type="Task"][data-id="${id}"] td[data-field="${field}"]`, { hasText: exactly(text) }).waitFor();

/** Records every text the Task table shows (class and name of each row) from now on. */
async function recordTaskTable(page) {
  await page.evaluate(() => {
    window.__seen = [];
    const snap = () =>
      window.__seen.push(
        [...document.querySelectorAll('tr[data-type="Task"]')].map(
          (tr) => `${tr.className || 'canonical'}|${tr.dataset.id}|${tr.querySelector('[data-field="name"]')?.textContent}`,
        ),
      );
    new MutationObserver(snap).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
}

const seen = (page) => page.evaluate(() => window.__seen);

test('two pages see each other’s writes', async () => {
  const alice = await inspector(browser, server, 'alice');
  const bob = await inspector(browser, server, 'bob');
  try {
    // alice is task 1's assignee: she moves its status with the select editor.
    await taskCell(alice.page, 1, 'status').click();
    await alice.page.locator('select[data-editing="status"]').selectOption(JSON.stringify('doing'));
    await cellShows(alice.page, 1, 'status', 'doing');
    await cellShows(bob.page, 1, 'status', 'doing');

    // bob creates a task; alice sees it once, with the id bob's client minted.
    const form = bob.page.locator('form[data-create="Task"]');
    await form.locator('input[name="name"]').fill('Plan the launch party');
    await form.locator('button[type="submit"]').click();
    const bobsRow = bob.page.locator('tr[data-type="Task"]', { hasText: 'Plan the launch party' });
    await bobsRow.waitFor();
    const id = await bobsRow.getAttribute('data-id');
    assert.ok(Number(id) >= 2 ** 52, `a client-minted id, got ${id}`);
    await cellShows(alice.page, id, 'name', 'Plan the launch party');
    assert.equal(await alice.page.locator('tr[data-type="Task"]', { hasText: 'Plan the launch party' }).count(), 1);
    await cellShows(alice.page, id, 'created_by', '#2'); // bob: a user row alice's page does not hold
    // bob's page showed the row at once as pending, then canonical under the same key.
    const events = await bob.page.evaluate(() => window.statecastInspector.events);
    const keyed = events.flatMap((e) => [...e.added, ...e.updated]).filter((k) => k.startsWith(`Task:${id}:`));
    assert.deepEqual([keyed[0], keyed.at(-1)], [`Task:${id}:pending`, `Task:${id}:canonical`], JSON.stringify(events));

    // bob created task 2, so he may delete it; it leaves alice's page.
    await taskRow(bob.page, 2).locator('button', { hasText: 'delete' }).click();
    await taskRow(alice.page, 2).waitFor({ state: 'detached' });
    await taskRow(bob.page, 2).waitFor({ state: 'detached' });

    // The tree shows the new task under job 1's tasks.
    await alice.page.locator('#tree .node', { hasText: 'Plan the launch party' }).waitFor();
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  } finally {
    await alice.close();
    await bob.close();
  }
});

test('a save the policy refuses rolls back on screen with its code and reason', async () => {
  const alice = await inspector(browser, server, 'alice');
  try {
    await recordTaskTable(alice.page);
    // alice is the assignee of task 1 but may change only its status and notes.
    await taskCell(alice.page, 1, 'name').click();
    const input = alice.page.locator('input[data-editing="name"]');
    await input.fill('Mine now');
    await input.press('Enter');
    const notice = alice.page.locator('#notices .notice', { hasText: '403 DENIED' });
    await notice.waitFor();
    assert.match(await notice.textContent(), /refused/);
    await cellShows(alice.page, 1, 'name', 'Write docs');
    assert.equal(await taskRow(alice.page, 1).getAttribute('class'), '');
    const history = await seen(alice.page);
    assert.ok(
      history.some((rows) => rows.includes('pending|1|Mine now')),
      `the optimistic value was on screen: ${JSON.stringify(history)}`,
    );
    assert.ok(history.at(-1).includes('canonical|1|Write docs'), JSON.stringify(history));
    // The writes log names the refusal with its code and reason.
    const refused = alice.page.locator('#writes li[data-status="refused"]').first();
    assert.match(await refused.textContent(), /403 DENIED/);
    assert.deepEqual(alice.errors, []);
  } finally {
    await alice.close();
  }
});

test('a create the policy refuses appears at once, then disappears with 403 DENIED', async () => {
  // carol, an admin but not a member of the project, reads the job and may not create.
  const carol = await inspector(browser, server, 'carol');
  try {
    await recordTaskTable(carol.page);
    const before = await carol.page.locator('tr[data-type="Task"]').count();
    const form = carol.page.locator('form[data-create="Task"]');
    await form.locator('input[name="name"]').fill('Sneaky task');
    await form.locator('button[type="submit"]').click();
    await carol.page.locator('#notices .notice', { hasText: '403 DENIED' }).waitFor();
    await carol.page.locator('tr[data-type="Task"]', { hasText: 'Sneaky task' }).waitFor({ state: 'detached' });
    assert.equal(await carol.page.locator('tr[data-type="Task"]').count(), before);
    const history = await seen(carol.page);
    assert.ok(
      history.some((rows) => rows.some((r) => r.startsWith('pending|') && r.endsWith('|Sneaky task'))),
      `the ghost row was on screen, marked pending: ${JSON.stringify(history)}`,
    );
    assert.deepEqual(carol.errors, []);
  } finally {
    await carol.close();
  }
});

test('raw frames are viewable, and a screenshot of the inspector is saved', async () => {
  const carol = await inspector(browser, server, 'carol');
  const alice = await inspector(browser, server, 'alice');
  try {
    // carol (admin) renames a task; alice sees the delta arrive.
    await taskCell(carol.page, 1, 'notes').click();
    const notes = carol.page.locator('input[data-editing="notes"]');
    await notes.fill('reviewed by carol');
    await notes.press('Enter');
    await cellShows(alice.page, 1, 'notes', 'reviewed by carol');

    const delta = alice.page.locator('#frames li[data-type="delta"]').last();
    await delta.waitFor();
    await delta.click();
    const pre = delta.locator('pre');
    await pre.waitFor();
    const frame = JSON.parse(await pre.textContent());
    assert.equal(frame.type, 'delta');
    assert.equal(frame.context, 'job/1');
    assert.equal(frame.changes[0].notes, 'reviewed by carol');
    assert.equal(frame.writeId, undefined, 'only the writer’s copy carries writeId');

    // A refused write on screen for the picture: alice may not rename task 1.
    await taskCell(alice.page, 1, 'name').click();
    const name = alice.page.locator('input[data-editing="name"]');
    await name.fill('Renamed');
    await name.press('Enter');
    await alice.page.locator('#notices .notice', { hasText: '403 DENIED' }).waitFor();
    await cellShows(alice.page, 1, 'name', 'Write docs');
    const path = join(artifactDir(), 'inspector.png');
    await alice.page.screenshot({ path, fullPage: true });
    assert.deepEqual([...alice.errors, ...carol.errors], []);
  } finally {
    await carol.close();
    await alice.close();
  }
});

test('a refused token is shown with its code and the page stays signed out', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${server.http}/`);
    await page.locator('#token').fill('mallory');
    await page.locator('#connect').click();
    await page.locator('#notices .notice', { hasText: '401 UNAUTHENTICATED' }).waitFor();
    await page.locator('#status[data-status="closed"]').waitFor();
    assert.equal(await page.locator('#notices .notice').count(), 1);
    assert.equal(await page.locator('#subscribe').isDisabled(), true);
  } finally {
    await context.close();
  }
});

test('a write made while the server is down shows pending, then lands after the reconnect', async () => {
  const alice = await inspector(browser, server, 'alice');
  try {
    await server.kill();
    await alice.page.locator('#status[data-status="reconnecting"]').waitFor();
    await taskCell(alice.page, 1, 'notes').click();
    const notes = alice.page.locator('input[data-editing="notes"]');
    await notes.fill('written offline');
    await notes.press('Enter');
    await cellShows(alice.page, 1, 'notes', 'written offline');
    assert.equal(await taskRow(alice.page, 1).getAttribute('class'), 'pending');
    await alice.page.screenshot({ path: join(artifactDir(), 'inspector-offline.png'), fullPage: true });

    await server.restart(); // same port, same data
    await alice.page.locator('#status[data-status="open"]').waitFor();
    await alice.page.locator('#writes li[data-status="confirmed"]', { hasText: 'written offline' }).waitFor();
    await alice.page.locator('tr[data-type="Task"][data-id="1"]:not(.pending)').waitFor();
    await cellShows(alice.page, 1, 'notes', 'written offline');

    const bob = await inspector(browser, server, 'bob');
    try {
      await cellShows(bob.page, 1, 'notes', 'written offline');
    } finally {
      await bob.close();
    }
    assert.deepEqual(alice.errors, []);
  } finally {
    await alice.close();
  }
});
