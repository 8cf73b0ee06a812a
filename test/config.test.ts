// A configuration error exits non-zero with one line naming the flag, before
// anything starts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runCli } from './helpers/proxy.ts';
import { parseConfig, DEFAULT_SESSION_COOKIES } from '../src/config.ts';

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

test('--help documents every flag', async () => {
  const r = await runCli(['--help']);
  assert.equal(r.code, 0);
  for (const flag of ['--listen', '--backend', '--session-cookie', '--memcache', '--workers', '--batch-max', '--balance',
    '--default-ttl', '--max-ttl', '--key-prefix', '--store-timeout', '--embedded-max-entries', '--upstream-connections']) {
    assert.ok(r.stdout.includes(flag), flag);
  }
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
  const c = parseConfig(['--config', new URL('../sticky-proxy.example.json', import.meta.url).pathname])!;
  assert.equal(c.backends.length, 2);
  assert.equal(c.backends[1].weight, 2);
  assert.deepEqual(c.memcache, ['10.0.0.5:11211', '10.0.0.6:11211']);
  assert.deepEqual(c.admin, { host: '127.0.0.1', port: 9901 });
});
