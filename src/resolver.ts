// Runs one affinity batch against the store: the part of the request path that
// the worker threads own (or the main thread, with --workers 0). It parses the
// cookies, looks bindings up, and applies what responses taught.
import { HIT, MISS, STORE_FAILED, type AffinityAnswer, type AffinityBatch, type ResolverSettings } from './batch.ts';
import { requestSessionKeys, sessionKey, sessionSetCookie, type SessionCookie, type TtlRules } from './cookies.ts';
import type { AffinityStore } from './store/store.ts';
import { EmbeddedStore } from './store/embedded.ts';
import { MemcachedStore, memcachedDescription } from './store/memcached.ts';
import type { ResolverMetrics } from './metrics.ts';

function openStore(s: ResolverSettings): AffinityStore {
  if (s.embedded !== null) return new EmbeddedStore(s.embedded);
  return new MemcachedStore({ servers: s.memcache, keyPrefix: s.keyPrefix, timeoutMs: s.storeTimeoutMs, learnQueue: s.learnQueue });
}

/** What openStore() would open, without opening it (the main thread's log line). */
export function describeStore(s: ResolverSettings): string {
  if (s.embedded !== null) return new EmbeddedStore(s.embedded).description;
  return memcachedDescription(s.memcache, s.keyPrefix);
}

/** A lookup the store could not answer. */
const FAILED: unique symbol = Symbol('store failed');

export class Resolver {
  readonly store: AffinityStore;
  readonly #names: readonly string[];
  readonly #rules: TtlRules;
  readonly #m: ResolverMetrics;
  // Shared failure counters: no closure per store operation.
  readonly #setFailed: () => void;
  readonly #deleteFailed: () => void;

  constructor(settings: ResolverSettings, metrics: ResolverMetrics, store: AffinityStore = openStore(settings)) {
    this.store = store;
    this.#names = settings.sessionCookies;
    this.#rules = { defaultTtl: settings.defaultTtl, maxTtl: settings.maxTtl };
    this.#m = metrics;
    this.#setFailed = () => metrics.storeErrors.inc({ op: 'set' });
    this.#deleteFailed = () => metrics.storeErrors.inc({ op: 'delete' });
    if (store instanceof MemcachedStore) metrics.observeQueue(() => store.queued, () => store.dropped);
  }

  async run(batch: AffinityBatch): Promise<AffinityAnswer> {
    const n = batch.cookies.length;
    const learns = batch.learnBackends.length;
    const answer: AffinityAnswer = { outcomes: new Uint8Array(n), backends: new Array<string>(n), keys: new Array<string>(n), replaced: new Uint8Array(learns) };
    const pending: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      answer.backends[i] = '';
      answer.keys[i] = '';
      const keys = requestSessionKeys(batch.cookies[i], this.#names);
      if (keys.length > 0) pending.push(this.#lookup(keys, i, answer));
    }
    const now = Date.now();
    for (let j = 0; j < learns; j++) {
      if (this.#learn(batch.learnBackends[j], batch.learnSetCookies[j], batch.learnCookies[j], batch.learnBound[j], now, pending)) answer.replaced[j] = 1;
    }
    for (let m = 0; m < batch.bindKeys.length; m++) {
      // The binding's lifetime is unknown here: it slides until the app's next Set-Cookie says.
      this.#m.binds.inc();
      pending.push(this.store.set(batch.bindKeys[m], batch.bindBackends[m], this.#rules.defaultTtl, true).catch(this.#setFailed));
    }
    await Promise.all(pending);
    return answer;
  }

  /** The first configured cookie whose id is bound wins. */
  async #lookup(keys: string[], i: number, answer: AffinityAnswer): Promise<void> {
    answer.keys[i] = keys[0];
    const m = this.#m;
    const t0 = performance.now();
    // Usually one session cookie; several are looked up together.
    const results: (string | null | typeof FAILED)[] = keys.length === 1 ? [await this.#get(keys[0])] : await Promise.all(keys.map(this.#get));
    m.storeGet.observe((performance.now() - t0) / 1000);
    let failed = false;
    for (let k = 0; k < results.length; k++) {
      const backend = results[k];
      if (backend === FAILED) {
        failed = true;
      } else if (backend !== null) {
        answer.outcomes[i] = HIT;
        answer.backends[i] = backend;
        answer.keys[i] = keys[k];
        m.hits.inc();
        return;
      }
    }
    answer.outcomes[i] = failed ? STORE_FAILED : MISS;
    (failed ? m.storeFailures : m.misses).inc();
  }

  readonly #get = (key: string): Promise<string | null | typeof FAILED> => this.store.get(key).catch(this.#getFailed);
  readonly #getFailed = (): typeof FAILED => {
    this.#m.storeErrors.inc({ op: 'get' });
    return FAILED;
  };

  /** Applies one response's session cookies; true when it replaced the id the request was bound by. */
  #learn(backend: string, setCookies: string[], requestCookie: string, bound: string, now: number, pending: Promise<void>[]): boolean {
    let replaced = false;
    // When one name is set by several Set-Cookie headers, the last one counts.
    const last = new Map<string, SessionCookie>();
    for (const value of setCookies) {
      const sc = sessionSetCookie(value, this.#names, this.#rules, now);
      if (sc !== null) last.set(sc.name, sc);
    }
    for (const sc of last.values()) {
      if (sc.ttl > 0) {
        const key = sessionKey(sc.name, sc.id);
        // A new id for the cookie the request was bound by: the app lost or rotated the session.
        if (bound !== '' && bound !== key && bound.startsWith(sc.name) && bound.charCodeAt(sc.name.length) === 58 /* : */) replaced = true;
        this.#m.learns.inc();
        pending.push(this.store.set(key, backend, sc.ttl, sc.sliding).catch(this.#setFailed));
        continue;
      }
      // Clearing: the id the client sent is the one to forget (apps clear with an empty value).
      const sent = requestSessionKeys(requestCookie, [sc.name]);
      if (sent.length > 0) this.#unbind(sent[0], pending);
      if (sc.id !== '' && sessionKey(sc.name, sc.id) !== sent[0]) this.#unbind(sessionKey(sc.name, sc.id), pending);
    }
    return replaced;
  }

  #unbind(key: string, pending: Promise<void>[]): void {
    this.#m.unbinds.inc();
    pending.push(this.store.delete(key).catch(this.#deleteFailed));
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
