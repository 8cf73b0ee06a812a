// The command line as an operator meets it, through the real CLI, sockets
// and files: a start-up failure names the flag that caused it (one line,
// exit 2); SIGHUP says which changed flags it applied and which wait for a
// restart; the bin refuses a Node that cannot run it.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startOrigin } from './helpers/origins.ts';
import { ROOT, runCli, startProxy } from './helpers/proxy.ts';

const dir = mkdtempSync(join(tmpdir(), 'sp-startup-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const f = (n: string): string => join(dir, n);
const BACKEND = ['--backend', 'a=http://127.0.0.1:1'];

/** Runs the CLI and expects exit 2 with exactly this one line on stderr, and nothing started. */
async function refused(args: string[], line: string | RegExp): Promise<void> {
  const r = await runCli(args);
  assert.equal(r.code, 2, r.stdout + r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr.split('\n').length, 2, r.stderr);
  if (typeof line === 'string') assert.equal(r.stderr, `sticky-proxy: ${line}\n`);
  else assert.match(r.stderr.trimEnd(), line);
}

async function occupied(): Promise<Server> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  return s;
}

test('an admin port in use is reported on --admin with the admin address', async () => {
  const s = await occupied();
  const port = (s.address() as { port: number }).port;
  try {
    await refused(['--listen', '127.0.0.1:0', '--admin', `127.0.0.1:${port}`, ...BACKEND], `--admin: cannot listen on 127.0.0.1:${port} (EADDRINUSE)`);
  } finally {
    s.close();
  }
});

test('a listen port in use is reported on --listen with its address', async () => {
  const s = await occupied();
  const port = (s.address() as { port: number }).port;
  try {
    await refused(['--listen', `127.0.0.1:${port}`, '--admin', '127.0.0.1:0', ...BACKEND], `--listen: cannot listen on 127.0.0.1:${port} (EADDRINUSE)`);
  } finally {
    s.close();
  }
});

test('memcached addresses: port 0 and a server listed twice are refused on --memcache', async () => {
  await refused(['--listen', '127.0.0.1:0', '--memcache', '127.0.0.1:0', ...BACKEND], /^sticky-proxy: --memcache: port 0 in "127\.0\.0\.1:0"/);
  await refused(['--listen', '127.0.0.1:0', '--memcache', '127.0.0.1:11211,127.0.0.1:11211', ...BACKEND], '--memcache: "127.0.0.1:11211" is listed twice');
});

test('a weight out of range names the backend and the weight', async () => {
  await refused(['--backend', 'srv1=http://127.0.0.1:1,weight=1001'], '--backend: weight of srv1 must be a whole number from 0 to 1000, got "1001"');
  await refused(['--backend', 'srv1=http://127.0.0.1:1,weight=-1'], '--backend: weight of srv1 must be a whole number from 0 to 1000, got "-1"');
});

test('TLS files: a key that is not the certificate\'s, and garbage in either file, name their flag', async () => {
  const openssl = (...args: string[]): void => { execFileSync('openssl', args, { stdio: 'ignore' }); };
  for (const n of ['one', 'two']) {
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=${n}`, '-keyout', f(`${n}.key`), '-out', f(`${n}.pem`));
  }
  writeFileSync(f('garbage.pem'), '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n');
  writeFileSync(f('text.txt'), 'hello\n');
  const listen = ['--listen', '127.0.0.1:0', ...BACKEND];
  await refused([...listen, '--tls-cert', f('one.pem'), '--tls-key', f('two.key')], `--tls-key: "${f('two.key')}" is not the key of the certificate in "${f('one.pem')}"`);
  await refused([...listen, '--tls-cert', f('garbage.pem'), '--tls-key', f('one.key')], `--tls-cert: "${f('garbage.pem')}" holds no PEM certificate`);
  await refused([...listen, '--tls-cert', f('one.pem'), '--tls-key', f('text.txt')], `--tls-key: "${f('text.txt')}" holds no usable PEM private key`);
  await refused([...listen, '--tls-cert', f('one.pem'), '--tls-key', f('missing.key')], `--tls-key: cannot read "${f('missing.key')}" (ENOENT)`);
  // --check loads them too.
  await refused(['--check', ...listen, '--tls-cert', f('one.pem'), '--tls-key', f('two.key')], /^sticky-proxy: --tls-key: .* is not the key of the certificate/);
  const ok = await runCli(['--check', ...listen, '--tls-cert', f('one.pem'), '--tls-key', f('one.key')]);
  assert.equal(ok.code, 0, ok.stderr);
});

test('a --backend-ca that is not a PEM certificate is refused on --backend-ca', async () => {
  const listen = ['--listen', '127.0.0.1:0', ...BACKEND];
  writeFileSync(f('notca.pem'), 'just some text\n');
  await refused([...listen, '--backend-ca', f('notca.pem')], `--backend-ca: "${f('notca.pem')}" holds no PEM certificate`);
  writeFileSync(f('badca.pem'), '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
  await refused([...listen, '--backend-ca', f('badca.pem')], `--backend-ca: certificate 1 in "${f('badca.pem')}" does not parse`);
});

test('SIGHUP applies the flags the table marks reloadable and names those that wait for a restart', async () => {
  const [a, b] = [await startOrigin('a'), await startOrigin('b')];
  // Closed however the test ends, or the open servers would keep this file's process alive.
  after(() => Promise.all([a.close(), b.close()]));
  const file = f('reload.json');
  writeFileSync(file, JSON.stringify({ backend: [`a=${a.url}`], 'key-prefix': 'one:' }));
  const p = await startProxy(['--config', file]);
  try {
    writeFileSync(file, JSON.stringify({ backend: [`a=${a.url}`, `b=${b.url}`], 'key-prefix': 'two:', 'upstream-connections': 8 }));
    process.kill(p.pid, 'SIGHUP');
    const log = async (msg: string): Promise<Record<string, unknown>> => {
      for (const end = Date.now() + 5000; Date.now() < end; await sleep(20)) {
        const line = p.output.find((l) => l.includes(`"msg":"${msg}"`));
        if (line !== undefined) return JSON.parse(line) as Record<string, unknown>;
      }
      throw new Error(`no "${msg}" log line in: ${p.output.join('\n')}`);
    };
    assert.deepEqual((await log('SIGHUP: applied')).flags, ['--backend']);
    assert.deepEqual((await log('SIGHUP: changed, but these need a restart; not applied')).flags, ['--key-prefix', '--upstream-connections']);
  } finally {
    await p.stop();
  }
});

const BIN = join(ROOT, 'bin/sticky-proxy.js');
const OLD_NODE = '/usr/bin/node';
const oldMajor = existsSync(OLD_NODE) ? Number(execFileSync(OLD_NODE, ['-p', 'process.versions.node'], { encoding: 'utf8' }).split('.')[0]) : null;

test('the bin refuses a Node older than 24 with one line saying what to do', {
  skip: oldMajor === null ? `${OLD_NODE} is not installed` : oldMajor >= 24 ? `${OLD_NODE} is Node ${oldMajor}, not an old one` : false,
}, () => {
  const version = execFileSync(OLD_NODE, ['-p', 'process.version'], { encoding: 'utf8' }).trim();
  const r = spawnSync(OLD_NODE, [BIN, '--version'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr, `sticky-proxy: needs Node.js 24 or newer; this is ${version}. Run "npm install" (it brings Node 24) and use npx sticky-proxy, or install Node 24.\n`);
});

test('the bin runs the CLI on Node 24', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const r = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, `sticky-proxy ${pkg.version}\n`);
});
