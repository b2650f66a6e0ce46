// A measurement, not a test: the React example (examples/react-tasks, built)
// in headless Chromium against the real server, on a job of 10,000 tasks.
//   1. From the state (its last frame arriving at the client) to the first
//      render of all 10,000 rows (React's commit, seen by a MutationObserver).
//   2. From a delta that changes one row (another user's save) to the
//      re-render of that row: the median and p95 of ROUNDS deltas.
// Usage: node bench/react-render.mjs   (STATECAST_SERVER_BIN as for e2e/)

import { join } from 'node:path';
import { REPO, launchBrowser, startServer } from '../e2e/support.js';
import { serve } from '../../../examples/serve.mjs';

const ROWS = 10_000;
const ROUNDS = Number(process.env.ROUNDS ?? 60);

const server = await startServer();
const site = await serve(join(REPO, 'examples/react-tasks/dist'));
const browser = await launchBrowser();
try {
  // bob fills job 2 with 10,000 tasks, 1,000 per batch.
  const admin = await (await browser.newContext()).newPage();
  await admin.goto(`${server.http}/healthz`);
  await admin.evaluate(
    async ({ ws, rows }) => {
      const { StatecastClient } = await import('/statecast.js');
      const client = new StatecastClient({ url: ws, token: 'bob', writeTimeout: 120_000 });
      await client.connect();
      const job = client.subscribe('job', 2);
      await job.ready;
      for (let done = 0; done < rows; done += 1000) {
        await job.batch((b) => {
          for (let i = done; i < Math.min(rows, done + 1000); i++) b.create('Task', { name: `Bench task ${i}`, assignee: 2 });
        });
      }
      window.client = client;
      window.job = job;
    },
    { ws: server.ws, rows: ROWS },
  );

  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  // Hooks before the app runs: the leader's frames and the DOM's mutations.
  await page.addInitScript((rows) => {
    window.bench = { stateAt: null, renderAt: null, deltas: new Map(), renders: [] };
    let value;
    Object.defineProperty(window, 'statecast', {
      configurable: true,
      get: () => value,
      set(v) {
        value = v;
        v.on('role', (role) => {
          if (role !== 'leader') return;
          v.client.on('frame', ({ dir, text }) => {
            if (dir !== 'in') return;
            if (text.startsWith('{"type":"state"') && window.bench.stateAt === null) {
              const m = JSON.parse(text);
              if (m.part == null || m.last) window.bench.stateAt = performance.now();
            } else if (text.startsWith('{"type":"delta"')) {
              window.bench.lastDelta = performance.now();
            }
          });
        });
      },
    });
    new MutationObserver(() => {
      // The list with every row in it: rendered whole, or windowed (then it says how many rows it holds).
      const list = document.querySelector('.tasks');
      const count = list ? Number(list.dataset.count ?? list.childElementCount) : 0;
      if (window.bench.renderAt === null && count >= rows) window.bench.renderAt = performance.now();
    }).observe(document, { childList: true, subtree: true });
  }, ROWS + 1);
  await page.goto(`${site.url}/?token=alice&job=2&ws=${encodeURIComponent(server.ws)}`);
  await page.waitForFunction(() => window.bench.renderAt !== null, null, { timeout: 120_000 });
  const first = await page.evaluate(() => window.bench.renderAt - window.bench.stateAt);

  // One row re-rendered per delta: watch the data-status of a row in sight (one of bob's).
  const target = await page.evaluate(() => {
    const li = document.querySelectorAll('.tasks li')[5];
    window.bench.changes = [];
    window.statecast.context('job/2').onChange(() => window.bench.changes.push(performance.now() - window.bench.lastDelta));
    new MutationObserver(() => {
      window.bench.renders.push(performance.now() - window.bench.lastDelta);
    }).observe(li, { attributes: true, attributeFilter: ['data-status'] });
    return Number(li.dataset.id);
  });
  const statuses = ['doing', 'done', 'todo'];
  for (let i = 0; i < ROUNDS; i++) {
    await admin.evaluate(({ id, status }) => window.job.save('Task', id, { status }), { id: target, status: statuses[i % 3] });
    await page.waitForFunction((n) => window.bench.renders.length >= n, i + 1, { timeout: 10_000 });
  }
  const times = (await page.evaluate(() => window.bench.renders)).sort((a, b) => a - b);
  const median = times[Math.floor(times.length / 2)];
  const changes = (await page.evaluate(() => window.bench.changes)).sort((a, b) => a - b);
  console.log(`delta → the view's change event (the client's part): median ${changes[Math.floor(changes.length / 2)].toFixed(2)} ms`);
  const p95 = times[Math.floor(times.length * 0.95)];
  console.log(`rows in the context: ${ROWS + 1}`);
  console.log(`state → first render of all rows: ${first.toFixed(1)} ms`);
  console.log(`delta → re-render of one row: median ${median.toFixed(2)} ms, p95 ${p95.toFixed(2)} ms (${times.length} deltas)`);
} finally {
  await browser.close();
  await site.close();
  await server.stop();
}
