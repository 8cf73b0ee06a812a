// The shapes that cross between the main thread and the affinity workers: one
// batch per event-loop turn each way. Both sides import this module so the
// shapes are defined once. Parallel arrays keep structured clone cheap (no
// object per request) and let the answer be matched back by index.

/** Lookup outcome for one request. */
export const HIT = 1;
export const MISS = 0;
/** The store failed or timed out: route without affinity, and count it. */
export const STORE_FAILED = 2;

export interface AffinityBatch {
  /** The Cookie header of each request that may carry a session. */
  cookies: string[];
  /** Per learn: the backend that answered. */
  learnBackends: string[];
  /** Per learn: the response's Set-Cookie values that name a session cookie. */
  learnSetCookies: string[][];
  /** Per learn: the request's Cookie header ('' if none), to unbind a cleared id. */
  learnCookies: string[];
  /** Per learn: the key the request was bound by ('' if none), to notice a session replaced. */
  learnBound: string[];
  /**
   * Bindings to set with the sliding default TTL: a session whose backend could
   * not serve it moves to where it was served; an open WebSocket keeps its own fresh.
   */
  bindKeys: string[];
  bindBackends: string[];
}

export interface AffinityAnswer {
  /** Per lookup: HIT, MISS or STORE_FAILED. */
  outcomes: Uint8Array;
  /** Per lookup: the bound backend's name, '' unless HIT. */
  backends: string[];
  /** Per lookup: the session's store key, '' when the Cookie header held no session. */
  keys: string[];
  /** Per learn: 1 when a bound session's response set a new id for its cookie (session lost or rotated). */
  replaced: Uint8Array;
}

export function emptyBatch(): AffinityBatch {
  return { cookies: [], learnBackends: [], learnSetCookies: [], learnCookies: [], learnBound: [], bindKeys: [], bindBackends: [] };
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
  /** The embedded store's shared memory, when memcached is not configured. */
  embedded: SharedArrayBuffer | null;
}
