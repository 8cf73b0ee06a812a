// What the suite starts: the origins (nginx from the peers' origin-nginx.conf,
// or bench/origin.ts), and the targets in front of them (sticky-proxy, HAProxy,
// NGINX, node-http-proxy). Peer configurations are copied from the read-only
// peers directory into a temp dir and rewritten there: free ports instead of
// the fixed ones, pid/log/temp paths inside the temp dir, and room for the
// many-connections scenario. Everything runs on 127.0.0.1.
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort } from '../../test/helpers/memcached.ts';
import { startProxy } from '../../test/helpers/proxy.ts';
import { processTree, spawnTracked, stderrTail, stopProcess, track, waitForPort, which } from './procs.ts';

export const BENCH_DIR = fileURLToPath(new URL('../', import.meta.url));
export const DEFAULT_PEERS_DIR = fileURLToPath(new URL('../../../shared/peers/', import.meta.url));
export const LARGE_BYTES = 1 << 20;

/** A running server the suite owns. */
export interface Running {
  port: number;
  /** The processes whose CPU and memory are the server's (nginx: master and workers). */
  pids(): number[];
  stop(): Promise<void>;
}

export interface Origins extends Running {
  kind: 'nginx' | 'node';
  servers: { name: string; port: number }[];
}

// ---------------------------------------------------------------- origins

function largeFile(dir: string, name: string): string {
  const head = `{"real-server":"${name}","pad":"`;
  const tail = '"}\n';
  const file = join(dir, `large-${name}.json`);
  writeFileSync(file, head + 'x'.repeat(LARGE_BYTES - head.length - tail.length) + tail);
  return file;
}

function tempPaths(dir: string): string {
  // nginx creates these itself, owned by its worker user; the worker (nobody,
  // when the suite runs as root) must be able to reach into the temp dir.
  chmodSync(dir, 0o755);
  return `client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;`;
}

function commonNginx(conf: string, dir: string, name: string): string {
  return conf
    .replace(/^pid .*;$/m, `pid ${dir}/${name}.pid;`)
    .replace(/^error_log .*;$/m, `error_log ${dir}/${name}.err warn;`)
    .replace(/^worker_processes (.*);$/m, 'worker_processes $1;\nworker_rlimit_nofile 20000;')
    .replace(/worker_connections \d+;/, 'worker_connections 16384;');
}

/**
 * origin-nginx.conf with its servers on `ports`, plus the locations the heavier
 * scenarios need: GET /large (1 MiB file) and POST /upload (the body is read in
 * full, through a mirror subrequest, before the JSON answer).
 */
export function originNginxConf(shared: string, dir: string, ports: number[]): string {
  let i = 0;
  const maps: string[] = [];
  const conf = commonNginx(shared, dir, 'origin').replace(/listen 127\.0\.0\.1:\d+;/g, () => {
    const n = ++i;
    const name = `srv${n}`;
    maps.push(`map $cookie_PHPSESSID $bench_sc${n} { "" "PHPSESSID=s${n}$request_id; Path=/; Max-Age=300; HttpOnly"; default ""; }`);
    writeFileSync(join(dir, 'upload.json'), '{}\n');
    return `listen 127.0.0.1:${ports[n - 1]};
    # added by bench/: 1 MiB answers and 1 MiB uploads
    location = /large { default_type application/json; add_header Set-Cookie $bench_sc${n}; alias ${largeFile(dir, name)}; }
    location = /upload {
      default_type application/json; client_max_body_size 8m; client_body_buffer_size 1m;
      mirror /bench-sink; mirror_request_body on;
      alias ${dir}/upload.json; error_page 405 =200 /bench-uploaded;
    }
    location = /bench-sink { internal; return 204; }
    location = /bench-uploaded { internal; default_type application/json; add_header Set-Cookie $bench_sc${n};
      return 200 '{"real-server":"${name}","session_id":"$cookie_PHPSESSID"}\\n'; }`;
  });
  return conf.replace(/^http \{$/m, `http {\n  ${tempPaths(dir)}\n  ${maps.join('\n  ')}`);
}

async function startNginx(conf: string, dir: string, name: string, port: number): Promise<Running> {
  const file = join(dir, `${name}.conf`);
  writeFileSync(file, conf);
  const proc = spawnTracked(which('nginx')!, ['-e', join(dir, `${name}.err`), '-c', file, '-g', 'daemon off;']);
  const tail = stderrTail(proc);
  await waitForPort(port, 5000, proc, tail);
  let tree = processTree(proc.pid!);
  return {
    port,
    pids: () => (tree.length > 1 ? tree : (tree = processTree(proc.pid!))),
    stop: () => stopProcess(proc), // SIGTERM: nginx's fast shutdown
  };
}

export async function startOrigins(kind: 'nginx' | 'node', dir: string, peersDir: string): Promise<Origins> {
  const ports = [await freePort(), await freePort()];
  const servers = [{ name: 'srv1', port: ports[0] }, { name: 'srv2', port: ports[1] }];
  if (kind === 'nginx') {
    const conf = originNginxConf(readFileSync(join(peersDir, 'origin-nginx.conf'), 'utf8'), dir, ports);
    const r = await startNginx(conf, dir, 'origin', ports[0]);
    await waitForPort(ports[1], 5000);
    return { ...r, kind, servers };
  }
  const proc = spawnTracked(process.execPath, [join(BENCH_DIR, 'origin.ts'), String(ports[0]), String(ports[1])], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout?.resume();
  const tail = stderrTail(proc);
  await waitForPort(ports[0], 10_000, proc, tail);
  await waitForPort(ports[1], 10_000, proc, tail);
  return { port: ports[0], pids: () => [proc.pid!], stop: () => stopProcess(proc), kind, servers };
}

// ---------------------------------------------------------------- targets

export interface StickyOptions {
  memcache: string | null;
  workers: number;
  affinity: boolean;
  /** --threads; null: the default (the cores the process may use). */
  threads: number | null;
}

export async function startSticky(origins: Origins, o: StickyOptions): Promise<Running> {
  const args = origins.servers.flatMap((s) => ['--backend', `${s.name}=http://127.0.0.1:${s.port}`]);
  if (!o.affinity) args.push('--no-affinity');
  else {
    if (o.memcache !== null) args.push('--memcache', o.memcache);
    args.push('--workers', String(o.workers));
  }
  if (o.threads !== null) args.push('--threads', String(o.threads));
  const p = await startProxy(args);
  track(p.proc);
  return {
    port: Number(new URL(p.url).port),
    pids: () => [p.pid],
    stop: async () => { await p.stop(); },
  };
}

export async function startHaproxy(peersDir: string, dir: string, origins: Origins, nbthread = 1): Promise<Running> {
  const port = await freePort();
  let n = 0;
  const conf = readFileSync(join(peersDir, 'haproxy-stick.cfg'), 'utf8')
    .replace(/nbthread \d+/, `nbthread ${nbthread}`)
    .replace(/bind 127\.0\.0\.1:\d+/, `bind 127.0.0.1:${port}`)
    .replace(/(server \S+ 127\.0\.0\.1:)\d+/g, (_m, pre: string) => `${pre}${origins.servers[n++].port}`);
  const file = join(dir, `haproxy-${nbthread}.cfg`);
  writeFileSync(file, conf);
  const proc = spawnTracked(which('haproxy')!, ['-db', '-f', file]);
  await waitForPort(port, 5000, proc, stderrTail(proc));
  return { port, pids: () => [proc.pid!], stop: () => stopProcess(proc) };
}

export async function startNginxHash(peersDir: string, dir: string, origins: Origins): Promise<Running> {
  const port = await freePort();
  let n = 0;
  const conf = commonNginx(readFileSync(join(peersDir, 'nginx-hash.conf'), 'utf8'), dir, 'nginx-hash')
    .replace(/listen 127\.0\.0\.1:\d+;/, `listen 127.0.0.1:${port};`)
    .replace(/(server 127\.0\.0\.1:)\d+;/g, (_m, pre: string) => `${pre}${origins.servers[n++].port};`)
    // 1 MiB uploads are exactly nginx's default limit; give them room.
    .replace(/^http \{$/m, `http {\n  ${tempPaths(dir)}\n  client_max_body_size 8m;`);
  return startNginx(conf, dir, 'nginx-hash', port);
}

const HTTP_PROXY = 'http-proxy@1.18.1';

/**
 * node-http-proxy for the peer, installed once outside the repository (a cache
 * in the temp dir), with the ordinary npm client. Returns its NODE_PATH, or why not.
 */
export async function ensureHttpProxy(cacheDir: string, install: boolean): Promise<{ nodePath: string } | { skip: string }> {
  const nodePath = join(cacheDir, 'node_modules');
  if (existsSync(join(nodePath, 'http-proxy', 'package.json'))) return { nodePath };
  if (process.env.BENCH_HTTP_PROXY_PATH && existsSync(join(process.env.BENCH_HTTP_PROXY_PATH, 'http-proxy'))) {
    return { nodePath: process.env.BENCH_HTTP_PROXY_PATH };
  }
  if (!install) return { skip: `${HTTP_PROXY} not installed in ${cacheDir} (--no-install)` };
  const npm = which('npm');
  if (npm === null) return { skip: 'npm not found to install http-proxy' };
  mkdirSync(cacheDir, { recursive: true });
  try {
    await promisify(execFile)(npm, ['install', '--prefix', cacheDir, '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--ignore-scripts', HTTP_PROXY], { timeout: 90_000 });
  } catch (err) {
    return { skip: `could not install ${HTTP_PROXY}: ${(err as Error).message.split('\n')[0]}` };
  }
  return existsSync(join(nodePath, 'http-proxy', 'package.json')) ? { nodePath } : { skip: `${HTTP_PROXY} install left no package` };
}

export async function startHttpProxy(peersDir: string, dir: string, origins: Origins, nodePath: string): Promise<Running> {
  const port = await freePort();
  let n = 0;
  const src = readFileSync(join(peersDir, 'http-proxy-sticky.js'), 'utf8')
    .replace(/'http:\/\/127\.0\.0\.1:\d+'/g, () => `'http://127.0.0.1:${origins.servers[n++].port}'`);
  const file = join(dir, 'http-proxy-sticky.cjs');
  writeFileSync(file, src);
  const proc = spawnTracked(process.execPath, [file, String(port)], { env: { ...process.env, NODE_PATH: nodePath } });
  await waitForPort(port, 10_000, proc, stderrTail(proc));
  return { port, pids: () => [proc.pid!], stop: () => stopProcess(proc) };
}
