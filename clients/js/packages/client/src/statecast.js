// Statecast's JavaScript client: JSON over WebSocket, no dependencies.
// The optimistic state lives in `replica.js`; this module moves frames,
// reconnects with backoff and jitter, and runs the write timeouts.

import {
  Context,
  Replica,
  StatecastError,
  StreamView,
  compileFilters,
  mergeFilters,
  MAX_PRESENCE_BYTES,
  MINTED_END,
  MINTED_MIN,
  PRESENCE_RATE,
  deferred,
  mintId,
  newClientId,
  rowKey,
} from './replica.js';
import { IdbStorage } from './idb.js';

export { IdbStorage };
export { TabClient, TabContext, TabStream } from './tabs.js';

export {
  Context,
  Replica,
  StatecastError,
  StreamView,
  MAX_PRESENCE_BYTES,
  MINTED_END,
  MINTED_MIN,
  PRESENCE_RATE,
  compileFilters,
  mergeFilters,
  mintId,
  newClientId,
  rowKey,
};

/** The protocol version this client speaks. */
export const PROTOCOL = 1;

const DEFAULTS = {
  writeTimeout: 30_000,
  minReconnectDelay: 250,
  maxReconnectDelay: 10_000,
  tickInterval: 200,
};

/**
 * A connection to a Statecast server that keeps subscribing, writing and
 * resending across reconnects.
 *
 *     const client = new StatecastClient({ url: 'ws://127.0.0.1:7100/ws', token: 'alice' });
 *     const job = client.subscribe('job', 1);
 *     job.onChange(() => render(job.rows('Task')));
 *     await job.ready;
 *     await job.save('Task', 1, { status: 'doing' });
 */
export class StatecastClient {
  constructor(options) {
    if (!options?.url) throw new TypeError('StatecastClient needs options.url (ws://host:port/ws)');
    if (options.storage === 'indexeddb') {
      throw new TypeError("storage: 'indexeddb' loads before the client starts: use `await StatecastClient.open(options)` or a TabClient");
    }
    this.options = { ...DEFAULTS, ...options };
    this.url = options.url;
    this.token = options.token ?? '';
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) {
      throw new TypeError('no WebSocket here: pass options.WebSocket (in Node 20, the `ws` package)');
    }
    this.replica = new Replica({
      clientId: options.clientId,
      ids: options.ids,
      writeTimeout: this.options.writeTimeout,
      now: options.now,
      storage: options.storage,
      storageKey: options.storageKey ?? `statecast:${options.url}`,
      send: (frame) => this.sendFrame(frame),
      wake: (ms) => this.wakeIn(ms),
    });
    /** 'idle', 'connecting', 'open', 'reconnecting' or 'closed'. */
    this.status = 'idle';
    this.ws = null;
    this.attempt = 0;
    this.welcome = null;
    this.fatal = null;
    this.reconnectTimer = null;
    this.ticker = null;
    this.wakeTimer = null;
    this.listeners = { status: new Set(), frame: new Set(), error: new Set(), welcome: new Set() };
    this.firstWelcome = null;
  }

  /**
   * Makes a client whose `storage` may be `'indexeddb'` (the queue is loaded
   * from IndexedDB first; each write is sent only once the queue holding it
   * is committed there). Other options as the constructor takes them.
   */
  static async open(options) {
    if (options?.storage !== 'indexeddb') return new StatecastClient(options);
    const key = options.storageKey ?? `statecast:${options.url}`;
    const storage = await IdbStorage.open(key);
    return new StatecastClient({ ...options, storage, storageKey: key });
  }

  /** The client's id (one write queue): 32 hex digits, the same across reconnects. */
  get clientId() {
    return this.replica.clientId;
  }

  /** The signed-in user from the last `welcome`. */
  get user() {
    return this.replica.user;
  }

  /** The schema and channels from the last `welcome`. */
  get schema() {
    return this.replica.schema;
  }

  /** Opens the connection (again, after `close`); resolves with the first `welcome`. */
  connect() {
    if (this.status === 'idle' || this.status === 'closed') {
      this.fatal = null;
      this.closing = false;
      this.attempt = 0;
      this.firstWelcome = deferred();
      this.firstWelcome.promise.catch(() => {}); // a caller that doesn't await connect() sees the `error` event
      this.ticker = setInterval(() => this.replica.tick(), this.options.tickInterval);
      this.ticker.unref?.();
      this.open();
    }
    return this.firstWelcome.promise;
  }

  /** Closes the connection for good; unsettled writes fail with CLIENT_CLOSED. */
  close() {
    this.closing = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.ticker);
    clearTimeout(this.wakeTimer);
    this.wakeTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, 'client closed');
      } catch {
        // already closed
      }
    }
    this.replica.disconnected();
    this.replica.failAll(new StatecastError(499, 'CLIENT_CLOSED', 'the client was closed'));
    this.firstWelcome?.reject(new StatecastError(499, 'CLIENT_CLOSED', 'the client was closed'));
    this.setStatus('closed');
  }

  /** Subscribes to `channel/anchorId` (once; later calls return the same context). */
  subscribe(channel, anchorId) {
    return this.replica.subscribe(channel, anchorId);
  }

  /**
   * Opens a live view of stream `name`: `{filters, fields, id, actions,
   * snapshot}` as the stream subscribe takes them. The view's rows are the
   * snapshot kept current by events, with this client's pending writes on
   * top; a reconnect resumes it with `since` (a fresh snapshot when the
   * server's log no longer reaches back).
   */
  stream(name, options = {}) {
    return this.replica.stream(name, options);
  }

  /** A subscribed context by name (`"job/1"`). */
  context(name) {
    return this.replica.contexts.get(name);
  }

  /** Every subscribed context. */
  contexts() {
    return [...this.replica.contexts.values()];
  }

  /** The writes not answered yet, in order. */
  pendingWrites() {
    return this.replica.pendingWrites();
  }

  /**
   * Sets this client's presence in context `name` (`"job/1"`), as
   * `context(name).setPresence(data)` does; throws a StatecastError 400
   * `NOT_SUBSCRIBED` when the client does not hold that context.
   */
  setPresence(name, data) {
    const ctx = this.context(name);
    if (!ctx) throw new StatecastError(400, 'NOT_SUBSCRIBED', `${name} is not subscribed: subscribe before setting a presence there`, { context: name });
    ctx.setPresence(data);
  }

  /** The other connections' presence in context `name` (empty when it is not subscribed). */
  presence(name) {
    return this.context(name)?.presence() ?? [];
  }

  /** Uses a new token: sent at once (`auth`) on a live connection, and in every later `hello`. */
  setToken(token) {
    this.token = token;
    if (this.status === 'open') this.sendFrame({ type: 'auth', token });
  }

  /**
   * Listens to `change` (a view changed: `{context, cause, added, updated, removed}`),
   * `write` (a write's status moved), `status`, `frame` (`{dir, text}` for
   * every frame in or out), `error` (a server error not tied to a write or
   * context, or a refused presence), `presence` (any context's presence
   * changed: `{context, cause, presence, entry}`) or `welcome`. Returns a function that stops listening.
   */
  on(event, fn) {
    if (event === 'change') return this.replica.onChange(fn);
    if (event === 'presence') return this.replica.onPresence(fn);
    if (event === 'write') return this.replica.onWrite(fn);
    const set = this.listeners[event];
    if (!set) throw new TypeError(`unknown event \`${event}\``);
    set.add(fn);
    return () => set.delete(fn);
  }

  // ---- the socket ------------------------------------------------------------

  open() {
    this.setStatus(this.attempt === 0 && !this.welcome ? 'connecting' : 'reconnecting');
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      this.emit('error', new StatecastError(0, 'CONNECT_FAILED', `can't open ${this.url}: ${e.message}`));
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      const hello = { type: 'hello', protocol: PROTOCOL, token: this.token, clientId: this.replica.clientId };
      const pending = this.replica.pendingWriteIds();
      if (pending.length) hello.pending = pending;
      this.sendRaw(ws, hello);
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws || typeof ev.data !== 'string') return;
      this.emit('frame', { dir: 'in', text: ev.data });
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.handle(ws, msg);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.replica.disconnected();
      if (this.closing || this.fatal) this.setStatus('closed');
      else this.scheduleReconnect();
    };
    ws.onerror = () => {
      // `close` follows; reconnecting happens there.
    };
  }

  handle(ws, msg) {
    switch (msg.type) {
      case 'welcome':
        this.attempt = 0;
        this.welcome = msg;
        this.replica.connected(msg);
        this.setStatus('open');
        this.emit('welcome', msg);
        this.firstWelcome?.resolve(msg);
        return;
      case 'error':
        if (!this.replica.online && (msg.code === 401 || msg.reason === 'UNSUPPORTED_PROTOCOL')) {
          // Retrying the same hello can't help: stop, and fail what waits.
          this.fatal = StatecastError.from(msg);
          this.emit('error', this.fatal);
          this.replica.failAll(this.fatal);
          this.firstWelcome?.reject(this.fatal);
          clearInterval(this.ticker);
          ws.close();
          this.setStatus('closed');
          return;
        }
        if (!msg.context || this.replica.isPresenceError(msg)) this.emit('error', StatecastError.from(msg, { context: msg.context }));
        this.replica.receive(msg);
        return;
      case 'goaway':
        // The server drains: reconnect (the contexts resume with `since`).
        ws.close();
        return;
      default:
        this.replica.receive(msg);
    }
  }

  /** The replica asks to flush the presence frames that wait for their turn in `ms` ms. */
  wakeIn(ms) {
    if (this.wakeTimer) return; // one already comes at least as early
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = null;
      this.replica.flushPresence();
    }, Math.max(1, Math.ceil(ms)));
    this.wakeTimer.unref?.();
  }

  scheduleReconnect() {
    this.setStatus('reconnecting');
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const ceiling = Math.min(max, min * 2 ** this.attempt);
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2; // backoff with jitter
    this.attempt += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  sendFrame(frame) {
    if (!this.ws || !this.replica.online) return;
    const storage = this.replica.storage;
    if (!this.outbox && typeof storage?.whenDurable !== 'function') {
      this.sendRaw(this.ws, frame);
      return;
    }
    // An asynchronous storage (IndexedDB): frames wait, in order, until the
    // queue that holds their writes is committed (it is saved right after a
    // write is queued, in the same task).
    if (!this.outbox) {
      this.outbox = [];
      queueMicrotask(() => this.drain());
    }
    this.outbox.push({ ws: this.ws, frame });
  }

  async drain() {
    while (this.outbox?.length) {
      const batch = this.outbox;
      this.outbox = [];
      const durable = this.replica.storage?.whenDurable?.();
      if (durable) await durable;
      for (const { ws, frame } of batch) {
        if (ws === this.ws && this.replica.online) this.sendRaw(ws, frame);
      }
    }
    this.outbox = null;
  }

  sendRaw(ws, frame) {
    const text = JSON.stringify(frame);
    try {
      ws.send(text);
    } catch {
      return; // the socket is closing; its close handler takes over
    }
    this.emit('frame', { dir: 'out', text });
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit('status', status);
  }

  emit(event, value) {
    for (const fn of [...this.listeners[event]]) fn(value);
  }
}

/** Is this view row touched by a pending write? */
export function isPending(row) {
  return row?._pending === true;
}
