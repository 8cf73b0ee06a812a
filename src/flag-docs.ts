// The files generated from the flag table: sticky-proxy.schema.json and the
// README's flag tables. `npm run generate` (this file run directly) writes
// them; test/flags.test.ts fails when the committed ones differ.
import { readFileSync, writeFileSync } from 'node:fs';
import { jsonSchema, markdownTable } from './flag-kit.ts';
import { FLAGS, SCHEMA_DESCRIPTION, SCHEMA_TITLE } from './flags.ts';

export const SCHEMA_FILE = new URL('../sticky-proxy.schema.json', import.meta.url);
export const README_FILE = new URL('../README.md', import.meta.url);
export const README_BEGIN = '<!-- flags: generated from src/flags.ts by `npm run generate`; edit there, not here -->';
export const README_END = '<!-- /flags -->';

export function schemaText(): string {
  return `${JSON.stringify(jsonSchema(FLAGS, SCHEMA_TITLE, SCHEMA_DESCRIPTION), null, 2)}\n`;
}

/** The README with its generated flag tables replaced by the table's current ones; the prose around them is kept. */
export function readmeWithFlags(readme: string): string {
  const begin = readme.indexOf(README_BEGIN);
  const end = readme.indexOf(README_END);
  if (begin < 0 || end < begin) throw new Error(`README.md has no "${README_BEGIN}" ... "${README_END}" markers`);
  return `${readme.slice(0, begin + README_BEGIN.length)}\n\n${markdownTable(FLAGS)}\n${readme.slice(end)}`;
}

if (import.meta.main) {
  writeFileSync(SCHEMA_FILE, schemaText());
  writeFileSync(README_FILE, readmeWithFlags(readFileSync(README_FILE, 'utf8')));
  console.log('wrote sticky-proxy.schema.json and the flag tables of README.md');
}
