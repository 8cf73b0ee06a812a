// The memcached servers as the operator sees them: one watch per process, on
// the main thread, with a connection of its own to each server and a NOOP
// every second on it (so a frozen server is noticed without traffic). It is
// the one place that logs a server going down and coming back, warns at
// start-up about a server unreachable or whose name does not resolve, logs
// the store's own state changes with the learns an outage queued and wrote,
// and answers sticky_store_server_up and /readyz. The request path's clients
// (one per event loop, or per affinity worker) keep their own health and log
// nothing: they would log each change once per loop × worker.
import type { Logger } from '../log.ts';
import { MemcacheClient, type MemcacheError } from '../memcache/client.ts';
import { OutageCounters, type OutageCounts } from './outage.ts';
import { monotonicMs } from '../clock.ts';

// A server silent this long, three NOOPs in a row, is marked down: generous
// beside --store-timeout, so a busy machine does not make the watch cry wolf.
const PING_TIMEOUT_MS = 500;
const PING_EVERY_MS = 1000;
// After the store is back, how often the stores' queues are checked for empty,
// and how long to wait for them before reporting what was written so far.
const DRAIN_CHECK_MS = 100;
const DRAIN_WAIT_MS = 30_000;

export type StoreState = 'up' | 'degraded' | 'down';
const RANK: Record<StoreState, number> = { up: 0, degraded: 1, down: 2 };

/** Resolver errors that mean the name does not resolve, not that the server refused. */
const NAME_ERRORS = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_NONAME', 'EAI_FAIL', 'EAI_NODATA']);

export class StoreWatch {
  readonly servers: readonly string[];
  readonly #log: Logger;
  readonly #client: MemcacheClient;
  readonly #counters: OutageCounters;
  /** Answered its last NOOP and not marked down since. */
  readonly #up = new Map<string, boolean>();
  /** Answered at least once. */
  readonly #heard = new Set<string>();
  /** Reported down (marked down, or unreachable from the start), with since when. */
  readonly #downSince = new Map<string, number>();
  #state: StoreState = 'up';
  /** Counts when the store last looked quiet (up, queues empty): an outage's learns are counted from it. */
  #base: OutageCounts;
  /** Set from the store going down until its queued learns are reported. */
  #outage: { since: number; base: OutageCounts; backAt: number } | null = null;
  readonly #ping: NodeJS.Timeout;
  #drainTimer: NodeJS.Timeout | undefined;

  constructor(servers: string[], log: Logger, outageCounters: SharedArrayBuffer) {
    this.servers = servers;
    this.#log = log;
    this.#counters = new OutageCounters(outageCounters);
    this.#base = this.#counters.snapshot();
    for (const s of servers) this.#up.set(s, false);
    this.#client = new MemcacheClient({
      servers,
      timeoutMs: PING_TIMEOUT_MS,
      writeTimeoutMs: PING_TIMEOUT_MS,
      onServerState: (server, up, cause) => this.#changed(server, up, cause),
    });
    this.#ping = setInterval(() => this.#tick(), PING_EVERY_MS);
    this.#ping.unref();
  }

  /** Each configured server, true while it answers. */
  get up(): ReadonlyMap<string, boolean> {
    return this.#up;
  }

  /** Every server answers: affinity is whole. */
  get healthy(): boolean {
    for (const up of this.#up.values()) if (!up) return false;
    return true;
  }

  #tick(): void {
    this.#client.ping();
    if (this.#outage === null && this.#state === 'up' && this.#counters.pending === 0) this.#base = this.#counters.snapshot();
  }

  #changed(server: string, up: boolean, cause: MemcacheError | null): void {
    this.#up.set(server, up);
    const since = this.#downSince.get(server);
    if (up) {
      this.#heard.add(server);
      // First heard at start-up: nothing to say.
      if (since === undefined) return;
      this.#downSince.delete(server);
      this.#log.warn({ server, downMs: monotonicMs() - since }, 'memcached server back');
    } else {
      if (since !== undefined) return;
      const now = monotonicMs();
      this.#downSince.set(server, now);
      // The message without the address it starts with: the line has it.
      const err = cause === null ? 'unknown' : cause.message.startsWith(`${server}: `) ? cause.message.slice(server.length + 2) : cause.message;
      const code = cause?.errno;
      if (!this.#heard.has(server)) {
        const msg = code !== undefined && NAME_ERRORS.has(code) ? 'memcached server name does not resolve' : 'memcached server unreachable at start-up';
        this.#log.warn({ server, err, code }, msg);
      } else {
        this.#log.warn({ server, err }, 'memcached server down');
      }
    }
    this.#store();
  }

  /** The store's state follows its servers': some down, degraded; all down, down. */
  #store(): void {
    const down = this.#downSince.size;
    const next: StoreState = down === 0 ? 'up' : down === this.servers.length ? 'down' : 'degraded';
    const prev = this.#state;
    if (next === prev) return;
    this.#state = next;
    const now = monotonicMs();
    if (RANK[next] > RANK[prev]) {
      this.#outage ??= { since: now, base: this.#base, backAt: 0 };
      // Worse again before the queues drained: the same outage goes on, reported once it ends.
      clearTimeout(this.#drainTimer);
    }
    const outage = this.#outage!;
    if (next === 'up') {
      this.#log.warn({ store: 'up', outageMs: now - outage.since, learnsQueued: this.#counters.since(outage.base).queued }, 'affinity store back');
    } else {
      // Meanwhile the sessions on the servers down are routed by the near cache's memory and rendezvous hashing, and their learns queued.
      this.#log.warn({ store: next, serversDown: [...this.#downSince.keys()] }, next === 'down' ? 'affinity store down' : 'affinity store degraded');
    }
    if (RANK[next] < RANK[prev]) {
      outage.backAt = now;
      clearTimeout(this.#drainTimer);
      this.#awaitDrain();
    }
  }

  /**
   * Once every store's queue is empty (or after DRAIN_WAIT_MS: learns for a
   * server still down stay queued), says what the outage queued and wrote.
   */
  #awaitDrain(): void {
    this.#drainTimer = setTimeout(() => {
      this.#drainTimer = undefined;
      const outage = this.#outage!;
      const pending = this.#counters.pending;
      if (pending > 0 && monotonicMs() - outage.backAt < DRAIN_WAIT_MS) {
        this.#awaitDrain();
        return;
      }
      const c = this.#counters.since(outage.base);
      this.#base = this.#counters.snapshot();
      // Still degraded: what comes next is counted from here.
      this.#outage = this.#state === 'up' ? null : { since: outage.since, base: this.#base, backAt: 0 };
      this.#log.warn({ learnsQueued: c.queued, learnsWritten: c.written, learnsRetried: c.retried, dropped: c.dropped, stillQueued: pending }, 'affinity store: learns queued during the outage written');
    }, DRAIN_CHECK_MS);
    this.#drainTimer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.#ping);
    clearTimeout(this.#drainTimer);
    await this.#client.close();
  }
}
