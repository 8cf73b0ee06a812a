// The shapes that cross between the event loop and the affinity workers: one
// batch per event-loop turn each way. Both sides import this module so the
// shapes are defined once. Parallel arrays keep structured clone cheap (no
// object per request) and let the answer be matched back by index.
//
// Session keys are `<cookie name>:<id>`; where a request carries several
// configured session cookies, their keys travel '\n'-joined in configured
// order (no header value can hold a '\n').

/** How a lookup went. On the wire it is a byte (LOOKUP_CODES); in code, this union. */
export type LookupOutcome = 'miss' | 'hit' | 'failed';
/** The wire codes of LookupOutcome, by index. */
export const LOOKUP_CODES: readonly LookupOutcome[] = ['miss', 'hit', 'failed'];
export const MISS = 0;
export const HIT = 1;
/** The store failed or timed out: route without it, and count it. */
export const STORE_FAILED = 2;

/** Why a binding is written with the sliding default TTL, as the bindings metric counts it. */
export type BindReason = 'bind' | 'adopt';

export interface AffinityBatch {
  /** Per lookup: the request's session keys. */
  lookups: string[];
  /** Per learn: the backend that answered. */
  learnBackends: string[];
  /** Per learn: the response's Set-Cookie values that may set a session cookie. */
  learnSetCookies: string[][];
  /** Per learn: the request's session keys ('' if none), to unbind a cleared id. */
  learnSent: string[];
  /** Per learn: the key the request was bound by ('' if none), to notice a session replaced. */
  learnBound: string[];
  /**
   * Bindings to set with the sliding default TTL: a session whose backend could
   * not serve it moves; an open WebSocket keeps its own fresh; a backend that
   * accepted an unbound id adopts it.
   */
  bindKeys: string[];
  bindBackends: string[];
  /** Per bind: 1 for an adoption, 0 otherwise (the metric tells them apart). */
  bindAdopt: number[];
}

export interface AffinityAnswer {
  /** Per lookup: MISS, HIT or STORE_FAILED. */
  outcomes: Uint8Array;
  /** Per lookup: the bound backend's name, '' unless HIT. */
  backends: string[];
  /** Per lookup: the key that hit, else the first key. */
  keys: string[];
  /** Per learn: 1 when a bound session's response set a new id for its cookie (session lost or rotated). */
  replaced: Uint8Array;
  /** Per learn: the keys bound, and the keys unbound, by its Set-Cookie values. */
  learnt: string[];
  cleared: string[];
}

export function emptyBatch(): AffinityBatch {
  return { lookups: [], learnBackends: [], learnSetCookies: [], learnSent: [], learnBound: [], bindKeys: [], bindBackends: [], bindAdopt: [] };
}

/** What a worker needs to build its resolver; sent once, as workerData. */
export interface ResolverSettings {
  sessionCookies: string[];
  defaultTtl: number;
  maxTtl: number;
  keyPrefix: string;
  memcache: string[];
  storeTimeoutMs: number;
  /** Learns kept per thread while memcached cannot take them. */
  learnQueue: number;
  /** The process's memcached outage counters (store/outage.ts), which the main thread's store watch reports. */
  outageCounters: SharedArrayBuffer | null;
  /** The embedded store's shared memory, when memcached is not configured. */
  embedded: SharedArrayBuffer | null;
}
