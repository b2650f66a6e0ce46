// One client for all the tabs of an app: the tabs of one origin share one
// client id and one queue of writes. One tab leads: it holds the Web Lock
// named after the app (or, where the Web Locks API is missing, wins an
// election over BroadcastChannel heartbeats), opens the socket and keeps the
// queue in its storage (IndexedDB by default). The other tabs follow: they
// send their subscriptions and writes to the leader over a BroadcastChannel
// and render the views it sends back. When the leader tab closes or
// crashes, another tab takes the lock, restores the queue from storage and
// resends it with its writeIds (the server's exactly-once records answer a
// resend of an applied write with its recorded outcome); each follower hands
// its unanswered writes to the new leader again under their origin keys, which
// the restored queue recognises — so no write is lost and none is sent twice.
//
// Presence: the tabs share one connection, so the server shows one presence
// per context for all of them. Each tab sets its own (`TabContext.setPresence`);
// the leader sends, for each context, the presence of the tab that set one
// last (latest tab wins), and falls back to the next latest when that tab
// clears it, closes the context or leaves. Every tab sees the others'
// presence as the leader's connection sees it (never the other tabs' own).

import { IdbStorage } from './idb.js';
import { Context, Replica, StatecastError, deferred, mintId, presenceJson } from './replica.js';
import { StatecastClient } from './statecast.js';

const HEARTBEAT = 400;
const LEADER_TIMEOUT = 1600;
const NO_PRESENCE = Object.freeze([]);

function randomId() {
  const b = new Uint8Array(8);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** A plain, cloneable form of an error (code, reason, message, field, op, writeId). */
function plainError(e) {
  return {
    code: e?.code ?? 500,
    reason: e?.reason ?? 'INTERNAL',
    message: e?.message ?? String(e),
    field: e?.field,
    op: e?.op,
    writeId: e?.writeId,
    context: e?.context,
  };
}

function errorOf(p) {
  return new StatecastError(p.code, p.reason, p.message, p);
}

/** A cloneable write event (its error as plain data). */
function plainWrite(w) {
  const out = { ...w };
  if (w.error) out.error = plainError(w.error);
  return out;
}

function emitTo(listeners, value) {
  for (const fn of [...listeners]) {
    try {
      fn(value);
    } catch (e) {
      queueMicrotask(() => {
        throw e;
      });
    }
  }
}

/** The rows a follower shows, as the leader sent them. */
class Mirror {
  constructor() {
    this.status = 'loading';
    this.closeReason = null;
    this.list = [];
    this.byId = new Map();
    this.byType = new Map();
    this.presence = NO_PRESENCE;
  }

  set(rows, keyOf) {
    const before = this.byId;
    this.list = rows;
    this.byId = new Map();
    this.byType = new Map();
    const added = [];
    const updated = [];
    for (const r of rows) {
      const k = keyOf(r);
      this.byId.set(k, r);
      if (r.id !== r._key) this.byId.set(keyOf({ ...r, id: r._key }), r);
      const old = before.get(k);
      if (!old) added.push(r);
      else if (old._version !== r._version || old._pending !== r._pending || JSON.stringify(old) !== JSON.stringify(r)) updated.push(r);
    }
    const removed = [...new Set(before.values())].filter((r) => !this.byId.has(keyOf(r)));
    return { added, updated, removed };
  }
}

/** A context of a TabClient: the leader's Context in the leading tab, a mirror of it elsewhere. */
export class TabContext {
  constructor(tabs, channel, anchorId) {
    this.tabs = tabs;
    this.channel = channel;
    this.anchorId = anchorId;
    this.name = `${channel}/${anchorId}`;
    this.key = `context:${this.name}`;
    this.target = null;
    this.offTarget = null;
    this.mirror = new Mirror();
    this.listeners = new Set();
    this.closed = false;
    const ready = deferred();
    ready.promise.catch(() => {});
    this.readyDeferred = ready;
    this.ready = ready.promise;
    /** What this tab last set as its presence here (null: none). */
    this.myPresence = null;
    this.myPresenceJson = 'null';
    this.presenceListeners = new Set();
    this.offPresence = null;
  }

  get status() {
    if (this.closed) return 'closed';
    return this.target ? this.target.status : this.mirror.status;
  }

  get closeReason() {
    return this.target ? this.target.closeReason : this.mirror.closeReason;
  }

  /** The other connections' presence here, as the leader's connection sees it (see Context.presence). */
  presence() {
    if (this.closed) return NO_PRESENCE;
    return this.target ? this.target.presence() : this.mirror.presence;
  }

  /**
   * Sets this tab's presence here (null clears). The tabs share one
   * connection: the server shows the presence of the tab that set one last.
   * Throws as Context.setPresence does.
   */
  setPresence(data) {
    if (this.closed) throw new StatecastError(410, 'CONTEXT_CLOSED', `${this.name} is closed: no presence can be set there`, { context: this.name });
    const json = presenceJson(data, this.name);
    if (json === this.myPresenceJson) return;
    this.myPresence = JSON.parse(json);
    this.myPresenceJson = json;
    this.emitPresence({ context: this.name, cause: 'self', presence: this.presence(), entry: null });
    this.tabs.tabPresence(this);
  }

  onPresence(fn) {
    this.presenceListeners.add(fn);
    return () => this.presenceListeners.delete(fn);
  }

  emitPresence(event) {
    emitTo(this.presenceListeners, event);
    this.tabs.emit('presence', event);
  }

  /** Context.tree() reads the channel's edges from here. */
  get replica() {
    return { edges: (channel) => Replica.prototype.edges.call({ channelInfo: (c) => this.tabs.schema?.channels?.find((x) => x.name === c) }, channel) };
  }

  rows(type) {
    if (this.target) return this.target.rows(type);
    if (type === undefined) return this.mirror.list;
    let list = this.mirror.byType.get(type);
    if (!list) {
      list = this.mirror.list.filter((r) => r._type === type);
      this.mirror.byType.set(type, list);
    }
    return list;
  }

  get(type, id) {
    if (this.target) return this.target.get(type, id);
    return this.mirror.byId.get(`${type}:${id}`);
  }

  isPending(type, id) {
    return this.get(type, id)?._pending === true;
  }

  anchorType() {
    return this.tabs.schema?.channels?.find((c) => c.name === this.channel)?.anchor;
  }

  anchor() {
    return this.get(this.anchorType(), this.anchorId);
  }

  tree() {
    if (this.target) return this.target.tree();
    return Context.prototype.tree.call(this);
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  save(type, id, data, options = {}) {
    return this.tabs.write(this, 'save', [type, id, data, options]);
  }

  create(type, data = {}, options = {}) {
    const id = options.id ?? mintId();
    const handle = this.tabs.write(this, 'create', [type, data, { ...options, id }]);
    handle.id = id;
    return handle;
  }

  delete(type, id, options = {}) {
    return this.tabs.write(this, 'delete', [type, id, options]);
  }

  batch(build, options = {}) {
    const calls = [];
    const ids = [];
    build({
      save: (type, id, data, o = {}) => {
        calls.push(['save', type, id, data, o]);
      },
      create: (type, data = {}, o = {}) => {
        const id = o.id ?? mintId();
        calls.push(['create', type, data, { ...o, id }]);
        ids.push(id);
        return id;
      },
      delete: (type, id, o = {}) => {
        calls.push(['delete', type, id, o]);
      },
    });
    if (calls.length === 0) throw new TypeError('a batch needs at least one op');
    const handle = this.tabs.write(this, 'batch', [calls, options]);
    handle.ids = ids;
    return handle;
  }

  close() {
    this.tabs.closeView(this);
  }

  // ---- the TabClient's side

  attach(target) {
    this.offTarget?.();
    this.offPresence?.();
    this.target = target;
    this.offTarget = target.onChange((e) => emitTo(this.listeners, { ...e, context: this.name }));
    // The connection's own presence (`self`) is the tabs' latest, not this tab's: this tab reports its own.
    this.offPresence = target.onPresence((e) => e.cause !== 'self' && this.emitPresence({ ...e, context: this.name }));
    target.ready.then(
      () => this.readyDeferred.resolve(this),
      (e) => this.readyDeferred.reject(e),
    );
    const rows = target.rows();
    if (rows.length) emitTo(this.listeners, { context: this.name, cause: 'state', added: [], updated: rows, removed: [] });
    // A follower that now leads: the list is the one its own connection sees.
    if (target.presence().length || this.mirror.presence.length) {
      this.mirror.presence = NO_PRESENCE;
      this.emitPresence({ context: this.name, cause: 'state', presence: target.presence(), entry: null });
    }
  }

  update(msg) {
    this.mirror.status = msg.status;
    this.mirror.closeReason = msg.closeReason;
    const diff = this.mirror.set(msg.rows, (r) => `${r._type}:${r.id}`);
    if (msg.status === 'ready') this.readyDeferred.resolve(this);
    if (msg.status === 'closed' && msg.error) this.readyDeferred.reject(errorOf(msg.error));
    emitTo(this.listeners, { context: this.name, cause: msg.cause ?? 'state', ...diff });
  }

  /** The leader's connection's list of the others' presence, as the leader sent it. */
  updatePresence(msg) {
    if (!msg.presence?.length && !this.mirror.presence.length) return;
    this.mirror.presence = Object.freeze((msg.presence ?? []).map((e) => Object.freeze(e)));
    this.emitPresence({ context: this.name, cause: msg.cause ?? 'state', presence: this.mirror.presence, entry: msg.entry ?? null });
  }
}

/** A stream view of a TabClient: the leader's StreamView in the leading tab, a mirror of it elsewhere. */
export class TabStream {
  constructor(tabs, local, stream, options) {
    this.tabs = tabs;
    this.stream = stream;
    this.options = options;
    this.key = `stream:${tabs.tabId}:${local}`;
    this.target = null;
    this.offTarget = null;
    this.mirror = new Mirror();
    this.listeners = new Set();
    this.closed = false;
    const ready = deferred();
    ready.promise.catch(() => {});
    this.readyDeferred = ready;
    this.ready = ready.promise;
  }

  get status() {
    if (this.closed) return 'closed';
    return this.target ? this.target.status : this.mirror.status;
  }

  get closeReason() {
    return this.target ? this.target.closeReason : this.mirror.closeReason;
  }

  rows() {
    return this.target ? this.target.rows() : this.mirror.list;
  }

  get(id) {
    return this.target ? this.target.get(id) : this.mirror.byId.get(String(id));
  }

  isPending(id) {
    return this.get(id)?._pending === true;
  }

  type() {
    return this.tabs.schema?.streams?.find((s) => s.name === this.stream)?.type;
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  close() {
    this.tabs.closeView(this);
  }

  attach(target) {
    this.offTarget?.();
    this.target = target;
    this.offTarget = target.onChange((e) => emitTo(this.listeners, e));
    target.ready.then(
      () => this.readyDeferred.resolve(this),
      (e) => this.readyDeferred.reject(e),
    );
  }

  update(msg) {
    this.mirror.status = msg.status;
    this.mirror.closeReason = msg.closeReason;
    const diff = this.mirror.set(msg.rows, (r) => String(r.id));
    if (msg.status === 'ready') this.readyDeferred.resolve(this);
    if (msg.status === 'closed' && msg.error) this.readyDeferred.reject(errorOf(msg.error));
    emitTo(this.listeners, { stream: this.stream, cause: msg.cause ?? 'state', ...diff });
  }
}

/**
 * A client shared by the tabs of an app. Options are StatecastClient's, plus:
 * `storage` — `'indexeddb'` (the default where IndexedDB exists) or a
 * `localStorage`-like object; `name` — what tabs share (the lock, the
 * channel and the storage key; default `statecast:` + the url); `locks` —
 * `false` to elect the leader over BroadcastChannel heartbeats even where the
 * Web Locks API exists.
 *
 * It has the API of StatecastClient that apps use: `connect`, `close`,
 * `subscribe`, `stream`, `pendingWrites`, `on`, `status`, `user`, `schema`,
 * `clientId`, plus `role` (`electing`, `leader` or `follower`).
 */
export class TabClient {
  constructor(options) {
    if (!options?.url) throw new TypeError('TabClient needs options.url (ws://host:port/ws)');
    this.options = options;
    this.key = options.name ?? `statecast:${options.url}`;
    this.tabId = randomId();
    /** `electing`, `leader` or `follower`. */
    this.role = 'electing';
    this.status = 'idle';
    /** The StatecastClient, in the leading tab. */
    this.client = null;
    this.leaderId = null;
    this.user = null;
    this.schema = null;
    this.clientId = null;
    this.views = new Map(); // key → TabContext | TabStream (this tab's own)
    this.nextStream = 0;
    this.outstanding = new Map(); // origin → {req, deferred}: this tab's writes not answered yet
    this.nextOrigin = 0;
    this.remotePending = [];
    this.listeners = { change: new Set(), write: new Set(), pending: new Set(), status: new Set(), role: new Set(), error: new Set(), welcome: new Set(), presence: new Set() };
    // In the leading tab: what the follower tabs hold.
    this.served = new Map(); // `${tab}|${key}` → {tab, key, target, off, release}
    this.refs = new Map(); // context name → holders in the leading tab
    this.tabPresences = new Map(); // context name → Map<tab id, {json, order}>: each tab's presence there
    this.presenceOrder = 0;
    this.channel = null;
    this.started = null;
    this.closed = false;
  }

  /** Starts the election; resolves once this tab (as leader or follower) sees the connection open. */
  connect() {
    if (this.started) return this.started.promise;
    this.started = deferred();
    this.started.promise.catch(() => {});
    const BC = this.options.BroadcastChannel ?? globalThis.BroadcastChannel;
    if (BC) {
      this.channel = new BC(`statecast-tabs:${this.key}`);
      this.channel.onmessage = (ev) => this.onMessage(ev.data);
    }
    const locks = this.options.locks === false ? null : (this.options.locks ?? globalThis.navigator?.locks);
    this.setRole('follower');
    this.post({ t: 'hello' });
    if (locks) {
      const released = deferred();
      this.releaseLock = released.resolve;
      locks
        .request(`statecast-leader:${this.key}`, async () => {
          if (this.closed) return;
          await this.lead();
          await released.promise;
        })
        .catch((e) => this.emit('error', e));
    } else if (BC) {
      this.lastBeat = Date.now();
      this.claim = null;
      this.elector = setInterval(() => this.elect(), HEARTBEAT);
    } else {
      this.lead();
    }
    if (this.options.pageLifecycle !== false && typeof globalThis.addEventListener === 'function') {
      globalThis.addEventListener('pagehide', () => this.post({ t: 'bye' }));
    }
    return this.started.promise;
  }

  /** Leaves: a leader lets another tab take over; unanswered writes of this tab fail with CLIENT_CLOSED. */
  close() {
    this.closed = true;
    clearInterval(this.elector);
    clearInterval(this.beater);
    this.post({ t: 'bye' });
    if (this.client) this.client.close();
    this.releaseLock?.();
    for (const { deferred: d } of this.outstanding.values()) d.reject(new StatecastError(499, 'CLIENT_CLOSED', 'the client was closed'));
    this.outstanding.clear();
    this.channel?.close();
    this.setStatus('closed');
  }

  subscribe(channel, anchorId) {
    const key = `context:${channel}/${anchorId}`;
    let view = this.views.get(key);
    if (view && !view.closed) return view;
    view = new TabContext(this, channel, anchorId);
    this.views.set(key, view);
    this.open(view);
    return view;
  }

  stream(name, options = {}) {
    const view = new TabStream(this, ++this.nextStream, name, options);
    this.views.set(view.key, view);
    this.open(view);
    return view;
  }

  context(name) {
    const v = this.views.get(`context:${name}`);
    return v && !v.closed ? v : undefined;
  }

  contexts() {
    return [...this.views.values()].filter((v) => v instanceof TabContext && !v.closed);
  }

  pendingWrites() {
    return this.client ? this.client.pendingWrites() : this.remotePending;
  }

  /** Sets this tab's presence in context `name` (see TabContext.setPresence); 400 `NOT_SUBSCRIBED` when this tab does not hold it. */
  setPresence(name, data) {
    const view = this.context(name);
    if (!view) throw new StatecastError(400, 'NOT_SUBSCRIBED', `${name} is not subscribed: subscribe before setting a presence there`, { context: name });
    view.setPresence(data);
  }

  /** The other connections' presence in context `name` (empty when this tab does not hold it). */
  presence(name) {
    return this.context(name)?.presence() ?? [];
  }

  on(event, fn) {
    const set = this.listeners[event];
    if (!set) throw new TypeError(`unknown event \`${event}\``);
    set.add(fn);
    return () => set.delete(fn);
  }

  emit(event, value) {
    emitTo(this.listeners[event], value);
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit('status', status);
    if (status === 'open') this.started?.resolve(this);
  }

  setRole(role) {
    if (this.role === role) return;
    this.role = role;
    this.emit('role', role);
  }

  post(msg) {
    if (!this.channel || this.closed) return;
    try {
      this.channel.postMessage({ ...msg, from: this.tabId });
    } catch (e) {
      this.emit('error', e);
    }
  }

  // ---- views and writes, either role -----------------------------------------

  open(view) {
    if (this.client) this.attachLocal(view);
    else if (this.leaderId) this.requestView(view);
  }

  requestView(view) {
    if (view instanceof TabContext) {
      this.post({ t: 'sub', to: this.leaderId, key: view.key, kind: 'context', channel: view.channel, anchorId: view.anchorId });
    } else {
      this.post({ t: 'sub', to: this.leaderId, key: view.key, kind: 'stream', name: view.stream, options: view.options });
    }
  }

  closeView(view) {
    if (view.closed) return;
    const shown = view instanceof TabContext ? (view.target ? view.target.presence() : view.mirror.presence) : NO_PRESENCE;
    view.closed = true;
    if (this.views.get(view.key) === view) this.views.delete(view.key);
    if (view.target) {
      view.offTarget?.();
      view.offPresence?.();
      // The leading tab's presence there goes (a follower's goes with its `unsub`).
      if (view instanceof TabContext) this.leaderPresence(this.tabId, view.name, 'null');
      view.release?.();
    } else if (this.leaderId) {
      this.post({ t: 'unsub', to: this.leaderId, key: view.key });
    }
    emitTo(view.listeners, { context: view.name, stream: view.stream, cause: 'closed', added: [], updated: [], removed: view.rows() });
    if (shown.length) view.emitPresence({ context: view.name, cause: 'closed', presence: NO_PRESENCE, entry: null });
  }

  // ---- presence ---------------------------------------------------------------------

  /** This tab's presence in `view` changed: to the leader (this tab, or over the channel). */
  tabPresence(view) {
    if (this.client) this.leaderPresence(this.tabId, view.name, view.myPresenceJson);
    else if (this.leaderId) this.post({ t: 'presence', to: this.leaderId, context: view.name, json: view.myPresenceJson });
    // With no leader yet, the tab hands it over when one shows up.
  }

  /** In the leading tab: tab `tab`'s presence in context `name` is `json` ('null': none). */
  leaderPresence(tab, name, json) {
    let byTab = this.tabPresences.get(name);
    if (json === 'null') {
      if (!byTab?.delete(tab)) return;
      if (byTab.size === 0) this.tabPresences.delete(name);
    } else {
      if (!byTab) {
        byTab = new Map();
        this.tabPresences.set(name, byTab);
      }
      byTab.set(tab, { json, order: ++this.presenceOrder });
    }
    this.applyPresence(name);
  }

  /** The connection's presence in context `name`: the latest tab's, or none. */
  applyPresence(name) {
    const ctx = this.client?.context(name);
    if (!ctx) return;
    let latest = null;
    for (const p of this.tabPresences.get(name)?.values() ?? []) if (!latest || p.order > latest.order) latest = p;
    try {
      ctx.setPresence(latest ? JSON.parse(latest.json) : null);
    } catch (e) {
      this.emit('error', e);
    }
  }

  write(view, method, args) {
    const origin = `${this.tabId}:${++this.nextOrigin}`;
    const d = deferred();
    const handle = d.promise;
    handle.origin = origin;
    const req = { origin, context: view.name, channel: view.channel, anchorId: view.anchorId, method, args };
    this.outstanding.set(origin, { req, deferred: d });
    handle.then(
      () => this.outstanding.delete(origin),
      () => this.outstanding.delete(origin),
    );
    if (this.client) this.leaderWrite(req, d);
    else if (this.leaderId) this.post({ t: 'write', to: this.leaderId, req });
    return handle;
  }

  // ---- the leading tab ----------------------------------------------------------

  async lead() {
    if (this.client || this.closed) return;
    let storage = this.options.storage;
    if (storage === undefined) storage = globalThis.indexedDB ? 'indexeddb' : undefined;
    if (storage === 'indexeddb') storage = await IdbStorage.open(this.key);
    if (this.closed) return;
    const client = new StatecastClient({ ...this.options, storage, storageKey: this.options.storageKey ?? this.key });
    this.client = client;
    this.clientId = client.clientId;
    this.leaderId = this.tabId;
    this.setRole('leader');
    client.on('status', (s) => {
      this.setStatus(s);
      this.post({ t: 'status', status: s });
    });
    client.on('welcome', (w) => {
      this.user = w.user;
      this.schema = w.schema;
      this.emit('welcome', w);
      this.post({ t: 'leader', id: this.tabId, status: client.status, user: w.user, schema: w.schema, clientId: client.clientId });
    });
    client.on('error', (e) => this.emit('error', e));
    client.on('change', (e) => this.emit('change', e));
    let pendingPosted = false;
    client.on('write', (w) => {
      this.emit('write', w);
      this.post({ t: 'write-event', event: plainWrite(w) });
      if (!pendingPosted) {
        pendingPosted = true;
        queueMicrotask(() => {
          pendingPosted = false;
          this.post({ t: 'pending', pending: client.pendingWrites().map(plainWrite) });
        });
      }
    });
    // Writes restored from storage belong to no tab now: report them like any other.
    for (const view of this.views.values()) this.attachLocal(view);
    for (const view of this.views.values()) {
      if (view instanceof TabContext && view.myPresenceJson !== 'null') this.leaderPresence(this.tabId, view.name, view.myPresenceJson);
    }
    this.post({ t: 'leader', id: this.tabId, status: client.status, clientId: client.clientId });
    if (this.elector) {
      clearInterval(this.elector);
      this.beater = setInterval(() => this.post({ t: 'beat', id: this.tabId }), HEARTBEAT);
    }
    client.connect().catch(() => {});
    // This tab's writes that a former leader may have queued (or answered): hand them over again.
    for (const { req, deferred: d } of this.outstanding.values()) this.leaderWrite(req, d);
  }

  hold(channel, anchorId) {
    const name = `${channel}/${anchorId}`;
    const fresh = !this.client.context(name);
    const ctx = this.client.subscribe(channel, anchorId);
    this.refs.set(name, (this.refs.get(name) ?? 0) + 1);
    if (fresh && this.tabPresences.has(name)) this.applyPresence(name);
    let released = false;
    return {
      ctx,
      release: () => {
        if (released) return;
        released = true;
        const n = (this.refs.get(name) ?? 1) - 1;
        if (n > 0) this.refs.set(name, n);
        else {
          this.refs.delete(name);
          this.client.context(name)?.close();
        }
      },
    };
  }

  attachLocal(view) {
    if (view instanceof TabContext) {
      const { ctx, release } = this.hold(view.channel, view.anchorId);
      view.release = release;
      view.attach(ctx);
    } else {
      const target = this.client.stream(view.stream, view.options);
      view.release = () => target.close();
      view.attach(target);
    }
  }

  /** Performs a tab's write once: attached to its queued twin, answered from the record, or made now. */
  leaderWrite(req, d) {
    const replica = this.client.replica;
    const known = replica.originOf(req.origin);
    if (known?.write) {
      known.write.deferred.promise.then(d.resolve, d.reject);
      return;
    }
    if (known?.result) return d.resolve(known.result);
    if (known?.error) return d.reject(errorOf(known.error));
    if (!this.client.schema) {
      // A new leader before its first welcome: where a row goes comes with the schema.
      this.client.connect().then(
        () => this.leaderWrite(req, d),
        (e) => d.reject(e),
      );
      return;
    }
    const { ctx, release } = this.hold(req.channel, req.anchorId);
    let handle;
    try {
      const a = req.args;
      const origin = req.origin;
      if (req.method === 'save') handle = ctx.save(a[0], a[1], a[2], { ...a[3], origin });
      else if (req.method === 'create') handle = ctx.create(a[0], a[1], { ...a[2], origin });
      else if (req.method === 'delete') handle = ctx.delete(a[0], a[1], { ...a[2], origin });
      else if (req.method === 'batch') {
        handle = ctx.batch(
          (b) => {
            for (const [op, ...rest] of a[0]) b[op](...rest);
          },
          { ...a[1], origin },
        );
      } else throw new TypeError(`unknown write method ${req.method}`);
    } catch (e) {
      release();
      d.reject(e);
      return;
    }
    handle.then(
      (r) => {
        release();
        d.resolve(r);
      },
      (e) => {
        release();
        d.reject(e);
      },
    );
  }

  serve(msg) {
    const id = `${msg.from}|${msg.key}`;
    this.served.get(id)?.stop();
    let target;
    let release;
    let offPresence = () => {};
    if (msg.kind === 'context') {
      ({ ctx: target, release } = this.hold(msg.channel, msg.anchorId));
      const name = target.name;
      const unhold = release;
      release = () => {
        unhold();
        this.leaderPresence(msg.from, name, 'null'); // the tab's presence there goes with its view
      };
      const sendPresence = (e) => {
        if (e?.cause === 'self') return; // the connection's own (the tabs' latest): not in the list
        this.post({ t: 'presence-list', to: msg.from, key: msg.key, presence: target.presence(), cause: e?.cause ?? 'state', entry: e?.entry ?? null });
      };
      offPresence = target.onPresence(sendPresence);
      sendPresence(); // always: a follower may still show what an earlier leader's connection saw
    } else {
      target = this.client.stream(msg.name, msg.options);
      release = () => target.close();
    }
    let scheduled = false;
    let cause = 'state';
    const send = () => {
      scheduled = false;
      const err = target.status === 'closed' ? { code: 0, reason: target.closeReason ?? 'CLOSED', message: `${msg.key} closed` } : undefined;
      this.post({ t: 'view', to: msg.from, key: msg.key, status: target.status, closeReason: target.closeReason, rows: target.rows(), cause, error: err });
    };
    const schedule = (e) => {
      cause = e?.cause ?? 'state';
      if (scheduled) return;
      scheduled = true;
      queueMicrotask(send);
    };
    const off = target.onChange(schedule);
    target.ready.then(schedule, schedule);
    schedule();
    this.served.set(id, {
      tab: msg.from,
      stop: () => {
        off();
        offPresence();
        release();
        this.served.delete(id);
      },
    });
  }

  onMessage(msg) {
    if (!msg || msg.from === this.tabId || this.closed) return;
    if (msg.to && msg.to !== this.tabId) return;
    if (this.client) return this.onFollowerMessage(msg);
    return this.onLeaderMessage(msg);
  }

  onFollowerMessage(msg) {
    switch (msg.t) {
      case 'hello':
        this.post({ t: 'leader', id: this.tabId, status: this.client.status, user: this.client.user, schema: this.client.schema, clientId: this.client.clientId });
        this.post({ t: 'pending', pending: this.client.pendingWrites().map(plainWrite) });
        return;
      case 'sub':
        return this.serve(msg);
      case 'unsub':
        return this.served.get(`${msg.from}|${msg.key}`)?.stop();
      case 'presence':
        return this.leaderPresence(msg.from, msg.context, msg.json);
      case 'bye':
        for (const s of [...this.served.values()]) if (s.tab === msg.from) s.stop();
        return;
      case 'write': {
        const d = deferred();
        d.promise.then(
          (result) => this.post({ t: 'settled', to: msg.from, origin: msg.req.origin, result }),
          (error) => this.post({ t: 'settled', to: msg.from, origin: msg.req.origin, error: plainError(error) }),
        );
        this.leaderWrite(msg.req, d);
        return;
      }
      case 'claim':
      case 'beat':
        // Another tab thinks there is no leader (no Web Locks): tell it there is.
        this.post({ t: 'beat', id: this.tabId });
        return;
      default:
        return;
    }
  }

  // ---- a following tab -------------------------------------------------------------

  onLeaderMessage(msg) {
    switch (msg.t) {
      case 'leader':
      case 'beat': {
        this.lastBeat = Date.now();
        this.claim = null;
        const fresh = this.leaderId !== msg.from;
        this.leaderId = msg.from;
        if (msg.user) this.user = msg.user;
        if (msg.schema) this.schema = msg.schema;
        if (msg.clientId) this.clientId = msg.clientId;
        if (msg.status) this.setStatus(msg.status);
        if (fresh) {
          // A new leader: ask it for every view and hand it every unanswered write (origins keep them single).
          for (const view of this.views.values()) this.requestView(view);
          for (const view of this.views.values()) if (view instanceof TabContext && view.myPresenceJson !== 'null') this.tabPresence(view);
          for (const { req } of this.outstanding.values()) this.post({ t: 'write', to: this.leaderId, req });
          if (msg.t === 'beat') this.post({ t: 'hello' });
        }
        return;
      }
      case 'claim':
        // Fallback election: the smallest tab id wins.
        if (this.claim && msg.from < this.tabId) this.claim = null;
        this.lastBeat = Date.now();
        return;
      case 'status':
        if (msg.from === this.leaderId) this.setStatus(msg.status);
        return;
      case 'view': {
        const view = this.views.get(msg.key);
        if (view && !view.closed && !view.target) view.update(msg);
        return;
      }
      case 'presence-list': {
        const view = this.views.get(msg.key);
        if (view && !view.closed && !view.target) view.updatePresence(msg);
        return;
      }
      case 'settled': {
        const o = this.outstanding.get(msg.origin);
        if (!o) return;
        if (msg.error) o.deferred.reject(errorOf(msg.error));
        else o.deferred.resolve(msg.result);
        return;
      }
      case 'write-event': {
        const event = { ...msg.event };
        if (event.error) event.error = errorOf(event.error);
        this.emit('write', event);
        return;
      }
      case 'pending':
        this.remotePending = msg.pending;
        this.emit('pending', msg.pending);
        return;
      default:
        return;
    }
  }

  /** Fallback election (no Web Locks): claim leadership after a silent leader, smallest tab id first. */
  elect() {
    if (this.client || this.closed) return;
    const now = Date.now();
    if (this.claim) {
      if (now - this.claim >= 2 * HEARTBEAT) {
        this.claim = null;
        this.lead();
      }
      return;
    }
    if (now - this.lastBeat > LEADER_TIMEOUT) {
      this.leaderId = null;
      this.setStatus('connecting');
      this.claim = now;
      this.post({ t: 'claim' });
    }
  }
}
