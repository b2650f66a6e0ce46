// End-to-end support: the real `statecast-server` binary on a fresh sled
// directory (port 0, learned from its `listening ws://…` line) and headless
// Chromium driven by Playwright.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** The server binary: $STATECAST_SERVER_BIN, else `cargo build -p statecast-server`'s output. */
export function serverBin() {
  if (process.env.STATECAST_SERVER_BIN) return process.env.STATECAST_SERVER_BIN;
  const target = process.env.CARGO_TARGET_DIR ? resolve(REPO, process.env.CARGO_TARGET_DIR) : join(REPO, 'target');
  const bin = join(target, 'debug', 'statecast-server');
  if (!existsSync(bin)) throw new Error(`no server binary at ${bin}: run \`cargo build -p statecast-server\` first`);
  return bin;
}

/** Where the tests leave artifacts (the screenshot): $STATECAST_E2E_OUT, else `<repo>/target/e2e`. */
export function artifactDir() {
  const dir = process.env.STATECAST_E2E_OUT ?? join(REPO, 'target', 'e2e');
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Starts the demo server on a free port with its own data directory. */
export async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), 'statecast-e2e-'));
  const server = {
    dir,
    child: null,
    stderr: '',
    ws: '',
    http: '',
    /** SIGKILL: the process dies at once. */
    async kill() {
      const child = server.child;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    },
    /** Starts it again on the same port and data directory. */
    async restart() {
      await server.kill();
      await launch(server, server.ws.replace(/^ws:\/\//, '').replace(/\/ws$/, ''));
    },
    async stop() {
      const child = server.child;
      if (child && child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
        await server.kill();
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await launch(server, '127.0.0.1:0');
  return server;
}

async function launch(server, addr) {
  const child = spawn(serverBin(), ['--ws-addr', addr, '--store', `sled:${join(server.dir, 'data')}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.child = child;
  child.stderr.on('data', (d) => {
    server.stderr += d;
  });
  const url = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server printed no listening line in 30 s\n${server.stderr}`)), 30_000);
    child.on('exit', (code) => reject(new Error(`the server exited (${code}) before listening\n${server.stderr}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /^listening (ws:\/\/\S+)$/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolveUrl(m[1]);
      }
    });
  });
  server.ws = url;
  server.http = url.replace(/^ws:/, 'http:').replace(/\/ws$/, '');
}

const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Chromium on a profile directory of its own (`dir`) that outlives the browser: a restart opens it again. */
export function launchPersistent(dir) {
  return chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ARGS,
  });
}

/** Headless Debian Chromium ($CHROMIUM, else /usr/bin/chromium) with the flags this machine needs. */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A page of its own (separate storage) with the inspector signed in as `token` on `job/anchor`. */
export async function inspector(browser, server, token, anchor = 1) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(`${server.http}/?token=${token}&channel=job&anchor=${anchor}`);
  await page.locator('#status[data-status="open"]').waitFor();
  await page.locator('tr[data-type="Task"]').first().waitFor();
  return { page, errors, close: () => context.close() };
}
