// A bounded load loop for fault tests: N concurrent clients sending requests
// until a deadline, recording every outcome. It stops by itself.
import { Pool } from 'undici';

export interface Shot {
  path?: string;
  headers?: Record<string, string>;
}

export interface LoadResult {
  ok: number;
  failed: number;
  /** Failure descriptions (status or error), the first few. */
  failures: string[];
  maxMs: number;
  /** Per request index: the x-backend that answered, for affinity checks. */
  backends: Map<number, string>;
  /** Per request index: when it was sent and when its answer was complete (Date.now()). */
  spans: Map<number, [number, number]>;
}

export async function load(url: string, opts: { concurrency: number; durationMs: number; shot: (i: number) => Shot }): Promise<LoadResult> {
  const pool = new Pool(url, { connections: opts.concurrency, pipelining: 1 });
  const result: LoadResult = { ok: 0, failed: 0, failures: [], maxMs: 0, backends: new Map(), spans: new Map() };
  const end = Date.now() + opts.durationMs;
  let next = 0;
  const fail = (why: string): void => {
    result.failed++;
    if (result.failures.length < 10) result.failures.push(why);
  };
  const client = async (): Promise<void> => {
    while (Date.now() < end) {
      const i = next++;
      const s = opts.shot(i);
      const t0 = performance.now();
      const sent = Date.now();
      try {
        const res = await pool.request({ path: s.path ?? '/', method: 'GET', headers: s.headers, headersTimeout: 10_000, bodyTimeout: 10_000 });
        await res.body.dump();
        const ms = performance.now() - t0;
        result.maxMs = Math.max(result.maxMs, ms);
        if (res.statusCode === 200) {
          result.ok++;
          result.backends.set(i, res.headers['x-backend'] as string);
          result.spans.set(i, [sent, Date.now()]);
        } else {
          fail(`status ${res.statusCode}`);
        }
      } catch (err) {
        fail((err as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, client));
  await pool.close();
  return result;
}

/**
 * The backends that answered each session's requests sent at or after `from`
 * and complete before `to`: `sessionOf` maps a request index to its session.
 */
export function backendsBySession(r: LoadResult, sessionOf: (i: number) => string | null, from: number, to: number): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const [i, backend] of r.backends) {
    const [sent, done] = r.spans.get(i)!;
    const session = sessionOf(i);
    if (session === null || sent < from || done >= to) continue;
    let seen = out.get(session);
    if (seen === undefined) out.set(session, seen = new Set());
    seen.add(backend);
  }
  return out;
}
