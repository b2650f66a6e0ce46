// Types of @statecast/svelte.
import type { Readable } from 'svelte/store';
import type { ClientStatus, EntityMap, Id, StreamOptions, ViewRow } from '@statecast/client';
import type { ClientLike, ContextSnapshot, PresenceSnapshot, SourceOptions, StreamSnapshot, WritesSnapshot } from '@statecast/client/store';

export type { ContextSnapshot, PresenceSnapshot, WritesSnapshot, RefusedWrite, ViewStatus } from '@statecast/client/store';

export function contextStore<E extends object = EntityMap>(client: ClientLike<E>, channel: string, anchorId: Id, options?: SourceOptions): Readable<ContextSnapshot<E>>;
export function streamStore<T = Record<string, unknown>>(
  client: ClientLike,
  name: string,
  options?: StreamOptions,
  sourceOptions?: SourceOptions,
): Readable<{ status: StreamSnapshot<T>['status']; rows: ViewRow<T>[]; error: string | null }>;
/** The presence in `channel/anchorId`: the others' entries, this client's own, and the setter; changes only when the presence does. */
export function presenceStore<D = unknown>(client: ClientLike, channel: string, anchorId: Id, options?: SourceOptions): Readable<PresenceSnapshot<D>>;
export function writesStore(client: ClientLike): Readable<WritesSnapshot>;
export function connectionStore(client: ClientLike): Readable<ClientStatus>;
