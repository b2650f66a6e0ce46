// The demo's job board in React: a job's tasks with a status select, create
// and delete; "my tasks" from the my-tasks stream; pending and refused
// writes; the connection's status. One TabClient for all the tabs of the app
// (one queue in IndexedDB; the leading tab holds the socket).
//
// Query: ?token=alice (else a sign-in form) &ws=ws://127.0.0.1:7100/ws (else
// port 7100 of this host) &job=1.

import { StrictMode, memo, useLayoutEffect, useRef, useState, useSyncExternalStore } from 'react';
import { createRoot } from 'react-dom/client';
import { TabClient } from '@statecast/client';
import { StatecastProvider, useClient, useConnection, useContext, useStream, useWrites } from '@statecast/react';

const params = new URLSearchParams(location.search);
const wsUrl = params.get('ws') ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.hostname}:7100/ws`;
const token = params.get('token');

const STATUSES = ['todo', 'doing', 'done'];
const STATUS_LABEL = { idle: 'starting', connecting: 'connecting…', open: 'online', reconnecting: 'offline — reconnecting…', closed: 'closed' };

function describe(w) {
  const op = w.ops?.[0] ?? {};
  const what = w.operation === 'create' ? `create “${op.data?.name ?? ''}”` : `${w.operation} ${op.instanceType ?? ''} ${op.instanceId ?? ''}`;
  return `#${w.writeId} ${what}`;
}

function useRole(client) {
  return useSyncExternalStore(
    (fn) => client.on('role', fn),
    () => client.role,
  );
}

function Header() {
  const client = useClient();
  const status = useConnection();
  const role = useRole(client);
  return (
    <header>
      <h1>Tasks</h1>
      <span className="who">{client.user?.name ?? token}</span>
      <span className="role" data-role={role}>
        {role === 'leader' ? 'this tab holds the connection' : role === 'follower' ? 'via another tab' : ''}
      </span>
      <span className="status" data-status={status}>
        {STATUS_LABEL[status] ?? status}
      </span>
    </header>
  );
}

const TaskRow = memo(
  function TaskRow({ task, job }) {
    const fail = () => {}; // a refusal shows in the writes panel, with its code and reason
    return (
      <li className={task._pending ? 'task pending' : 'task'} data-id={task.id} data-name={task.name} data-status={task.status}>
        <span className="name">{task.name}</span>
        <select aria-label={`status of ${task.name}`} value={task.status} onChange={(e) => job.save('Task', task.id, { status: e.target.value }).catch(fail)}>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
        <button type="button" className="delete" title="delete" aria-label={`delete ${task.name}`} onClick={() => job.delete('Task', task.id).catch(fail)}>
          ✕
        </button>
      </li>
    );
  },
  (a, b) => a.task === b.task,
);

/** Long lists render only the rows in sight (rows have a fixed height); short ones render whole. */
const ROW_HEIGHT = 40;
const WINDOW_FROM = 300;
const OVERSCAN = 10;

function TaskList({ tasks, job }) {
  const box = useRef(null);
  const [scroll, setScroll] = useState({ top: 0, height: 800 });
  useLayoutEffect(() => {
    if (box.current) setScroll((s) => (s.height === box.current.clientHeight ? s : { ...s, height: box.current.clientHeight || 800 }));
  }, [tasks.length > WINDOW_FROM]);
  if (tasks.length <= WINDOW_FROM) {
    return (
      <ul className="tasks">
        {tasks.map((t) => (
          <TaskRow key={t._key} task={t} job={job} />
        ))}
      </ul>
    );
  }
  const start = Math.max(0, Math.floor(scroll.top / ROW_HEIGHT) - OVERSCAN);
  const end = Math.min(tasks.length, Math.ceil((scroll.top + scroll.height) / ROW_HEIGHT) + OVERSCAN);
  return (
    <div className="tasks-window" ref={box} onScroll={(e) => setScroll({ top: e.currentTarget.scrollTop, height: e.currentTarget.clientHeight })}>
      <ul className="tasks windowed" data-count={tasks.length} style={{ paddingTop: start * ROW_HEIGHT, paddingBottom: (tasks.length - end) * ROW_HEIGHT }}>
        {tasks.slice(start, end).map((t) => (
          <TaskRow key={t._key} task={t} job={job} />
        ))}
      </ul>
    </div>
  );
}

function JobBoard({ jobId }) {
  const job = useContext('job', jobId);
  const [name, setName] = useState('');
  const tasks = job.rows('Task');
  const anchor = job.get('Job', jobId);
  const create = (e) => {
    e.preventDefault();
    if (!name.trim()) return;
    job.create('Task', { name: name.trim() }).catch(() => {});
    setName('');
  };
  return (
    <section className="board" data-context-status={job.status}>
      <h2>{anchor?.name ?? `Job ${jobId}`}</h2>
      {job.error && <p className="error">This job is closed: {job.error}</p>}
      <form onSubmit={create}>
        <input aria-label="new task" placeholder="New task" value={name} onChange={(e) => setName(e.target.value)} />
        <button type="submit">Add</button>
      </form>
      <TaskList tasks={tasks} job={job} />
    </section>
  );
}

function MyTasks({ jobId }) {
  const mine = useStream('my-tasks');
  const job = useContext('job', jobId); // the same subscription as the board's
  return (
    <section className="mine" data-stream-status={mine.status}>
      <h3>My tasks</h3>
      {mine.error && <p className="error">{mine.error}</p>}
      <ul>
        {mine.rows.map((r) => (
          <li key={r._key ?? r.id} data-id={r.id}>
            {job.get('Task', r.id)?.name ?? `Task #${r.id}`}
          </li>
        ))}
      </ul>
    </section>
  );
}

function Writes() {
  const { pending, refused, dismiss } = useWrites();
  return (
    <section className="writes">
      <h3>Pending writes ({pending.length})</h3>
      <ul className="pending">
        {pending.map((w) => (
          <li key={w.writeId}>{describe(w)}</li>
        ))}
      </ul>
      <h3>Refused writes</h3>
      <ul className="refused">
        {refused.map((r) => (
          <li key={r.writeId} data-code={r.code} data-reason={r.reason}>
            <strong>
              {r.code} {r.reason}
            </strong>{' '}
            {describe(r)}: {r.message}{' '}
            <button type="button" onClick={() => dismiss(r.writeId)} aria-label="dismiss">
              ok
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}

function App() {
  const [jobId, setJobId] = useState(Number(params.get('job') ?? 1));
  return (
    <div className="app">
      <Header />
      <nav>
        <label>
          Job{' '}
          <select aria-label="job" value={jobId} onChange={(e) => setJobId(Number(e.target.value))}>
            <option value={1}>1</option>
            <option value={2}>2</option>
          </select>
        </label>
      </nav>
      <main>
        <JobBoard jobId={jobId} />
      </main>
      <aside>
        <MyTasks jobId={jobId} />
        <Writes />
      </aside>
    </div>
  );
}

function SignIn() {
  return (
    <form className="signin" method="get">
      <h1>Tasks</h1>
      <label>
        Token <input name="token" placeholder="alice" required />
      </label>
      <input type="hidden" name="ws" value={wsUrl} />
      <button type="submit">Sign in</button>
    </form>
  );
}

const root = createRoot(document.getElementById('root'));
if (!token) {
  root.render(<SignIn />);
} else {
  const client = new TabClient({ url: wsUrl, token, name: `react-tasks:${token}@${wsUrl}`, maxReconnectDelay: 2000 });
  client.connect().catch(() => {});
  window.statecast = client; // for the console (and the tests)
  root.render(
    <StrictMode>
      <StatecastProvider client={client}>
        <App />
      </StatecastProvider>
    </StrictMode>,
  );
}
