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
 * Weighted round robin with one rotation per process: every loop draws its
 * turn from a shared ticket, and the turn indexes nginx's smooth weighted
 * sequence (weights honoured with picks interleaved) over the backends that
 * take new sessions. Each loop rebuilds its copy of the sequence when that
 * set or a weight changes, which is rare, so a pick reads the list once and
 * allocates nothing.
 */
export class RoundRobin implements Balancer {
  readonly #backends: Backend[];
  readonly #ticket: () => number;
  /** The usable backends and weights the sequence was built from. */
  #usable: Backend[] = [];
  #weights: number[] = [];
  #sequence = new Uint8Array(0);

  constructor(backends: Backend[], ticket: () => number) {
    this.#backends = backends;
    this.#ticket = ticket;
  }

  pick(): Backend | null {
    let n = 0;
    let same = true;
    for (const b of this.#backends) {
      if (!b.takesNew) continue;
      if (same && (this.#usable[n] !== b || this.#weights[n] !== b.weight)) same = false;
      n++;
    }
    if (!same || n !== this.#usable.length) this.#rebuild();
    if (this.#usable.length === 0) return null;
    return this.#usable[this.#sequence[this.#ticket() % this.#sequence.length]];
  }

  #rebuild(): void {
    const usable: Backend[] = [];
    const weights: number[] = [];
    for (const b of this.#backends) {
      if (!b.takesNew) continue;
      usable.push(b);
      weights.push(b.weight);
    }
    let g = 0;
    for (const w of weights) g = gcd(g, w);
    this.#usable = usable;
    this.#weights = weights;
    this.#sequence = smoothSequence(weights.map((w) => w / g));
  }
}

/**
 * One cycle of picks over backends of (reduced) `weights`, as many as their
 * sum: backend i's k-th pick is due at (2k + 1) / (2·w_i) of the cycle, and
 * the pick due earliest goes next (ties to the backend listed first). Each
 * backend's picks are spread evenly over the cycle, as nginx's smooth
 * weighted round robin spreads them, in O(total · log n) where running
 * nginx's O(n) step for every pick took O(total · n): for 256 backends of
 * weights near 1000, 22 ms a rebuild against 132, in every loop on every
 * health change. Every loop computes the same sequence (the same doubles,
 * correctly rounded).
 */
function smoothSequence(weights: number[]): Uint8Array<ArrayBuffer> {
  const n = weights.length;
  let total = 0;
  for (const w of weights) total += w;
  const sequence = new Uint8Array(total);
  const picks = new Uint32Array(n);
  // When each backend's next pick is due, and a min-heap of backends by it.
  const due = new Float64Array(n);
  const heap = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    due[i] = 1 / (2 * weights[i]);
    heap[i] = i;
  }
  for (let i = (n >> 1) - 1; i >= 0; i--) siftDown(heap, due, n, i);
  for (let t = 0; t < total; t++) {
    const i = heap[0];
    sequence[t] = i;
    const k = ++picks[i];
    due[i] = (2 * k + 1) / (2 * weights[i]);
    siftDown(heap, due, n, 0);
  }
  return sequence;
}

/** Moves heap[at] down to its place: earlier due first, then the lower index. */
function siftDown(heap: Uint16Array, due: Float64Array, n: number, at: number): void {
  const x = heap[at];
  const dx = due[x];
  for (;;) {
    let c = 2 * at + 1;
    if (c >= n) break;
    let y = heap[c];
    let dy = due[y];
    if (c + 1 < n) {
      const z = heap[c + 1];
      const dz = due[z];
      if (dz < dy || (dz === dy && z < y)) {
        c++;
        y = z;
        dy = dz;
      }
    }
    if (dx < dy || (dx === dy && x < y)) break;
    heap[at] = y;
    at = c;
  }
  heap[at] = x;
}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
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

/** `ticket` is the process's shared round robin turn (SharedState.ticket). */
export function createBalancer(algorithm: BalanceAlgorithm, backends: Backend[], ticket: () => number): Balancer {
  switch (algorithm) {
    case 'round-robin': return new RoundRobin(backends, ticket);
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
