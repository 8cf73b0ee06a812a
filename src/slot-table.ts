// Which slot of the process's shared state (shared.ts) each backend has,
// kept by the main thread. A backend keeps its slot while its name and URL
// stay; a new one, or one moved to another URL, gets a free slot. A slot that
// a reload frees is given again, but only once nothing can still use it for
// the backend that left: every loop has applied that reload (none routes to
// it any more), no request is in flight to it in any loop (none will count,
// fail or eject it), and the near cache has forgotten the bindings that name
// it (the caller's `forget`), so a remembered session cannot land on the
// slot's next backend. Without reuse, a process whose list keeps changing
// (service discovery through SIGHUP) ran out of slots after MAX_BACKENDS
// changes and stopped applying reloads.
import type { BackendConfig } from './config.ts';
import { MAX_BACKENDS, type SharedState } from './shared.ts';

/** A backend as every loop is given it: URLs as text, since they cross threads. */
export interface SlottedConfig {
  name: string;
  url: string;
  weight: number;
  slot: number;
}

export interface SlotChanges {
  list: SlottedConfig[];
  added: string[];
  removed: string[];
  reweighted: string[];
}

export class SlotTable {
  readonly #state: SharedState;
  readonly #held = new Map<string, { slot: number; url: string }>();
  /** Slots let go of, each with the generation whose list no longer has their backend. */
  readonly #released: { slot: number; generation: number }[] = [];
  readonly #free: number[] = [];
  #next = 0;
  /** How many lists have been applied: a loop that has applied generation g routes to none of the backends g removed. */
  generation = 0;

  constructor(state: SharedState) {
    this.#state = state;
  }

  /** The first list, at start (the caller has checked it is within MAX_BACKENDS). */
  initial(configs: BackendConfig[]): SlottedConfig[] {
    return this.apply(configs, 0, noForget)!.list;
  }

  /**
   * Slots for a new list, and what it changes; null, with nothing changed,
   * when there are too few free slots for it (removed backends still in
   * flight hold theirs). `applied` is the oldest generation that every loop
   * has applied; `forget` clears the near cache's bindings to a slot about to
   * be freed.
   */
  apply(configs: BackendConfig[], applied: number, forget: (slot: number) => void): SlotChanges | null {
    this.#reclaim(applied, forget);
    let needed = 0;
    for (const c of configs) if (!this.#keeps(c)) needed++;
    if (needed > this.#free.length + MAX_BACKENDS - this.#next) return null;
    this.generation++;
    const changes: SlotChanges = { list: [], added: [], removed: [], reweighted: [] };
    const wanted = new Map(configs.map((c) => [c.name, c]));
    for (const [name, s] of this.#held) {
      const c = wanted.get(name);
      if (c !== undefined && c.url.href === s.url) continue;
      this.#held.delete(name);
      this.#state.release(s.slot);
      this.#released.push({ slot: s.slot, generation: this.generation });
      if (c === undefined) changes.removed.push(name);
    }
    for (const c of configs) {
      let s = this.#held.get(c.name);
      if (s === undefined) {
        s = { slot: this.#free.pop() ?? this.#next++, url: c.url.href };
        this.#held.set(c.name, s);
        this.#state.claim(s.slot, c.weight);
        changes.added.push(c.name);
      } else if (this.#state.weight(s.slot) !== c.weight) {
        this.#state.setWeight(s.slot, c.weight);
        changes.reweighted.push(c.name);
      }
      changes.list.push({ name: c.name, url: c.url.href, weight: c.weight, slot: s.slot });
    }
    return changes;
  }

  #keeps(c: BackendConfig): boolean {
    return this.#held.get(c.name)?.url === c.url.href;
  }

  /** Frees the released slots that nothing can use any more. */
  #reclaim(applied: number, forget: (slot: number) => void): void {
    let kept = 0;
    for (const r of this.#released) {
      if (r.generation <= applied && this.#state.active(r.slot) === 0) {
        forget(r.slot);
        this.#free.push(r.slot);
      } else {
        this.#released[kept++] = r;
      }
    }
    this.#released.length = kept;
  }
}

function noForget(): void {}
