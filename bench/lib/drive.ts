// Runs one measurement: forks the load generator (bench/loadgen.ts) with a Job,
// relays its progress, and samples the target's and origins' CPU time at the
// edges of the measured window.
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
}

export type ProgressSink = (m: Extract<Message, { type: 'progress' }>) => void;

export async function drive(job: Job, targetPids: () => number[], originPids: () => number[], onProgress: ProgressSink): Promise<Measured> {
  const child = fork(join(BENCH_DIR, 'loadgen.ts'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  track(child);
  // Connecting 5,000 idle sockets and the run itself, plus room for a slow stop.
  const limitMs = job.warmupMs + job.durationMs + (job.idleConnections > 0 ? 60_000 : 0) + 30_000;
  try {
    return await new Promise<Measured>((resolve, reject) => {
      let t0 = 0;
      let o0 = 0;
      let targetCpu = 0;
      let originCpu = 0;
      const timer = setTimeout(() => reject(new Error(`load generator did not finish within ${Math.round(limitMs / 1000)} s`)), limitMs);
      child.on('message', (m: Message) => {
        switch (m.type) {
          case 'progress': onProgress(m); break;
          case 'measure-start': t0 = cpuSeconds(targetPids()); o0 = cpuSeconds(originPids()); break;
          case 'measure-end': targetCpu = cpuSeconds(targetPids()) - t0; originCpu = cpuSeconds(originPids()) - o0; break;
          case 'result':
            clearTimeout(timer);
            resolve({ result: m.result, histogram: hdr.decodeFromCompressedBase64(m.result.histogram), targetCpu, originCpu });
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
