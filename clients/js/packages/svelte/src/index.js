// Svelte bindings for Statecast: readable stores (Svelte's store contract,
// usable as `$store` in components and with `get` from `svelte/store`) over
// the shared sources of `@statecast/client/store`. One subscription per
// context (or stream) and client however many components read it.

import { readable } from 'svelte/store';
import { contextSource, presenceSource, streamSource, writesSource } from '@statecast/client/store';

function storeOf(source, pick = (s) => s) {
  return readable(pick(source.getSnapshot()), (set) => {
    const update = () => set(pick(source.getSnapshot()));
    const stop = source.subscribe(update);
    update();
    return stop;
  });
}

/**
 * A readable store of context `channel/anchorId`:
 * `{status, error, rows(type), get(type, id), tree(), save, create, delete, batch}`.
 */
export function contextStore(client, channel, anchorId, options) {
  return storeOf(contextSource(client, channel, anchorId, options));
}

/** A readable store of a stream view: `{status, rows, error}`. */
export function streamStore(client, name, options, sourceOptions) {
  return storeOf(streamSource(client, name, options, sourceOptions), ({ status, rows, error }) => ({ status, rows, error }));
}

/**
 * A readable store of the presence in context `channel/anchorId`:
 * `{presence, myPresence, setPresence(data)}` (the other connections'
 * entries `[{connectionId, user: {id, name}, data}]`); it changes only when
 * the presence does, and shares the context's subscription.
 */
export function presenceStore(client, channel, anchorId, options) {
  return storeOf(presenceSource(client, channel, anchorId, options));
}

/** A readable store of the client's writes: `{pending, refused, dismiss(writeId?), connection}`. */
export function writesStore(client) {
  return storeOf(writesSource(client));
}

/** A readable store of the connection's status. */
export function connectionStore(client) {
  return storeOf(writesSource(client), (s) => s.connection);
}
