// The Statecast inspector: sign in, open a context, watch its rows live, edit,
// create and delete through the JavaScript client, and read the raw frames.
// Plain DOM, no build step; the server serves this file as is.

import { StatecastClient, compileFilters } from './statecast.js';

const $ = (id) => document.getElementById(id);
const MAX_FRAMES = 500;
const MAX_WRITES = 200;
const MAX_FRAME_TEXT = 256 * 1024;

const wsPath = document.querySelector('meta[name="statecast-ws-path"]')?.content || '/ws';
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${wsPath}`;

/** What the page holds; also `window.statecastInspector` for tests and the console. */
const app = {
  client: null,
  ctx: null,
  stopCtx: null,
  editing: null, // {type, id, field}
  frames: [],
  writes: new Map(),
  events: [], // compact change events, for tests
  refusedDeletes: new Map(), // "Type:id" → the refusal of a delete of that row (the policy's answer)
  view: null, // the open stream view
  stopView: null,
  streamEvents: [], // what the streams page logged, for tests
};
window.statecastInspector = app;

/** Creates an element: `h('td', {class: 'x', onclick}, 'text', child…)`. Text is never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k in el && k !== 'list') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const show = (v) => (v === null || v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v));
/** A minted id (16 digits) shortened to its last six, for narrow places; the whole id goes in a title. */
const shortId = (id) => (Math.abs(id) >= 1e9 ? `…${String(id).slice(-6)}` : String(id));
const label = (row) => `${row._type} #${shortId(row.id)}${row.name !== undefined ? ` ${row.name}` : ''}`;

/** The row `type`/`id` from any context or stream view the client holds (or the signed-in user). */
function knownRow(type, id) {
  const client = app.client;
  if (!client) return undefined;
  for (const ctx of client.contexts()) {
    const row = ctx.get(type, id);
    if (row) return row;
  }
  if (app.view && app.view.type() === type) {
    const row = app.view.get(id);
    if (row) return row;
  }
  const user = client.user;
  if (user && user.id === id && client.schema?.types?.[type] && type === 'User') return user;
  return undefined;
}

/** A reference as the referenced row's name (and id); the bare id when the row is not held here. */
function refText(field, id) {
  if (id === null || id === undefined) return '—';
  const row = field.target ? knownRow(field.target, id) : undefined;
  const name = row?.name ?? row?.title;
  return name !== undefined ? `${name} (#${shortId(id)})` : `#${id}`;
}

// ---- sign in ---------------------------------------------------------------

function setStatus(status) {
  const el = $('status');
  el.dataset.status = status;
  el.textContent = { idle: 'not connected', connecting: 'connecting…', open: 'connected', reconnecting: 'reconnecting…', closed: 'closed' }[status] ?? status;
}

async function signIn(token) {
  if (app.client) app.client.close();
  app.ctx = null;
  app.stopCtx?.();
  app.view?.close();
  app.view = null;
  app.refusedDeletes.clear();
  const client = new StatecastClient({ url: wsUrl, token });
  app.client = client;
  client.on('status', (s) => {
    if (app.client === client) setStatus(s);
  });
  client.on('frame', (f) => {
    if (app.client !== client) return;
    addFrame(f);
    streamFrame(f);
  });
  client.on('write', (w) => {
    if (app.client === client) trackWrite(w);
  });
  client.on('error', (e) => {
    if (app.client === client) notice('error', `${e.code} ${e.reason}`, e.message);
  });
  try {
    const welcome = await client.connect();
    $('user').textContent = `signed in as ${welcome.user.name ?? ''} (user ${welcome.user.id})`;
    fillChannels(welcome.schema);
    fillStreams(welcome.schema);
    return true;
  } catch (e) {
    $('user').textContent = '';
    // A refused token was already shown by the client's `error` event.
    if (!client.fatal) notice('error', `${e.code} ${e.reason}`, e.message || 'could not sign in');
    return false;
  }
}

function fillChannels(schema) {
  const select = $('channel');
  select.replaceChildren(...(schema?.channels ?? []).map((c) => h('option', { value: c.name }, `${c.name} (anchor ${c.anchor})`)));
  for (const id of ['channel', 'anchor', 'subscribe']) $(id).disabled = false;
}

// ---- the context -----------------------------------------------------------

function open(channel, anchorId) {
  const client = app.client;
  if (!client) return;
  // Opening the context already shown keeps it: closing and reopening would
  // empty the page until a new state came.
  if (app.ctx && app.ctx.status !== 'closed' && app.ctx.name === `${channel}/${anchorId}`) {
    render();
    return;
  }
  app.stopCtx?.();
  app.ctx?.close();
  app.editing = null;
  const ctx = client.subscribe(channel, anchorId);
  app.ctx = ctx;
  $('context-name').textContent = ctx.name;
  const offPresence = ctx.onPresence(() => {
    if (app.ctx === ctx) renderPresence(ctx);
  });
  const offChange = ctx.onChange((e) => {
    app.events.push({
      cause: e.cause,
      added: e.added.map((r) => `${r._type}:${r._key}:${r._pending ? 'pending' : 'canonical'}`),
      updated: e.updated.map((r) => `${r._type}:${r._key}:${r._pending ? 'pending' : 'canonical'}`),
      removed: e.removed.map((r) => `${r._type}:${r._key}`),
    });
    if (app.events.length > 1_000) app.events.splice(0, app.events.length - 1_000);
    if (app.ctx === ctx) render();
  });
  app.stopCtx = () => {
    offChange();
    offPresence();
  };
  render();
  ctx.ready.catch((e) => {
    if (app.ctx === ctx) notice('error', `${e.code} ${e.reason}`, e.message);
    render();
  });
  const url = new URL(location.href);
  url.searchParams.set('channel', channel);
  url.searchParams.set('anchor', anchorId);
  history.replaceState(null, '', url);
}

function render() {
  const ctx = app.ctx;
  if (!ctx) return;
  renderTree(ctx);
  renderTables(ctx);
  renderPresence(ctx);
}

/** Who else is in the context (user, connection id, data as compact JSON), and this client's own presence. */
function renderPresence(ctx) {
  const list = ctx.presence();
  const closed = ctx.status === 'closed';
  $('presence-count').textContent = closed ? '' : `${list.length} other${list.length === 1 ? '' : 's'}`;
  const items = list.map((p) =>
    h('li', { 'data-connection': p.connectionId, 'data-user': p.user?.name ?? '' },
      h('span', { class: 'who-name', title: `user ${p.user?.id}` }, p.user?.name ?? `user ${p.user?.id}`),
      h('span', { class: 'conn', title: 'connection id' }, p.connectionId),
      h('code', { class: 'data' }, JSON.stringify(p.data))));
  if (items.length === 0) items.push(h('li', { class: 'muted' }, closed ? `closed (${ctx.closeReason})` : 'nobody else'));
  if (!closed && ctx.myPresence !== null) {
    items.push(h('li', { class: 'self', 'data-self': '' }, h('span', { class: 'who-name' }, 'you'), h('code', { class: 'data' }, JSON.stringify(ctx.myPresence))));
  }
  $('presence').replaceChildren(...items);
  for (const id of ['presence-data', 'set-presence', 'clear-presence']) $(id).disabled = closed;
}

function setMyPresence(data) {
  const ctx = app.ctx;
  if (!ctx) return;
  try {
    ctx.setPresence(data);
  } catch (e) {
    notice('error', `${e.code} ${e.reason}`, e.message);
  }
}

function renderTree(ctx) {
  const el = $('tree');
  if (ctx.status === 'loading' && ctx.rows().length === 0) {
    el.replaceChildren(h('p', { class: 'muted' }, 'loading…'));
    return;
  }
  if (ctx.status === 'closed') {
    el.replaceChildren(h('p', { class: 'muted' }, `closed (${ctx.closeReason})`));
    return;
  }
  const tree = ctx.tree();
  if (!tree) {
    el.replaceChildren(h('p', { class: 'muted' }, 'the anchor is not in the view'));
    return;
  }
  const node = ({ row, children }) =>
    h(
      'li',
      {},
      h('span', { class: `node${row._pending ? ' pending' : ''}`, title: `${row._type} #${row.id} · version ${row._version}` }, label(row), statusTag(row)),
      Object.entries(children).map(([relation, kids]) =>
        h('ul', {}, h('li', { class: 'relation' }, h('span', { class: 'muted' }, `${relation} (${kids.length})`), h('ul', {}, kids.map(node)))),
      ),
    );
  el.replaceChildren(h('ul', { class: 'root' }, node(tree)));
}

function statusTag(row) {
  return row.status !== undefined ? h('span', { class: `tag s-${row.status}` }, row.status) : null;
}

/** The types of the context in tree order: the anchor type, then each edge's child. */
function contextTypes(ctx) {
  const info = app.client.schema?.channels?.find((c) => c.name === ctx.channel);
  const types = info ? [info.anchor, ...info.tree.map((e) => e.child)] : [];
  for (const r of ctx.rows()) if (!types.includes(r._type)) types.push(r._type);
  return [...new Set(types)];
}

function writableOps(ctx, type) {
  const info = app.client.schema?.channels?.find((c) => c.name === ctx.channel);
  return new Set(info?.writable?.[type] ?? []);
}

function renderTables(ctx) {
  const schema = app.client.schema;
  const sections = contextTypes(ctx).map((type) => {
    const fields = schema?.types?.[type]?.fields ?? [];
    const ops = writableOps(ctx, type);
    const rows = ctx.rows(type);
    const head = h('tr', {}, h('th', {}, 'id'), fields.map((f) => h('th', { title: fieldTitle(f) }, f.name)), h('th', {}, 'version'), h('th', {}, ''));
    const body = rows.map((row) =>
      h(
        'tr',
        { class: row._pending ? 'pending' : '', 'data-type': type, 'data-id': row.id, 'data-key': row._key },
        h('td', { class: 'id' }, String(row.id), row._key !== row.id ? h('span', { class: 'muted' }, ` (key ${row._key})`) : null,
          row._pending ? h('span', { class: 'badge', title: 'a write to this row is not confirmed yet' }, 'pending') : null),
        fields.map((f) => cell(ctx, row, f, ops.has('save') && !f.readOnly)),
        h('td', { class: 'num' }, String(row._version)),
        h('td', { class: 'actions' }, deleteControl(ctx, type, row, ops)),
      ),
    );
    return h(
      'section',
      { class: 'panel', 'data-table': type },
      h('h2', {}, type, h('span', { class: 'muted' }, ` ${rows.length} row${rows.length === 1 ? '' : 's'}`), ops.size ? h('span', { class: 'muted' }, ` · writable: ${[...ops].join(', ')}`) : null),
      h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, head), h('tbody', {}, body))),
      ops.has('create') ? createForm(ctx, type, fields) : null,
    );
  });
  const tables = $('tables');
  const focused = document.activeElement?.closest?.('form.create');
  // Keep a create form the user is typing in: re-render only the tables around it.
  if (focused && tables.contains(focused)) {
    for (const section of sections) {
      const old = tables.querySelector(`section[data-table="${section.dataset.table}"]`);
      if (!old) continue;
      old.querySelector('.scroll').replaceWith(section.querySelector('.scroll'));
      old.querySelector('h2').replaceWith(section.querySelector('h2'));
    }
    return;
  }
  // Replacing a focused editor blurs it; that blur is not the user leaving the field.
  app.rerendering = true;
  try {
    tables.replaceChildren(...sections);
  } finally {
    app.rerendering = false;
  }
  restoreEdit();
}

/**
 * The delete button of a row, unless deleting it is not declared writable, or
 * the policy already refused a delete of this row (then its answer is shown).
 */
function deleteControl(ctx, type, row, ops) {
  if (!ops.has('delete')) return null;
  const refused = app.refusedDeletes.get(`${type}:${row.id}`);
  if (refused) {
    return h('span', { class: 'denied', title: refused.message, 'data-denied': `${refused.code} ${refused.reason}` }, `may not delete (${refused.code} ${refused.reason})`);
  }
  return h('button', { class: 'danger small', type: 'button', title: `delete ${type} #${row.id}`, onclick: () => run(ctx.delete(type, row.id)) }, 'delete');
}

function fieldTitle(f) {
  const parts = [f.kind + (f.target ? ` → ${f.target}` : '')];
  if (f.nullable) parts.push('nullable');
  if (f.allowed) parts.push(`one of ${f.allowed.join(', ')}`);
  if (f.readOnly) parts.push('read-only');
  return parts.join('; ');
}

function cell(ctx, row, field, editable) {
  const value = row[field.name];
  const td = h('td', { 'data-field': field.name, class: editable ? 'editable' : '' });
  const editing = app.editing;
  if (editable && editing && editing.type === row._type && editing.key === row._key && editing.field === field.name) {
    td.append(editor(ctx, row, field));
    return td;
  }
  td.append(field.kind === 'reference' ? refText(field, value) : show(value));
  if (editable) {
    td.title = 'click to edit';
    td.tabIndex = 0;
    const start = () => {
      app.editing = { type: row._type, key: row._key, field: field.name };
      render();
    };
    td.addEventListener('click', start);
    td.addEventListener('keydown', (e) => e.key === 'Enter' && start());
  }
  return td;
}

/** An input for one field: a select for allowed values and booleans, a number for ints and references. */
function input(field, value) {
  if (field.allowed || field.kind === 'bool') {
    const options = field.allowed ?? [true, false];
    const el = h('select', {}, field.nullable ? h('option', { value: 'null' }, '—') : null,
      options.map((v) => h('option', { value: JSON.stringify(v), selected: Object.is(v, value) }, String(v))));
    if (value === null && field.nullable) el.value = 'null';
    return el;
  }
  const numeric = ['int', 'float', 'reference'].includes(field.kind);
  return h('input', {
    type: numeric ? 'number' : 'text',
    value: value === null || value === undefined ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value),
    placeholder: field.nullable ? 'empty = null' : field.kind,
    step: field.kind === 'float' ? 'any' : undefined,
    size: 14,
  });
}

function readInput(field, el) {
  if (el.tagName === 'SELECT') return JSON.parse(el.value);
  const raw = el.value;
  if (raw === '' && field.nullable) return null;
  if (['int', 'reference'].includes(field.kind)) return raw === '' ? null : Number.parseInt(raw, 10);
  if (field.kind === 'float') return Number.parseFloat(raw);
  if (field.kind === 'json') {
    try {
      return JSON.parse(raw);
    } catch {
      return raw;
    }
  }
  return raw;
}

function editor(ctx, row, field) {
  const editing = app.editing;
  const el = input(field, row[field.name]);
  if (editing.draft !== undefined) el.value = editing.draft; // typed before a re-render
  el.className = 'edit';
  el.dataset.editing = field.name;
  el.addEventListener('input', () => {
    editing.draft = el.value;
  });
  let done = false;
  const commit = () => {
    if (done || app.rerendering) return;
    done = true;
    app.editing = null;
    const value = readInput(field, el);
    if (!Object.is(value, row[field.name])) run(ctx.save(row._type, row.id, { [field.name]: value }));
    render();
  };
  const cancel = () => {
    done = true;
    app.editing = null;
    render();
  };
  el.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') commit();
    if (e.key === 'Escape') cancel();
  });
  el.addEventListener(el.tagName === 'SELECT' ? 'change' : 'blur', commit);
  if (el.tagName === 'SELECT') el.addEventListener('blur', () => !done && !app.rerendering && cancel());
  return el;
}

function restoreEdit() {
  const el = document.querySelector('[data-editing]');
  if (el && document.activeElement !== el) {
    el.focus();
    if (app.editing?.draft === undefined) el.select?.();
  }
}

function createForm(ctx, type, fields) {
  const info = app.client.schema?.channels?.find((c) => c.name === ctx.channel);
  const edges = (info?.tree ?? []).filter((e) => e.child === type);
  const parentField = new Set(edges.map((e) => e.field));
  const inputs = fields.filter((f) => !f.readOnly && !parentField.has(f.name));
  const parents = edges.flatMap((e) => ctx.rows(e.parent).map((p) => ({ edge: e, row: p })));
  const parentSelect = h('select', { name: '_parent', title: 'the parent the new row joins' },
    parents.map(({ edge, row }, i) => h('option', { value: String(i) }, `${label(row)} · ${edge.relation}`)));
  const form = h(
    'form',
    { class: 'create inline', 'data-create': type, autocomplete: 'off' },
    h('strong', {}, `New ${type}`),
    h('label', {}, 'under ', parentSelect),
    inputs.map((f) => {
      const el = input(f, f.default ?? (f.nullable ? null : f.allowed?.[0]));
      el.name = f.name;
      if (el.tagName === 'INPUT') el.placeholder = f.name + (f.nullable || f.default !== undefined ? '' : ' *');
      return h('label', { title: fieldTitle(f) }, `${f.name} `, el);
    }),
    h('label', { class: 'muted', title: 'skip the optimistic step: show the row only once the server confirms it' },
      h('input', { type: 'checkbox', name: '_wait' }), ' wait for the server'),
    h('button', { type: 'submit' }, 'Create'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const choice = parents[Number(parentSelect.value)];
    if (!choice) return notice('error', 'no parent', `there is no ${edges.map((x) => x.parent).join(' or ')} to create a ${type} under`);
    const data = {};
    for (const f of inputs) {
      const el = form.elements.namedItem(f.name);
      const v = readInput(f, el);
      if (!(v === '' && f.default !== undefined)) data[f.name] = v;
    }
    const options = { parent: { type: choice.edge.parent, id: choice.row.id }, relation: choice.edge.relation };
    if (form.elements.namedItem('_wait').checked) options.optimistic = false;
    run(ctx.create(type, data, options));
    for (const f of inputs) {
      const el = form.elements.namedItem(f.name);
      if (el.tagName === 'INPUT' && f.kind === 'string' && !f.allowed) el.value = '';
    }
    form.querySelector('input:not([type=checkbox])')?.focus();
  });
  return form;
}

/** Every write's promise is handled here; refusals show as notices and in the writes log. */
function run(handle) {
  handle.catch(() => {});
  return handle;
}

// ---- writes and notices ----------------------------------------------------

function describeOps(w) {
  return w.ops
    .map((op) => {
      const target = op.operation === 'create' ? `${op.instanceType} under ${op.parentType} #${op.parentId}` : `${op.instanceType} #${op.instanceId}`;
      return `${op.operation} ${target}${op.data && Object.keys(op.data).length ? ` ${JSON.stringify(op.data)}` : ''}`;
    })
    .join('; ');
}

function trackWrite(w) {
  const list = $('writes');
  let li = app.writes.get(w.writeId);
  if (!li) {
    li = h('li', { 'data-write': w.writeId });
    app.writes.set(w.writeId, li);
    list.prepend(li);
    while (list.children.length > MAX_WRITES) {
      const last = list.lastElementChild;
      app.writes.delete(Number(last.dataset.write));
      last.remove();
    }
  }
  li.dataset.status = w.status;
  const err = w.error;
  li.replaceChildren(...h('div', {},
    h('span', { class: `tag w-${w.status}` }, w.status),
    h('span', { class: 'muted' }, ` #${w.writeId} `),
    describeOps(w),
    w.after.length ? h('span', { class: 'muted' }, ` after ${w.after.join(', ')}`) : null,
    !w.optimistic ? h('span', { class: 'muted' }, ' (not optimistic)') : null,
    w.result ? h('span', { class: 'muted' }, ` → seq ${w.result.seq}${w.result.duplicate ? ' (duplicate)' : ''}`) : null,
    err ? h('div', { class: 'refusal' }, h('code', {}, `${err.code} ${err.reason}`), ` ${err.message}`) : null,
  ).childNodes);
  if (w.status === 'refused') {
    // A delete the policy refused: that row's delete button gives way to the answer.
    if (w.operation === 'delete' && err.code === 403) {
      for (const op of w.ops) app.refusedDeletes.set(`${op.instanceType}:${op.instanceId}`, err);
      render();
    }
    const what = w.operation === 'delete' && err.code === 403 ? 'you may not delete this row' : 'refused';
    notice('refused', `${err.code} ${err.reason}`, `write #${w.writeId} (${describeOps(w)}) was ${what === 'refused' ? 'refused' : `refused — ${what}`}: ${err.message}`);
  }
}

function notice(kind, title, message) {
  const box = $('notices');
  const el = h('div', { class: `notice ${kind}`, role: 'alert' },
    h('strong', { class: 'code' }, title), ' ', h('span', {}, message),
    h('button', { class: 'link', type: 'button', title: 'dismiss', onclick: () => el.remove() }, '×'));
  box.prepend(el);
  while (box.children.length > 4) box.lastElementChild.remove();
  setTimeout(() => el.remove(), 15_000);
}

// ---- frames ----------------------------------------------------------------

function addFrame({ dir, text }) {
  if ($('frame-pause').checked) return;
  let type = '?';
  let summary = '';
  try {
    const msg = JSON.parse(text);
    type = msg.type;
    summary = frameSummary(msg);
  } catch {
    summary = text.slice(0, 80);
  }
  // Keep the log's memory bounded: a whole state can be large.
  const kept = text.length > MAX_FRAME_TEXT ? `${text.slice(0, MAX_FRAME_TEXT)}\n… (${text.length} characters in all)` : text;
  const frame = { dir, text: kept, type, summary, at: new Date() };
  app.frames.push(frame);
  if (app.frames.length > MAX_FRAMES) app.frames.shift();
  const li = frameItem(frame);
  const list = $('frames');
  list.append(li);
  while (list.children.length > MAX_FRAMES) list.firstElementChild.remove();
  if (list.scrollHeight - list.scrollTop - list.clientHeight < 80) list.scrollTop = list.scrollHeight;
}

function frameSummary(m) {
  switch (m.type) {
    case 'state':
      return `${m.context} seq ${m.seq}${m.incremental ? ' incremental' : ''} · ${m.instances?.length ?? 0} rows`;
    case 'delta':
      return `${m.context} seq ${m.seq} (prev ${m.prev})${m.writeId != null ? ` writeId ${m.writeId}` : ''} · ${(m.changes ?? []).map((c) => `${c.op} ${c._type}#${c.id}`).join(', ')}`;
    case 'write':
      return `#${m.writeId} ${m.operation} ${m.instanceType ?? ''}${m.instanceId != null ? `#${m.instanceId}` : ''}`;
    case 'writeResponse':
      return `#${m.writeId} ${m.success ? `ok seq ${m.seq}` : `${m.error?.code} ${m.error?.reason}`}`;
    case 'subscribe':
      return `${m.channel}/${m.anchorId}${m.since != null ? ` since ${m.since}` : ''}`;
    case 'welcome':
      return `user ${m.user?.id} · epoch ${String(m.epoch).slice(0, 8)}…`;
    case 'hello':
      return `clientId ${String(m.clientId).slice(0, 8)}…${m.pending?.length ? ` pending ${m.pending.join(',')}` : ''}`;
    case 'error':
      return `${m.code} ${m.reason} ${m.message ?? ''}`;
    case 'presence': {
      const who = m.user ? `${m.user.name ?? m.user.id} (${m.connectionId}) ` : '';
      return `${m.context} ${who}${m.left ? 'left' : m.data === null ? 'cleared' : JSON.stringify(m.data)}`;
    }
    default:
      return '';
  }
}

function frameItem(f) {
  const filter = $('frame-filter').value.trim().toLowerCase();
  const li = h('li', { class: `frame ${f.dir}`, 'data-type': f.type, hidden: filter && !f.text.toLowerCase().includes(filter) },
    h('span', { class: 'dir', title: f.dir === 'in' ? 'from the server' : 'to the server' }, f.dir === 'in' ? '←' : '→'),
    h('span', { class: 'time' }, f.at.toTimeString().slice(0, 8)),
    h('span', { class: 'ftype' }, f.type),
    h('span', { class: 'summary' }, f.summary));
  li.addEventListener('click', () => {
    const pre = li.querySelector('pre');
    if (pre) return pre.remove();
    let pretty = f.text;
    try {
      pretty = JSON.stringify(JSON.parse(f.text), null, 2);
    } catch {
      // not JSON: show as is
    }
    li.append(h('pre', {}, pretty));
  });
  return li;
}

function refilterFrames() {
  const filter = $('frame-filter').value.trim().toLowerCase();
  const items = $('frames').children;
  app.frames.slice(-items.length).forEach((f, i) => {
    items[i].hidden = Boolean(filter) && !f.text.toLowerCase().includes(filter);
  });
}


// ---- the streams page ------------------------------------------------------

const LOOKUPS = ['exact', 'iexact', 'contains', 'icontains', 'startswith', 'in', 'gt', 'gte', 'lt', 'lte', 'isnull'];
const MAX_STREAM_EVENTS = 300;

function showPage(page) {
  for (const b of document.querySelectorAll('#pages .tab')) b.setAttribute('aria-pressed', String(b.dataset.page === page));
  $('streams-page').hidden = page !== 'streams';
  $('contexts-page').hidden = page !== 'contexts';
  $('picker').hidden = page !== 'contexts';
  const url = new URL(location.href);
  if (page === 'streams') url.searchParams.set('page', 'streams');
  else url.searchParams.delete('page');
  history.replaceState(null, '', url);
}

function streamInfo(name) {
  return app.client?.schema?.streams?.find((s) => s.name === name);
}

function streamFields(name) {
  const info = streamInfo(name);
  return info ? (app.client.schema?.types?.[info.type]?.fields ?? []) : [];
}

function fillStreams(schema) {
  const select = $('stream');
  const streams = schema?.streams ?? [];
  select.replaceChildren(...streams.map((st) => h('option', { value: st.name }, `${st.name} (${st.type}, ${st.payload ?? 'id'} payload)`)));
  select.disabled = streams.length === 0;
  $('open-stream').disabled = streams.length === 0;
  $('stream-filters').replaceChildren();
  renderFieldChoices();
}

function renderFieldChoices() {
  const name = $('stream').value;
  const info = streamInfo(name);
  const box = $('stream-fields');
  if (!info) return box.replaceChildren();
  if (info.payload !== 'full') {
    box.replaceChildren(h('span', { class: 'muted' }, 'fields: id payload (the server sends ids only)'));
    return;
  }
  box.replaceChildren(
    h('span', { class: 'muted' }, 'fields (none checked = all)'),
    ...streamFields(name).map((f) => h('label', {}, h('input', { type: 'checkbox', name: 'field', value: f.name }), ` ${f.name}`)),
  );
}

function addFilterRow(field, lookup, value) {
  const fields = streamFields($('stream').value);
  const fieldSelect = h('select', { name: 'filter-field', 'aria-label': 'filter field' },
    h('option', { value: 'id' }, 'id'), fields.map((f) => h('option', { value: f.name, selected: f.name === field }, f.name)));
  const lookupSelect = h('select', { name: 'filter-lookup', 'aria-label': 'lookup' }, LOOKUPS.map((l) => h('option', { value: l, selected: l === lookup }, l)));
  const valueInput = h('input', { name: 'filter-value', 'aria-label': 'filter value', placeholder: 'value (in: a, b)', size: 14, value: value ?? '' });
  const row = h('div', { class: 'inline filter' }, fieldSelect, lookupSelect, valueInput,
    h('button', { type: 'button', class: 'link', title: 'remove this filter', onclick: () => row.remove() }, '×'));
  $('stream-filters').append(row);
  return row;
}

/** A typed filter value from the text typed, by the field's kind. */
function filterValue(field, lookup, raw) {
  const kind = field === 'id' ? 'int' : streamFields($('stream').value).find((f) => f.name === field)?.kind;
  if (lookup === 'isnull') return raw.trim() !== 'false';
  const one = (t) => {
    const v = t.trim();
    if (v === 'null') return null;
    if (['int', 'reference', 'id'].includes(kind)) return Number.parseInt(v, 10);
    if (kind === 'float') return Number.parseFloat(v);
    if (kind === 'bool') return v === 'true';
    if (kind === 'json') {
      try {
        return JSON.parse(v);
      } catch {
        return v;
      }
    }
    return v;
  };
  return lookup === 'in' ? raw.split(',').map(one) : one(raw);
}

function streamOptions() {
  const filters = {};
  for (const row of $('stream-filters').querySelectorAll('.filter')) {
    const field = row.querySelector('[name=filter-field]').value;
    const lookup = row.querySelector('[name=filter-lookup]').value;
    const key = lookup === 'exact' ? field : `${field}__${lookup}`;
    filters[key] = filterValue(field, lookup, row.querySelector('[name=filter-value]').value);
  }
  const form = $('stream-form');
  const actions = [...form.querySelectorAll('input[name=action]:checked')].map((i) => i.value);
  const fields = [...form.querySelectorAll('input[name=field]:checked')].map((i) => i.value);
  const options = { filters, snapshot: $('stream-snapshot').checked };
  if (actions.length < 3) options.actions = actions;
  if (fields.length) options.fields = fields;
  return options;
}

function openStream() {
  const client = app.client;
  const name = $('stream').value;
  if (!client || !name) return;
  const options = streamOptions();
  const info = streamInfo(name);
  try {
    // The server's lookups, checked here first (the server checks again).
    compileFilters(options.filters, streamFields(name));
  } catch (e) {
    notice('error', '400 INVALID_FILTER', e.message);
    return;
  }
  app.stopView?.();
  app.view?.close();
  const view = client.stream(name, options);
  app.view = view;
  logStreamEvent({ kind: 'subscribe', text: `${name} ${JSON.stringify(options)}` });
  app.stopView = view.onChange((e) => {
    if (app.view !== view) return;
    if (e.cause === 'write' || e.cause === 'reject' || e.cause === 'confirm') {
      const ids = (list) => list.map((r) => r.id).join(', ');
      const parts = [];
      if (e.added.length) parts.push(`in: ${ids(e.added)}`);
      if (e.updated.length) parts.push(`changed: ${ids(e.updated)}`);
      if (e.removed.length) parts.push(`out: ${ids(e.removed)}`);
      if (parts.length) logStreamEvent({ kind: e.cause === 'write' ? 'pending' : e.cause, text: parts.join(' · ') });
    }
    renderStreamRows();
  });
  view.ready.then(
    () => {
      if (app.view !== view) return;
      $('stream-state').textContent = `subscribed (${view.subscription}) at seq ${view.seq}`;
      renderStreamRows();
    },
    (e) => {
      if (app.view !== view) return;
      $('stream-state').textContent = `refused: ${e.code} ${e.reason}`;
      notice('error', `${e.code} ${e.reason}`, e.message || `the ${name} stream refused the subscription`);
      logStreamEvent({ kind: 'refused', text: `${e.code} ${e.reason} ${e.message ?? ''}` });
      renderStreamRows();
    },
  );
  $('stream-state').textContent = info ? 'subscribing…' : '';
  renderStreamRows();
}

function renderStreamRows() {
  const view = app.view;
  const table = $('stream-rows');
  if (!view) return table.replaceChildren();
  const rows = view.rows();
  $('stream-count').textContent = `${rows.length} row${rows.length === 1 ? '' : 's'}${view.status === 'closed' ? ` · closed (${view.closeReason})` : ''}`;
  const fields = streamFields(view.stream).filter((f) => !view.options.fields || view.options.fields.includes(f.name));
  const shown = fields.filter((f) => rows.some((r) => r[f.name] !== undefined));
  const head = h('tr', {}, h('th', {}, 'id'), shown.map((f) => h('th', { title: fieldTitle(f) }, f.name)), h('th', {}, 'version'));
  const body = rows.map((row) =>
    h('tr', { class: row._pending ? 'pending' : '', 'data-stream-row': row.id },
      h('td', { class: 'id' }, String(row.id), row._pending ? h('span', { class: 'badge', title: 'a pending write moves or changes this row' }, 'pending') : null),
      shown.map((f) => h('td', { 'data-field': f.name }, f.kind === 'reference' ? refText(f, row[f.name]) : show(row[f.name]))),
      h('td', { class: 'num' }, row._version !== undefined ? String(row._version) : '—')));
  table.replaceChildren(h('thead', {}, head), h('tbody', {}, body));
}

function logStreamEvent(e) {
  const entry = { ...e, at: new Date() };
  app.streamEvents.push(entry);
  if (app.streamEvents.length > MAX_STREAM_EVENTS) app.streamEvents.shift();
  const list = $('stream-events');
  list.append(h('li', { class: `sev ${e.kind}`, 'data-kind': e.kind },
    h('span', { class: 'time' }, entry.at.toTimeString().slice(0, 8)), ' ',
    h('span', { class: `tag ev-${e.kind}` }, e.kind), ' ', e.text));
  while (list.children.length > MAX_STREAM_EVENTS) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

/** The server's events for the open view (from the frames), logged as they come. */
function streamFrame({ dir, text }) {
  if (dir !== 'in' || !app.view || !text.startsWith('{"type":"event"') && !text.includes('"type":"event"')) return;
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return;
  }
  if (msg.type !== 'event' || msg.subscription !== app.view.subscription) return;
  const data = msg.data ? ` ${JSON.stringify(msg.data)}` : '';
  logStreamEvent({ kind: msg.action, text: `#${msg.id} seq ${msg.seq}${data}` });
}

// ---- wiring ----------------------------------------------------------------

$('signin').addEventListener('submit', async (e) => {
  e.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  const url = new URL(location.href);
  url.searchParams.set('token', token);
  history.replaceState(null, '', url);
  if (await signIn(token)) open($('channel').value, Number($('anchor').value));
});

$('picker').addEventListener('submit', (e) => {
  e.preventDefault();
  const anchor = Number($('anchor').value);
  if (!Number.isSafeInteger(anchor) || anchor < 1) return notice('error', 'bad anchor', 'the anchor is a row id: a whole number from 1');
  open($('channel').value, anchor);
});

$('my-presence').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('presence-data').value.trim();
  if (!text) return setMyPresence(null);
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = text; // not JSON: shown as a string
  }
  setMyPresence(data);
});
$('clear-presence').addEventListener('click', () => {
  $('presence-data').value = '';
  setMyPresence(null);
});

$('frame-filter').addEventListener('input', refilterFrames);
for (const b of document.querySelectorAll('#pages .tab')) b.addEventListener('click', () => showPage(b.dataset.page));
$('stream').addEventListener('change', () => {
  $('stream-filters').replaceChildren();
  renderFieldChoices();
});
$('add-filter').addEventListener('click', () => addFilterRow());
$('stream-form').addEventListener('submit', (e) => {
  e.preventDefault();
  openStream();
});
$('clear-events').addEventListener('click', () => {
  app.streamEvents = [];
  $('stream-events').replaceChildren();
});
$('clear-frames').addEventListener('click', () => {
  app.frames = [];
  $('frames').replaceChildren();
});
$('clear-writes').addEventListener('click', () => {
  app.writes.clear();
  $('writes').replaceChildren();
});

// `?token=alice&channel=job&anchor=1` signs in and opens the context at once.
const params = new URLSearchParams(location.search);
showPage(params.get('page') === 'streams' ? 'streams' : 'contexts');
if (params.get('anchor')) $('anchor').value = params.get('anchor');
if (params.get('token')) {
  $('token').value = params.get('token');
  signIn(params.get('token')).then((ok) => {
    if (!ok) return;
    if (params.get('channel')) $('channel').value = params.get('channel');
    open($('channel').value, Number($('anchor').value));
  });
}
