// Waiting on a condition with a deadline, instead of sleeping for a guessed
// time: a test goes on as soon as what it waits for holds, and fails with a
// message naming it when it never does.
import { setTimeout as sleep } from 'node:timers/promises';

export interface WaitOptions {
  /** What is awaited, for the failure message. */
  what: string;
  timeoutMs?: number;
  intervalMs?: number;
}

/** Polls `condition` until it returns a truthy value (returned) or the deadline passes (throws). */
export async function waitFor<T>(condition: () => T | Promise<T>, opts: WaitOptions): Promise<NonNullable<T>> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await condition();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (err) {
      last = err; // a condition may throw until it holds (a connection refused, say)
    }
    if (Date.now() > end) {
      const why = last instanceof Error ? `: last error ${last.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${opts.what}${why}`);
    }
    await sleep(opts.intervalMs ?? 20);
  }
}

/** Waits until one of the proxy's output lines satisfies `match`; returns it. */
export function waitForLine(output: readonly string[], match: (line: string) => boolean, opts: WaitOptions): Promise<string> {
  return waitFor(() => output.find(match), opts);
}
