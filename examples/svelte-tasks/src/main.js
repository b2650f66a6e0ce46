// The demo's job board in Svelte: one TabClient for all the tabs of the app
// (one queue in IndexedDB; the leading tab holds the socket).
// Query: ?token=alice (else a sign-in form) &ws=ws://127.0.0.1:7100/ws &job=1.
import { mount } from 'svelte';
import { TabClient } from '@statecast/client';
import App from './App.svelte';
import SignIn from './SignIn.svelte';

const params = new URLSearchParams(location.search);
const wsUrl = params.get('ws') ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.hostname}:7100/ws`;
const token = params.get('token');
const target = document.getElementById('app');

if (!token) {
  mount(SignIn, { target, props: { wsUrl } });
} else {
  const client = new TabClient({ url: wsUrl, token, name: `svelte-tasks:${token}@${wsUrl}`, maxReconnectDelay: 2000 });
  client.connect().catch(() => {});
  window.statecast = client; // for the console (and the tests)
  mount(App, { target, props: { client, token, initialJob: Number(params.get('job') ?? 1) } });
}
