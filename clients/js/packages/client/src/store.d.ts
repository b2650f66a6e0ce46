// Types of `@statecast/client/store`: shared external stores for UI bindings.
import type { ClientStatus, Context, PresenceEntry, TabContext, TabStream, EntityMap, Id, StatecastError, StreamOptions, StreamView, TreeNode, ViewRow, WriteInfo, WriteOptions, CreateOptions, BatchBuilder, WriteHandle, CreateHandle, BatchHandle } from './statecast.js';

/** What the sources need of a client: a StatecastClient or a TabClient. */
export interface ClientLike<E extends object = EntityMap> {
  readonly status: ClientStatus;
  subscribe(channel: string, anchorId: Id): Context<E> | TabContext<E>;
  stream(name: string, options?: StreamOptions): StreamView | TabStream;
  pendingWrites(): WriteInfo[];
  on(event: 'write', fn: (write: WriteInfo) => void): () => void;
  on(event: 'status', fn: (status: ClientStatus) => void): () => void;
}

export interface Source<S> {
  subscribe(listener: () => void): () => void;
  getSnapshot(): S;
}

/** `loading`, `ready`, `closed`, or the connection's `connecting`/`reconnecting`/`idle` while the rows may be behind. */
export type ViewStatus = 'loading' | 'ready' | 'closed' | 'connecting' | 'reconnecting';

export interface ContextSnapshot<E extends object = EntityMap> {
  readonly status: ViewStatus;
  /** Why the context closed (a reason such as `ANCHOR_DELETED` or the subscribe error's), else null. */
  readonly error: string | null;
  readonly context: Context<E> | TabContext<E>;
  rows(): ViewRow[];
  rows<K extends keyof E & string>(type: K): ViewRow<E[K], K>[];
  get<K extends keyof E & string>(type: K, id: Id): ViewRow<E[K], K> | undefined;
  tree(): TreeNode | null;
  save<K extends keyof E & string>(type: K, id: Id, data: Partial<E[K]>, options?: WriteOptions): WriteHandle;
  create<K extends keyof E & string>(type: K, data?: Partial<E[K]>, options?: CreateOptions): CreateHandle;
  delete<K extends keyof E & string>(type: K, id: Id, options?: WriteOptions): WriteHandle;
  batch(build: (b: BatchBuilder<E>) => void, options?: WriteOptions): BatchHandle;
}

export interface StreamSnapshot<T = Record<string, unknown>> {
  readonly status: ViewStatus;
  readonly rows: ViewRow<T>[];
  readonly error: string | null;
  readonly view: StreamView<T> | TabStream<T>;
}

export interface PresenceSnapshot<D = unknown> {
  /** The other connections' presence: `[{connectionId, user: {id, name}, data}]`, in arrival order. */
  readonly presence: ReadonlyArray<PresenceEntry<D>>;
  /** What this client (or tab) last set (null: none). */
  readonly myPresence: D | null;
  /** Sets this client's (or tab's) presence (null clears); throws 400 `INVALID_DATA` over 1024 bytes of JSON. */
  setPresence(data: D | null): void;
}

export interface RefusedWrite {
  writeId: number;
  context: string;
  operation: string;
  ops: unknown[];
  code: number;
  reason: string;
  message: string;
  field?: string;
  op?: number;
}

export interface WritesSnapshot {
  /** The unanswered writes, in order. */
  readonly pending: WriteInfo[];
  /** Writes refused since the source was made (newest last), until dismissed. */
  readonly refused: RefusedWrite[];
  /** Forgets one refused write (or all, with no argument). */
  dismiss(writeId?: number): void;
  readonly connection: ClientStatus;
}

export interface SourceOptions {
  /** How long (ms) a source with no listeners keeps its subscription (default 1000). */
  linger?: number;
}

export const DEFAULT_LINGER: number;
export function contextSource<E extends object = EntityMap>(client: ClientLike<E>, channel: string, anchorId: Id, options?: SourceOptions): Source<ContextSnapshot<E>>;
export function streamSource<T = Record<string, unknown>>(client: ClientLike, name: string, options?: StreamOptions, sourceOptions?: SourceOptions): Source<StreamSnapshot<T>>;
export function writesSource(client: ClientLike, options?: { keep?: number }): Source<WritesSnapshot>;
/** The presence of `channel/anchorId` (through the context's shared source); a new snapshot only when the presence changes. */
export function presenceSource<D = unknown>(client: ClientLike, channel: string, anchorId: Id, options?: SourceOptions): Source<PresenceSnapshot<D>>;
export function streamKey(name: string, options?: StreamOptions): string;
export type { StatecastError };
