// External stores over a Statecast client, for UI bindings (React's
// useSyncExternalStore, Svelte's store contract, or any framework): a source
// has `subscribe(listener) → unsubscribe` and `getSnapshot()`, and a new
// snapshot object after every change of what it shows.
//
// Sources are shared: every caller that asks for the same context (or the
// same stream with the same options) of one client gets the same source, so
// one subscription reaches the server however many components show it. A
// source whose last listener leaves lingers (`linger`, default 1 s) before it
// unsubscribes, so a StrictMode double mount or a quick route change back and
// forth reuses the live subscription instead of closing and reopening it
// (never a 410 for a write made in between, never a second subscription).

const SOURCES = new WeakMap(); // client → Map<key, source> (contexts, streams, presence)
const WRITES = new WeakMap(); // client → writes source

/** How long a source with no listeners keeps its subscription (ms). */
export const DEFAULT_LINGER = 1000;

function sourcesOf(client) {
  let map = SOURCES.get(client);
  if (!map) {
    map = new Map();
    SOURCES.set(client, map);
  }
  return map;
}

/** The connection part of a status: `ready` only when the client is open. */
function statusOf(inner, client) {
  if (inner === 'closed' || inner === 'loading') return inner;
  const conn = client.status;
  return conn === 'open' ? 'ready' : conn === 'idle' ? 'ready' : conn;
}

/** A source of a shared subscription: `open()` makes the underlying object, `close(it)` ends it. */
function shared(client, key, open, close, snapshotOf, linger) {
  const map = sourcesOf(client);
  let source = map.get(key);
  if (source) return source;
  const listeners = new Set();
  let target = null;
  let stop = null;
  let snapshot = null;
  let timer = null;
  const notify = () => {
    snapshot = null;
    for (const fn of [...listeners]) fn();
  };
  const ensure = () => {
    if (target) return target;
    target = open();
    const offChange = target.onChange(notify);
    const offStatus = client.on('status', notify);
    // The first state (or a refusal) may come without a change event.
    target.ready?.then(notify, notify);
    stop = () => {
      offChange();
      offStatus();
    };
    return target;
  };
  const release = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (listeners.size > 0) return;
      map.delete(key);
      stop?.();
      if (target) close(target);
      target = null;
    }, linger);
    timer.unref?.();
  };
  source = {
    key,
    subscribe(listener) {
      clearTimeout(timer);
      ensure();
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
        if (listeners.size === 0) release();
      };
    },
    getSnapshot() {
      if (!snapshot) snapshot = snapshotOf(ensure());
      return snapshot;
    },
    /** The underlying Context or StreamView (opened if needed). */
    get target() {
      return ensure();
    },
  };
  map.set(key, source);
  // A source read during a render that never commits must not leak its subscription.
  release();
  return source;
}

/**
 * The source of context `channel/anchorId`: snapshots
 * `{status, error, context, rows(type), get(type, id), tree(), save, create, delete, batch}`
 * where `status` is `loading`, `ready`, `closed`, or the connection's
 * `connecting`/`reconnecting` while the rows shown may be behind.
 */
export function contextSource(client, channel, anchorId, { linger = DEFAULT_LINGER } = {}) {
  const name = `${channel}/${anchorId}`;
  return shared(
    client,
    `context:${name}`,
    () => client.subscribe(channel, anchorId),
    (ctx) => ctx.close(),
    (ctx) => {
      const byType = new Map();
      let tree;
      return {
        status: statusOf(ctx.status, client),
        error: ctx.status === 'closed' ? (ctx.closeReason ?? null) : null,
        context: ctx,
        rows(type) {
          const k = type ?? '';
          let list = byType.get(k);
          if (!list) {
            list = ctx.rows(type);
            byType.set(k, list);
          }
          return list;
        },
        get: (type, id) => ctx.get(type, id),
        tree() {
          if (tree === undefined) tree = ctx.tree();
          return tree;
        },
        save: (type, id, data, options) => writeOf(client, channel, anchorId).save(type, id, data, options),
        create: (type, data, options) => writeOf(client, channel, anchorId).create(type, data, options),
        delete: (type, id, options) => writeOf(client, channel, anchorId).delete(type, id, options),
        batch: (build, options) => writeOf(client, channel, anchorId).batch(build, options),
      };
    },
    linger,
  );
}

/**
 * The source of the presence in context `channel/anchorId`: snapshots
 * `{presence, myPresence, setPresence(data)}` — the other connections'
 * entries `[{connectionId, user: {id, name}, data}]` and what this client
 * (or tab) last set. It holds the context through `contextSource` (the same
 * subscription, the same linger) but changes only when the presence does:
 * a component that shows who is here does not render again for every row.
 */
export function presenceSource(client, channel, anchorId, { linger = DEFAULT_LINGER } = {}) {
  const map = sourcesOf(client);
  const key = `presence:${channel}/${anchorId}`;
  let source = map.get(key);
  if (source) return source;
  const listeners = new Set();
  let snapshot = null;
  let stop = null;
  const base = () => contextSource(client, channel, anchorId, { linger });
  const setPresence = (data) => writeOf(client, channel, anchorId).setPresence(data);
  const notify = () => {
    for (const fn of [...listeners]) fn();
  };
  source = {
    key,
    subscribe(listener) {
      if (!stop) {
        const context = base();
        const offBase = context.subscribe(() => {}); // holds the subscription (row changes are not this source's)
        const offPresence = context.target.onPresence(notify);
        stop = () => {
          offBase();
          offPresence();
        };
      }
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
        if (listeners.size === 0 && stop) {
          stop(); // the context source lingers, then unsubscribes
          stop = null;
        }
      };
    },
    getSnapshot() {
      const ctx = base().target;
      const presence = ctx.presence();
      const mine = ctx.myPresence;
      if (!snapshot || snapshot.presence !== presence || snapshot.myPresence !== mine) {
        snapshot = { presence, myPresence: mine, setPresence };
      }
      return snapshot;
    },
  };
  map.set(key, source);
  return source;
}

/** The live context to write through (subscribed again if it was closed meanwhile). */
function writeOf(client, channel, anchorId) {
  const source = sourcesOf(client).get(`context:${channel}/${anchorId}`);
  return source ? source.target : client.subscribe(channel, anchorId);
}

/** A stable key for stream options (`{filters, fields, id, actions, snapshot}`). */
export function streamKey(name, options = {}) {
  const sorted = (v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(
          Object.keys(v)
            .sort()
            .map((k) => [k, sorted(v[k])]),
        )
      : v;
  return `stream:${name}:${JSON.stringify(sorted(options ?? {}))}`;
}

/**
 * The source of a stream view: snapshots `{status, rows, error, view}`.
 * Options default `snapshot` to true (a view starts from the rows now).
 */
export function streamSource(client, name, options = {}, { linger = DEFAULT_LINGER } = {}) {
  const opts = { snapshot: true, ...options };
  return shared(
    client,
    streamKey(name, opts),
    () => client.stream(name, opts),
    (view) => view.close(),
    (view) => ({
      status: statusOf(view.status, client),
      rows: view.rows(),
      error: view.status === 'closed' ? (view.closeReason ?? null) : null,
      view,
    }),
    linger,
  );
}

/**
 * The source of the client's writes: snapshots `{pending, refused, dismiss(writeId)}`.
 * `pending` are the unanswered writes in order; `refused` the writes the
 * server (or the client) refused since the source was made, newest last, each
 * with `code`, `reason` and `message` — kept until dismissed (at most `keep`).
 */
export function writesSource(client, { keep = 50 } = {}) {
  let source = WRITES.get(client);
  if (source) return source;
  const listeners = new Set();
  let refused = [];
  let snapshot = null;
  const notify = () => {
    snapshot = null;
    for (const fn of [...listeners]) fn();
  };
  client.on('write', (w) => {
    if (w.status === 'refused' && w.error) {
      const e = w.error;
      refused = [
        ...refused,
        {
          writeId: w.writeId,
          context: w.context,
          operation: w.operation,
          ops: w.ops,
          code: e.code,
          reason: e.reason,
          message: e.message,
          field: e.field,
          op: e.op,
        },
      ].slice(-keep);
    }
    notify();
  });
  client.on('status', notify);
  // A TabClient in a following tab learns the leader's queue as a whole.
  if (client instanceof Object && 'role' in client) client.on('pending', notify);
  const dismiss = (writeId) => {
    refused = writeId === undefined ? [] : refused.filter((r) => r.writeId !== writeId);
    notify();
  };
  source = {
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    getSnapshot() {
      snapshot ??= { pending: client.pendingWrites(), refused, dismiss, connection: client.status };
      return snapshot;
    },
  };
  WRITES.set(client, source);
  return source;
}
