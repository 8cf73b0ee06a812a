// Runs one affinity batch against the store: the part of the request path that
// the worker threads own (or the event loop itself, with --workers 0). It looks
// bindings up, parses what responses' Set-Cookie headers teach, and applies it.
import { performance } from 'node:perf_hooks';
import { HIT, MISS, STORE_FAILED, type AffinityAnswer, type AffinityBatch, type ResolverSettings } from './batch.ts';
import { readSessionSetCookies, type LearnSink, type SessionCookie, type TtlRules } from './cookies.ts';
import type { AffinityStore } from './store/store.ts';
import { EmbeddedStore } from './store/embedded.ts';
import { MemcachedStore, memcachedDescription } from './store/memcached.ts';
import type { ResolverStats } from './stats.ts';

function openStore(s: ResolverSettings): AffinityStore {
  if (s.embedded !== null) return new EmbeddedStore(s.embedded);
  return new MemcachedStore({ servers: s.memcache, keyPrefix: s.keyPrefix, timeoutMs: s.storeTimeoutMs, learnQueue: s.learnQueue, outageCounters: s.outageCounters });
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
  readonly #rules: TtlRules;
  readonly #s: ResolverStats;
  // The learn #learn is reading, for #sink's calls within it.
  #j = 0;
  #backend = '';
  #bound = '';
  #answer: AffinityAnswer | null = null;
  #pending: Promise<void>[] | null = null;

  constructor(settings: ResolverSettings, stats: ResolverStats, store: AffinityStore = openStore(settings)) {
    this.store = store;
    this.#rules = { defaultTtl: settings.defaultTtl, maxTtl: settings.maxTtl };
    this.#s = stats;
  }

  async run(batch: AffinityBatch): Promise<AffinityAnswer> {
    const n = batch.lookups.length;
    const learns = batch.learnBackends.length;
    const answer: AffinityAnswer = {
      outcomes: new Uint8Array(n), backends: new Array<string>(n), keys: new Array<string>(n),
      replaced: new Uint8Array(learns), learnt: new Array<string>(learns), cleared: new Array<string>(learns),
    };
    const pending: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      answer.backends[i] = '';
      const keys = batch.lookups[i];
      const nl = keys.indexOf('\n');
      answer.keys[i] = nl < 0 ? keys : keys.slice(0, nl);
      pending.push(nl < 0 ? this.#lookupOne(keys, i, answer) : this.#lookupMany(keys.split('\n'), i, answer));
    }
    const now = Date.now();
    for (let j = 0; j < learns; j++) this.#learn(batch, j, now, answer, pending);
    this.#answer = this.#pending = null;
    for (let m = 0; m < batch.bindKeys.length; m++) {
      // The binding's lifetime is unknown here: it slides until the app's next Set-Cookie says.
      if (batch.bindAdopt[m] === 1) this.#s.adopts++;
      else this.#s.binds++;
      pending.push(this.store.set(batch.bindKeys[m], batch.bindBackends[m], this.#rules.defaultTtl, true).catch(this.#setFailed));
    }
    await Promise.all(pending);
    return answer;
  }

  async #lookupOne(key: string, i: number, answer: AffinityAnswer): Promise<void> {
    const t0 = performance.now();
    const backend = await this.#get(key);
    this.#s.storeGet.observe((performance.now() - t0) / 1000);
    this.#settle(backend === FAILED, backend === FAILED ? null : backend, key, i, answer);
  }

  /** The first configured cookie whose id is bound wins. */
  async #lookupMany(keys: string[], i: number, answer: AffinityAnswer): Promise<void> {
    const t0 = performance.now();
    const results = await Promise.all(keys.map(this.#get));
    this.#s.storeGet.observe((performance.now() - t0) / 1000);
    let failed = false;
    for (let k = 0; k < results.length; k++) {
      const backend = results[k];
      if (backend === FAILED) failed = true;
      else if (backend !== null) return this.#settle(false, backend, keys[k], i, answer);
    }
    this.#settle(failed, null, keys[0], i, answer);
  }

  #settle(failed: boolean, backend: string | null, key: string, i: number, answer: AffinityAnswer): void {
    if (backend !== null) {
      answer.outcomes[i] = HIT;
      answer.backends[i] = backend;
      answer.keys[i] = key;
      this.#s.hits++;
    } else if (failed) {
      answer.outcomes[i] = STORE_FAILED;
      this.#s.failures++;
    } else {
      answer.outcomes[i] = MISS;
      this.#s.misses++;
    }
  }

  readonly #get = (key: string): Promise<string | null | typeof FAILED> => this.store.get(key).catch(this.#getFailed);
  readonly #getFailed = (): typeof FAILED => {
    this.#s.getErrors++;
    return FAILED;
  };
  readonly #setFailed = (): void => { this.#s.setErrors++; };
  readonly #deleteFailed = (): void => { this.#s.deleteErrors++; };

  /** Applies one response's session cookies (readSessionSetCookies tells #sink what they do). */
  #learn(batch: AffinityBatch, j: number, now: number, answer: AffinityAnswer, pending: Promise<void>[]): void {
    answer.learnt[j] = '';
    answer.cleared[j] = '';
    this.#j = j;
    this.#backend = batch.learnBackends[j];
    this.#bound = batch.learnBound[j];
    this.#answer = answer;
    this.#pending = pending;
    // The loop sent only values that set one of its session cookies, by the names it has now (SIGHUP may change them).
    readSessionSetCookies(batch.learnSetCookies[j], batch.learnSent[j], this.#rules, now, this.#sink);
  }

  readonly #sink: LearnSink = {
    bindId: (key: string, sc: SessionCookie): void => {
      const answer = this.#answer!;
      const bound = this.#bound;
      // A new id for the cookie the request was bound by: the app lost or rotated the session.
      if (bound !== '' && bound !== key && bound.startsWith(sc.name) && bound.charCodeAt(sc.name.length) === 58 /* : */) answer.replaced[this.#j] = 1;
      this.#s.learns++;
      this.#pending!.push(this.store.set(key, this.#backend, sc.ttl, sc.sliding).catch(this.#setFailed));
      answer.learnt[this.#j] = withKey(answer.learnt[this.#j], key);
    },
    unbindId: (key: string): void => {
      this.#unbind(key, this.#pending!);
      this.#answer!.cleared[this.#j] = withKey(this.#answer!.cleared[this.#j], key);
    },
  };

  #unbind(key: string, pending: Promise<void>[]): void {
    this.#s.unbinds++;
    pending.push(this.store.delete(key).catch(this.#deleteFailed));
  }

  close(): Promise<void> {
    return this.store.close();
  }
}

/** '\n'-joined `keys` with `key` added. */
function withKey(keys: string, key: string): string {
  return keys === '' ? key : `${keys}\n${key}`;
}
