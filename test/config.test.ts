// A configuration error exits non-zero with one line naming the flag, before
// anything starts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { runCli } from './helpers/proxy.ts';
import { parseConfig, DEFAULT_SESSION_COOKIES } from '../src/config.ts';
import { usage } from '../src/flag-kit.ts';
import { FLAGS } from '../src/flags.ts';

const SAMPLE = new URL('../sticky-proxy.example.json', import.meta.url).pathname;

const cases: [string[], string][] = [
  [['--listen', 'nowhere'], '--listen'],
  [['--listen', '127.0.0.1:99999'], '--listen'],
  [['--backend', 'srv1'], '--backend'],
  [['--backend', 'bad name=http://127.0.0.1:1'], '--backend'],
  [['--backend', 'a=ftp://127.0.0.1:1'], '--backend'],
  [['--backend', 'a=http://127.0.0.1:1/path'], '--backend'],
  [['--backend', 'a=http://127.0.0.1:1,weight=x'], '--backend'],
  [['--backend', 'a=http://127.0.0.1:1', '--backend', 'a=http://127.0.0.1:2'], '--backend'],
  [['--backend', 'a=http://127.0.0.1:1,weight=0'], '--backend'],
  [['--session-cookie', 'bad;name'], '--session-cookie'],
  [['--memcache', '127.0.0.1'], '--memcache'],
  [['--workers', '-1'], '--workers'],
  [['--workers', 'many'], '--workers'],
  [['--batch-max', '0'], '--batch-max'],
  [['--balance', 'fastest'], '--balance'],
  [['--default-ttl', '100', '--max-ttl', '10'], '--default-ttl'],
  [['--max-ttl', '0'], '--max-ttl'],
  [['--key-prefix', 'has space'], '--key-prefix'],
  [['--store-timeout', '0'], '--store-timeout'],
  [['--no-such-flag'], '--no-such-flag'],
  [['--workers'], '--workers'],
  [['--memcache', '127.0.0.1:0'], '--memcache'],
  [['--memcache', 'a:1,a:1'], '--memcache'],
  [['--memcache', '::1:11211'], '--memcache'],
  [['--admin', 'nowhere'], '--admin'],
  [['--tls-cert', 'x.pem'], '--tls-cert'],
  [['--tls-key', 'x.pem'], '--tls-key'],
  [['--tls-cert', '/nonexistent/c.pem', '--tls-key', '/nonexistent/k.pem'], '--tls-cert'],
  [['--backend-ca', '/nonexistent/ca.pem'], '--backend-ca'],
  [['--log-level', 'loud'], '--log-level'],
  [['--no-affinity', '--session-cookie', 'sid'], '--no-affinity'],
];

for (const [args, flag] of cases) {
  test(`${args.join(' ')} -> one line naming ${flag}`, () => {
    assert.throws(() => parseConfig(args), (err: Error) => err.message.startsWith(`${flag}:`));
  });
}

test('the CLI prints the error as one line and exits 2 without starting', async () => {
  const r = await runCli(['--balance', 'fastest', '--listen', '127.0.0.1:0']);
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1);
  assert.match(lines[0], /^sticky-proxy: --balance: /);
});

test('more backends than the process has slots for (256) -> one line naming --backend, not a failure at start', () => {
  const flags = (n: number): string[] => Array.from({ length: n }, (_, i) => ['--backend', `b${i}=http://127.0.0.1:${1000 + i}`]).flat();
  assert.equal(parseConfig(flags(256))?.backends.length, 256);
  assert.throws(() => parseConfig(flags(257)), { message: '--backend: 257 backends; at most 256' });
});

test('a backend\'s weight out of range names the backend and the weight', () => {
  for (const w of ['1001', '-1', '1.5']) {
    assert.throws(() => parseConfig(['--backend', `srv1=http://127.0.0.1:1,weight=${w}`]),
      { message: `--backend: weight of srv1 must be a whole number from 0 to 1000, got "${w}"` });
  }
});

test('--help documents every flag of the table, each on its own usage line', async () => {
  const r = await runCli(['--help']);
  assert.equal(r.code, 0);
  const lines = r.stdout.split('\n');
  for (const [name, f] of Object.entries(FLAGS)) {
    assert.ok(lines.some((l) => l.startsWith(`  ${usage(name, f)}`)), `--${name}`);
  }
});

test('--version prints the package version and exits 0', async () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  const r = await runCli(['--version']);
  assert.deepEqual(r, { code: 0, stdout: `sticky-proxy ${pkg.version}\n`, stderr: '' });
});

test('--check validates the flags and the file, then exits without starting anything', async () => {
  // A proxy that started would print its listening lines and keep running.
  const ok = await runCli(['--check', '--config', SAMPLE]);
  assert.deepEqual(ok, { code: 0, stdout: 'sticky-proxy: configuration OK\n', stderr: '' });
  const bad = await runCli(['--check', '--config', SAMPLE, '--workers', 'many']);
  assert.deepEqual(bad, { code: 2, stdout: '', stderr: 'sticky-proxy: --workers: expected a whole number, got "many"\n' });
});

test('defaults', () => {
  const c = parseConfig([])!;
  assert.equal(c.listenHost, '127.0.0.1');
  assert.equal(c.listenPort, 8080);
  assert.deepEqual(c.sessionCookies, DEFAULT_SESSION_COOKIES);
  assert.equal(c.balance, 'round-robin');
  assert.equal(c.defaultTtl, 1800);
  assert.equal(c.maxTtl, 86400);
  const b = parseConfig(['--backend', 'x=http://[::1]:3000,weight=5', '--listen', '[::1]:0'])!;
  assert.equal(b.backends[0].weight, 5);
  assert.equal(b.listenHost, '::1');
});

test('the sample configuration file in the repository validates', () => {
  const c = parseConfig(['--config', SAMPLE])!;
  assert.equal(c.backends.length, 2);
  assert.equal(c.backends[1].weight, 2);
  assert.deepEqual(c.memcache, ['10.0.0.5:11211', '10.0.0.6:11211']);
  assert.deepEqual(c.admin, { host: '127.0.0.1', port: 9901 });
});
