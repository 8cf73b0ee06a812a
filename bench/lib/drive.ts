// Runs one measurement: forks the load generator (bench/loadgen.ts) with a Job,
// relays its progress, and samples the CPU time of the target, the origins and
// memcached at the edges of the measured window.
import { fork } from 'node:child_process';
import { join } from 'node:path';
import * as hdr from 'hdr-histogram-js';
import type { Job, Message, Result } from '../loadgen.ts';
import { BENCH_DIR } from './servers.ts';
import { cpuSeconds, stopProcess, track } from './procs.ts';

export interface Measured {
  result: Result;
  histogram: hdr.Histogram;
  /** CPU seconds used in the measured window. */
  targetCpu: number;
  originCpu: number;
  storeCpu: number;
}

export type ProgressSink = (m: Extract<Message, { type: 'progress' }>) => void;

/** CPU time of each group of processes, sampled at the window's edges. */
export interface Samplers {
  target(): number[];
  origins(): number[];
  /** memcached, when the target uses it; else none. */
  store(): number[];
}

/** Told when the measured window opens and closes (bench/profile.ts records a profile over it). */
export interface WindowHooks {
  start(): void;
  end(): void;
}

export async function drive(job: Job, pids: Samplers, onProgress: ProgressSink, edges?: WindowHooks): Promise<Measured> {
  const child = fork(join(BENCH_DIR, 'loadgen.ts'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  track(child);
  // Connecting 5,000 idle sockets and the run itself, plus room for a slow stop.
  const limitMs = job.warmupMs + job.durationMs + (job.idleConnections > 0 ? 60_000 : 0) + 30_000;
  try {
    return await new Promise<Measured>((resolve, reject) => {
      let t0 = 0;
      let o0 = 0;
      let s0 = 0;
      let targetCpu = 0;
      let originCpu = 0;
      let storeCpu = 0;
      const timer = setTimeout(() => reject(new Error(`load generator did not finish within ${Math.round(limitMs / 1000)} s`)), limitMs);
      child.on('message', (m: Message) => {
        switch (m.type) {
          case 'progress': onProgress(m); break;
          case 'measure-start':
            edges?.start();
            t0 = cpuSeconds(pids.target()); o0 = cpuSeconds(pids.origins()); s0 = cpuSeconds(pids.store());
            break;
          case 'measure-end':
            targetCpu = cpuSeconds(pids.target()) - t0;
            originCpu = cpuSeconds(pids.origins()) - o0;
            storeCpu = cpuSeconds(pids.store()) - s0;
            edges?.end();
            break;
          case 'result':
            clearTimeout(timer);
            resolve({ result: m.result, histogram: hdr.decodeFromCompressedBase64(m.result.histogram), targetCpu, originCpu, storeCpu });
            break;
          case 'fatal': clearTimeout(timer); reject(new Error(`load generator: ${m.message}`)); break;
        }
      });
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`load generator exited (${code})`)); });
      child.send(job);
    });
  } finally {
    await stopProcess(child, 2000);
  }
}
