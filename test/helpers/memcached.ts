// Starts a real memcached on a free loopback port for a test, and stops it by
// its pid. Faults (kill -9, SIGSTOP/SIGCONT, restart on the same port) are
// injected through the same handle.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect } from 'node:net';
import { once } from 'node:events';
import { readdir, readFile } from 'node:fs/promises';
import { waitFor } from './wait.ts';

export async function freePort(host = '127.0.0.1'): Promise<number> {
  const srv = createServer();
  srv.listen(0, host);
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  srv.close();
  await once(srv, 'close');
  return port;
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  await waitFor(() => new Promise<boolean>((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => { s.destroy(); resolve(false); });
  }), { what: `memcached to listen on ${port}`, timeoutMs });
}

/** Whether every thread of `pid` is in the stopped state ('T' in /proc/PID/task/TID/stat). */
async function allStopped(pid: number): Promise<boolean> {
  const tasks = await readdir(`/proc/${pid}/task`);
  for (const tid of tasks) {
    const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'latin1');
    // The state follows the command name, which is in parentheses and may hold spaces.
    if (stat[stat.lastIndexOf(')') + 2] !== 'T') return false;
  }
  return true;
}

export class Memcached {
  readonly port: number;
  readonly args: string[];
  proc: ChildProcess | undefined;

  constructor(port: number, args: string[]) {
    this.port = port;
    this.args = args;
  }

  get address(): string { return `127.0.0.1:${this.port}`; }
  get pid(): number | undefined { return this.proc?.pid; }

  async start(): Promise<void> {
    const argv = ['-l', '127.0.0.1', '-p', String(this.port), '-U', '0', '-m', '64', ...this.args];
    if (process.getuid?.() === 0) argv.push('-u', 'root');
    const proc = spawn('memcached', argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc = proc;
    proc.stderr?.resume();
    const failed = once(proc, 'exit').then(([code]) => { throw new Error(`memcached exited early (${code})`); });
    failed.catch(() => {});
    await Promise.race([waitForPort(this.port, 5000), failed]);
  }

  signal(sig: NodeJS.Signals): void {
    if (this.proc?.pid !== undefined && this.proc.exitCode === null) process.kill(this.proc.pid, sig);
  }

  /**
   * SIGSTOP, and wait until every thread is stopped: kill() returns before a
   * running worker thread reaches its signal check, and on a busy machine that
   * thread may still answer a request sent right after.
   */
  async freeze(): Promise<void> {
    const pid = this.proc?.pid;
    if (pid === undefined || this.proc?.exitCode !== null) return;
    this.signal('SIGSTOP');
    await waitFor(() => allStopped(pid), { what: `memcached (pid ${pid}) to stop`, timeoutMs: 5000, intervalMs: 2 });
  }

  /** kill -9, and wait until the process is gone. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = once(p, 'exit');
    this.signal('SIGKILL');
    await exited;
  }

  async restart(): Promise<void> {
    await this.kill();
    await this.start();
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    this.signal('SIGCONT'); // a frozen memcached cannot act on SIGTERM
    const exited = once(p, 'exit');
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), 2000);
    await exited;
    clearTimeout(timer);
  }
}

/** A running memcached on a free loopback port. */
export async function startMemcached(args: string[] = []): Promise<Memcached> {
  for (let attempt = 0; ; attempt++) {
    const m = new Memcached(await freePort(), args);
    try {
      await m.start();
      return m;
    } catch (err) {
      await m.stop();
      if (attempt >= 3) throw err;
    }
  }
}

/**
 * Reads an item over memcached's text meta protocol, independently of our
 * client: its value and remaining TTL in seconds (-1 = never), or null.
 */
export async function inspect(port: number, key: string): Promise<{ value: string; ttl: number; flags: number } | null> {
  const s = connect(port, '127.0.0.1');
  s.write(`mg ${key} t f v\r\n`);
  let buf = '';
  for await (const chunk of s) {
    buf += chunk.toString('latin1');
    if (buf.startsWith('EN\r\n')) { s.destroy(); return null; }
    const m = /^VA (\d+) (.*)\r\n/.exec(buf);
    if (m && buf.length >= m[0].length + Number(m[1]) + 2) {
      s.destroy();
      const flags = Object.fromEntries(m[2].split(' ').map((f) => [f[0], Number(f.slice(1))]));
      return { value: buf.slice(m[0].length, m[0].length + Number(m[1])), ttl: flags.t, flags: flags.f };
    }
  }
  throw new Error(`no answer from memcached for ${key}`);
}
