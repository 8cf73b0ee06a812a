// The client the proxy uses: maps keys (keys.ts), picks the server on the
// hash ring (ring.ts), and queues the operation on that server's open batch
// (server.ts). Every returned promise settles within its deadline.
import type { Hit } from './batch.ts';
import { Op, utf8Length } from './codec.ts';
import { MemcacheError } from './errors.ts';
import { isValidExptime } from './expiry.ts';
import { memcacheKey, validatePrefix } from './keys.ts';
import { HashRing } from './ring.ts';
import { Server, parseAddress, type ServerOptions, type ServerStateListener } from './server.ts';

export type { Hit } from './batch.ts';
export { MemcacheError, type MemcacheErrorCode } from './errors.ts';
export { memcacheKey } from './keys.ts';
export { exptimeForTtl, MAX_RELATIVE_EXPTIME } from './expiry.ts';
export type { ServerStateListener } from './server.ts';

export interface MemcacheClientOptions {
  /** "host:port" (IPv6 as "[::1]:11211"). Placement hashes these strings as given. */
  servers: string[];
  /** Namespace prepended to every key. */
  keyPrefix?: string;
  /** Deadline for get/gat, from the call. */
  timeoutMs?: number;
  /** Deadline for set/delete/touch, from the call. */
  writeTimeoutMs?: number;
  /** Deadline for TCP connect plus the first NOOP round trip. */
  connectTimeoutMs?: number;
  connectionsPerServer?: number;
  /** Most operations per batch (one write, one NOOP). */
  maxBatch?: number;
  /** Reconnect delay: min(backoffMaxMs, backoffBaseMs * 2^attempt), jittered to 50..100 %. */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Consecutive failures (closed or refused connections, silent deadlines) that mark a server down. */
  downAfterFailures?: number;
  /** How often a down server is probed. */
  probeIntervalMs?: number;
  /** First opaque value; only tests need it (to exercise 2^32 wrap-around). */
  opaqueStart?: number;
  /** Told of each server's state changes: first heard, unreachable from the start, marked down, back. */
  onServerState?: ServerStateListener;
}

export const MEMCACHE_DEFAULTS: Readonly<Omit<ServerOptions, 'opaqueStart' | 'onState'>> = Object.freeze({
  timeoutMs: 100,
  writeTimeoutMs: 500,
  connectTimeoutMs: 1000,
  connectionsPerServer: 1,
  maxBatch: 1024,
  backoffBaseMs: 50,
  backoffMaxMs: 2000,
  downAfterFailures: 3,
  probeIntervalMs: 1000,
});

function positiveInt(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer`);
  return v;
}

export class MemcacheClient {
  private readonly prefix: string;
  private readonly servers: Server[];
  private readonly ring: HashRing;
  private closeError: MemcacheError | null = null;
  private closing: Promise<void> | null = null;

  constructor(opts: MemcacheClientOptions) {
    const prefix = opts.keyPrefix ?? '';
    validatePrefix(prefix);
    if (opts.servers.length === 0) throw new RangeError('no servers');
    if (new Set(opts.servers).size !== opts.servers.length) throw new RangeError('duplicate server');
    const d = MEMCACHE_DEFAULTS;
    const so: ServerOptions = {
      timeoutMs: positiveInt('timeoutMs', opts.timeoutMs, d.timeoutMs),
      writeTimeoutMs: positiveInt('writeTimeoutMs', opts.writeTimeoutMs, d.writeTimeoutMs),
      connectTimeoutMs: positiveInt('connectTimeoutMs', opts.connectTimeoutMs, d.connectTimeoutMs),
      connectionsPerServer: positiveInt('connectionsPerServer', opts.connectionsPerServer, d.connectionsPerServer),
      maxBatch: positiveInt('maxBatch', opts.maxBatch, d.maxBatch),
      backoffBaseMs: positiveInt('backoffBaseMs', opts.backoffBaseMs, d.backoffBaseMs),
      backoffMaxMs: positiveInt('backoffMaxMs', opts.backoffMaxMs, d.backoffMaxMs),
      downAfterFailures: positiveInt('downAfterFailures', opts.downAfterFailures, d.downAfterFailures),
      probeIntervalMs: positiveInt('probeIntervalMs', opts.probeIntervalMs, d.probeIntervalMs),
      opaqueStart: opts.opaqueStart ?? 0,
      onState: opts.onServerState ?? null,
    };
    // Validate every address before opening any socket.
    for (const a of opts.servers) parseAddress(a);
    this.ring = new HashRing(opts.servers);
    this.prefix = prefix;
    this.servers = opts.servers.map((a) => new Server(a, so));
  }

  /** The server address that holds `key` (after prefixing/hashing). */
  serverFor(key: string): string {
    return this.servers[this.ring.lookup(memcacheKey(this.prefix, key))].address;
  }

  /** Whether the server holding `key` is currently marked down. */
  isDown(key: string): boolean {
    return this.isServerDown(this.serverIndex(key));
  }

  /** The index of the server that holds `key`, for isServerDown(): one hash, kept by a caller that asks again and again. */
  serverIndex(key: string): number {
    return this.ring.lookup(memcacheKey(this.prefix, key));
  }

  isServerDown(index: number): boolean {
    return this.servers[index].isDown;
  }

  /** Every server is down: no operation can succeed now. */
  get allDown(): boolean {
    for (const s of this.servers) if (!s.isDown) return false;
    return true;
  }

  /** Sends each server that is up a NOOP (see Server.ping): silence counts toward marking it down. */
  ping(): void {
    if (this.closeError === null) for (const s of this.servers) s.ping();
  }

  /** GETKQ. Resolves null on a miss. */
  get(key: string): Promise<Hit | null> {
    if (this.closeError !== null) return Promise.reject(this.closeError);
    const k = memcacheKey(this.prefix, key);
    return this.servers[this.ring.lookup(k)].get(Op.GETKQ, k, 0);
  }

  /** GATKQ: get and set a new expiration in one round trip (sliding TTL). */
  gat(key: string, exptime: number): Promise<Hit | null> {
    if (this.closeError !== null) return Promise.reject(this.closeError);
    if (!isValidExptime(exptime)) return Promise.reject(invalid('exptime', exptime));
    const k = memcacheKey(this.prefix, key);
    return this.servers[this.ring.lookup(k)].get(Op.GATKQ, k, exptime);
  }

  /** SETQ: resolves when the batch's NOOP answers with no error before it. */
  set(key: string, value: string | Buffer, exptime: number, flags: number = 0): Promise<void> {
    if (this.closeError !== null) return Promise.reject(this.closeError);
    if (!isValidExptime(exptime)) return Promise.reject(invalid('exptime', exptime));
    if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) return Promise.reject(invalid('flags', flags));
    const len = typeof value === 'string' ? utf8Length(value) : value.length;
    const k = memcacheKey(this.prefix, key);
    return this.servers[this.ring.lookup(k)].set(k, value, len, exptime, flags);
  }

  /** DELETEQ: a key that was not there counts as deleted. */
  delete(key: string): Promise<void> {
    if (this.closeError !== null) return Promise.reject(this.closeError);
    const k = memcacheKey(this.prefix, key);
    return this.servers[this.ring.lookup(k)].delete(k);
  }

  /** TOUCH: false if the key was not found. */
  touch(key: string, exptime: number): Promise<boolean> {
    if (this.closeError !== null) return Promise.reject(this.closeError);
    if (!isValidExptime(exptime)) return Promise.reject(invalid('exptime', exptime));
    const k = memcacheKey(this.prefix, key);
    return this.servers[this.ring.lookup(k)].touch(k, exptime);
  }

  /**
   * Rejects new operations, sends what was already issued and waits for it
   * (at most its deadline), then closes every socket and timer. Idempotent.
   */
  close(): Promise<void> {
    if (this.closing === null) {
      const err = (this.closeError = new MemcacheError('closed', 'client closed'));
      this.closing = Promise.all(this.servers.map((s) => s.close(err))).then(() => undefined);
    }
    return this.closing;
  }
}

function invalid(name: string, v: number): MemcacheError {
  return new MemcacheError('invalid', `${name} must be an integer in 0..2^32-1, got ${v}`);
}
