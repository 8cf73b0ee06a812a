// Bindings in memcached, shared by every proxy instance. The value is the
// backend name (readable with any memcached tool); the item's flags hold the
// sliding TTL in seconds, 0 for a binding with a fixed expiry.
import { MemcacheClient } from '../memcache/client.ts';
import type { AffinityStore, Binding } from './store.ts';

// A sliding binding is refreshed at most once per this fraction of its TTL per
// thread: "use refreshes it, cheaply" without a write on every request.
const REFRESH_FRACTION = 8;
// Bounds the refresh bookkeeping; forgetting it only costs an early touch.
const MAX_TRACKED = 100_000;

export interface MemcachedStoreOptions {
  servers: string[];
  keyPrefix: string;
  timeoutMs: number;
}

export function memcachedDescription(servers: string[], keyPrefix: string): string {
  return `memcached (${servers.join(', ')}; key prefix "${keyPrefix}"; shared by every instance using them)`;
}

export class MemcachedStore implements AffinityStore {
  readonly description: string;
  readonly client: MemcacheClient;
  // key -> time (ms) after which the next use should refresh its TTL.
  readonly #refreshAfter = new Map<string, number>();

  constructor(opts: MemcachedStoreOptions) {
    this.client = new MemcacheClient({ servers: opts.servers, keyPrefix: opts.keyPrefix, timeoutMs: opts.timeoutMs });
    this.description = memcachedDescription(opts.servers, opts.keyPrefix);
  }

  async get(key: string): Promise<Binding | null> {
    const hit = await this.client.get(key);
    if (hit === null) return null;
    if (hit.flags > 0) this.#slide(key, hit.flags);
    return { backend: hit.value.toString('latin1') };
  }

  set(key: string, backend: string, ttl: number, sliding: boolean): Promise<void> {
    if (sliding) this.#remember(key, ttl, Date.now());
    return this.client.set(key, backend, ttl, sliding ? ttl : 0);
  }

  delete(key: string): Promise<void> {
    this.#refreshAfter.delete(key);
    return this.client.delete(key);
  }

  close(): Promise<void> {
    return this.client.close();
  }

  #slide(key: string, ttl: number): void {
    const now = Date.now();
    const due = this.#refreshAfter.get(key);
    if (due !== undefined && now < due) return;
    this.#remember(key, ttl, now);
    // A lost refresh only shortens the binding's life; never fail the lookup for it.
    this.client.touch(key, ttl).catch(noop);
  }

  #remember(key: string, ttl: number, now: number): void {
    if (this.#refreshAfter.size >= MAX_TRACKED) this.#refreshAfter.clear();
    this.#refreshAfter.set(key, now + (ttl * 1000) / REFRESH_FRACTION);
  }
}

function noop(): void {}
