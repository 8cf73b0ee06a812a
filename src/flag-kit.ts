// The machinery behind the flag table (src/flags.ts): value kinds, and what is
// generated from a table: the command-line parser (node:util parseArgs), the
// --config file's JSON Schema and its validation (ajv), the --help text and
// the README's flag table. Everything takes the table as an argument, so a
// flag is one entry and nothing else needs to know about it.
import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import type { Ajv as AjvClass, ErrorObject, ValidateFunction } from 'ajv';
import { HOST_PORT_PATTERN, parseHostPort, type HostPort } from './hostport.ts';

export class ConfigError extends Error {
  readonly flag: string;
  constructor(flag: string, message: string) {
    super(`${flag}: ${message}`);
    this.flag = flag;
  }
}

/** The type of one value: how it is written, parsed, described and checked in the file. */
export interface Kind<T> {
  /** What a good value is, after "expected": "a whole number". */
  readonly expect: string;
  /** The value's placeholder in usage lines: N, MS, HOST:PORT. */
  readonly arg: string;
  /** JSON Schema of one value in the --config file. */
  readonly schema: Record<string, unknown>;
  /** One value as written (a file's numbers arrive as their text); throws ConfigError naming `flag`. */
  parse(raw: string, flag: string): T;
}

interface FlagOptions {
  /** The group it is listed under in --help and the README. */
  readonly section: string;
  /** What it does: one sentence or a few, light Markdown (`code`, [links](#x)); --help shows it plain. */
  readonly help: string;
  /** How the default reads in the docs, where the value itself does not say it ("off", "demo"). */
  readonly shownDefault?: string;
  /** SIGHUP applies a change to it; otherwise a change waits for a restart. */
  readonly reload?: boolean;
  /** A one-letter alias: -h. */
  readonly short?: string;
  /** Command-line only, not a field of the --config file (--config itself, --help...). */
  readonly cliOnly?: boolean;
  /** A switch that --no-NAME turns off again (a file's false does too). */
  readonly negatable?: boolean;
  /** Takes a value only as --NAME=VALUE; --NAME alone (a file's true) parses "". */
  readonly optionalValue?: boolean;
}

/** One flag. V is its value's type once parsed, defaults applied. */
export interface Flag<V> extends FlagOptions {
  /** null for a switch (boolean). */
  readonly kind: Kind<unknown> | null;
  readonly repeatable: boolean;
  /** In the file's form (what a JSON field would hold), parsed like a given value; null: none. */
  readonly default: number | string | boolean | string[] | null;
  /** Carries V for the Values type; never set. */
  readonly value?: V;
}

export type Table = Record<string, Flag<unknown>>;
export type Values<T extends Table> = { [K in keyof T]: T[K] extends Flag<infer V> ? V : never };

/** A flag with a value and a default. */
export function one<T>(kind: Kind<T>, o: FlagOptions & { default: number | string }): Flag<T> {
  return { ...o, kind, repeatable: false };
}

/** A flag with a value and no default: null when not given. */
export function opt<T>(kind: Kind<T>, o: FlagOptions): Flag<T | null> {
  return { ...o, kind, repeatable: false, default: null };
}

/** A repeatable flag: each occurrence adds a value; in the file, an array. Given values replace the default list. */
export function many<T>(kind: Kind<T>, o: FlagOptions & { default: string[] }): Flag<T[]> {
  return { ...o, kind, repeatable: true };
}

/** A switch: off unless given. */
export function sw(o: FlagOptions): Flag<boolean> {
  return { ...o, kind: null, repeatable: false, default: false };
}

// --- kinds -----------------------------------------------------------------

export function int(min: number, max: number, arg = 'N'): Kind<number> & { min: number; max: number } {
  return {
    expect: 'a whole number', arg, min, max,
    schema: { type: 'integer', minimum: min, maximum: max },
    parse(raw, flag) {
      if (!/^\d+$/.test(raw)) throw new ConfigError(flag, `expected a whole number, got "${raw}"`);
      const n = Number(raw);
      if (n < min || n > max) throw new ConfigError(flag, `must be between ${min} and ${max}, got ${n}`);
      return n;
    },
  };
}

/** A string that must match `re` (anchored); `expect` says what that means. */
export function text(arg: string, re: RegExp, expect: string): Kind<string> {
  return {
    expect, arg,
    schema: { type: 'string', pattern: re.source },
    parse(raw, flag) {
      if (!re.test(raw)) throw new ConfigError(flag, `expected ${expect}, got "${raw}"`);
      return raw;
    },
  };
}

export function path(arg = 'FILE'): Kind<string> {
  return text(arg, /^[^\0]+$/, 'a file path');
}

/** One of a fixed list of words. */
export function oneOf<const V extends string>(values: readonly V[]): Kind<V> {
  const expect = `${values.slice(0, -1).join(', ')} or ${values[values.length - 1]}`;
  return {
    expect, arg: values.join('|'),
    schema: { type: 'string', enum: values },
    parse(raw, flag) {
      if (!(values as readonly string[]).includes(raw)) throw new ConfigError(flag, `expected ${expect}, got "${raw}"`);
      return raw as V;
    },
  };
}

/** host:port; port 0 (any free port) only where it is an address to listen on. */
export function hostPort(o: { listen: boolean }): Kind<HostPort> {
  return {
    expect: 'HOST:PORT', arg: 'HOST:PORT',
    schema: { type: 'string', pattern: HOST_PORT_PATTERN },
    parse(raw, flag) {
      try {
        return parseHostPort(raw, { portZero: o.listen });
      } catch (err) {
        throw new ConfigError(flag, (err as Error).message);
      }
    },
  };
}

/** Comma-separated addresses to connect to, each once; kept as written (placement hashes the strings). */
export function hostPortList(): Kind<string[]> {
  const one = HOST_PORT_PATTERN.slice(1, -1);
  return {
    expect: 'HOST:PORT[,HOST:PORT...]', arg: 'HOST:PORT[,...]',
    schema: { type: 'string', pattern: `^${one}(?:,${one})*$` },
    parse(raw, flag) {
      const list = raw.split(',');
      const seen = new Set<string>();
      for (const a of list) {
        try {
          parseHostPort(a);
        } catch (err) {
          throw new ConfigError(flag, (err as Error).message);
        }
        if (seen.has(a)) throw new ConfigError(flag, `"${a}" is listed twice`);
        seen.add(a);
      }
      return list;
    },
  };
}

// --- the command line ----------------------------------------------------------

export type Given<T extends Table> = Partial<Values<T>>;

/** Parses argv into the values of the flags it gives (defaults not applied); throws ConfigError. */
export function parseArgv<T extends Table>(table: T, argv: string[]): Given<T> {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {};
  const negations = new Map<string, string>();
  for (const [name, f] of Object.entries(table)) {
    options[name] = { type: f.kind === null ? 'boolean' : 'string', multiple: f.repeatable, ...(f.short ? { short: f.short } : {}) };
    if (f.negatable) {
      options[`no-${name}`] = { type: 'boolean' };
      negations.set(`no-${name}`, name);
    }
  }
  // parseArgs has no optional values: "--NAME" alone becomes "--NAME=".
  const args = argv.map((a) => (a.startsWith('--') && table[a.slice(2)]?.optionalValue ? `${a}=` : a));
  let tokens;
  try {
    tokens = parseArgs({ args, options, strict: true, allowPositionals: false, tokens: true }).tokens;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const flag = /'(-[^' ]+)/.exec(e.message)?.[1] ?? 'arguments';
    throw new ConfigError(flag, e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? 'unknown flag (see --help)' : e.message.split('\n')[0]);
  }
  const given: Record<string, unknown> = {};
  for (const t of tokens) {
    if (t.kind !== 'option') continue;
    const negated = negations.get(t.name);
    const name = negated ?? t.name;
    const f = table[name];
    const value = f.kind === null ? negated === undefined : f.kind.parse(t.value!, `--${name}`);
    if (f.repeatable) ((given[name] ??= []) as unknown[]).push(value);
    else given[name] = value; // the last one wins, so --no-X after --X turns it off
  }
  return given as Given<T>;
}

// --- the configuration file -------------------------------------------------------

/** The --config file's JSON Schema (draft-07, which editors know best), generated from the table. */
export function jsonSchema(table: Table, title: string, description: string): Record<string, unknown> {
  const properties: Record<string, unknown> = {
    $schema: { type: 'string', description: 'The schema this file follows, for editors; ignored.' },
  };
  for (const [name, f] of Object.entries(table)) {
    if (f.cliOnly) continue;
    let schema: Record<string, unknown> = f.kind === null ? { type: 'boolean' } : f.kind.schema;
    if (f.repeatable) schema = { type: 'array', items: schema };
    if (f.optionalValue) schema = { anyOf: [{ type: 'boolean' }, schema] };
    properties[name] = { description: plain(f.help), ...schema, ...(f.default === null ? {} : { default: f.default }) };
  }
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title,
    description,
    type: 'object',
    properties,
    additionalProperties: false,
  };
}

const validators = new WeakMap<Table, ValidateFunction>();

function validator(table: Table): ValidateFunction {
  let v = validators.get(table);
  if (v === undefined) {
    // ajv is loaded only when a file is read: it costs some 20 MiB of memory.
    const { Ajv } = createRequire(import.meta.url)('ajv') as { Ajv: typeof AjvClass };
    v = new Ajv({ allErrors: false, strict: true }).compile(jsonSchema(table, '', ''));
    validators.set(table, v);
  }
  return v;
}

/**
 * A parsed --config document: checked against the table's schema with ajv,
 * then each field parsed by its flag's kind, exactly as the flag's text
 * would be. Errors name the file and the field.
 */
export function parseFile<T extends Table>(table: T, doc: unknown, file: string): Given<T> {
  const fail = (field: string | null, message: string): never => {
    throw new ConfigError('--config', `${file}: ${field === null ? '' : `field "${field}": `}${message}`);
  };
  const validate = validator(table);
  if (!validate(doc)) {
    const e = validate.errors![0];
    if (e.instancePath === '') {
      if (e.keyword === 'additionalProperties') fail(null, `unknown field "${(e.params as { additionalProperty: string }).additionalProperty}"`);
      fail(null, 'expected a JSON object');
    }
    fail(...fileError(table, doc as Record<string, unknown>, e));
  }
  const given: Record<string, unknown> = {};
  for (const [field, value] of Object.entries(doc as Record<string, unknown>)) {
    if (field === '$schema') continue;
    const f = table[field];
    try {
      given[field] = fileValue(f, field, value);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      fail(field, err.message.slice(err.flag.length + 2));
    }
  }
  return given as Given<T>;
}

/** The field and the message for a schema error: the flag's own message for the value where it has one. */
function fileError(table: Table, doc: Record<string, unknown>, e: ErrorObject): [string, string] {
  const [field, index] = e.instancePath.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  const f = table[field];
  const whole = doc[field];
  if (f === undefined) return [field, `expected a string, got ${JSON.stringify(whole)}`]; // "$schema"
  const value = index === undefined ? whole : (whole as unknown[])[Number(index)];
  if (f.repeatable && index === undefined && !Array.isArray(whole)) return [field, `expected an array of ${f.kind!.expect}, got ${JSON.stringify(whole)}`];
  if (f.kind === null) return [field, `expected true or false, got ${JSON.stringify(value)}`];
  if (typeof value === 'string' || typeof value === 'number') {
    try {
      f.kind.parse(String(value), field);
    } catch (err) {
      if (err instanceof ConfigError) return [field, err.message.slice(err.flag.length + 2)];
      throw err;
    }
  }
  // A value the flag's parser would take in the wrong JSON type ("2" for 2).
  return [field, `expected ${f.optionalValue ? 'true, false or ' : ''}${f.kind.expect}, got ${JSON.stringify(value)}`];
}

function fileValue(f: Flag<unknown>, field: string, value: unknown): unknown {
  if (f.kind === null) return value;
  if (f.optionalValue && typeof value === 'boolean') return value ? f.kind.parse('', field) : undefined;
  if (f.repeatable) return (value as unknown[]).map((v) => f.kind!.parse(String(v), field));
  return f.kind.parse(String(value), field);
}

// --- defaults ----------------------------------------------------------------------

/** Every flag's value: given, else its default (parsed like a given value), else null. */
export function withDefaults<T extends Table>(table: T, given: Given<T>): Values<T> {
  const values: Record<string, unknown> = {};
  for (const [name, f] of Object.entries(table)) {
    const g = (given as Record<string, unknown>)[name];
    if (g !== undefined) values[name] = g;
    else if (f.default === null || f.kind === null) values[name] = f.default;
    else values[name] = fileValue(f, name, f.default);
  }
  return values as Values<T>;
}

// --- documentation -----------------------------------------------------------------

/** Light Markdown to plain text: `code` and [links](#x) lose their marks. */
export function plain(md: string): string {
  return md.replace(/`([^`]*)`/g, '$1').replace(/\[([^\]]*)\]\([^)]*\)/g, '$1');
}

/** How the flag is written in usage: --name ARG, --[no-]name, --name[=ARG]. */
export function usage(name: string, f: Flag<unknown>): string {
  const long = f.negatable ? `--[no-]${name}` : `--${name}`;
  const short = f.short ? `-${f.short}, ` : '';
  if (f.kind === null) return `${short}${long}`;
  return `${short}${long}${f.optionalValue ? `[=${f.kind.arg}]` : ` ${f.kind.arg}`}`;
}

function shownDefault(f: Flag<unknown>): string | null {
  if (f.shownDefault !== undefined) return f.shownDefault;
  if (f.default === null || f.default === false || (Array.isArray(f.default) && f.default.length === 0)) return null;
  return Array.isArray(f.default) ? f.default.join(', ') : String(f.default);
}

/** The notes every flag's text ends with, from its attributes. */
function notes(f: Flag<unknown>): string[] {
  return [f.repeatable ? 'repeatable' : '', f.reload ? 'SIGHUP applies it' : ''].filter((n) => n !== '');
}

function sections(table: Table): Map<string, [string, Flag<unknown>][]> {
  const by = new Map<string, [string, Flag<unknown>][]>();
  for (const [name, f] of Object.entries(table)) {
    if (!by.has(f.section)) by.set(f.section, []);
    by.get(f.section)!.push([name, f]);
  }
  return by;
}

/** The --help text: the intro, then each section's flags with their text wrapped beside them. */
export function helpText(table: Table, intro: string): string {
  const col = 32;
  const width = 100;
  const out = [intro.trimEnd(), ''];
  for (const [section, flags] of sections(table)) {
    out.push(` ${section}`);
    for (const [name, f] of flags) {
      const d = shownDefault(f);
      const tail = [...notes(f), ...(d === null ? [] : [`default ${d}`])];
      const words = `${plain(f.help)}${tail.length > 0 ? ` (${tail.join('; ')})` : ''}`.split(' ');
      const lines: string[] = [];
      let line = '';
      for (const w of words) {
        if (line !== '' && col + line.length + 1 + w.length > width) {
          lines.push(line);
          line = w;
        } else {
          line = line === '' ? w : `${line} ${w}`;
        }
      }
      lines.push(line);
      const head = `  ${usage(name, f)}`;
      if (head.length < col) out.push(head.padEnd(col) + lines.shift());
      else out.push(head);
      for (const l of lines) out.push(' '.repeat(col) + l);
    }
    out.push('');
  }
  return out.join('\n');
}

/** The README's flag tables, one per section. */
export function markdownTable(table: Table): string {
  const cell = (s: string): string => s.replace(/\|/g, '\\|');
  const out: string[] = [];
  for (const [section, flags] of sections(table)) {
    out.push(`**${section}**`, '', '| flag | default | meaning |', '| --- | --- | --- |');
    for (const [name, f] of flags) {
      const d = f.shownDefault ?? (f.kind === null ? (f.cliOnly ? '' : 'off') : [f.default ?? []].flat().map((v) => `\`${v}\``).join(', '));
      const n = notes(f);
      const meaning = `${f.help}${n.length > 0 ? ` (${n.join('; ')})` : ''}`;
      out.push(`| ${cell(`\`${usage(name, f)}\``)} | ${cell(d)} | ${cell(meaning)} |`);
    }
    out.push('');
  }
  return out.join('\n');
}
