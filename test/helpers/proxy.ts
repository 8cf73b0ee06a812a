// Runs the real sticky-proxy CLI as a child process on a free loopback port,
// and a small HTTP client that keeps a cookie jar the way curl -c/-b does.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
// The bin, as users run it: it turns Node's compile cache on before loading src/cli.ts.
export const CLI = fileURLToPath(new URL('../../bin/sticky-proxy.js', import.meta.url));
// The V8 flags bin/sticky-proxy.js and `npm start` run the proxy with.
export const NODE_FLAGS = ['--max-semi-space-size=1', '--optimize-for-size', '--liftoff-only', '--no-node-snapshot'];

export class ProxyProcess {
  readonly proc: ChildProcess;
  readonly url: string;
  readonly output: string[];

  constructor(proc: ChildProcess, url: string, output: string[]) {
    this.proc = proc;
    this.url = url;
    this.output = output;
  }

  get pid(): number { return this.proc.pid!; }

  /** Peak resident memory so far, in MiB (VmHWM). */
  peakRssMiB(): number {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${this.pid}/status`, 'utf8'));
    return Number(m![1]) / 1024;
  }

  rssMiB(): number {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${this.pid}/status`, 'utf8'));
    return Number(m![1]) / 1024;
  }

  /** Stops it with `signal` (SIGTERM drains; SIGUSR2 hands over), SIGKILL after 10 s; its exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return this.proc.exitCode;
    const exited = once(this.proc, 'exit');
    process.kill(this.pid, signal);
    const timer = setTimeout(() => { if (this.proc.exitCode === null) process.kill(this.pid, 'SIGKILL'); }, 10_000);
    const [code] = await exited;
    clearTimeout(timer);
    return code as number | null;
  }
}

/**
 * Starts `sticky-proxy --listen 127.0.0.1:0 ...args` and waits for its listening line; `root`: another
 * checkout's, `nodeFlags`: other Node and V8 flags than the start script's (both for bench/paired.ts).
 */
export async function startProxy(args: string[], env: NodeJS.ProcessEnv = {}, root = ROOT, nodeFlags: readonly string[] = NODE_FLAGS): Promise<ProxyProcess> {
  const proc = spawn(process.execPath, [...nodeFlags, join(root, 'bin/sticky-proxy.js'), '--listen', '127.0.0.1:0', ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const output: string[] = [];
  let buffered = '';
  let url = '';
  // The store line comes last of the start-up lines: wait for it so tests can read them all.
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`proxy did not start: ${output.join('\n')}`)), 15_000);
    const onData = (d: Buffer): void => {
      buffered += d.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const line of lines) {
        output.push(line);
        const m = /listening on (https?:\/\/\S+)/.exec(line);
        if (m) url = m[1];
        if (line.startsWith('store: ')) { clearTimeout(timer); resolve(); }
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`proxy exited (${code}): ${output.join('\n')}${buffered}`)); });
  });
  return new ProxyProcess(proc, url, output);
}

/** Runs the CLI to completion: exit code and output, for configuration errors. */
export async function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [...NODE_FLAGS, CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.on('data', (d) => { stderr += d; });
  const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
  const [code] = await once(proc, 'exit');
  clearTimeout(timer);
  return { code: code as number | null, stdout, stderr };
}

/** A cookie jar of name -> value, filled from Set-Cookie like curl -c. */
export type Jar = Map<string, string>;

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

export async function get(url: string, jar?: Jar, headers: Record<string, string> = {}): Promise<Reply> {
  const h: Record<string, string> = { ...headers };
  if (jar && jar.size > 0) h.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const res = await request(url, { headers: h });
  const body = await res.body.text();
  if (jar) {
    const sc = res.headers['set-cookie'];
    for (const c of sc === undefined ? [] : Array.isArray(sc) ? sc : [sc]) {
      const [pair] = c.split(';');
      const eq = pair.indexOf('=');
      jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
    }
  }
  return { status: res.statusCode, headers: res.headers, body };
}
