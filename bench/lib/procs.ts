// Child processes of a benchmark run: every one is registered here, stopped by
// its pid, and killed on any way out (normal end, error, Ctrl-C, time limit).
// Also what /proc says about a process tree: CPU time and peak resident memory.
import { spawn, execFileSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { accessSync, constants, readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

const live = new Set<ChildProcess>();

/** Spawns a child and registers it, so that `killAll` can reach it. */
export function spawnTracked(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], ...opts });
  track(proc);
  return proc;
}

/** Registers a child started elsewhere (the test helpers' memcached and proxy). */
export function track(proc: ChildProcess): void {
  live.add(proc);
  proc.once('exit', () => live.delete(proc));
}

function alive(proc: ChildProcess): boolean {
  return proc.exitCode === null && proc.signalCode === null;
}

/** SIGTERM (or `signal`), then SIGKILL after `graceMs`; resolves when it has exited. */
export async function stopProcess(proc: ChildProcess, graceMs = 3000, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!alive(proc) || proc.pid === undefined) return;
  const exited = once(proc, 'exit');
  try { process.kill(proc.pid, signal); } catch { /* already gone */ }
  const timer = setTimeout(() => { if (alive(proc) && proc.pid !== undefined) try { process.kill(proc.pid, 'SIGKILL'); } catch { /* gone */ } }, graceMs);
  await exited;
  clearTimeout(timer);
}

/** Last resort, synchronous: SIGKILL every registered child still running. */
export function killAll(): void {
  for (const proc of live) {
    if (alive(proc) && proc.pid !== undefined) {
      try { process.kill(proc.pid, 'SIGCONT'); process.kill(proc.pid, 'SIGKILL'); } catch { /* gone */ }
    }
  }
}

/** Resolves once 127.0.0.1:port accepts a connection; rejects after `ms` or if `proc` exits. */
export async function waitForPort(port: number, ms: number, proc?: ChildProcess, stderr?: () => string): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (proc && !alive(proc)) throw new Error(`exited (${proc.exitCode ?? proc.signalCode}) before listening on ${port}${stderr ? `: ${stderr().trim()}` : ''}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => { s.destroy(); resolve(false); });
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`nothing listening on 127.0.0.1:${port} after ${ms} ms`);
    await sleep(25);
  }
}

/** Keeps the last few KiB a child wrote to stderr, for error messages. */
export function stderrTail(proc: ChildProcess): () => string {
  let tail = '';
  proc.stderr?.on('data', (d: Buffer) => { tail = (tail + d.toString()).slice(-4096); });
  return () => tail;
}

/** Whether an executable is on PATH (or /usr/sbin, where Debian puts nginx and haproxy). */
export function which(cmd: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const d of dirs) {
    if (!d) continue;
    try {
      accessSync(`${d}/${cmd}`, constants.X_OK);
      return `${d}/${cmd}`;
    } catch { /* not here */ }
  }
  return null;
}

let clockTicks = 0;
function ticksPerSecond(): number {
  if (clockTicks === 0) {
    try { clockTicks = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100; } catch { clockTicks = 100; }
  }
  return clockTicks;
}

/** The pid and its descendants (nginx's workers), from /proc. */
export function processTree(pid: number): number[] {
  const parents = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'latin1');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = parents.get(ppid) ?? [];
      list.push(Number(name));
      parents.set(ppid, list);
    } catch { /* exited meanwhile */ }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(parents.get(out[i]) ?? []));
  return out;
}

/** utime+stime of all threads of these processes, in seconds. */
export function cpuSeconds(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // fields 14 and 15: utime, stime
    } catch { /* exited */ }
  }
  return ticks / ticksPerSecond();
}

/** Sum of the processes' peak resident set sizes (VmHWM), in MiB. */
/** Pins every thread of each process to `cpus` (taskset's list syntax); threads made later inherit it. */
export function pin(pids: number[], cpus: string): void {
  for (const pid of pids) execFileSync(which('taskset') ?? 'taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
}

/** A /proc/PID/status memory field (kB), summed over `pids`, in MiB. */
function statusMiB(pids: number[], field: 'VmRSS' | 'VmHWM'): number {
  let kb = 0;
  for (const pid of pids) {
    try {
      const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
      if (m) kb += Number(m[1]);
    } catch { /* exited */ }
  }
  return kb / 1024;
}

/** Resident memory now, summed over `pids`, in MiB. */
export function rssMiB(pids: number[]): number {
  return statusMiB(pids, 'VmRSS');
}

/** Peak resident memory over each process's life, summed, in MiB. */
export function peakRssMiB(pids: number[]): number {
  return statusMiB(pids, 'VmHWM');
}
