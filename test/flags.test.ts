// The flag table is the one source: the committed schema and README tables
// must be what it generates, and the machinery must express the kinds of
// flags to come (negatable switches, optional values, enums, repeatable lists).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { README_BEGIN, README_END, README_FILE, SCHEMA_FILE, readmeWithFlags, schemaText } from '../src/flag-docs.ts';
import { ConfigError, helpText, int, jsonSchema, many, markdownTable, oneOf, opt, parseArgv, parseFile, path, sw, text, usage, withDefaults } from '../src/flag-kit.ts';
import { FLAGS } from '../src/flags.ts';
import { HostPortError, parseHostPort } from '../src/hostport.ts';

test('sticky-proxy.schema.json is what the flag table generates (npm run generate)', () => {
  assert.equal(readFileSync(SCHEMA_FILE, 'utf8'), schemaText(), 'run npm run generate and commit sticky-proxy.schema.json');
});

test("the README's flag tables are what the flag table generates (npm run generate)", () => {
  const readme = readFileSync(README_FILE, 'utf8');
  const tables = (text: string): string => text.slice(text.indexOf(README_BEGIN), text.indexOf(README_END));
  assert.equal(tables(readme), tables(readmeWithFlags(readme)), 'run npm run generate and commit README.md');
  for (const name of Object.keys(FLAGS)) assert.ok(readme.includes(`--${name}`), name);
});

test('the sample configuration validates against the shipped schema, as an editor would check it', () => {
  const validate = new Ajv({ strict: true }).compile(JSON.parse(readFileSync(SCHEMA_FILE, 'utf8')));
  const sample = JSON.parse(readFileSync(new URL('../sticky-proxy.example.json', import.meta.url), 'utf8')) as Record<string, unknown>;
  assert.equal(sample.$schema, './sticky-proxy.schema.json');
  assert.ok(validate(sample), JSON.stringify(validate.errors));
  assert.ok(!validate({ ...sample, workers: 'many' }));
  assert.ok(!validate({ ...sample, typo: 1 }));
});

// A table of the kinds the coming flags need, to show the machinery takes them.
const KINDS = {
  adopt: sw({ section: 'S', help: 'adopt', negatable: true }),
  'access-log': opt(path(), { section: 'S', help: 'log to FILE, or stdout', optionalValue: true }),
  'cookie-pick': { ...opt(oneOf(['first', 'last']), { section: 'S', help: 'which one' }) },
  'trusted-proxy': many(text('CIDR', /^[0-9a-f.:]+\/\d{1,3}$/, 'a CIDR block'), { section: 'T', help: 'trusted', default: [] }),
  'queue-max': { ...opt(int(1, 10), { section: 'T', help: 'queue', reload: true }) },
};

test('negatable switches: --no-NAME turns one off, the last one given wins, a file says false', () => {
  assert.equal(parseArgv(KINDS, ['--adopt']).adopt, true);
  assert.equal(parseArgv(KINDS, ['--no-adopt']).adopt, false);
  assert.equal(parseArgv(KINDS, ['--no-adopt', '--adopt']).adopt, true);
  assert.equal(parseArgv(KINDS, ['--adopt', '--no-adopt']).adopt, false);
  assert.equal(parseFile(KINDS, { adopt: false }, 'f.json').adopt, false);
  assert.throws(() => parseArgv(KINDS, ['--no-queue-max']), /^Error: --no-queue-max: unknown flag/);
  assert.equal(usage('adopt', KINDS.adopt), '--[no-]adopt');
});

test('optional values: --NAME alone, or --NAME=VALUE; a file says true or the value', () => {
  assert.throws(() => parseArgv(KINDS, ['--access-log']), (e: ConfigError) => e.flag === '--access-log', 'alone, the kind parses ""');
  const withEmpty = { 'access-log': opt(text('FILE', /^.*$/, 'a file or nothing'), { section: 'S', help: 'x', optionalValue: true }) };
  assert.equal(parseArgv(withEmpty, ['--access-log'])['access-log'], '');
  assert.equal(parseArgv(withEmpty, ['--access-log=/var/log/a'])['access-log'], '/var/log/a');
  assert.equal(parseFile(withEmpty, { 'access-log': true }, 'f.json')['access-log'], '');
  assert.equal(parseFile(withEmpty, { 'access-log': 'x.log' }, 'f.json')['access-log'], 'x.log');
  assert.equal(parseFile(withEmpty, { 'access-log': false }, 'f.json')['access-log'], undefined);
  assert.equal(usage('access-log', withEmpty['access-log']), '--access-log[=FILE]');
  assert.throws(() => parseFile(withEmpty, { 'access-log': 3 }, 'f.json'), /field "access-log": expected true, false or a file or nothing, got 3/);
});

test('enums, repeatable lists and ranges, from the command line and from a file', () => {
  assert.equal(parseArgv(KINDS, ['--cookie-pick', 'last'])['cookie-pick'], 'last');
  assert.throws(() => parseArgv(KINDS, ['--cookie-pick', 'middle']), /^Error: --cookie-pick: expected first or last, got "middle"$/);
  assert.deepEqual(parseArgv(KINDS, ['--trusted-proxy', '10.0.0.0/8', '--trusted-proxy', '::1/128'])['trusted-proxy'], ['10.0.0.0/8', '::1/128']);
  assert.throws(() => parseFile(KINDS, { 'trusted-proxy': '10.0.0.0/8' }, 'f.json'), /^Error: --config: f\.json: field "trusted-proxy": expected an array of a CIDR block, got "10.0.0.0\/8"$/);
  assert.throws(() => parseFile(KINDS, { 'trusted-proxy': ['10.0.0.0/8', 'x'] }, 'f.json'), /field "trusted-proxy": expected a CIDR block, got "x"$/);
  assert.throws(() => parseFile(KINDS, { 'queue-max': 11 }, 'f.json'), /field "queue-max": must be between 1 and 10, got 11$/);
  assert.throws(() => parseFile(KINDS, { 'queue-max': '5' }, 'f.json'), /field "queue-max": expected a whole number, got "5"$/);
  assert.throws(() => parseFile(KINDS, { nope: 1 }, 'f.json'), /^Error: --config: f\.json: unknown field "nope"$/);
  assert.throws(() => parseFile(KINDS, [], 'f.json'), /^Error: --config: f\.json: expected a JSON object$/);
  assert.deepEqual(parseFile(KINDS, { $schema: './any.json' }, 'f.json'), {});
  assert.throws(() => parseFile(KINDS, { $schema: 1 }, 'f.json'), /^Error: --config: f\.json: field "\$schema": expected a string, got 1$/);
  const all = withDefaults(KINDS, {});
  assert.deepEqual(all, { adopt: false, 'access-log': null, 'cookie-pick': null, 'trusted-proxy': [], 'queue-max': null });
});

test('help and README text come from the attributes: sections, repeatable, SIGHUP, defaults', () => {
  const help = helpText(KINDS, 'Usage: x');
  assert.match(help, /^ S$/m);
  assert.match(help, /^ T$/m);
  assert.match(help, /--trusted-proxy CIDR +trusted \(repeatable\)/);
  assert.match(help, /--queue-max N +queue \(SIGHUP applies it\)/);
  assert.match(help, /--cookie-pick first\|last/);
  const md = markdownTable(KINDS);
  assert.match(md, /^\| `--\[no-\]adopt` \| off \| adopt \|$/m);
  assert.match(md, /^\| `--cookie-pick first\\\|last` \| {2}\| which one \|$/m);
  const schema = jsonSchema(KINDS, 't', 'd') as { properties: Record<string, unknown> };
  assert.deepEqual(schema.properties['access-log'], { description: 'log to FILE, or stdout', anyOf: [{ type: 'boolean' }, { type: 'string', pattern: '^[^\\0]+$' }] });
});

test('every flag of the table: a help line, a kind, a section; SIGHUP marks only what a reload can apply', () => {
  for (const [name, f] of Object.entries(FLAGS)) {
    assert.ok(f.help.length > 0 && f.section.length > 0, name);
    assert.match(name, /^[a-z][a-z0-9-]*$/);
  }
  // What changes the listener, the store or the threads needs a restart.
  const reloads = Object.entries(FLAGS).filter(([, f]) => f.reload).map(([n]) => n);
  for (const restart of ['listen', 'threads', 'workers', 'memcache', 'no-affinity', 'key-prefix', 'upstream-connections', 'accept-proxy', 'admin']) assert.ok(!reloads.includes(restart), restart);
  for (const reload of ['backend', 'log-level', 'session-cookie', 'cookie-pick', 'client-header-timeout', 'queue-timeout', 'tls-cert', 'tls-key', 'trusted-proxy']) assert.ok(reloads.includes(reload), reload);
});

test('host:port: one parser for the flags and the memcached client', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:11211'), { host: '127.0.0.1', port: 11211 });
  assert.deepEqual(parseHostPort('cache.internal:1'), { host: 'cache.internal', port: 1 });
  assert.deepEqual(parseHostPort('[::1]:8080'), { host: '::1', port: 8080 });
  assert.deepEqual(parseHostPort('[fe80::1]:0', { portZero: true }), { host: 'fe80::1', port: 0 });
  for (const bad of ['::1:11211', 'host', 'host:0', 'host:65536', '[::1]', ':11211', '[nothex]:80', 'a b:1', 'host:80x', '[::1]:']) {
    assert.throws(() => parseHostPort(bad), HostPortError, bad);
  }
  assert.throws(() => parseHostPort('::1:80'), /IPv6 goes in brackets/);
});
