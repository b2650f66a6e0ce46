// TypeScript declarations for the Statecast JavaScript client (statecast.js).
// Row types for an app come from `statecast-server schema --ts`; pass them as
// the type parameters below (`Context<Entities>` with the generated `Entities`).

/** A row id: positive when stored; negative for a temp id until its create is confirmed. */
export type Id = number;

/** 2^52: the smallest client-minted id. */
export const MINTED_MIN: number;
/** 2^53: one past the largest client-minted id. */
export const MINTED_END: number;
/** The protocol version this client speaks. */
export const PROTOCOL: 1;
/** 1024: the most bytes a presence's `data` may take, as JSON (UTF-8). */
export const MAX_PRESENCE_BYTES: number;
/** 20: the most presence frames the client sends per second per connection. */
export const PRESENCE_RATE: number;

/** Entity types by name; `Record<string, any>` when the app's types are not given. */
export type EntityMap = Record<string, any>;

/** What every row of a view carries besides its fields. */
export interface RowMeta<T extends string = string> {
  readonly _type: T;
  readonly id: Id;
  /** The commit seq that last changed the row (0 for a row not yet created on the server). */
  readonly _version: number;
  /** Stable across a temp id's swap: the row's first id. Use it as the UI key. */
  readonly _key: Id;
  /** A pending write touches this row. */
  readonly _pending: boolean;
}

/** A row of a view: its fields and the meta fields. */
export type ViewRow<T = Record<string, unknown>, N extends string = string> = Readonly<Omit<T, 'id'>> & RowMeta<N>;

/** A node of `Context.tree()`: a row and its children by relation name. */
export interface TreeNode {
  row: ViewRow;
  children: { [relation: string]: TreeNode[] };
}

/** What changed in a view, by row key. */
export interface ChangeEvent {
  context: string;
  cause: 'state' | 'delta' | 'write' | 'confirm' | 'reject' | 'closed';
  added: ViewRow[];
  updated: ViewRow[];
  removed: ViewRow[];
}

/** Another connection's presence in a context. */
export interface PresenceEntry<D = unknown> {
  /** The server's id of that connection (`welcome.connectionId` there). */
  readonly connectionId: string;
  /** Who it is: the user's id and name. */
  readonly user: { readonly id: Id; readonly name: string };
  /** What it shows: any JSON value but null (null clears an entry). */
  readonly data: D;
}

/** What changed in a context's presence. */
export interface PresenceEvent<D = unknown> {
  context: string;
  /**
   * `state`: a state's list replaced it; `set`, `cleared`, `left`: one other
   * connection's entry (`entry`) was set, cleared, or went with its connection
   * leaving; `self`: this client (or tab) set its own (`myPresence`);
   * `closed`, `disconnected`: the list emptied.
   */
  cause: 'state' | 'set' | 'cleared' | 'left' | 'self' | 'closed' | 'disconnected';
  /** The list after the change (`Context.presence()`). */
  presence: ReadonlyArray<PresenceEntry<D>>;
  /** The entry set, cleared or gone (`set`, `cleared`, `left`); else null. */
  entry: PresenceEntry<D> | null;
}

/** A confirmed write. */
export interface WriteResult {
  writeId: number;
  seq: number;
  /** The ids of created rows (`tempId` when the create used one). */
  created: Array<{ _type: string; tempId?: Id; id: Id }>;
  /** For a single create: the row's id. */
  id?: Id;
  /** The server answered a resend of a write it had already applied. */
  duplicate: boolean;
}

/**
 * A write's outcome: resolves when the server confirms it, rejects with a
 * `StatecastError` when it is refused, its dependency fails, its context
 * closes or it times out. Never left hanging. A timed-out write (408
 * `TIMEOUT`) stays queued and pending in the views: it may still be applied,
 * so it is resent with its writeId and the server's answer settles the views
 * (and the `write` event).
 */
export interface WriteHandle extends Promise<WriteResult> {
  readonly writeId: number;
}

/** A create's handle: `id` is the new row's id at once (client-minted or a temp id). */
export interface CreateHandle extends WriteHandle {
  readonly id: Id;
}

/** A batch's handle: `ids` are the ids of its creates, in order. */
export interface BatchHandle extends WriteHandle {
  readonly ids: Id[];
}

export interface WriteOptions {
  /** false: don't show the write until the server confirms it (Apollo's IGNORE). Default true. */
  optimistic?: boolean;
  /** Milliseconds before the handle rejects with TIMEOUT (default: the client's `writeTimeout`); the write stays queued. */
  timeout?: number;
  /** Refuse (409 VERSION_CONFLICT) unless the row is still at this version. */
  ifVersion?: number;
}

export interface CreateOptions extends WriteOptions {
  /** The parent: `{type, id}` or `[type, id]`. Default: from a tree field in `data`, else the anchor. */
  parent?: { type: string; id: Id } | [string, Id];
  /** The parent's relation the row joins (default: the channel's tree edge to this type). */
  relation?: string;
  /** Use a negative temp id instead of a client-minted one. */
  tempId?: boolean;
  /** Use this id (a client-minted id in [2^52, 2^53), or a negative temp id). */
  id?: Id;
}

/** Builds the ops of one all-or-nothing batch. */
export interface BatchBuilder<E extends object = EntityMap> {
  save<K extends keyof E & string>(type: K, id: Id, data: Partial<E[K]>, options?: { ifVersion?: number }): void;
  /** Returns the new row's id; later ops of the batch may name it. */
  create<K extends keyof E & string>(type: K, data?: Partial<E[K]>, options?: CreateOptions): Id;
  delete<K extends keyof E & string>(type: K, id: Id, options?: { ifVersion?: number }): void;
}

/** A write as events and `pendingWrites()` describe it. */
export interface WriteInfo {
  writeId: number;
  context: string;
  operation: 'save' | 'create' | 'delete' | 'batch';
  ops: Array<Record<string, unknown>>;
  /** The writes it depends on (it fails with them). */
  after: number[];
  optimistic: boolean;
  status: 'pending' | 'sent' | 'retrying' | 'confirmed' | 'refused';
  result?: WriteResult;
  error?: StatecastError;
  /** The key a TabClient's tab gave the write (it keeps a write single across a change of leader). */
  origin?: string;
}

/** A subscribed context: canonical rows from the server, and the view the app reads. */
export class Context<E extends object = EntityMap> {
  /** `"channel/anchorId"`. */
  readonly name: string;
  readonly channel: string;
  readonly anchorId: Id;
  readonly status: 'loading' | 'ready' | 'closed';
  /** Why it closed (`ANCHOR_DELETED`, `PERMISSION_LOST`, `REVOKED`, `CLIENT_REQUEST`, or a subscribe error's reason). */
  readonly closeReason: string | null;
  /** The seq of the last state or delta applied (null before the first state). */
  readonly seq: number | null;
  readonly epoch: string | null;
  /** The tag of the read rules the last state was read under (null when read in full); sent back when resuming. */
  readonly viewTag: string | null;
  /** Resolves at the first state; rejects with the error if the subscription fails. */
  readonly ready: Promise<Context<E>>;

  /** The view's rows in order: all, or those of one type. */
  rows(): ViewRow[];
  rows<K extends keyof E & string>(type: K): ViewRow<E[K], K>[];
  /** The row with this id (or key: a temp id still finds its row after the swap). */
  get<K extends keyof E & string>(type: K, id: Id): ViewRow<E[K], K> | undefined;
  isPending(type: keyof E & string, id: Id): boolean;
  anchor(): ViewRow | undefined;
  /** The view as a tree from the anchor, children in relation order. */
  tree(): TreeNode | null;
  /** Calls `fn` after every change of this view; returns a function that stops it. */
  onChange(fn: (event: ChangeEvent) => void): () => void;

  /**
   * The other connections' presence here, in the order they arrived (a
   * state's list in the server's order, newcomers at the end; an update keeps
   * an entry's place). Frozen; a new array after every change; empty while
   * the connection is down and once the context is closed. Never this
   * connection's own (`myPresence`).
   */
  presence<D = unknown>(): ReadonlyArray<PresenceEntry<D>>;
  /** What this client last set as its presence here (null: none). Sent again after every reconnect. */
  readonly myPresence: unknown;
  /**
   * Shows `data` to the other subscribers (null clears). Throws a
   * `StatecastError` at once: 400 `INVALID_DATA` (field `data`) when it is
   * not JSON or takes more than 1024 bytes as JSON; 410 `CONTEXT_CLOSED` on a
   * closed context. Sent once the context is ready; at most 20 presence
   * frames a second per connection, each context's latest data only.
   */
  setPresence(data: unknown): void;
  /** Calls `fn` after every change of `presence()` or `myPresence`; returns a function that stops it. */
  onPresence<D = unknown>(fn: (event: PresenceEvent<D>) => void): () => void;

  save<K extends keyof E & string>(type: K, id: Id, data: Partial<E[K]>, options?: WriteOptions): WriteHandle;
  create<K extends keyof E & string>(type: K, data?: Partial<E[K]>, options?: CreateOptions): CreateHandle;
  delete<K extends keyof E & string>(type: K, id: Id, options?: WriteOptions): WriteHandle;
  batch(build: (b: BatchBuilder<E>) => void, options?: WriteOptions): BatchHandle;
  /** Unsubscribes; unsent writes of this context fail with CONTEXT_CLOSED. */
  close(): void;
}

/** What a stream view subscribes to, as the stream `subscribe` takes it. */
export interface StreamOptions {
  /** `{job: 1, name__icontains: 'bug'}`: exact, iexact, contains, icontains, startswith, in, gt, gte, lt, lte, isnull. */
  filters?: Record<string, unknown>;
  /** Full-payload streams: project rows to these fields. */
  fields?: string[];
  /** Only the row with this id. */
  id?: Id;
  /** Only these actions (default: all). */
  actions?: Array<'create' | 'update' | 'delete'>;
  /** Start from the rows that match now (default false: the view fills with the changes that follow). */
  snapshot?: boolean;
}

/** What changed in a stream view. */
export interface StreamChangeEvent {
  stream: string;
  view: StreamView;
  cause: 'subscribed' | 'event' | 'write' | 'confirm' | 'reject' | 'state' | 'delta' | 'closed';
  added: ViewRow[];
  updated: ViewRow[];
  removed: ViewRow[];
}

/**
 * A live view of a stream: the snapshot kept current by its events, with the
 * client's pending writes on top. A row a pending write touches (or that a
 * context holds newer) is in the view when it passes the stream's filters —
 * the client's, merged under the scope the server reports — decided with the
 * server's lookups; other rows are in it when the server reported them. A
 * reconnect resumes it with `since` (a fresh snapshot when the server's log no
 * longer reaches back).
 */
export class StreamView<T = Record<string, unknown>> {
  /** The stream's name. */
  readonly stream: string;
  readonly status: 'loading' | 'ready' | 'closed';
  readonly closeReason: string | null;
  /** The server's subscription id on the current connection. */
  readonly subscription: string | null;
  /** The seq of the last `subscribed` or event applied. */
  readonly seq: number | null;
  /** The scope the server forces (from `subscribed.scope`). */
  readonly scope: Record<string, unknown> | null;
  /** Resolves at the first `subscribed`; rejects if the subscribe is refused. */
  readonly ready: Promise<StreamView<T>>;
  /** The rows in key order. */
  rows(): ViewRow<T>[];
  /** The row with this id (or key). */
  get(id: Id): ViewRow<T> | undefined;
  isPending(id: Id): boolean;
  /** The stream's entity type (from the schema). */
  type(): string | undefined;
  onChange(fn: (event: StreamChangeEvent) => void): () => void;
  /** Stops the view (its server subscription is unsubscribed). */
  close(): void;
}

/** Compiled stream filters, decided as the server decides them. */
export interface CompiledFilters {
  /** The fields the filters read. */
  readonly fields: string[];
  matches(row: Record<string, unknown>): boolean;
}

/** Compiles stream filters for a type's fields (as `welcome.schema` lists them); throws a TypeError naming a key the server would refuse. */
export function compileFilters(filters: Record<string, unknown>, fields: Array<{ name: string; kind: string; nullable?: boolean }>): CompiledFilters;
/** `scope` merged over `client` as the server merges them (the scope wins per field and lookup). */
export function mergeFilters(scope: Record<string, unknown> | null, client: Record<string, unknown>): Record<string, unknown>;

/** A refusal or failure, with the code and reason as on the wire. */
export class StatecastError extends Error {
  constructor(code: number, reason: string, message?: string, extra?: { field?: string; op?: number; writeId?: number; context?: string });
  /**
   * 400, 401, 403, 404, 409, 413, 429, 500, 503 from the server; from the client:
   * 408 `TIMEOUT`, 410 `CONTEXT_CLOSED`, 400 `DEPENDENCY_FAILED`, 499 `CLIENT_CLOSED`,
   * 409 `USER_CHANGED` (a write restored from `storage` was made by another user),
   * 410 `STREAM_CLOSED` (a stream view's `ready` when it closes first),
   * 400 `INVALID_DATA` (presence data too large or not JSON), 400
   * `NOT_SUBSCRIBED` (`client.setPresence` on a context it does not hold).
   */
  readonly code: number;
  /** Machine-readable: `DENIED`, `INVALID_DATA`, `NOT_FOUND`, `TIMEOUT`, … */
  readonly reason: string;
  readonly field?: string;
  /** The failing op's index in a batch. */
  readonly op?: number;
  readonly writeId?: number;
  readonly context?: string;
  static from(wire: { code?: number; reason?: string; message?: string; field?: string; op?: number }, extra?: object): StatecastError;
}

export interface ClientOptions {
  /** `ws://host:port/ws` (or `wss://`). */
  url: string;
  /** The token of the `hello` (dev tokens: `alice`, `bob`, …; JWTs in production). */
  token?: string;
  /** The client id (32 hex digits) to reuse; default: a fresh random 128-bit id. */
  clientId?: string;
  /** How creates get ids: `'minted'` (default, random in [2^52, 2^53)) or `'temp'` (negative). */
  ids?: 'minted' | 'temp';
  /** Milliseconds before an unanswered write fails with TIMEOUT (default 30000). */
  writeTimeout?: number;
  /** The first reconnect delay in ms (default 250); doubles per attempt, with jitter. */
  minReconnectDelay?: number;
  /** The longest reconnect delay in ms (default 10000). */
  maxReconnectDelay?: number;
  /** A WebSocket constructor (default: `globalThis.WebSocket`; in Node 20, the `ws` package's). */
  WebSocket?: unknown;
  /**
   * Where to keep the client id, the writeId counter and the unanswered writes
   * (e.g. `localStorage`), so that writes survive a reload: the next client
   * with the same storage resends them (subscribing their contexts). Default:
   * none — a new client mints a new client id.
   */
  storage?: { getItem(key: string): string | null; setItem(key: string, value: string): void; whenDurable?(): Promise<void> | null };
  /** The key in `storage` (default `statecast:` + the url). */
  storageKey?: string;
  /** The clock, in ms (default `Date.now`). */
  now?: () => number;
}

export interface Welcome {
  type: 'welcome';
  connectionId: string;
  user: { id: Id; name?: string; [k: string]: unknown };
  schema: SchemaInfo;
  epoch: string;
  applied: Array<{ writeId: number; seq: number; created?: WriteResult['created'] }>;
}

/** `welcome.schema`: the entity types and the channels. */
export interface SchemaInfo {
  types: {
    [type: string]: {
      name: string;
      fields: Array<{
        name: string;
        kind: 'string' | 'int' | 'float' | 'bool' | 'json' | 'timestamp' | 'reference';
        target?: string;
        nullable: boolean;
        default?: unknown;
        minLen?: number;
        maxLen?: number;
        min?: number;
        max?: number;
        allowed?: unknown[];
        readOnly: boolean;
        serverValue?: 'userId' | 'now';
        onDelete?: 'cascade' | 'restrict' | 'setNull';
      }>;
      relations: { [name: string]: { name: string; parent: string; child: string; field: string; orderBy?: string } };
    };
  };
  channels: Array<{
    name: string;
    anchor: string;
    tree: Array<{ parent: string; relation: string; child: string; field: string; orderBy?: string }>;
    writable: { [type: string]: Array<'save' | 'create' | 'delete'> };
  }>;
}

export type ClientStatus = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** A connection to a Statecast server that keeps subscribing, writing and resending across reconnects. */
export class StatecastClient<E extends object = EntityMap> {
  constructor(options: ClientOptions);
  /** A client whose `storage` may be `'indexeddb'` (loaded before it starts). */
  static open<E extends object = EntityMap>(options: Omit<ClientOptions, 'storage'> & { storage?: ClientOptions['storage'] | 'indexeddb' }): Promise<StatecastClient<E>>;
  readonly url: string;
  readonly status: ClientStatus;
  /** This client's write queue id (32 hex digits), the same across reconnects. */
  readonly clientId: string;
  readonly user: Welcome['user'] | null;
  readonly schema: SchemaInfo | null;
  /** Opens the connection; resolves at the first `welcome`, rejects if the token is refused. */
  connect(): Promise<Welcome>;
  /** Closes for good; unsettled writes fail with CLIENT_CLOSED. */
  close(): void;
  /** Subscribes to `channel/anchorId` (the same context on later calls; a new one after `close`). */
  subscribe(channel: string, anchorId: Id): Context<E>;
  /** Opens a live view of a stream. */
  stream<T = Record<string, unknown>>(name: string, options?: StreamOptions): StreamView<T>;
  context(name: string): Context<E> | undefined;
  contexts(): Context<E>[];
  /** The writes not answered yet, in order. */
  pendingWrites(): WriteInfo[];
  /** `context(name).setPresence(data)`; throws 400 `NOT_SUBSCRIBED` when the client does not hold `name`. */
  setPresence(name: string, data: unknown): void;
  /** `context(name).presence()`, or an empty list. */
  presence<D = unknown>(name: string): ReadonlyArray<PresenceEntry<D>>;
  /** A new token, sent at once (`auth`) and used by every later `hello`. */
  setToken(token: string): void;
  on(event: 'change', fn: (event: ChangeEvent) => void): () => void;
  /** Any context's presence changed. */
  on(event: 'presence', fn: (event: PresenceEvent) => void): () => void;
  on(event: 'write', fn: (write: WriteInfo) => void): () => void;
  on(event: 'status', fn: (status: ClientStatus) => void): () => void;
  on(event: 'frame', fn: (frame: { dir: 'in' | 'out'; text: string }) => void): () => void;
  /** A server error not tied to a write or context, or a refused presence (with its `context`). */
  on(event: 'error', fn: (error: StatecastError) => void): () => void;
  on(event: 'welcome', fn: (welcome: Welcome) => void): () => void;
}

export interface ReplicaOptions {
  clientId?: string;
  ids?: 'minted' | 'temp';
  writeTimeout?: number;
  now?: () => number;
  /** Called with every frame to send (only while connected). */
  send?: (frame: Record<string, unknown>) => void;
  /** Asks the driver to call `tick()` (or `flushPresence()`) in `ms` ms: a presence frame waits for its turn. */
  wake?: (ms: number) => void;
  /** `welcome.schema`, if known before the first welcome. */
  schema?: SchemaInfo;
  storage?: ClientOptions['storage'];
  storageKey?: string;
}

/**
 * The optimistic state without I/O: server messages in (`connected`,
 * `receive`), frames out (`send`), time from `now` and `tick`. The client
 * drives one; tests and other transports can drive one directly.
 */
export class Replica<E extends object = EntityMap> {
  constructor(options?: ReplicaOptions);
  readonly clientId: string;
  readonly online: boolean;
  readonly schema: SchemaInfo | null;
  readonly contexts: Map<string, Context<E>>;
  subscribe(channel: string, anchorId: Id): Context<E>;
  /** Stops holding a context at once; its unsubscribe carries a rid, so late answers never touch a reopened one. */
  unsubscribe(context: string): void;
  readonly streams: Map<number, StreamView>;
  stream<T = Record<string, unknown>>(name: string, options?: StreamOptions): StreamView<T>;
  /** After `welcome`: retire what it reports applied, resubscribe (with `since`), resend in order. */
  connected(welcome: Pick<Welcome, 'epoch'> & Partial<Welcome>): void;
  /** The connection is gone: every unsettled write will be sent again. */
  disconnected(): void;
  /** One message from the server other than `welcome`. */
  receive(message: { type: string; [k: string]: unknown }): void;
  /** Runs the write timeouts, due retries and due presence frames. */
  tick(): void;
  /** Sends the presence frames that are due (at most one per 50 ms); asks `wake` to come back for the rest. */
  flushPresence(): void;
  /** Calls `fn` after every presence change of any context. */
  onPresence(fn: (event: PresenceEvent) => void): () => void;
  /** The writeIds a reconnecting `hello` names in `pending`. */
  pendingWriteIds(): number[];
  pendingWrites(): WriteInfo[];
  onChange(fn: (event: ChangeEvent) => void): () => void;
  onWrite(fn: (write: WriteInfo) => void): () => void;
}

/** Is this view row touched by a pending write? */
export function isPending(row: { _pending?: boolean } | undefined): boolean;
/** A fresh random 128-bit client id (32 hex digits). */
export function newClientId(): string;
/** A random client-minted id in [2^52, 2^53). */
export function mintId(): Id;
/** The map key of a row: `"Task:4"`. */
export function rowKey(type: string, id: Id): string;

/** A `localStorage`-like storage kept in IndexedDB (loaded into memory by `open`). */
export class IdbStorage {
  static open(name?: string): Promise<IdbStorage>;
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
  /** Resolves when every `setItem` so far is committed; null when none is outstanding. */
  whenDurable(): Promise<void> | null;
  close(): void;
}

export interface TabClientOptions extends Omit<ClientOptions, 'storage'> {
  /** `'indexeddb'` (the default where IndexedDB exists) or a `localStorage`-like object. */
  storage?: ClientOptions['storage'] | 'indexeddb';
  /** What the tabs share: the lock, the BroadcastChannel and the storage key (default `statecast:` + the url). */
  name?: string;
  /** `false`: elect the leader over BroadcastChannel heartbeats even where the Web Locks API exists. */
  locks?: false;
}

/** A context of a TabClient: the same reading and writing API as Context. */
export interface TabContext<E extends object = EntityMap> extends Pick<Context<E>, 'name' | 'channel' | 'anchorId' | 'status' | 'closeReason' | 'rows' | 'get' | 'isPending' | 'anchor' | 'tree' | 'onChange' | 'save' | 'delete' | 'batch' | 'close' | 'presence' | 'onPresence'> {
  readonly ready: Promise<TabContext<E>>;
  /** What this tab last set as its presence here (null: none). */
  readonly myPresence: unknown;
  /**
   * Sets this tab's presence here (null clears; throws as `Context.setPresence`).
   * The tabs share one connection: the server shows the presence of the tab
   * that set one last, and the next latest when that tab clears it or leaves.
   */
  setPresence(data: unknown): void;
  create<K extends keyof E & string>(type: K, data?: Partial<E[K]>, options?: CreateOptions): CreateHandle;
}

/** A stream view of a TabClient. */
export interface TabStream<T = Record<string, unknown>> extends Pick<StreamView<T>, 'stream' | 'status' | 'closeReason' | 'rows' | 'get' | 'isPending' | 'type' | 'onChange' | 'close'> {
  readonly ready: Promise<TabStream<T>>;
}

/**
 * One client for the tabs of an app: one client id and one queue; the
 * leading tab (Web Locks, else BroadcastChannel heartbeats) holds the socket,
 * the others send their writes through it and render the views it sends.
 */
export class TabClient<E extends object = EntityMap> {
  constructor(options: TabClientOptions);
  readonly role: 'electing' | 'leader' | 'follower';
  readonly status: ClientStatus;
  readonly clientId: string | null;
  readonly user: Welcome['user'] | null;
  readonly schema: SchemaInfo | null;
  connect(): Promise<TabClient<E>>;
  close(): void;
  subscribe(channel: string, anchorId: Id): TabContext<E>;
  stream(name: string, options?: StreamOptions): TabStream;
  context(name: string): TabContext<E> | undefined;
  contexts(): TabContext<E>[];
  pendingWrites(): WriteInfo[];
  /** This tab's presence in context `name` (see `TabContext.setPresence`); throws 400 `NOT_SUBSCRIBED` when this tab does not hold it. */
  setPresence(name: string, data: unknown): void;
  presence<D = unknown>(name: string): ReadonlyArray<PresenceEntry<D>>;
  on(event: 'change', fn: (event: ChangeEvent) => void): () => void;
  /** The presence of this tab's contexts changed. */
  on(event: 'presence', fn: (event: PresenceEvent) => void): () => void;
  on(event: 'write', fn: (write: WriteInfo) => void): () => void;
  on(event: 'pending', fn: (pending: WriteInfo[]) => void): () => void;
  on(event: 'status', fn: (status: ClientStatus) => void): () => void;
  on(event: 'role', fn: (role: 'leader' | 'follower') => void): () => void;
  on(event: 'error', fn: (error: StatecastError) => void): () => void;
  on(event: 'welcome', fn: (welcome: Welcome) => void): () => void;
}
