// What bench:paired and bench:profile share: sticky-proxy configurations given
// as `--config LABEL=FLAGS` (optionally also from another checkout), the
// small-request scenarios they load, the load generator's job, and medians.
import { resolve } from 'node:path';
import type { Job } from '../loadgen.ts';
import type { Origins } from './servers.ts';
import { SCENARIOS, type ScenarioDef } from './suite.ts';
import { ROOT } from '../../test/helpers/proxy.ts';

export const DEFAULT_CONFIGS = ['noaff=--no-affinity', 'memcached=--memcache MEMCACHED'];

export interface Config {
  label: string;
  /** sticky-proxy's flags; MEMCACHED stands for the address of the run's memcached. */
  flags: string[];
}

/** `--config LABEL=FLAGS` values. */
export function parseConfigs(values: string[]): Config[] {
  return values.map((c) => {
    const eq = c.indexOf('=');
    if (eq <= 0) throw new Error(`--config ${c}: expected LABEL=FLAGS`);
    return { label: c.slice(0, eq), flags: c.slice(eq + 1).split(/\s+/).filter((f) => f !== '') };
  });
}

/** This checkout, and with `--against DIR` that one too, its labels suffixed `@base`. */
export function checkouts(against: string | undefined): { root: string; suffix: string }[] {
  return [{ root: ROOT, suffix: '' }, ...(against === undefined ? [] : [{ root: resolve(against), suffix: '@base' }])];
}

/** A scenario of small requests and no idle connections (seed, storm), by id. */
export function plainScenario(id: string): ScenarioDef {
  const plain = SCENARIOS.filter((s) => s.bodyBytes === 0 && s.idleConnections === 0);
  const s = plain.find((p) => p.id === id);
  if (s === undefined) throw new Error(`--scenario: one of ${plain.map((p) => p.id).join(', ')}`);
  return s;
}

/**
 * sticky-proxy's arguments for `config` in front of `origins`: its own key
 * prefix (targets may share one memcached), the run's memcached for
 * MEMCACHED, and --threads 1 unless the config sets it.
 */
export function proxyArgs(config: Config, origins: Origins, memcached: string | null, keyPrefix: string): string[] {
  const backends = origins.servers.flatMap((s) => ['--backend', `${s.name}=http://127.0.0.1:${s.port}`]);
  const flags = config.flags.map((f) => (f === 'MEMCACHED' ? memcached ?? f : f));
  const threads = flags.includes('--threads') ? [] : ['--threads', '1'];
  return [...backends, '--log-level', 'warn', '--key-prefix', keyPrefix, ...threads, ...flags];
}

export function needsMemcached(configs: Config[]): boolean {
  return configs.some((c) => c.flags.includes('MEMCACHED'));
}

/** The load generator's job for `scenario` against `port`; `rate` 0: closed loop. */
export function plainJob(port: number, scenario: ScenarioDef, o: { connections: number; warmupMs: number; durationMs: number; rate: number; startAt?: number }): Job {
  return {
    port, connections: o.connections, idleConnections: 0, idlePingMs: 0,
    warmupMs: o.warmupMs, durationMs: o.durationMs, rate: o.rate, startAt: o.startAt,
    newShare: scenario.newShare, method: scenario.method, paths: scenario.paths, bodyBytes: 0,
    cookieName: 'PHPSESSID', maxSessions: 20_000, requestTimeoutMs: 10_000, progressMs: 1000,
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
