// Picks a backend for a request that has no usable binding. Every balancer
// honours weights and picks only backends that take new sessions: not down,
// not draining or disabled, and not of weight 0 (such a backend only serves
// the sessions already bound to it).
import type { Backend } from './backends.ts';
import type { BalanceAlgorithm } from './config.ts';
import { fmix32, fnv1a } from './hash.ts';

export interface Balancer {
  pick(): Backend | null;
}

/**
 * nginx's smooth weighted round robin: weights honoured with picks
 * interleaved. Its running weight lives on each Backend, so a reload that
 * adds or removes backends (the list is shared and changed in place) needs no reset.
 */
export class RoundRobin implements Balancer {
  readonly #backends: Backend[];

  constructor(backends: Backend[]) {
    this.#backends = backends;
  }

  pick(): Backend | null {
    let best: Backend | null = null;
    let total = 0;
    for (const b of this.#backends) {
      if (!b.takesNew) continue;
      b.rrCurrent += b.weight;
      total += b.weight;
      if (best === null || b.rrCurrent > best.rrCurrent) best = b;
    }
    if (best !== null) best.rrCurrent -= total;
    return best;
  }
}

/** Fewest requests in flight relative to weight; ties go round the list. */
export class LeastConn implements Balancer {
  readonly #backends: Backend[];
  #start = 0;

  constructor(backends: Backend[]) {
    this.#backends = backends;
  }

  pick(): Backend | null {
    const n = this.#backends.length;
    let best: Backend | null = null;
    for (let k = 0; k < n; k++) {
      const b = this.#backends[(this.#start + k) % n];
      if (!b.takesNew) continue;
      if (best === null || b.active * best.weight < best.active * b.weight) best = b;
    }
    this.#start = (this.#start + 1) % n;
    return best;
  }
}

/** Two weighted random choices, the less loaded wins: near least-conn without herding. */
export class RandomTwo implements Balancer {
  readonly #backends: Backend[];

  constructor(backends: Backend[]) {
    this.#backends = backends;
  }

  pick(): Backend | null {
    const a = this.#draw(null);
    if (a === null) return null;
    const b = this.#draw(a);
    if (b === null) return a;
    return b.active * a.weight < a.active * b.weight ? b : a;
  }

  /** A weighted random usable backend other than `not`. */
  #draw(not: Backend | null): Backend | null {
    let total = 0;
    for (const b of this.#backends) if (b.takesNew && b !== not) total += b.weight;
    if (total === 0) return null;
    let r = Math.random() * total;
    for (const b of this.#backends) {
      if (!b.takesNew || b === not) continue;
      r -= b.weight;
      if (r < 0) return b;
    }
    return null;
  }
}

export function createBalancer(algorithm: BalanceAlgorithm, backends: Backend[]): Balancer {
  switch (algorithm) {
    case 'round-robin': return new RoundRobin(backends);
    case 'least-conn': return new LeastConn(backends);
    case 'random-two': return new RandomTwo(backends);
  }
}

/**
 * Weighted rendezvous hashing of a session key over the backends that take new
 * sessions (but `except`): the route used while the store cannot answer, and
 * where a session moves when its backend fails. Every instance
 * computes the same answer from the same pool, and a session keeps its backend
 * as long as the pool is stable.
 */
export function rendezvous(key: string, backends: readonly Backend[], except: Backend | null = null): Backend | null {
  const k = fnv1a(key);
  let best: Backend | null = null;
  let bestScore = -Infinity;
  for (const b of backends) {
    if (!b.takesNew || b === except) continue;
    // A uniform draw in (0,1) per (key, backend); -weight/ln(u) weights it.
    const u = (fmix32(fnv1a(b.name, k)) + 0.5) / 4294967296;
    const score = -b.weight / Math.log(u);
    if (score > bestScore) { bestScore = score; best = b; }
  }
  return best;
}
