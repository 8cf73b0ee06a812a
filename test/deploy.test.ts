// The deployment files: the systemd unit verifies (where systemd-analyze is
// installed), its commands run against this checkout, and every way of
// starting the proxy passes Node the same V8 flags.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NODE_FLAGS, ROOT } from './helpers/proxy.ts';

const UNIT = readFileSync(join(ROOT, 'deploy/sticky-proxy.service'), 'utf8');
const DOCKERFILE = readFileSync(join(ROOT, 'deploy/Dockerfile'), 'utf8');
const SAMPLE = join(ROOT, 'sticky-proxy.example.json');
const dir = mkdtempSync(join(tmpdir(), 'sp-deploy-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The unit with its install paths pointed at this checkout, so its commands exist here. */
const localUnit = UNIT.replaceAll('/opt/sticky-proxy', ROOT.replace(/\/$/, '')).replaceAll('/etc/sticky-proxy/config.json', SAMPLE);

function directives(unit: string, key: string): string[] {
  return unit.split('\n').filter((l) => l.startsWith(`${key}=`)).map((l) => l.slice(key.length + 1));
}

/** The V8 flags between the node binary and the script in a command line. */
function v8Flags(argv: string[]): string[] {
  const script = argv.findIndex((a) => a.endsWith('.js') || a.endsWith('.ts'));
  return argv.slice(1, script).filter((a) => a.startsWith('--'));
}

const hasSystemd = spawnSync('systemd-analyze', ['--version']).status === 0;

test('systemd-analyze verify accepts the unit without a warning', { skip: hasSystemd ? false : 'systemd-analyze is not installed (apt-get install systemd)' }, () => {
  const file = join(dir, 'sticky-proxy.service');
  writeFileSync(file, localUnit);
  const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' });
  // verify exits 0 on unknown keys and bad values too, warning on stderr.
  const ours = r.stderr.split('\n').filter((l) => l.includes('sticky-proxy'));
  assert.deepEqual(ours, [], r.stderr);
  assert.equal(r.status, 0, r.stderr);
});

test('the unit runs node directly as an unprivileged user, reloads with SIGHUP, and never forbids the JIT', () => {
  assert.equal(directives(UNIT, 'User')[0], 'sticky-proxy');
  assert.equal(directives(UNIT, 'Group')[0], 'sticky-proxy');
  assert.deepEqual(directives(UNIT, 'AmbientCapabilities'), ['CAP_NET_BIND_SERVICE']);
  assert.deepEqual(directives(UNIT, 'RestrictAddressFamilies'), ['AF_INET AF_INET6 AF_UNIX']);
  assert.deepEqual(directives(UNIT, 'Restart'), ['on-failure']);
  assert.ok(directives(UNIT, 'LimitNOFILE').length === 1);
  for (const key of ['NoNewPrivileges', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'ProtectKernelTunables', 'ProtectKernelModules']) {
    assert.deepEqual(directives(UNIT, key), ['yes'], key);
  }
  assert.deepEqual(directives(UNIT, 'ProtectSystem'), ['strict']);
  assert.deepEqual(directives(UNIT, 'MemoryDenyWriteExecute'), [], 'V8 needs writable-then-executable code pages');
  assert.equal(directives(UNIT, 'ExecReload').at(-1), '/bin/kill -HUP $MAINPID');
  const [start] = directives(UNIT, 'ExecStart');
  assert.match(start, /^\/opt\/sticky-proxy\/node_modules\/node\/bin\/node /, 'the project\'s own Node, not npx');
});

test('the unit\'s reload check runs against this checkout and validates the sample configuration', () => {
  const [check] = directives(localUnit, 'ExecReload');
  const [bin, ...args] = check.split(' ');
  const r = spawnSync(bin, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'sticky-proxy: configuration OK\n');
});

test('the unit, the Dockerfile, the bin, npm start and the tests give Node the same V8 flags', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } };
  const shebang = readFileSync(join(ROOT, 'bin/sticky-proxy.js'), 'utf8').split('\n')[0];
  const entrypoint = JSON.parse(/^ENTRYPOINT (\[.*\])$/m.exec(DOCKERFILE)![1]) as string[];
  const sources: Record<string, string[]> = {
    'deploy/sticky-proxy.service ExecStart': v8Flags(directives(UNIT, 'ExecStart')[0].split(' ')),
    'deploy/Dockerfile ENTRYPOINT': v8Flags(entrypoint),
    'bin/sticky-proxy.js shebang': v8Flags(shebang.replace('#!/usr/bin/env -S ', '').split(' ').concat('x.js')),
    'npm start': v8Flags(pkg.scripts.start.split(' ')),
  };
  for (const [where, flags] of Object.entries(sources)) assert.deepEqual(flags, NODE_FLAGS, where);
});

test('the Dockerfile installs production dependencies only and runs as a non-root user', () => {
  assert.match(DOCKERFILE, /^FROM node:24-slim$/m);
  assert.match(DOCKERFILE, /^RUN npm ci --omit=dev/m);
  assert.match(DOCKERFILE, /^USER (?!root)\S+$/m);
  assert.match(DOCKERFILE, /^STOPSIGNAL SIGTERM$/m);
  assert.match(DOCKERFILE, /^EXPOSE 8080$/m);
});
