// The optimistic layer of the Statecast client as a plain data structure.
// Server messages go in (`connected`, `receive`), frames to send come out
// (the `send` hook), time comes from the `now` hook: no sockets and no timers,
// so the client drives it and the unit tests drive it directly.

/** 2^52: the smallest client-minted id. */
export const MINTED_MIN = 2 ** 52;
/** 2^53: one past the largest client-minted id. */
export const MINTED_END = 2 ** 53;

/** The most bytes a presence's `data` may take, encoded as JSON (UTF-8). */
export const MAX_PRESENCE_BYTES = 1024;
/** The most presence frames a connection sends per second; the client spaces them 1000 / 20 ms apart. */
export const PRESENCE_RATE = 20;
const PRESENCE_INTERVAL = 1000 / PRESENCE_RATE;
/** How many presence rids are remembered, to tell a presence refusal from a context's error. */
const PRESENCE_RIDS = 64;
const NO_PRESENCE = Object.freeze([]);

/** Server reasons that mean "nothing certain happened yet": the write stays pending and is sent again. */
const RETRYABLE = new Set(['OUTCOME_UNKNOWN', 'UNAVAILABLE', 'RATE_LIMITED']);

/** View row → the canonical (or replayed) row it was made from, to reuse it while that row is unchanged. */
const SOURCE = new WeakMap();

/** A row list of a view → its positions by view key, made when a row is first replaced in place. */
const POSITIONS = new WeakMap();

/** A copy of `list` with the row at view key `vk` replaced by `v` (positions kept). */
function replaceIn(list, vk, v) {
  let at = POSITIONS.get(list);
  if (!at) {
    at = new Map(list.map((r, i) => [rowKey(r._type, r._key), i]));
  }
  const i = at.get(vk);
  if (i === undefined) return null;
  const out = list.slice();
  out[i] = v;
  POSITIONS.set(out, at);
  return out;
}

/** A refused or failed write (or subscription): `code` and `reason` as on the wire. */
export class StatecastError extends Error {
  constructor(code, reason, message, extra = {}) {
    super(message || reason);
    this.name = 'StatecastError';
    this.code = code;
    this.reason = reason;
    for (const k of ['field', 'op', 'writeId', 'context']) {
      if (extra[k] !== undefined && extra[k] !== null) this[k] = extra[k];
    }
  }

  /** From a wire error `{code, reason, message, field?, op?}`. */
  static from(wire, extra = {}) {
    const e = wire ?? {};
    return new StatecastError(e.code ?? 500, e.reason ?? 'INTERNAL', e.message ?? '', {
      field: e.field,
      op: e.op,
      ...extra,
    });
  }
}

/** A fresh random 128-bit client id as 32 hex digits. */
export function newClientId() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A random client-minted id in [2^52, 2^53). */
export function mintId() {
  const words = new Uint32Array(2);
  globalThis.crypto.getRandomValues(words);
  return MINTED_MIN + (words[0] & 0xfffff) * 2 ** 32 + words[1];
}

/** The map key of a row: `"Task:4"`. */
export const rowKey = (type, id) => `${type}:${id}`;

let utf8;

/**
 * The JSON text of presence `data` for `context`, checked as the server
 * checks it: a JSON value (null clears) of at most MAX_PRESENCE_BYTES bytes.
 * Throws a StatecastError 400 `INVALID_DATA` (field `data`) otherwise.
 */
export function presenceJson(data, context) {
  const bad = (why) => new StatecastError(400, 'INVALID_DATA', `presence data for ${context} ${why}`, { field: 'data', context });
  let json;
  try {
    json = JSON.stringify(data);
  } catch (e) {
    throw bad(`is not JSON: ${e.message}`);
  }
  if (json === undefined) throw bad('must be a JSON value (null clears it)');
  if (json.length > MAX_PRESENCE_BYTES / 3) {
    utf8 ??= new TextEncoder();
    const bytes = utf8.encode(json).length;
    if (bytes > MAX_PRESENCE_BYTES) throw bad(`is ${bytes} bytes as JSON; at most ${MAX_PRESENCE_BYTES}`);
  }
  return json;
}

/** A presence entry as the server lists it: `{connectionId, user: {id, name}, data}`, frozen. */
function presenceEntry(e) {
  return Object.freeze({ connectionId: e.connectionId, user: e.user, data: e.data });
}

/** A promise with its resolve and reject. */
export function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function saveOp(type, id, data, options = {}) {
  const op = { operation: 'save', instanceType: type, instanceId: id, data: { ...data } };
  if (options.ifVersion != null) op.ifVersion = options.ifVersion;
  return op;
}

function deleteOp(type, id, options = {}) {
  const op = { operation: 'delete', instanceType: type, instanceId: id };
  if (options.ifVersion != null) op.ifVersion = options.ifVersion;
  return op;
}

function shallowEqual(a, b) {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    if (!Object.is(a[k], b[k]) && JSON.stringify(a[k]) !== JSON.stringify(b[k])) return false;
  }
  return true;
}

function emit(listeners, event) {
  for (const fn of [...listeners]) {
    try {
      fn(event);
    } catch (e) {
      // A listener's bug must not break the client's state; report it and go on.
      queueMicrotask(() => {
        throw e;
      });
    }
  }
}

// ---- stream filters --------------------------------------------------------
// The lookups the server decides stream filters with (protocol/src/filter.rs),
// the same cases checked on both sides (spec/filters/*.json).

const LOOKUPS = new Set(['exact', 'iexact', 'contains', 'icontains', 'startswith', 'in', 'gt', 'gte', 'lt', 'lte', 'isnull']);
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/** A JSON value with its object keys sorted, for equality of json fields. */
function canonicalJson(v) {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** A value of a field kind as a comparable scalar, or undefined (null, or of another type). */
function scalarOf(kind, v) {
  switch (kind) {
    case 'id':
    case 'int':
    case 'reference':
      return Number.isSafeInteger(v) ? v : undefined;
    case 'float':
      return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
    case 'string':
      return typeof v === 'string' ? v : undefined;
    case 'bool':
      return typeof v === 'boolean' ? v : undefined;
    case 'timestamp': {
      if (typeof v !== 'string') return undefined;
      const m = RFC3339.exec(v);
      if (!m) return undefined;
      const t = Date.parse(v.replace(/[Tt]/, 'T').replace(/z$/, 'Z'));
      if (!Number.isFinite(t)) return undefined;
      const ns = m[7] ? Math.round(Number(`0${m[7]}`) * 1e9) % 1e6 : 0; // below the millisecond Date keeps
      return { ts: t, ns };
    }
    case 'json':
      return v === null || v === undefined ? undefined : { json: canonicalJson(v) };
    default:
      return undefined;
  }
}

function cmpScalar(a, b) {
  if (a?.ts !== undefined && b?.ts !== undefined) {
    return a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : a.ns < b.ns ? -1 : a.ns > b.ns ? 1 : 0;
  }
  if (typeof a === 'object' || typeof b === 'object') {
    return typeof a === 'object' && typeof b === 'object' && a.json === b.json ? 0 : undefined;
  }
  if (typeof a !== typeof b) return undefined;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The lowercase form the server compares case-insensitively (Rust's `to_lowercase`). */
const lower = (s) => s.toLowerCase();

/**
 * Compiles stream filters (`{job: 1, name__icontains: 'bug'}`) for a type
 * whose fields are `[{name, kind, nullable}]` (as `welcome.schema` lists
 * them). Returns `{matches(row), fields}` — `fields` being the fields the
 * filters read — or throws a TypeError naming the key for a filter the
 * server would refuse.
 */
export function compileFilters(filters, typeFields) {
  const byName = new Map((typeFields ?? []).map((f) => [f.name, f]));
  const preds = [];
  const seen = new Map(); // "field__lookup" → index: a later one replaces an earlier one
  for (const [key, value] of Object.entries(filters ?? {})) {
    const at = key.lastIndexOf('__');
    const field = at >= 0 ? key.slice(0, at) : key;
    const lookup = at >= 0 ? key.slice(at + 2) : 'exact';
    if (!LOOKUPS.has(lookup)) throw new TypeError(`unknown lookup \`${lookup}\` in \`${key}\``);
    let kind;
    let nullable = false;
    if (field === 'id') kind = 'id';
    else {
      const f = byName.get(field);
      if (!f) throw new TypeError(`no field \`${field}\` to filter on (\`${key}\`)`);
      kind = f.kind;
      nullable = f.nullable === true;
    }
    const bad = (what) => new TypeError(`\`${key}\` needs ${what}`);
    const scalar = (v) => {
      const s = scalarOf(kind, v);
      if (s === undefined) throw bad(`a ${kind} value`);
      return s;
    };
    let test;
    if (lookup === 'exact' && value === null) {
      if (!nullable) throw bad(`a value (\`${field}\` is never null)`);
      test = (v) => v === undefined;
    } else if (lookup === 'exact') {
      const want = scalar(value);
      test = (v) => v !== undefined && cmpScalar(v, want) === 0;
    } else if (['iexact', 'contains', 'icontains', 'startswith'].includes(lookup)) {
      if (kind !== 'string') throw bad(`a string field (\`${lookup}\` applies to strings)`);
      if (typeof value !== 'string') throw bad('a string');
      const w = lookup === 'iexact' || lookup === 'icontains' ? lower(value) : value;
      test = {
        iexact: (v) => typeof v === 'string' && lower(v) === w,
        contains: (v) => typeof v === 'string' && v.includes(w),
        icontains: (v) => typeof v === 'string' && lower(v).includes(w),
        startswith: (v) => typeof v === 'string' && v.startsWith(w),
      }[lookup];
    } else if (lookup === 'in') {
      if (!Array.isArray(value) || value.length > 1000) throw bad('a list of at most 1000 values');
      const list = value.map(scalar);
      test = (v) => v !== undefined && list.some((w) => cmpScalar(v, w) === 0);
    } else if (lookup === 'isnull') {
      if (typeof value !== 'boolean') throw bad('a boolean');
      test = (v) => (v === undefined) === value;
    } else {
      if (kind === 'bool' || kind === 'json') throw bad(`an ordered field (\`${lookup}\` does not apply to ${kind})`);
      const want = scalar(value);
      test = (v) => {
        const o = v === undefined ? undefined : cmpScalar(v, want);
        if (o === undefined) return false;
        return lookup === 'gt' ? o > 0 : lookup === 'gte' ? o >= 0 : lookup === 'lt' ? o < 0 : o <= 0;
      };
    }
    const pred = { field, kind, test };
    const id = `${field}__${lookup}`;
    if (seen.has(id)) preds[seen.get(id)] = pred;
    else {
      seen.set(id, preds.length);
      preds.push(pred);
    }
  }
  return {
    fields: [...new Set(preds.filter((p) => p.field !== 'id').map((p) => p.field))],
    matches(row) {
      return preds.every((p) => {
        const raw = p.field === 'id' ? row.id : row[p.field];
        return p.test(raw === null || raw === undefined ? undefined : scalarOf(p.kind, raw));
      });
    },
  };
}

/** `scope` merged over `client` as the server merges them: the scope's conditions win per field and lookup. */
export function mergeFilters(scope, client) {
  const norm = (k) => (k.lastIndexOf('__') >= 0 ? k : `${k}__exact`);
  const out = {};
  const keys = new Map();
  for (const [k, v] of Object.entries(client ?? {})) {
    keys.set(norm(k), k);
    out[k] = v;
  }
  for (const [k, v] of Object.entries(scope ?? {})) {
    const prev = keys.get(norm(k));
    if (prev !== undefined) delete out[prev];
    keys.set(norm(k), k);
    out[k] = v;
  }
  return out;
}

/**
 * One subscribed context: its canonical rows (from `state` and `delta`) and
 * its view (canonical with the client's pending writes replayed on top).
 */
export class Context {
  constructor(replica, channel, anchorId) {
    this.replica = replica;
    this.name = `${channel}/${anchorId}`;
    this.channel = channel;
    this.anchorId = anchorId;
    /** 'loading' (waiting for a state), 'ready' or 'closed'. */
    this.status = 'loading';
    /** Why it closed: an `unsubscribed` reason, or the subscribe error. */
    this.closeReason = null;
    this.epoch = null;
    /** The read rules' tag of the last state (its `view`; null when read in full), sent back to resume. */
    this.viewTag = null;
    /** The seq of the last state or delta applied; null before the first state. */
    this.seq = null;
    /** Canonical rows in the server's order, by `rowKey`. */
    this.canonical = new Map();
    this.view = new Map(); // by `rowKey(type, key)`, in order
    this.list = []; // the view's rows as an array; null until read again after a change
    this.listeners = new Set();
    this.partial = null; // the parts of a multi-part state so far
    this.deltaParts = null; // the parts of a multi-part delta so far
    /** The `rid` of the newest subscribe sent: answers naming another rid are stale. */
    this.rid = null;
    /** The other connections' presence here, by connection id, in the order they arrived. */
    this.others = new Map();
    this.presenceList = NO_PRESENCE; // `presence()`; null until read again after a change
    this.presenceListeners = new Set();
    /** What this client last set as its presence here (null: none). */
    this.myPresence = null;
    this.myPresenceJson = 'null';
    /** The JSON of the presence the server holds for this connection here ('null': none; undefined: not known). */
    this.presenceOnServer = 'null';
    const ready = deferred();
    ready.promise.catch(() => {}); // rejected only when the subscription fails; callers may not await it
    this.readyDeferred = ready;
    /** Resolves with the context at its first state; rejects if the subscription fails. */
    this.ready = ready.promise;
  }

  /** The rows of the view in order (of one type, if given). */
  rows(type) {
    this.list ??= [...this.view.values()];
    if (type === undefined) return this.list;
    this.typed ??= new Map();
    let list = this.typed.get(type);
    if (!list) {
      list = this.list.filter((r) => r._type === type);
      this.typed.set(type, list);
    }
    return list;
  }

  /** The view row with this id or key (a temp id keeps finding its row after the swap). */
  get(type, id) {
    const real = this.replica.resolve(type, id);
    const key = real < 0 ? real : (this.replica.keyMap.get(rowKey(type, real)) ?? real);
    return this.view.get(rowKey(type, key)) ?? this.view.get(rowKey(type, id));
  }

  /** Does a pending write touch this row? */
  isPending(type, id) {
    return this.get(type, id)?._pending === true;
  }

  /** The anchor row of the view, if present. */
  anchor() {
    return this.get(this.anchorType(), this.anchorId);
  }

  anchorType() {
    return this.replica.channelInfo(this.channel)?.anchor;
  }

  /**
   * The view as a tree: `{row, children: {relation: [node…]}}` from the
   * anchor down, children in relation order (a declared `orderBy` field,
   * else creation order; new creates at the end).
   */
  tree() {
    const anchor = this.anchor();
    if (!anchor) return null;
    const edges = this.replica.edges(this.channel);
    const kids = new Map(); // "Parent:id/relation" → rows
    for (const row of this.rows()) {
      for (const e of edges) {
        if (e.child !== row._type || row[e.field] == null) continue;
        const k = `${rowKey(e.parent, row[e.field])}/${e.relation}`;
        if (!kids.has(k)) kids.set(k, []);
        kids.get(k).push(row);
      }
    }
    const build = (row, seen) => {
      const children = {};
      for (const e of edges) {
        if (e.parent !== row._type) continue;
        let list = kids.get(`${rowKey(row._type, row.id)}/${e.relation}`) ?? [];
        if (e.orderBy) list = [...list].sort((a, b) => compare(a[e.orderBy], b[e.orderBy]));
        children[e.relation] = list.filter((c) => !seen.has(c)).map((c) => build(c, new Set(seen).add(c)));
      }
      return { row, children };
    };
    return build(anchor, new Set([anchor]));
  }

  /** Calls `fn(event)` after every change of this view; returns a function that stops it. */
  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Saves `data` (only the fields being changed) to the row `type`/`id`. */
  save(type, id, data, options = {}) {
    return this.replica.write(this.name, 'save', [saveOp(type, id, data, options)], options);
  }

  /**
   * Creates a row of `type`. The parent comes from `options.parent`
   * (`{type, id}` or `[type, id]`) and `options.relation`, else from a tree
   * field in `data` (`{job: 1}`), else the anchor. The handle's `id` is the
   * new row's id at once: client-minted unless `options.tempId` (or the
   * client's `ids: 'temp'`) asks for a negative temp id.
   */
  create(type, data = {}, options = {}) {
    const { op, id } = this.replica.createOp(this, type, data, options);
    const handle = this.replica.write(this.name, 'create', [op], options);
    handle.id = id;
    return handle;
  }

  /** Deletes the row `type`/`id` (and, on the server, what cascades from it). */
  delete(type, id, options = {}) {
    return this.replica.write(this.name, 'delete', [deleteOp(type, id, options)], options);
  }

  /**
   * One all-or-nothing write of several ops: `build(b)` calls `b.save`,
   * `b.create` (returns the new id) and `b.delete`. The handle's `ids` lists
   * the ids of the creates.
   */
  batch(build, options = {}) {
    const ops = [];
    const ids = [];
    const b = {
      save: (type, id, data, o) => {
        ops.push(saveOp(type, id, data, o));
      },
      create: (type, data = {}, o = {}) => {
        const { op, id } = this.replica.createOp(this, type, data, o);
        ops.push(op);
        ids.push(id);
        return id;
      },
      delete: (type, id, o) => {
        ops.push(deleteOp(type, id, o));
      },
    };
    build(b);
    if (ops.length === 0) throw new TypeError('a batch needs at least one op');
    const handle = this.replica.write(this.name, 'batch', ops, options);
    handle.ids = ids;
    return handle;
  }

  /**
   * The other connections' presence in this context:
   * `[{connectionId, user: {id, name}, data}]`, in the order they arrived
   * (a state's list in the server's order, then newcomers at the end; an
   * update keeps an entry's place). Frozen; a new array after every change.
   * Empty while the connection is down and once the context is closed. This
   * connection's own presence is never in it (see `myPresence`).
   */
  presence() {
    this.presenceList ??= Object.freeze([...this.others.values()]);
    return this.presenceList;
  }

  /**
   * Shows `data` (any JSON value of at most 1024 bytes as JSON; null clears)
   * to the other subscribers of this context. Throws a StatecastError 400
   * `INVALID_DATA` at once for data too large or not JSON, 410
   * `CONTEXT_CLOSED` on a closed context. Sent once the context is ready,
   * at most 20 frames a second per connection (only the latest data of each
   * context goes out), and sent again after a reconnect.
   */
  setPresence(data) {
    this.replica.setPresence(this, data);
  }

  /**
   * Calls `fn({context, cause, presence, entry})` after every change of
   * `presence()` or `myPresence`; returns a function that stops it. Causes:
   * `state` (a state's list replaced it), `set`, `cleared` and `left` (one
   * other connection's entry, as `entry`), `self` (this client's
   * `setPresence`), `closed` and `disconnected` (the list emptied).
   */
  onPresence(fn) {
    this.presenceListeners.add(fn);
    return () => this.presenceListeners.delete(fn);
  }

  /** Stops the subscription; its unsent writes fail with CONTEXT_CLOSED. */
  close() {
    this.replica.unsubscribe(this.name);
  }
}

/**
 * A live view of a stream: the rows its snapshot held, kept current by its
 * events, with the client's pending writes on top. A row a pending write
 * touches (or that a context holds newer than the stream reported it) is in
 * the view when it passes the stream's filters — the client's, merged under
 * the scope the server reports in `subscribed` — decided with the server's
 * lookups; any other row is in the view when the server reported it.
 */
export class StreamView {
  constructor(replica, local, stream, options = {}) {
    this.replica = replica;
    this.local = local;
    /** The stream's name. */
    this.stream = stream;
    this.options = {
      filters: options.filters ?? {},
      fields: options.fields,
      id: options.id,
      actions: options.actions,
      snapshot: options.snapshot === true,
    };
    /** 'loading', 'ready' or 'closed'. */
    this.status = 'loading';
    this.closeReason = null;
    this.rid = null;
    /** The server's id for the subscription on the current connection. */
    this.subscription = null;
    /** The seq of the last `subscribed` or event applied. */
    this.seq = null;
    this.since = null;
    this.everReady = false;
    this.scope = null;
    this.predicate = null;
    this.parts = null;
    /** What the server reported, by `rowKey`. */
    this.canonical = new Map();
    this.view = new Map(); // stable key → row, in key order while `sorted`
    this.sorted = true;
    this.maxKey = -Infinity;
    this.list = null;
    this.listeners = new Set();
    const ready = deferred();
    ready.promise.catch(() => {});
    this.readyDeferred = ready;
    /** Resolves with the view at its first `subscribed`; rejects if the subscribe is refused. */
    this.ready = ready.promise;
  }

  /** The view's rows in key order. */
  rows() {
    if (this.list) return this.list;
    if (!this.sorted) {
      // A row joined below the largest key: put the map back in key order (once).
      this.view = new Map([...this.view].sort((a, b) => a[0] - b[0]));
      this.sorted = true;
    }
    this.list = [...this.view.values()];
    return this.list;
  }

  /** The row with this id (or key). */
  get(id) {
    const type = this.type();
    const real = type ? this.replica.resolve(type, id) : id;
    const key = real < 0 ? real : type ? (this.replica.keyMap.get(rowKey(type, real)) ?? real) : real;
    return this.view.get(key) ?? this.view.get(id);
  }

  isPending(id) {
    return this.get(id)?._pending === true;
  }

  /** The stream's entity type (from the schema). */
  type() {
    return this.replica.schema?.streams?.find((s) => s.name === this.stream)?.type;
  }

  /** Calls `fn({stream, cause, added, updated, removed})` after every change; returns a function that stops it. */
  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Stops the view (the server's subscription is unsubscribed). */
  close() {
    this.replica.closeStream(this);
  }
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return -1;
  if (b === null || b === undefined) return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The rows of a context as the pending writes leave them: the canonical map
 * (never changed here) plus the rows the writes change, add and remove. Rows
 * keep their canonical position; new rows follow in the order they were added.
 */
class Overlay {
  constructor(canonical) {
    this.canonical = canonical;
    this.changed = new Map(); // key → row, or null when removed
    this.appended = []; // keys of rows not in canonical, in order
    this.children = null; // "Type:field:parentId" → child keys, built on the first need
  }

  get(k) {
    return this.changed.has(k) ? (this.changed.get(k) ?? undefined) : this.canonical.get(k);
  }

  has(k) {
    return this.get(k) !== undefined;
  }

  set(k, row) {
    if (!this.canonical.has(k) && !this.changed.has(k)) this.appended.push(k);
    else if (!this.canonical.has(k) && this.changed.get(k) === null) {
      this.appended = this.appended.filter((a) => a !== k); // removed, then added again: at the end
      this.appended.push(k);
    }
    this.changed.set(k, row);
    this.children = null;
  }

  delete(k) {
    if (this.has(k)) this.changed.set(k, null);
  }

  /** The keys of the present rows that point at `parentId` through edge `e`. */
  childrenOf(e, parentId) {
    if (!this.children) {
      this.children = new Map();
      for (const [k, r] of this.entries()) {
        for (const [field, v] of Object.entries(r)) {
          if (typeof v !== 'number') continue;
          const ck = `${r._type}:${field}:${v}`;
          if (!this.children.has(ck)) this.children.set(ck, []);
          this.children.get(ck).push(k);
        }
      }
    }
    return (this.children.get(`${e.child}:${e.field}:${parentId}`) ?? []).filter((k) => this.has(k));
  }

  *entries() {
    for (const [k, r] of this.canonical) {
      const row = this.changed.has(k) ? this.changed.get(k) : r;
      if (row) yield [k, row];
    }
    for (const k of this.appended) {
      const row = this.changed.get(k);
      if (row) yield [k, row];
    }
  }
}

/**
 * The client's whole optimistic state: every context and the one ordered
 * queue of pending writes.
 */
export class Replica {
  constructor(options = {}) {
    this.clientId = options.clientId ?? newClientId();
    this.ids = options.ids ?? 'minted';
    this.writeTimeout = options.writeTimeout ?? 30_000;
    this.now = options.now ?? (() => Date.now());
    this.mintId = options.mintId ?? mintId;
    this.transmit = options.send ?? (() => {});
    this.schema = options.schema ?? null;
    this.user = options.user ?? null;
    this.nextWriteId = options.nextWriteId ?? 1;
    this.nextTempId = -1;
    this.epoch = null;
    this.online = false;
    /** @type {Map<string, Context>} */
    this.contexts = new Map();
    /** The pending writes, in the order they were made. */
    this.queue = [];
    this.idMap = new Map(); // "Type:tempId" → real id
    this.keyMap = new Map(); // "Type:realId" → the row's first (temp) id
    this.changeListeners = new Set();
    this.writeListeners = new Set();
    /** The last request id used (subscribe, unsubscribe). */
    this.nextRid = 0;
    /** @type {Map<number, StreamView>} live stream views by local id */
    this.streams = new Map();
    this.nextStream = 0;
    /** Row keys whose stream-view rows must be decided again at the next refresh. */
    this.streamDirty = new Set();
    this.retiredSome = false;
    this.storage = options.storage ?? null;
    this.savedUser = null;
    this.storageKey = options.storageKey ?? 'statecast';
    /** origin → outcome of the last settled writes that carried an origin. */
    this.settled = new Map();
    /** Asks the driver to call `tick()` (or `flushPresence()`) in this many ms: a presence waits for its turn. */
    this.wake = options.wake ?? (() => {});
    /** Contexts whose presence the server should learn, oldest first (only the latest data of each goes). */
    this.presenceQueue = new Set();
    this.presenceSentAt = -Infinity;
    this.presenceRids = new Map(); // rid → context of the last presence frames sent
    this.presenceListeners = new Set();
    if (this.storage) this.restore();
  }

  // ---- schema --------------------------------------------------------------

  channelInfo(channel) {
    return this.schema?.channels?.find((c) => c.name === channel);
  }

  /** The channel's tree edges: `{parent, relation, child, field, orderBy?}`. */
  edges(channel) {
    return this.channelInfo(channel)?.tree ?? [];
  }

  fieldsOf(type) {
    return this.schema?.types?.[type]?.fields ?? [];
  }

  /** The parent-child edge for a create under `parentType.relation`. */
  edgeFor(channel, parentType, relation) {
    const e = this.edges(channel).find((e) => e.parent === parentType && e.relation === relation);
    if (e) return e;
    const r = this.schema?.types?.[parentType]?.relations?.[relation];
    return r ? { parent: r.parent, relation: r.name, child: r.child, field: r.field } : undefined;
  }

  // ---- ids -----------------------------------------------------------------

  /** A temp id's real id once its create is confirmed; any other id as is. */
  resolve(type, id) {
    return typeof id === 'number' && id < 0 ? (this.idMap.get(rowKey(type, id)) ?? id) : id;
  }

  /** `data` with temp ids in its reference fields resolved. */
  resolveRefs(type, data) {
    let out = data;
    for (const f of this.fieldsOf(type)) {
      if (f.kind !== 'reference') continue;
      const v = data[f.name];
      if (typeof v === 'number' && v < 0) {
        const real = this.resolve(f.target, v);
        if (real !== v) out = { ...out, [f.name]: real };
      }
    }
    return out;
  }

  /** The rows an op names: its target (save, delete), its parent (create), its references. */
  refsOf(op) {
    const refs = [];
    if (op.operation === 'create') {
      if (op.parentType != null && op.parentId != null) refs.push([op.parentType, op.parentId]);
    } else if (op.instanceId != null) {
      refs.push([op.instanceType, op.instanceId]);
    }
    for (const f of this.fieldsOf(op.instanceType)) {
      const v = op.data?.[f.name];
      if (f.kind === 'reference' && typeof v === 'number') refs.push([f.target, v]);
    }
    return refs;
  }

  /**
   * Records the real ids of the rows write `w` created under temp ids. Only
   * temp ids that write minted are taken: an answer naming another would
   * re-key an unrelated row.
   */
  mapCreated(w, created) {
    const minted = (c) =>
      w?.ops.some((op) => op.operation === 'create' && op.instanceType === c._type && op.instanceId === c.tempId);
    for (const c of created ?? []) {
      if (c.tempId == null || c.tempId === c.id || !minted(c)) continue;
      this.idMap.set(rowKey(c._type, c.tempId), c.id);
      this.keyMap.set(rowKey(c._type, c.id), c.tempId);
    }
  }

  // ---- contexts ------------------------------------------------------------

  /** The context `channel/anchorId`, subscribed if it isn't yet. */
  subscribe(channel, anchorId) {
    const name = `${channel}/${anchorId}`;
    let ctx = this.contexts.get(name);
    if (ctx) return ctx;
    ctx = new Context(this, channel, anchorId);
    this.contexts.set(name, ctx);
    if (this.online) this.sendSubscribe(ctx);
    return ctx;
  }

  /**
   * Stops holding a context at once; its unsubscribe carries a rid of its
   * own. Late answers to the old subscription name older rids, so a
   * context opened again is never closed or changed by them.
   */
  unsubscribe(name) {
    const ctx = this.contexts.get(name);
    if (!ctx) return;
    if (this.online) this.transmit({ type: 'unsubscribe', context: name, rid: ++this.nextRid });
    this.dropContext(ctx, 'CLIENT_REQUEST', null);
  }

  sendSubscribe(ctx) {
    ctx.status = 'loading';
    ctx.partial = null;
    ctx.deltaParts = null;
    ctx.rid = ++this.nextRid;
    // The same connection subscribing again: whether the server kept this connection's presence is not known.
    if (ctx.presenceOnServer !== 'null') ctx.presenceOnServer = undefined;
    const frame = { type: 'subscribe', channel: ctx.channel, anchorId: ctx.anchorId, rid: ctx.rid };
    if (ctx.seq !== null && ctx.epoch !== null) {
      frame.since = ctx.seq;
      frame.epoch = ctx.epoch;
      // Rules that changed meanwhile (on any server) get a whole state.
      if (ctx.viewTag !== null) frame.view = ctx.viewTag;
    }
    this.transmit(frame);
  }

  /** Is `msg` (naming `rid` or not) an answer to the newest subscribe of `ctx`? */
  current(ctx, msg) {
    return msg.rid === undefined || msg.rid === null || ctx.rid === null || msg.rid === ctx.rid;
  }

  dropContext(ctx, reason, error) {
    this.contexts.delete(ctx.name);
    ctx.status = 'closed';
    ctx.closeReason = reason;
    for (const k of ctx.canonical.keys()) this.streamDirty.add(k);
    ctx.canonical = new Map();
    if (error) ctx.readyDeferred.reject(error);
    else ctx.readyDeferred.reject(new StatecastError(410, 'CONTEXT_CLOSED', `${ctx.name} was closed (${reason})`));
    // Writes already sent settle by their writeResponse; unsent ones fail now.
    for (const w of [...this.queue]) {
      if (w.context === ctx.name && !w.sent && !w.settled && this.queue.includes(w)) {
        const msg = `${ctx.name} was closed (${reason}) before write ${w.writeId} was sent`;
        this.fail(w, new StatecastError(410, 'CONTEXT_CLOSED', msg, { writeId: w.writeId, context: w.context }));
      }
    }
    this.gc(); // confirmed writes waiting only for this context's state are done
    this.refresh('closed', ctx);
    this.presenceQueue.delete(ctx);
    this.replacePresence(ctx, [], 'closed');
  }

  // ---- the connection ------------------------------------------------------

  /** The writeIds a reconnecting `hello` names in `pending`: those that may have reached the server. */
  pendingWriteIds() {
    return this.queue.filter((w) => !w.settled && w.everSent).map((w) => w.writeId);
  }

  /** After `welcome`: retire what it reports applied, resubscribe (with `since`), resend in order. */
  connected(welcome) {
    if (welcome.schema) this.schema = welcome.schema;
    if (welcome.user) this.user = welcome.user;
    const newEpoch = this.epoch !== null && welcome.epoch !== this.epoch;
    this.epoch = welcome.epoch ?? this.epoch;
    // Every context is stale until its state arrives: mark them first, so that
    // writes confirmed below stay in the views until the states include them.
    for (const ctx of this.contexts.values()) {
      ctx.status = 'loading';
      if (newEpoch) ctx.seq = null; // a new store: ask for a whole state
    }
    if (this.savedUser != null && welcome.user && welcome.user.id !== this.savedUser) {
      // Restored writes were made by another user: never send them as this one.
      for (const w of this.queue.filter((x) => x.restored && !x.settled)) {
        const msg = `write ${w.writeId} was made by user ${this.savedUser}, not by user ${welcome.user.id}`;
        if (this.queue.includes(w)) this.fail(w, new StatecastError(409, 'USER_CHANGED', msg, { writeId: w.writeId, context: w.context }));
      }
    }
    this.savedUser = null;
    for (const a of welcome.applied ?? []) {
      const w = this.find(a.writeId);
      if (w && !w.settled) this.confirm(w, { ...a, success: true, duplicate: true });
    }
    this.online = true; // only now: resubscribe first, then resend
    this.presenceSentAt = -Infinity; // the presence rate is per connection
    for (const ctx of this.contexts.values()) this.sendSubscribe(ctx);
    for (const view of this.streams.values()) {
      if (newEpoch) view.seq = null; // a new store: a fresh snapshot
      this.sendStreamSubscribe(view);
    }
    this.pump();
  }

  /** The connection is gone: everything unsettled will be sent again. */
  disconnected() {
    this.online = false;
    for (const w of this.queue) {
      if (!w.settled) w.sent = false;
    }
    for (const ctx of this.contexts.values()) {
      ctx.partial = null;
      ctx.deltaParts = null;
      ctx.presenceOnServer = 'null'; // the server forgets a connection's presence with it
      this.replacePresence(ctx, [], 'disconnected');
    }
    for (const view of this.streams.values()) {
      view.subscription = null;
      view.parts = null;
      if (view.everReady) view.status = 'loading';
    }
  }

  /** One message from the server (`welcome` goes to `connected`). */
  receive(msg) {
    switch (msg?.type) {
      case 'state':
        return this.onState(msg);
      case 'delta':
        return this.onDelta(msg);
      case 'writeResponse':
        return this.onWriteResponse(msg);
      case 'unsubscribed':
        return this.onUnsubscribed(msg);
      case 'subscribed':
        return this.onSubscribed(msg);
      case 'event':
        return this.onEvent(msg);
      case 'presence':
        return this.onPresenceMessage(msg);
      case 'error':
        return this.onError(msg);
      default:
        return undefined; // clients ignore message types they don't know
    }
  }

  onState(msg) {
    const ctx = this.contexts.get(msg.context);
    if (!ctx || !this.current(ctx, msg)) return; // an answer to an older subscribe of a reopened context
    if (msg.part === 0 || msg.part == null) {
      // The other connections' presence comes whole with the first part (absent: none).
      this.replacePresence(ctx, msg.presence ?? [], 'state');
    }
    if (msg.part != null) {
      if (msg.part === 0 || !ctx.partial) ctx.partial = { instances: [], removed: [] };
      ctx.partial.instances.push(...(msg.instances ?? []));
      ctx.partial.removed.push(...(msg.removed ?? []));
      if (!msg.last) return;
      msg = { ...msg, instances: ctx.partial.instances, removed: ctx.partial.removed };
      ctx.partial = null;
    }
    for (const r of msg.instances ?? []) this.streamDirty.add(rowKey(r._type, r.id));
    for (const r of msg.removed ?? []) this.streamDirty.add(rowKey(r._type, r.id));
    if (msg.incremental && ctx.seq !== null && msg.epoch === ctx.epoch) {
      for (const row of msg.instances ?? []) {
        const k = rowKey(row._type, row.id);
        const cur = ctx.canonical.get(k);
        if (!cur || msg.seq > cur._version) ctx.canonical.set(k, row);
      }
      for (const r of msg.removed ?? []) {
        const k = rowKey(r._type, r.id);
        const cur = ctx.canonical.get(k);
        if (cur && msg.seq > cur._version) ctx.canonical.delete(k);
      }
    } else {
      for (const k of ctx.canonical.keys()) this.streamDirty.add(k);
      ctx.canonical = new Map((msg.instances ?? []).map((r) => [rowKey(r._type, r.id), r]));
    }
    ctx.seq = msg.seq;
    ctx.epoch = msg.epoch ?? ctx.epoch;
    ctx.viewTag = msg.view ?? null;
    ctx.status = 'ready';
    for (const w of this.queue) {
      if (w.response && w.response.seq <= msg.seq) w.retiredIn.add(ctx.name);
    }
    this.gc();
    this.refresh('state', ctx);
    // This connection's presence here, if the server does not hold it (a new connection forgot it).
    if (ctx.myPresenceJson !== ctx.presenceOnServer) this.queuePresence(ctx);
    ctx.readyDeferred.resolve(ctx);
  }

  onDelta(msg) {
    const ctx = this.contexts.get(msg.context);
    // While a context loads, the state on its way covers every delta sent before it.
    if (!ctx || ctx.status !== 'ready') return;
    if (msg.part != null) {
      if (msg.part === 0 || !ctx.deltaParts) ctx.deltaParts = { changes: [], created: [], writeId: undefined };
      ctx.deltaParts.changes.push(...(msg.changes ?? []));
      ctx.deltaParts.created.push(...(msg.created ?? []));
      ctx.deltaParts.writeId ??= msg.writeId;
      if (!msg.last) return;
      msg = { ...msg, ...ctx.deltaParts };
      ctx.deltaParts = null;
    }
    if (msg.prev !== ctx.seq) {
      // A gap: something was missed. Ask for what changed since the last seq applied.
      this.sendSubscribe(ctx);
      return;
    }
    for (const ch of msg.changes ?? []) this.applyChange(ctx, msg.seq, ch);
    ctx.seq = msg.seq;
    this.mapCreated(msg.writeId == null ? undefined : this.find(msg.writeId), msg.created);
    if (msg.writeId != null) this.find(msg.writeId)?.retiredIn.add(ctx.name);
    this.gc();
    this.refresh('delta', ctx);
    if (msg.created?.length) this.pump(); // writes waiting for these temp ids can go
  }

  applyChange(ctx, seq, change) {
    const { op, ...row } = change;
    const k = rowKey(row._type, row.id);
    this.streamDirty.add(k);
    const cur = ctx.canonical.get(k);
    if (cur && !(seq > cur._version)) return; // already as new as this change
    // What changed, for a recompute in proportion to it: updates of held rows keep the view's shape.
    if (op === 'update' && cur) (ctx.dirty ??= new Set()).add(k);
    else ctx.structural = true;
    if (op === 'create') ctx.canonical.set(k, cur ? { ...cur, ...row } : row);
    else if (op === 'update') {
      if (cur) ctx.canonical.set(k, { ...cur, ...row });
    } else if (op === 'delete' && cur) {
      ctx.canonical.delete(k);
      this.keyMap.delete(k);
    }
  }

  onWriteResponse(msg) {
    const w = this.find(msg.writeId);
    if (!w || w.settled) return; // a write that timed out or was refused with its dependency
    if (msg.success) {
      this.confirm(w, msg);
      return;
    }
    const err = msg.error ?? { code: 500, reason: 'INTERNAL', message: 'refused without an error' };
    if (RETRYABLE.has(err.reason)) {
      // The server does not know yet (or is busy): keep the write and send it again, same writeId.
      w.sent = false;
      w.attempts += 1;
      w.retryAt = this.now() + Math.min(30_000, 250 * 2 ** w.attempts) * (0.5 + Math.random() / 2);
      w.status = 'retrying';
      this.emitWrite(w, StatecastError.from(err, { writeId: w.writeId, context: w.context }));
      return;
    }
    this.fail(w, StatecastError.from(err, { writeId: w.writeId, context: w.context }));
  }

  onUnsubscribed(msg) {
    if (msg.subscription != null) return this.onStreamUnsubscribed(msg);
    const ctx = this.contexts.get(msg.context);
    // The answer to our own unsubscribe of an older subscription names its rid: not this one.
    if (ctx && this.current(ctx, msg)) this.dropContext(ctx, msg.reason ?? 'UNKNOWN', null);
  }

  onError(msg) {
    if (msg.rid != null && this.presenceRids.has(msg.rid)) {
      // A presence refused (the client's `error` event reports it): the context stays open.
      const ctx = this.contexts.get(this.presenceRids.get(msg.rid));
      this.presenceRids.delete(msg.rid);
      if (ctx) ctx.presenceOnServer = undefined;
      return;
    }
    const view = msg.rid != null ? [...this.streams.values()].find((v) => v.rid === msg.rid) : undefined;
    if (view) return this.dropStream(view, msg.reason, StatecastError.from(msg));
    const ctx = msg.context ? this.contexts.get(msg.context) : undefined;
    if (ctx && this.current(ctx, msg)) this.dropContext(ctx, msg.reason, StatecastError.from(msg, { context: msg.context }));
  }

  // ---- presence --------------------------------------------------------------

  /** Sets this client's presence in `ctx` (see `Context.setPresence`). */
  setPresence(ctx, data) {
    if (ctx.status === 'closed' || this.contexts.get(ctx.name) !== ctx) {
      throw new StatecastError(410, 'CONTEXT_CLOSED', `${ctx.name} is closed: no presence can be set there`, { context: ctx.name });
    }
    const json = presenceJson(data, ctx.name);
    if (json === ctx.myPresenceJson) return;
    ctx.myPresence = JSON.parse(json); // a copy, as the others get it
    ctx.myPresenceJson = json;
    this.emitPresence(ctx, 'self', null);
    this.queuePresence(ctx);
  }

  queuePresence(ctx) {
    this.presenceQueue.add(ctx); // a context already waiting keeps its turn, with its latest data
    this.flushPresence();
  }

  /**
   * Sends the presence frames that are due: at most one per 1000 / 20 ms per
   * connection, the contexts in the order their presence changed, each with
   * its latest data (a value set and replaced before its turn never goes
   * out). Only for ready contexts: one still loading sends at its state.
   * When a frame must wait, asks the driver (`wake`) to come back.
   */
  flushPresence() {
    if (!this.online) return;
    for (const ctx of this.presenceQueue) {
      if (this.contexts.get(ctx.name) !== ctx || ctx.status !== 'ready' || ctx.myPresenceJson === ctx.presenceOnServer) {
        this.presenceQueue.delete(ctx);
        continue;
      }
      const wait = this.presenceSentAt + PRESENCE_INTERVAL - this.now();
      if (wait > 0) {
        this.wake(wait);
        return;
      }
      this.presenceQueue.delete(ctx);
      this.presenceSentAt = this.now();
      ctx.presenceOnServer = ctx.myPresenceJson;
      const rid = ++this.nextRid;
      this.presenceRids.set(rid, ctx.name);
      if (this.presenceRids.size > PRESENCE_RIDS) this.presenceRids.delete(this.presenceRids.keys().next().value);
      this.transmit({ type: 'presence', context: ctx.name, data: ctx.myPresence, rid });
    }
  }

  /** Is this `error` the refusal of a presence frame (not of the context it names)? */
  isPresenceError(msg) {
    return msg?.rid != null && this.presenceRids.has(msg.rid);
  }

  /** Another connection's presence changed (`data: null` cleared it; `left`: it left the context). */
  onPresenceMessage(msg) {
    const ctx = this.contexts.get(msg.context);
    if (!ctx || msg.connectionId == null) return;
    const id = msg.connectionId;
    if (msg.left || msg.data === null || msg.data === undefined) {
      const entry = ctx.others.get(id);
      if (!entry) return;
      ctx.others.delete(id);
      ctx.presenceList = null;
      this.emitPresence(ctx, msg.left ? 'left' : 'cleared', entry);
      return;
    }
    const entry = presenceEntry(msg);
    ctx.others.set(id, entry); // an update keeps its place
    ctx.presenceList = null;
    this.emitPresence(ctx, 'set', entry);
  }

  /** Replaces the other connections' presence in `ctx` (a state's list; empty when it closes or the connection drops). */
  replacePresence(ctx, list, cause) {
    if (ctx.others.size === 0 && list.length === 0) return;
    ctx.others = new Map();
    for (const e of list) {
      if (e?.connectionId != null && e.data !== null && e.data !== undefined) ctx.others.set(e.connectionId, presenceEntry(e));
    }
    ctx.presenceList = null;
    this.emitPresence(ctx, cause, null);
  }

  emitPresence(ctx, cause, entry) {
    const event = { context: ctx.name, cause, presence: ctx.presence(), entry };
    emit(ctx.presenceListeners, event);
    emit(this.presenceListeners, event);
  }

  /** Calls `fn(event)` after every presence change of any context (see `Context.onPresence`). */
  onPresence(fn) {
    this.presenceListeners.add(fn);
    return () => this.presenceListeners.delete(fn);
  }

  // ---- writes --------------------------------------------------------------

  find(writeId) {
    return this.queue.find((w) => w.writeId === writeId);
  }

  /** Builds a create op: its parent, relation and id. */
  createOp(ctx, type, data, options) {
    let parent = options.parent;
    if (Array.isArray(parent)) parent = { type: parent[0], id: parent[1] };
    let relation = options.relation;
    let field;
    const edges = this.edges(ctx.channel).filter((e) => e.child === type);
    if (parent) {
      const e = relation
        ? this.edgeFor(ctx.channel, parent.type, relation)
        : edges.find((e) => e.parent === parent.type);
      relation ??= e?.relation;
      field = e?.field;
    } else {
      const e = edges.find((e) => data[e.field] != null) ?? edges.find((e) => e.parent === ctx.anchorType());
      if (e) {
        parent = { type: e.parent, id: data[e.field] ?? ctx.anchorId };
        relation ??= e.relation;
        field = e.field;
      }
    }
    if (!parent || !relation) {
      throw new TypeError(
        `can't tell where a ${type} goes in ${ctx.name}: pass options.parent and options.relation ` +
          '(the schema arrives with the first welcome)',
      );
    }
    let id = options.id;
    if (id == null) id = options.tempId || (this.ids === 'temp' && options.tempId !== false) ? this.nextTempId-- : this.mintId();
    const payload = { ...data };
    if (field && payload[field] === parent.id) delete payload[field];
    const op = {
      operation: 'create',
      instanceType: type,
      instanceId: id,
      parentType: parent.type,
      parentId: parent.id,
      relationName: relation,
      data: payload,
    };
    return { op, id };
  }

  /**
   * Queues a write, shows it in the views at once (unless `optimistic:
   * false`), sends it when it can, and returns a promise of its outcome
   * with `writeId` on it.
   */
  write(context, operation, ops, options = {}) {
    const writeId = this.nextWriteId++;
    const d = deferred();
    const handle = d.promise;
    handle.writeId = writeId;
    const ctx = this.contexts.get(context);
    if (!ctx) {
      d.reject(new StatecastError(410, 'CONTEXT_CLOSED', `${context} is not subscribed`, { writeId, context }));
      return handle;
    }
    const w = this.newWrite(writeId, context, operation, ops, options, d);
    // A write that names a row an unconfirmed create makes depends on that create.
    const own = new Set(w.creates);
    for (const op of ops) {
      for (const [type, id] of this.refsOf(op)) {
        const k = rowKey(type, this.resolve(type, id));
        if (own.has(k)) continue;
        const dep = this.queue.find((x) => !x.settled && x.creates.includes(k));
        if (dep && !w.after.includes(dep.writeId)) w.after.push(dep.writeId);
      }
    }
    this.queue.push(w);
    this.markWrite(w);
    this.emitWrite(w);
    this.refresh('write');
    this.pump();
    this.persist();
    return handle;
  }

  newWrite(writeId, context, operation, ops, options, d) {
    const timeout = options.timeout ?? this.writeTimeout;
    return {
      writeId,
      context,
      operation,
      ops,
      after: [],
      optimistic: options.optimistic !== false,
      timeout,
      deadline: this.now() + timeout,
      creates: ops.filter((o) => o.operation === 'create').map((o) => rowKey(o.instanceType, o.instanceId)),
      sent: false,
      everSent: false,
      settled: false,
      status: 'pending',
      attempts: 0,
      retryAt: 0,
      retiredIn: new Set(),
      response: null,
      error: null,
      deferred: d,
      origin: options.origin ?? null,
    };
  }

  /**
   * What became of the write made with `options.origin` (a key its maker
   * chose, e.g. a tab's): `{write}` while it is queued, `{result}` or
   * `{error}` once settled (remembered for the last 200 settled origins,
   * persisted with the queue), else undefined — so a write handed over again
   * after a crash of the tab that queued it is neither lost nor doubled.
   */
  originOf(origin) {
    const w = this.queue.find((x) => x.origin === origin && !x.settled);
    if (w) return { write: w };
    return this.settled.get(origin);
  }

  rememberOrigin(w) {
    if (w.origin == null) return;
    this.settled.set(w.origin, w.error ? { error: { code: w.error.code, reason: w.error.reason, message: w.error.message, field: w.error.field, op: w.error.op, writeId: w.writeId } } : { result: w.response });
    while (this.settled.size > 200) this.settled.delete(this.settled.keys().next().value);
  }

  // ---- the persisted queue ---------------------------------------------------

  /**
   * Saves the client id, the writeId counter and the unanswered writes to
   * `storage` (a `localStorage`-like object), so that they survive a reload.
   */
  persist() {
    if (!this.storage) return;
    const saved = {
      v: 1,
      clientId: this.clientId,
      user: this.user?.id ?? this.savedUser ?? null,
      nextWriteId: this.nextWriteId,
      nextTempId: this.nextTempId,
      idMap: [...this.idMap],
      writes: this.queue
        .filter((w) => !w.settled)
        .map((w) => ({
          writeId: w.writeId,
          context: w.context,
          operation: w.operation,
          ops: w.ops,
          after: w.after,
          optimistic: w.optimistic,
          everSent: w.everSent,
          origin: w.origin ?? undefined,
        })),
      settled: [...this.settled],
    };
    try {
      this.storage.setItem(this.storageKey, JSON.stringify(saved));
    } catch {
      // Storage full or gone: the queue still lives in memory.
    }
  }

  /** Takes back a queue saved by `persist`: same client id, the writes pending again (their contexts subscribed). */
  restore() {
    let saved = null;
    try {
      saved = JSON.parse(this.storage.getItem(this.storageKey) ?? 'null');
    } catch {
      saved = null;
    }
    if (saved?.v !== 1 || typeof saved.clientId !== 'string') return;
    this.clientId = saved.clientId;
    this.savedUser = saved.user ?? null;
    this.nextWriteId = Math.max(this.nextWriteId, saved.nextWriteId ?? 1);
    this.nextTempId = Math.min(this.nextTempId, saved.nextTempId ?? -1);
    for (const [k, v] of saved.idMap ?? []) this.idMap.set(k, v);
    for (const [k, v] of saved.settled ?? []) this.settled.set(k, v);
    for (const s of saved.writes ?? []) {
      const d = deferred();
      d.promise.catch(() => {}); // nobody from before the reload awaits it; the `write` event tells its fate
      const w = this.newWrite(s.writeId, s.context, s.operation, s.ops, { optimistic: s.optimistic }, d);
      w.after = s.after ?? [];
      w.everSent = s.everSent === true;
      w.origin = s.origin ?? null;
      w.restored = true;
      this.queue.push(w);
      const slash = s.context.lastIndexOf('/');
      this.subscribe(s.context.slice(0, slash), Number(s.context.slice(slash + 1)));
    }
  }

  /** Does this write name a temp id whose create is not confirmed yet? (Then it waits.) */
  held(w) {
    const own = new Set(w.creates);
    return w.ops.some((op) =>
      this.refsOf(op).some(([type, id]) => {
        const k = rowKey(type, this.resolve(type, id));
        return id < 0 && !own.has(k) && this.queue.some((x) => !x.settled && x !== w && x.creates.includes(k));
      }),
    );
  }

  /** The wire frame of a write, with confirmed temp ids replaced by real ones. */
  frameOf(w) {
    const ops = w.ops.map((op) => {
      const out = { ...op };
      if (op.operation !== 'create' && op.instanceId != null) out.instanceId = this.resolve(op.instanceType, op.instanceId);
      if (op.parentId != null) out.parentId = this.resolve(op.parentType, op.parentId);
      if (op.data) out.data = this.resolveRefs(op.instanceType, op.data);
      return out;
    });
    const frame = { type: 'write', writeId: w.writeId, context: w.context };
    if (w.operation === 'batch') Object.assign(frame, { operation: 'batch', ops });
    else Object.assign(frame, ops[0]);
    if (w.after.length) frame.after = [...w.after];
    return frame;
  }

  /** Sends the unsent writes in order, stopping at the first that must wait. */
  pump() {
    if (!this.online) return;
    const now = this.now();
    for (const w of this.queue) {
      if (w.settled || w.sent) continue;
      if (w.retryAt > now || this.held(w)) break;
      w.sent = true;
      w.everSent = true;
      w.status = 'sent';
      this.transmit(this.frameOf(w));
      this.emitWrite(w);
      if (!w.everSentSaved) {
        w.everSentSaved = true;
        this.persist();
      }
    }
  }

  /**
   * Time passes: a write past its deadline rejects its handle with 408
   * TIMEOUT but stays queued and pending in the views (it may still be
   * applied: it is resent with its writeId until the server answers, and
   * that answer settles the views and the `write` event); retries that are
   * due go out.
   */
  tick() {
    const now = this.now();
    for (const w of this.queue) {
      if (!w.settled && !w.timedOut && w.deadline <= now) {
        w.timedOut = true;
        const fate = w.everSent ? 'it may still be applied' : 'it was not sent yet';
        const msg = `write ${w.writeId} got no answer within ${w.timeout} ms; ${fate}; it stays queued`;
        const error = new StatecastError(408, 'TIMEOUT', msg, { writeId: w.writeId, context: w.context });
        this.emitWrite(w, error);
        w.deferred.reject(error);
      }
    }
    this.pump();
    this.flushPresence();
  }

  confirm(w, msg) {
    w.settled = true;
    w.status = 'confirmed';
    this.mapCreated(w, msg.created);
    this.markWrite(w);
    // Every live stream view has received its events up to this seq (they come before the answer).
    for (const view of this.streams.values()) {
      if (view.status === 'ready' || (view.seq !== null && view.seq >= msg.seq)) w.retiredIn.add(`stream:${view.local}`);
    }
    const created = msg.created ?? [];
    w.response = {
      writeId: w.writeId,
      seq: msg.seq,
      created,
      duplicate: msg.duplicate === true,
    };
    const single = w.operation === 'create' ? (msg.instanceId ?? created[0]?.id) : undefined;
    if (single !== undefined) w.response.id = single;
    this.rememberOrigin(w);
    // Every live context has received all deltas up to this seq (they come before the answer).
    for (const ctx of this.contexts.values()) {
      if (ctx.status === 'ready' || (ctx.seq !== null && ctx.seq >= msg.seq)) w.retiredIn.add(ctx.name);
    }
    this.gc();
    this.refresh('confirm');
    this.emitWrite(w);
    w.deferred.resolve(w.response);
    this.persist();
    this.pump();
  }

  /** Drops a write (and every write that depends on it) and rejects their promises. */
  fail(w, error) {
    const failed = new Map([[w.writeId, error]]);
    for (const x of this.queue) {
      if (x === w || x.settled) continue;
      const dep = x.after.find((a) => failed.has(a));
      if (dep !== undefined) {
        const why = failed.get(dep);
        const msg = `write ${x.writeId} depends on write ${dep}, which failed (${why.code} ${why.reason})`;
        failed.set(x.writeId, new StatecastError(400, 'DEPENDENCY_FAILED', msg, { writeId: x.writeId, context: x.context }));
      }
    }
    const dropped = this.queue.filter((x) => failed.has(x.writeId));
    for (const x of dropped) this.markWrite(x);
    this.queue = this.queue.filter((x) => !failed.has(x.writeId));
    this.refresh('reject');
    for (const x of dropped) {
      x.settled = true;
      x.status = 'refused';
      x.error = failed.get(x.writeId);
      this.rememberOrigin(x);
      this.emitWrite(x);
      x.deferred.reject(x.error);
    }
    this.persist();
    this.pump();
  }

  /** Fails every unsettled write (the client was closed, or authentication failed for good). */
  failAll(error) {
    for (const w of [...this.queue]) {
      if (!w.settled && this.queue.includes(w)) {
        this.fail(w, new StatecastError(error.code, error.reason, error.message, { writeId: w.writeId, context: w.context }));
      }
    }
  }

  /** Forgets confirmed writes that every open context has retired. */
  gc() {
    const open = [...this.contexts.values()].map((c) => c.name);
    for (const v of this.streams.values()) open.push(`stream:${v.local}`);
    this.queue = this.queue.filter((w) => !(w.settled && open.every((n) => w.retiredIn.has(n))));
  }

  /** A plain description of a write, for events and tools. */
  describe(w) {
    const out = {
      writeId: w.writeId,
      context: w.context,
      operation: w.operation,
      ops: w.ops,
      after: w.after,
      optimistic: w.optimistic,
      status: w.status,
    };
    if (w.origin != null) out.origin = w.origin;
    if (w.response) out.result = w.response;
    if (w.error) out.error = w.error;
    return out;
  }

  /** The writes not answered yet, in order. */
  pendingWrites() {
    return this.queue.filter((w) => !w.settled).map((w) => this.describe(w));
  }

  emitWrite(w, error) {
    const event = this.describe(w);
    if (error) event.error = error;
    emit(this.writeListeners, event);
  }

  onChange(fn) {
    this.changeListeners.add(fn);
    return () => this.changeListeners.delete(fn);
  }

  onWrite(fn) {
    this.writeListeners.add(fn);
    return () => this.writeListeners.delete(fn);
  }

  // ---- stream views ----------------------------------------------------------

  /** Opens a live view of stream `name` (`{filters, fields, id, actions, snapshot}`). */
  stream(name, options = {}) {
    const view = new StreamView(this, ++this.nextStream, name, options);
    this.streams.set(view.local, view);
    this.compileView(view);
    if (this.online) this.sendStreamSubscribe(view);
    return view;
  }

  compileView(view) {
    view.predicate = null;
    const type = view.type();
    if (!type) return;
    const client = { ...view.options.filters };
    if (view.options.id != null) client.id = view.options.id;
    try {
      view.predicate = compileFilters(mergeFilters(view.scope, client), this.fieldsOf(type));
    } catch {
      view.predicate = null; // the server refuses such filters; it decides every row then
    }
  }

  sendStreamSubscribe(view) {
    view.rid = ++this.nextRid;
    view.subscription = null;
    view.parts = null;
    view.since = view.seq;
    const o = view.options;
    const frame = { type: 'subscribe', stream: view.stream, rid: view.rid };
    if (Object.keys(o.filters).length) frame.filters = o.filters;
    if (o.fields) frame.fields = o.fields;
    if (o.actions) frame.actions = o.actions;
    if (o.id != null) frame.id = o.id;
    if (view.seq !== null) {
      frame.since = view.seq;
      frame.epoch = this.epoch;
    } else if (o.snapshot) frame.snapshot = true;
    this.transmit(frame);
  }

  closeStream(view) {
    if (!this.streams.has(view.local)) return;
    if (this.online && view.subscription) {
      this.transmit({ type: 'unsubscribe', subscription: view.subscription, rid: ++this.nextRid });
    }
    this.dropStream(view, 'CLIENT_REQUEST', null);
  }

  dropStream(view, reason, error) {
    this.streams.delete(view.local);
    view.status = 'closed';
    view.closeReason = reason;
    view.readyDeferred.reject(error ?? new StatecastError(410, 'STREAM_CLOSED', `stream ${view.stream} was closed (${reason})`));
    const removed = [...view.view.values()];
    view.view = new Map();
    view.list = null;
    view.canonical = new Map();
    this.gc();
    if (removed.length) {
      const event = { stream: view.stream, view, cause: 'closed', added: [], updated: [], removed };
      emit(view.listeners, event);
    }
  }

  onSubscribed(msg) {
    const view = [...this.streams.values()].find((v) => v.rid === msg.rid);
    if (!view) {
      // Nobody waits for it (its view closed, or a newer subscribe replaced it): end it.
      if (this.online && (msg.part == null || msg.last)) {
        this.transmit({ type: 'unsubscribe', subscription: msg.subscription, rid: ++this.nextRid });
      }
      return;
    }
    if (msg.snapshot) (view.parts ??= []).push(...msg.snapshot);
    if (msg.part != null && !msg.last) return;
    const rows = view.parts ?? [];
    view.parts = null;
    view.rid = null;
    view.subscription = msg.subscription;
    const since = view.since;
    view.since = null;
    if (since !== null && msg.seq > since && view.options.snapshot) {
      // The log no longer reaches back to `since`: take a fresh snapshot (the rows shown stay until it comes).
      view.seq = null;
      this.transmit({ type: 'unsubscribe', subscription: msg.subscription, rid: ++this.nextRid });
      this.sendStreamSubscribe(view);
      return;
    }
    if (canonicalJson(msg.scope ?? null) !== canonicalJson(view.scope) || !view.predicate) {
      view.scope = msg.scope ?? null;
      this.compileView(view);
    }
    const type = view.type();
    const dirty = new Set();
    if (msg.snapshot || view.seq === null) {
      for (const k of view.canonical.keys()) dirty.add(k);
      view.canonical = new Map();
      for (const r of rows) {
        const row = { _type: type, ...r };
        const k = rowKey(row._type, row.id);
        view.canonical.set(k, row);
        dirty.add(k);
      }
    }
    for (const k of view.view.keys()) dirty.add(rowKey(type, this.resolve(type, k)));
    view.seq = msg.seq;
    for (const k of this.retireInView(view)) dirty.add(k);
    view.status = 'ready';
    const first = !view.everReady;
    view.everReady = true;
    this.recomputeStream(view, dirty, 'subscribed', true);
    this.retiredSome = false;
    this.gc();
    if (first) view.readyDeferred.resolve(view);
  }

  onEvent(msg) {
    const view = [...this.streams.values()].find((v) => v.subscription === msg.subscription);
    if (!view || view.seq === null) return;
    if (msg.prev !== view.seq) {
      if (msg.seq <= view.seq) return; // already applied
      // A gap: resume from the last seq applied.
      this.transmit({ type: 'unsubscribe', subscription: view.subscription, rid: ++this.nextRid });
      this.sendStreamSubscribe(view);
      return;
    }
    view.seq = msg.seq;
    const type = view.type();
    const k = rowKey(type, msg.id);
    const dirty = new Set(this.retireInView(view));
    const cur = view.canonical.get(k);
    if (!cur || !(cur._version > msg.seq)) {
      if (msg.action === 'delete') view.canonical.delete(k);
      else view.canonical.set(k, { ...(cur ?? { _type: type, id: msg.id }), ...(msg.data ?? {}), _version: msg.seq });
      dirty.add(k);
    }
    this.recomputeStream(view, dirty, 'event');
    if (this.retiredSome) {
      this.retiredSome = false;
      this.gc();
    }
  }

  /**
   * Confirmed writes whose seq the view has reached are in its canonical
   * rows: retire them there. Returns the row keys they name.
   */
  retireInView(view) {
    const vk = `stream:${view.local}`;
    const keys = [];
    for (const w of this.queue) {
      if (w.response && !w.retiredIn.has(vk) && w.response.seq <= view.seq) {
        w.retiredIn.add(vk);
        this.retiredSome = true;
        for (const op of w.ops) keys.push(rowKey(op.instanceType, this.resolve(op.instanceType, op.instanceId)));
      }
    }
    return keys;
  }

  onStreamUnsubscribed(msg) {
    if (msg.reason === 'CLIENT_REQUEST') return; // the answer to our own unsubscribe
    const view = [...this.streams.values()].find((v) => v.subscription === msg.subscription);
    if (!view) return;
    if (msg.reason === 'RESCOPED') {
      // What the user may read of the stream changed: a fresh snapshot under
      // the new decision replaces the rows (shown until it arrives).
      view.subscription = null;
      view.seq = null;
      if (this.online) this.sendStreamSubscribe(view);
      return;
    }
    this.dropStream(view, msg.reason ?? 'UNKNOWN', null);
  }

  /** Marks the rows a write names for the stream views to decide again. */
  markWrite(w) {
    if (this.streams.size === 0) return;
    for (const op of w.ops) this.streamDirty.add(rowKey(op.instanceType, this.resolve(op.instanceType, op.instanceId)));
  }

  refreshStreams(cause) {
    if (this.streams.size === 0) {
      this.streamDirty.clear();
      return;
    }
    const dirty = this.streamDirty;
    this.streamDirty = new Set();
    for (const view of this.streams.values()) this.recomputeStream(view, dirty, cause);
  }

  /** Decides `dirty` rows of a stream view again and tells its listeners what changed. */
  recomputeStream(view, dirty, cause, whole = false) {
    if (view.status === 'closed' || (!view.everReady && !whole)) return;
    const type = view.type();
    const prefix = `${type}:`;
    const added = [];
    const updated = [];
    const removed = [];
    const done = new Set();
    const visit = (k) => {
      if (!k.startsWith(prefix)) return;
      const id = Number(k.slice(prefix.length));
      const real = this.resolve(type, id);
      const rk = rowKey(type, real);
      if (done.has(rk)) return;
      done.add(rk);
      const key = real < 0 ? real : (this.keyMap.get(rk) ?? real);
      const prev = view.view.get(key);
      let next = this.decideStreamRow(view, type, rk, real, key);
      if (next && prev && shallowEqual(prev, next)) next = prev;
      if (next === prev) return;
      if (next) {
        if (!prev) {
          if (key < view.maxKey) view.sorted = false;
          else view.maxKey = key;
        }
        view.view.set(key, Object.freeze(next));
        (prev ? updated : added).push(next);
      } else {
        view.view.delete(key);
        removed.push(prev);
      }
    };
    for (const k of dirty) visit(k);
    if (whole) {
      for (const w of this.queue) for (const op of w.ops) if (op.instanceType === type) visit(rowKey(type, this.resolve(type, op.instanceId)));
    }
    if (added.length + updated.length + removed.length === 0 && cause !== 'subscribed') return;
    view.list = null;
    const event = { stream: view.stream, view, cause, added, updated, removed };
    emit(view.listeners, event);
  }

  /** One row of a stream view as the app sees it, or undefined when it is not in the view. */
  decideStreamRow(view, type, k, id, key) {
    const reported = view.canonical.get(k);
    const copy = this.canonicalRow(k);
    const known = reported ? reported._version : (view.seq ?? 0);
    const newer = copy !== undefined && copy._version > known;
    let value;
    if (reported && copy) value = copy._version > reported._version ? { ...reported, ...copy } : { ...copy, ...reported };
    else value = reported ?? copy;
    let pending = false;
    const vk = `stream:${view.local}`;
    for (const w of this.queue) {
      if (!w.optimistic || w.retiredIn.has(vk)) continue;
      for (const op of w.ops) {
        if (op.instanceType !== type || this.resolve(type, op.instanceId) !== id) continue;
        pending = true;
        if (op.operation === 'save') {
          if (value) value = { ...value, ...this.resolveRefs(type, op.data ?? {}) };
        } else if (op.operation === 'delete') value = undefined;
        else if (op.operation === 'create' && !value) {
          value = { _type: type, id, _version: 0, ...this.defaults(type), ...this.resolveRefs(type, op.data ?? {}) };
          const channel = w.context.slice(0, w.context.lastIndexOf('/'));
          const edge = this.edgeFor(channel, op.parentType, op.relationName);
          if (edge) value[edge.field] = this.resolve(op.parentType, op.parentId);
        }
      }
    }
    let member = reported !== undefined;
    if (pending || newer) {
      if (!value) member = false;
      else if (view.predicate && view.predicate.fields.every((f) => f in value)) member = view.predicate.matches(value);
    }
    if (!member || !value) return undefined;
    let row = value;
    if (view.options.fields) {
      row = { _type: type, id: value.id, _version: value._version };
      for (const f of view.options.fields) if (f in value) row[f] = value[f];
    }
    return { ...row, _type: type, _key: key, _pending: pending };
  }

  // ---- views ---------------------------------------------------------------

  /** Recomputes the views (of one context, or all) and tells listeners what changed. */
  refresh(cause, only) {
    const targets = only ? [only] : [...this.contexts.values()];
    for (const ctx of targets) {
      const event = this.recompute(ctx, cause);
      if (event) {
        emit(ctx.listeners, event);
        emit(this.changeListeners, event);
      }
    }
    this.refreshStreams(cause);
  }

  recompute(ctx, cause) {
    // The pending writes' effects, as an overlay on the canonical rows (which stay untouched).
    const rows = new Overlay(ctx.canonical);
    const touched = new Set();
    if (ctx.status !== 'closed') {
      for (const w of this.queue) {
        if (!w.optimistic || w.retiredIn.has(ctx.name)) continue;
        for (const op of w.ops) this.replay(ctx, rows, touched, op);
      }
    }
    const dirty = ctx.dirty;
    const fast = cause === 'delta' && dirty && !ctx.structural && ctx.hadPending === false && rows.changed.size === 0 && ctx.status !== 'closed';
    ctx.dirty = null;
    ctx.structural = false;
    if (fast) {
      const event = this.recomputeRows(ctx, dirty, cause);
      if (event !== undefined) return event;
    }
    ctx.hadPending = rows.changed.size > 0 || touched.size > 0;
    const before = ctx.view;
    const view = new Map();
    const added = [];
    const updated = [];
    const keyed = this.keyMap.size > 0;
    const visit = (k, r) => {
      const key = r.id < 0 ? r.id : keyed ? (this.keyMap.get(k) ?? r.id) : r.id;
      const vk = key === r.id ? k : rowKey(r._type, key);
      const pending = touched.has(k);
      const prev = before.get(vk);
      let v;
      if (prev !== undefined && !pending && !prev._pending && SOURCE.get(prev) === r) {
        v = prev; // the same canonical row, untouched: nothing to compare
      } else {
        v = { ...r, _key: key, _pending: pending };
        if (prev !== undefined && shallowEqual(prev, v)) {
          v = prev;
          SOURCE.set(prev, r); // equal to a new canonical row: compare no more while it stays
        } else {
          Object.freeze(v);
          SOURCE.set(v, r);
        }
      }
      if (prev === undefined) added.push(v);
      else if (prev !== v) updated.push(v);
      view.set(vk, v);
    };
    if (rows.changed.size === 0) for (const [k, r] of ctx.canonical) visit(k, r);
    else for (const [k, r] of rows.entries()) visit(k, r);
    const removed = [];
    if (before.size !== view.size - added.length) {
      for (const [vk, v] of before) if (!view.has(vk)) removed.push(v);
    }
    ctx.view = view;
    ctx.list = null; // rebuilt on the next read
    ctx.typed = null;
    if (added.length + updated.length + removed.length === 0 && cause !== 'state') return null;
    return { context: ctx.name, cause, added, updated, removed };
  }

  /**
   * A delta that only updated rows the view holds, with no pending write on
   * this context before or now: the view keeps its shape, so only those rows
   * are made again and replaced in place (in the lists already read, too) —
   * work in proportion to the delta, not to the context. Undefined when a row
   * is not where it was expected (the caller then recomputes everything).
   */
  recomputeRows(ctx, dirty, cause) {
    const view = ctx.view;
    const updated = [];
    const keyed = this.keyMap.size > 0;
    const next = [];
    for (const k of dirty) {
      const r = ctx.canonical.get(k);
      if (!r) return undefined;
      const key = r.id < 0 ? r.id : keyed ? (this.keyMap.get(k) ?? r.id) : r.id;
      const vk = key === r.id ? k : rowKey(r._type, key);
      const prev = view.get(vk);
      if (prev === undefined || prev._pending) return undefined;
      if (SOURCE.get(prev) === r) continue;
      let v = { ...r, _key: key, _pending: false };
      if (shallowEqual(prev, v)) {
        SOURCE.set(prev, r);
        continue;
      }
      Object.freeze(v);
      SOURCE.set(v, r);
      next.push([vk, v]);
    }
    let list = ctx.list;
    const typed = ctx.typed;
    for (const [vk, v] of next) {
      view.set(vk, v); // an existing key keeps its position
      updated.push(v);
      if (list) list = replaceIn(list, vk, v);
      const t = typed?.get(v._type);
      if (t) {
        const out = replaceIn(t, vk, v);
        if (out) typed.set(v._type, out);
        else typed.delete(v._type);
      }
    }
    ctx.list = list;
    if (updated.length === 0) return null;
    return { context: ctx.name, cause, added: [], updated, removed: [] };
  }

  /** Replays one op of a pending write over a context's rows. */
  replay(ctx, rows, touched, op) {
    const type = op.instanceType;
    if (op.operation === 'save') {
      const k = rowKey(type, this.resolve(type, op.instanceId));
      const data = this.resolveRefs(type, op.data ?? {});
      const cur = rows.get(k);
      if (!cur) {
        // A save that points the row at a parent in this context moves it in.
        const into = this.edges(ctx.channel).some(
          (e) => e.child === type && data[e.field] != null && rows.has(rowKey(e.parent, data[e.field])),
        );
        const base = into ? this.canonicalRow(k) : undefined;
        if (base) {
          rows.set(k, { ...base, ...data });
          touched.add(k);
        }
        return;
      }
      rows.set(k, { ...cur, ...data });
      touched.add(k);
      // A save that points the row at a parent outside this context moves it out.
      const out = this.edges(ctx.channel).some(
        (e) => e.child === type && e.field in data && !(data[e.field] != null && rows.has(rowKey(e.parent, data[e.field]))),
      );
      if (out && !(type === this.channelInfo(ctx.channel)?.anchor && cur.id === ctx.anchorId)) {
        this.removeSubtree(ctx, rows, k);
      }
    } else if (op.operation === 'create') {
      const parentId = this.resolve(op.parentType, op.parentId);
      if (!rows.has(rowKey(op.parentType, parentId))) return; // the parent is gone: hidden
      const id = this.resolve(type, op.instanceId);
      const k = rowKey(type, id);
      if (rows.has(k)) {
        touched.add(k); // already canonical (the state got here before the answer)
        return;
      }
      const row = { _type: type, id, _version: 0, ...this.defaults(type), ...this.resolveRefs(type, op.data ?? {}) };
      const edge = this.edgeFor(ctx.channel, op.parentType, op.relationName);
      if (edge) row[edge.field] = parentId;
      rows.set(k, row);
      touched.add(k);
    } else if (op.operation === 'delete') {
      const k = rowKey(type, this.resolve(type, op.instanceId));
      if (rows.has(k)) this.removeSubtree(ctx, rows, k);
    }
  }

  /** Removes a row and what hangs under it in the channel's tree. */
  removeSubtree(ctx, rows, k) {
    const row = rows.get(k);
    if (!row) return;
    rows.delete(k);
    for (const e of this.edges(ctx.channel)) {
      if (e.parent !== row._type) continue;
      for (const ck of rows.childrenOf(e, row.id)) this.removeSubtree(ctx, rows, ck);
    }
  }

  /** The newest canonical copy of a row held by any context. */
  canonicalRow(k) {
    let best;
    for (const ctx of this.contexts.values()) {
      const r = ctx.canonical.get(k);
      if (r && (!best || r._version > best._version)) best = r;
    }
    return best;
  }

  /** The values a create shows before the server answers: defaults, nulls and server-set values. */
  defaults(type) {
    const out = {};
    for (const f of this.fieldsOf(type)) {
      if (f.serverValue === 'userId') out[f.name] = this.user?.id ?? null;
      else if (f.serverValue === 'now') out[f.name] = new Date(this.now()).toISOString();
      else if (f.default !== undefined) out[f.name] = f.default;
      else if (f.nullable) out[f.name] = null;
    }
    return out;
  }
}
