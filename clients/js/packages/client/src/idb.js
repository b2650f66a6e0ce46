// A `localStorage`-like storage kept in IndexedDB, for the client's queue:
// `open()` loads every key into memory (once, before the client starts), then
// `getItem` reads memory and `setItem` writes memory at once and IndexedDB in
// order, in the background. `whenDurable()` resolves once every `setItem`
// made so far is committed — the client sends a write only after the queue
// that holds it is on disk, so a crash can never leave a sent writeId that a
// later client would mint again.

const STORE = 'kv';

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

export class IdbStorage {
  /** Opens (creating if needed) the database `name` and loads it. */
  static async open(name = 'statecast', indexedDB = globalThis.indexedDB) {
    if (!indexedDB) throw new TypeError("storage: 'indexeddb' needs IndexedDB (a browser); pass a localStorage-like object elsewhere");
    const open = indexedDB.open(name, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(STORE);
    const db = await request(open);
    const tx = db.transaction(STORE, 'readonly');
    const store = tx.objectStore(STORE);
    const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
    return new IdbStorage(db, new Map(keys.map((k, i) => [k, values[i]])));
  }

  constructor(db, cache) {
    this.db = db;
    this.cache = cache;
    this.tail = Promise.resolve();
    this.pending = 0;
    /** The last error of a background write, if any (the queue still lives in memory). */
    this.error = null;
  }

  getItem(key) {
    return this.cache.has(key) ? this.cache.get(key) : null;
  }

  setItem(key, value) {
    this.cache.set(key, String(value));
    this.pending += 1;
    // Each put is its own transaction, chained: IndexedDB commits them in order.
    const tx = this.db.transaction(STORE, 'readwrite', { durability: 'strict' });
    tx.objectStore(STORE).put(String(value), key);
    const done = new Promise((resolve) => {
      tx.oncomplete = () => resolve();
      tx.onerror = tx.onabort = () => {
        this.error = tx.error;
        resolve();
      };
    });
    this.tail = this.tail.then(() => done).then(() => {
      this.pending -= 1;
    });
  }

  removeItem(key) {
    this.cache.delete(key);
    const tx = this.db.transaction(STORE, 'readwrite');
    tx.objectStore(STORE).delete(key);
  }

  /** Resolves when every `setItem` so far is committed; null when none is outstanding. */
  whenDurable() {
    return this.pending > 0 ? this.tail : null;
  }

  close() {
    this.db.close();
  }
}
