// Bindings in memcached, shared by every proxy instance. The value is the
// backend name (readable with any memcached tool); the item's flags hold the
// sliding TTL in seconds, 0 for a binding with a fixed expiry.
import { MemcacheClient, MemcacheError, exptimeForTtl } from '../memcache/client.ts';
import { OutageCounters } from './outage.ts';
import type { AffinityStore } from './store.ts';
import { monotonicMs } from '../clock.ts';

// A sliding binding is refreshed at most once per this fraction of its TTL per
// thread: "use refreshes it, cheaply" without a write on every request.
const REFRESH_FRACTION = 8;
// Bounds the refresh bookkeeping; forgetting it only costs an early touch.
const MAX_TRACKED = 100_000;
// How often learns kept during an outage are retried.
const RETRY_MS = 250;

export interface MemcachedStoreOptions {
  servers: string[];
  keyPrefix: string;
  timeoutMs: number;
  /** Writes kept while memcached cannot take them; beyond it they are dropped and counted. */
  learnQueue: number;
  /** The process's outage counters (outage.ts), which the store watch reports; null where none watches. */
  outageCounters: SharedArrayBuffer | null;
}

/** A write that memcached could not take, kept to be replayed once it is back. */
interface Pending {
  key: string;
  /** '' for a delete. */
  backend: string;
  ttl: number;
  sliding: boolean;
  at: number;
  /** The client's index of the server holding the key. */
  server: number;
  /** A later write of the key came after it: replaying it would undo that one. */
  superseded: boolean;
}

export function memcachedDescription(servers: string[], keyPrefix: string): string {
  return `memcached (${servers.join(', ')}; key prefix "${keyPrefix}"; shared by every instance using them)`;
}

export class MemcachedStore implements AffinityStore {
  readonly description: string;
  readonly client: MemcacheClient;
  /** Learns dropped because the outage queue was full or they expired in it. */
  dropped = 0;
  // key -> time (ms) after which the next use should refresh its TTL.
  readonly #refreshAfter = new Map<string, number>();
  readonly #queueMax: number;
  #queue: Pending[] = [];
  /** The queued write of each key, to be superseded by a later one. */
  readonly #queuedFor = new Map<string, Pending>();
  #retryTimer: NodeJS.Timeout | undefined;
  readonly #counters: OutageCounters | null;

  constructor(opts: MemcachedStoreOptions) {
    // Writes get the lookup deadline too: a response held for its learn must not
    // wait longer than a lookup would; a write that misses it is queued, not lost.
    this.client = new MemcacheClient({ servers: opts.servers, keyPrefix: opts.keyPrefix, timeoutMs: opts.timeoutMs, writeTimeoutMs: opts.timeoutMs });
    this.description = memcachedDescription(opts.servers, opts.keyPrefix);
    this.#queueMax = opts.learnQueue;
    this.#counters = opts.outageCounters === null ? null : new OutageCounters(opts.outageCounters);
  }

  async get(key: string): Promise<string | null> {
    const hit = await this.client.get(key);
    if (hit === null) return null;
    if (hit.flags > 0) this.#slide(key, hit.flags);
    return hit.value.toString('latin1');
  }

  set(key: string, backend: string, ttl: number, sliding: boolean): Promise<void> {
    if (this.#queuedFor.size > 0) this.#supersede(key);
    if (sliding) this.#remember(key, ttl, monotonicMs());
    // memcached reads an exptime beyond 30 days as a Unix time, hence exptimeForTtl.
    return this.client.set(key, backend, exptimeForTtl(ttl), sliding ? ttl : 0).catch((err: unknown) => {
      if (!this.#keep(err, key, backend, ttl, sliding, false)) throw err;
    });
  }

  delete(key: string): Promise<void> {
    if (this.#queuedFor.size > 0) this.#supersede(key);
    this.#refreshAfter.delete(key);
    return this.client.delete(key).catch((err: unknown) => {
      if (!this.#keep(err, key, '', 0, false, false)) throw err;
    });
  }

  get queued(): number {
    return this.#queue.length;
  }

  async close(): Promise<void> {
    if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
    this.#drop(this.#queue.length);
    this.#counters?.dequeued(this.#queue.length);
    this.#queue = [];
    this.#queuedFor.clear();
    await this.client.close();
  }

  /**
   * Queues a write that failed for want of a server, or whose fate is unknown
   * (true); anything else (false) is the caller's to see. A protocol error
   * closed the connection the write went on, unanswered: like a close, it
   * may or may not have been applied. `again`: a replayed write failing again.
   */
  #keep(err: unknown, key: string, backend: string, ttl: number, sliding: boolean, again: boolean): boolean {
    const code = err instanceof MemcacheError ? err.code : '';
    if (code !== 'down' && code !== 'timeout' && code !== 'closed' && code !== 'protocol') return false;
    if (this.#queue.length >= this.#queueMax) {
      this.#drop(1);
      return true;
    }
    // The key's queued write now: a later write of the key supersedes it (#supersede).
    const p: Pending = { key, backend, ttl, sliding, at: monotonicMs(), server: this.client.serverIndex(key), superseded: false };
    this.#queue.push(p);
    this.#queuedFor.set(key, p);
    this.#counters?.queued(backend !== '', again);
    this.#retryTimer ??= setTimeout(this.#replayNow, RETRY_MS);
    return true;
  }

  #replay(): void {
    this.#retryTimer = undefined;
    // A write whose server is still down would only fail again, a promise and
    // a rejection each: at --learn-queue's 10,000 that stalled the loop for
    // 10-20 ms four times a second. It waits in the queue, untouched.
    if (this.client.allDown) {
      this.#retryTimer = setTimeout(this.#replayNow, RETRY_MS);
      return;
    }
    const queue = this.#queue;
    this.#queue = [];
    const now = monotonicMs();
    // A replayed write stays pending until memcached answers it, so the
    // outage report (store/watch.ts) waits for the answers it counts.
    for (const p of queue) {
      if (p.superseded) {
        // Its key was written again since: that write has the binding now.
        if (p.backend !== '') this.#counters?.written();
        this.#settled();
        continue;
      }
      if (this.client.isServerDown(p.server)) {
        this.#queue.push(p);
        continue;
      }
      // It stays the key's queued write while it is on its way: a write of the key meanwhile supersedes it, and it is not queued again if it fails.
      if (p.backend === '') {
        this.client.delete(p.key).then(() => this.#replayed(p, false), (err: unknown) => this.#failedAgain(err, p, 0));
        continue;
      }
      // A fixed lifetime is shortened by the time spent queued.
      const ttl = p.sliding ? p.ttl : p.ttl - Math.floor((now - p.at) / 1000);
      if (ttl <= 0) {
        if (this.#queuedFor.get(p.key) === p) this.#queuedFor.delete(p.key);
        this.#drop(1);
        this.#settled();
        continue;
      }
      this.client.set(p.key, p.backend, exptimeForTtl(ttl), p.sliding ? ttl : 0).then(() => this.#replayed(p, true), (err: unknown) => this.#failedAgain(err, p, ttl));
    }
    if (this.#queue.length > 0) this.#retryTimer ??= setTimeout(this.#replayNow, RETRY_MS);
  }

  readonly #replayNow = (): void => this.#replay();

  /** A replayed write was answered: a learn's counts as written. */
  #replayed(p: Pending, learn: boolean): void {
    if (this.#queuedFor.get(p.key) === p) this.#queuedFor.delete(p.key);
    if (learn) this.#counters?.written();
    this.#settled();
  }

  readonly #settled = (): void => {
    this.#counters?.dequeued(1);
  };

  /** A replayed write failed: queued again (counted pending again first), dropped, or, superseded meanwhile, done with. */
  #failedAgain(err: unknown, p: Pending, ttl: number): void {
    if (p.superseded) {
      if (p.backend !== '') this.#counters?.written();
    } else {
      if (this.#queuedFor.get(p.key) === p) this.#queuedFor.delete(p.key);
      if (!this.#keep(err, p.key, p.backend, ttl, p.sliding, true)) this.#drop(1);
    }
    this.#settled();
  }

  /** A write of `key` now: the one queued for it, if any, must not be replayed after it. */
  #supersede(key: string): void {
    const p = this.#queuedFor.get(key);
    if (p === undefined) return;
    p.superseded = true;
    this.#queuedFor.delete(key);
  }

  #drop(n: number): void {
    this.dropped += n;
    this.#counters?.dropped(n);
  }

  #slide(key: string, ttl: number): void {
    const now = monotonicMs();
    const due = this.#refreshAfter.get(key);
    if (due !== undefined && now < due) return;
    this.#remember(key, ttl, now);
    // A lost refresh only shortens the binding's life; never fail the lookup for it.
    this.client.touch(key, exptimeForTtl(ttl)).catch(noop);
  }

  #remember(key: string, ttl: number, now: number): void {
    if (this.#refreshAfter.size >= MAX_TRACKED) this.#refreshAfter.clear();
    this.#refreshAfter.set(key, now + (ttl * 1000) / REFRESH_FRACTION);
  }
}

function noop(): void {}
