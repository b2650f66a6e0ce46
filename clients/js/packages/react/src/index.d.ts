// Types of @statecast/react.
import type { ReactNode, ReactElement } from 'react';
import type { ClientStatus, EntityMap, Id, StreamOptions, ViewRow } from '@statecast/client';
import type { ClientLike, ContextSnapshot, PresenceSnapshot, SourceOptions, StreamSnapshot, WritesSnapshot } from '@statecast/client/store';

export type { ContextSnapshot, PresenceSnapshot, WritesSnapshot, RefusedWrite, ViewStatus } from '@statecast/client/store';

export function StatecastProvider(props: { client: ClientLike<any>; children?: ReactNode }): ReactElement;
export function useClient<E extends object = EntityMap>(): ClientLike<E>;
/** The live view of `channel/anchorId`; a new object after every change. */
export function useContext<E extends object = EntityMap>(channel: string, anchorId: Id, options?: SourceOptions): ContextSnapshot<E>;
export const useStatecastContext: typeof useContext;
export function useStream<T = Record<string, unknown>>(
  name: string,
  options?: StreamOptions,
  sourceOptions?: SourceOptions,
): { status: StreamSnapshot<T>['status']; rows: ViewRow<T>[]; error: string | null };
/** The presence in `channel/anchorId`: the others' entries, this client's own, and the setter; renders again only when it changes. */
export function usePresence<D = unknown>(channel: string, anchorId: Id, options?: SourceOptions): PresenceSnapshot<D>;
export function useWrites(): WritesSnapshot;
export function useConnection(): ClientStatus;
