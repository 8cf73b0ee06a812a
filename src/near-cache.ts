// A bounded local memory of recent bindings, in front of the store. An entry
// is fresh for a short lifetime (--near-cache-ttl): within it a lookup is
// answered here, so a hot session costs at most one store round trip per
// lifetime. Past it, the entry is still remembered (until the binding's own
// sliding lifetime ends) and serves when the store cannot answer, as HTTP's
// stale-if-error does, or when the store lost the binding. This instance's
// learns, unbinds and moves update it at once.

export interface NearEntry {
  backend: string;
  /** performance.now() until which the entry answers without the store. */
  freshUntil: number;
  /** performance.now() until which it is remembered. */
  until: number;
  /** When an adoption of this key may next be written (at most once per TTL/8). */
  adoptAfter: number;
}

export class NearCache {
  readonly #map = new Map<string, NearEntry>();
  readonly #max: number;
  readonly #freshMs: number;
  readonly #rememberMs: number;

  /** `freshMs` 0: never answer without the store; entries still serve as memory. */
  constructor(maxEntries: number, freshMs: number, rememberMs: number) {
    this.#max = maxEntries;
    this.#freshMs = freshMs;
    this.#rememberMs = rememberMs;
  }

  get size(): number {
    return this.#map.size;
  }

  /** The entry for `key` if remembered at `now`. */
  get(key: string, now: number): NearEntry | undefined {
    const e = this.#map.get(key);
    if (e === undefined) return undefined;
    if (e.until <= now) {
      this.#map.delete(key);
      return undefined;
    }
    return e;
  }

  /** Fresh: answers a lookup without the store. */
  fresh(e: NearEntry, now: number): boolean {
    return e.freshUntil > now;
  }

  /** Remembers that `key` is bound to `backend`, fresh from now. */
  set(key: string, backend: string, now: number): NearEntry {
    let e = this.#map.get(key);
    if (e !== undefined) {
      e.backend = backend;
      e.freshUntil = now + this.#freshMs;
      e.until = now + this.#rememberMs;
      return e;
    }
    if (this.#map.size >= this.#max) {
      // The oldest insertion goes: a bounded memory, not an LRU.
      const oldest = this.#map.keys().next();
      if (oldest.done !== true) this.#map.delete(oldest.value);
    }
    e = { backend, freshUntil: now + this.#freshMs, until: now + this.#rememberMs, adoptAfter: 0 };
    this.#map.set(key, e);
    return e;
  }

  delete(key: string): void {
    this.#map.delete(key);
  }
}
