// React bindings for Statecast, built on useSyncExternalStore over the
// shared sources of `@statecast/client/store`: one subscription per context
// (or stream) and client however many components read it; StrictMode's
// double mount and quick route changes reuse the live subscription.

import { createContext, createElement, useContext as useReactContext, useSyncExternalStore } from 'react';
import { contextSource, presenceSource, streamSource, writesSource } from '@statecast/client/store';

const ClientContext = createContext(null);

/** Makes `client` (a StatecastClient or a TabClient) available to the hooks below. */
export function StatecastProvider({ client, children }) {
  return createElement(ClientContext.Provider, { value: client }, children);
}

/** The client the nearest StatecastProvider gives. */
export function useClient() {
  const client = useReactContext(ClientContext);
  if (!client) throw new Error('no Statecast client here: wrap the tree in <StatecastProvider client={client}>');
  return client;
}

function useSource(source) {
  return useSyncExternalStore(source.subscribe, source.getSnapshot, source.getSnapshot);
}

/**
 * The live view of context `channel/anchorId`:
 * `{status, error, rows(type), get(type, id), tree(), save, create, delete, batch}`.
 * A new object after every change; rows that did not change keep their identity.
 */
export function useContext(channel, anchorId, options) {
  const client = useClient();
  return useSource(contextSource(client, channel, anchorId, options));
}

/** The same as `useContext` (for code that also imports React's `useContext`). */
export const useStatecastContext = useContext;

/** A live stream view: `{status, rows, error}` (options as `client.stream` takes them; `snapshot` defaults to true). */
export function useStream(name, options, sourceOptions) {
  const client = useClient();
  const { status, rows, error } = useSource(streamSource(client, name, options, sourceOptions));
  return { status, rows, error };
}

/**
 * The presence in context `channel/anchorId`: `{presence, myPresence, setPresence(data)}`
 * — the other connections' entries `[{connectionId, user: {id, name}, data}]`
 * and what this client last set. Renders again only when the presence
 * changes (not for row changes); shares the context's subscription.
 */
export function usePresence(channel, anchorId, options) {
  const client = useClient();
  return useSource(presenceSource(client, channel, anchorId, options));
}

/** The client's writes: `{pending, refused, dismiss(writeId?), connection}`; each refused write has `code` and `reason`. */
export function useWrites() {
  const client = useClient();
  return useSource(writesSource(client));
}

/** The connection's status: `idle`, `connecting`, `open`, `reconnecting` or `closed`. */
export function useConnection() {
  const client = useClient();
  return useSource(writesSource(client)).connection;
}
