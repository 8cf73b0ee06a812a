// Where a request goes, from its affinity answer: bound → moved → remembered →
// fallback → balanced. A binding to a backend that is up wins. One whose
// backend is down or disabled moves, to the backend rendezvous hashing picks
// for the session, so every instance moves it to the same place without
// talking. When the store lost the binding, names no backend of ours, or
// cannot answer, the near cache's memory of where the session was routes it;
// a session this instance never saw goes by rendezvous hashing while the
// store is failing, and to the balancer when the store says it is unbound.
import type { Affinity } from './affinity.ts';
import type { Backend, BackendSet } from './backends.ts';
import { rendezvous, type Balancer } from './balance.ts';
import type { LookupOutcome } from './batch.ts';
import type { LoopStats } from './stats.ts';

/** How a request was routed, for the access log. */
export type Route = 'none' | 'hit' | 'miss' | 'moved' | 'stale' | 'fallback';

export interface Router {
  affinity: Affinity;
  backends: BackendSet;
  balancer: Balancer;
  stats: LoopStats;
}

/** What routing decided besides the backend. */
export interface Routed {
  /** The key the request's session is bound by, '' when it is not bound. */
  boundKey: string;
  route: Route;
}

/** `key` is the key that hit, or the request's first session key. */
export function route(x: Router, outcome: LookupOutcome, name: string, key: string, r: Routed): Backend | null {
  if (outcome === 'hit') {
    const b = x.backends.get(name);
    if (b !== undefined) {
      r.boundKey = key;
      if (b.up) {
        r.route = 'hit';
        return b;
      }
      const moved = rendezvous(key, x.backends.list);
      if (moved !== null) {
        r.route = 'moved';
        x.stats.moves++;
        x.affinity.bind(key, moved.name, 'bind');
      }
      return moved;
    }
    // A binding naming no configured backend (one removed, another fleet's
    // name, or a reply garbled on its way) is none: it never routes outside
    // the pool, and the session goes on as an unbound one, where this
    // instance remembers it first.
  }
  const known = x.affinity.remembered(key);
  if (known !== '') {
    const b = x.backends.get(known);
    if (b !== undefined && b.up) {
      r.route = 'stale';
      x.stats.stale++;
      return b;
    }
  }
  if (outcome === 'failed') {
    r.route = 'fallback';
    x.stats.fallbacks++;
    return rendezvous(key, x.backends.list);
  }
  r.route = 'miss';
  return x.balancer.pick();
}
