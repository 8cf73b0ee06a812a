// What the nanosecond benchmarks (bench/affinity.ts, bench/heads.ts) share:
// the trees they measure (this checkout, and another with --against DIR),
// the time of one call over a set of inputs, and the median of rounds.
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

export interface MicroRun {
  /** This checkout's root first, then --against's. */
  trees: string[];
  rounds: number;
}

export function microRun(): MicroRun {
  const { values: args } = parseArgs({ options: { against: { type: 'string' }, rounds: { type: 'string', default: '7' } } });
  const here = fileURLToPath(new URL('../..', import.meta.url));
  return { trees: [here, ...(args.against === undefined ? [] : [args.against])], rounds: Number(args.rounds) };
}

/** Nanoseconds a call of f over `ops` calls, its argument cycling through 0 … inputs-1; f's results are summed so no call is dropped. */
export function nsPerCall(f: (i: number) => number, ops: number, inputs: number): number {
  let sink = 0;
  const t = process.hrtime.bigint();
  for (let k = 0; k < ops; k++) sink += f(k % inputs);
  const ns = Number(process.hrtime.bigint() - t) / ops;
  if (sink < 0) throw new Error('unreachable');
  return ns;
}

export function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[xs.length >> 1];
}
