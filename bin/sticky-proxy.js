#!/usr/bin/env -S node --max-semi-space-size=1 --optimize-for-size --liftoff-only --no-node-snapshot
// A small young generation makes V8 collect streamed body buffers promptly,
// and --optimize-for-size keeps the old generation from growing ahead of
// need; together they keep resident memory flat (see README, Benchmarks).
// --liftoff-only keeps V8 from optimising WebAssembly: the only WebAssembly a
// start runs is the TypeScript stripper, whose optimised code would stay resident.
// --no-node-snapshot builds each isolate (main thread, every event loop and
// affinity worker) from Node's bootstrap code instead of copying its startup
// snapshot: 4 MiB less at start for one thread, 7 for two, and 6-11 less at
// the 5,000-connection peak, for ~20 ms more start (see README, Benchmarks).
//
// The proxy is TypeScript run by Node 24's type stripping; an older Node would
// fail on the .ts import with ERR_UNKNOWN_FILE_EXTENSION, so say what to do
// instead, before importing it.
const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  process.stderr.write(`sticky-proxy: needs Node.js 24 or newer; this is ${process.version}. Run "npm install" (it brings Node 24) and use npx sticky-proxy, or install Node 24.\n`);
  process.exit(2);
}
// Node's compile cache keeps what type stripping produced (and V8's code for
// it), so every start after the first loads no TypeScript stripper at all:
// some 20 MiB less resident memory, and a faster start. NODE_COMPILE_CACHE
// names its directory (default: the system's temp directory). Worker threads
// (event loops, affinity workers) inherit it through the environment only.
const { enableCompileCache, getCompileCacheDir } = await import('node:module');
enableCompileCache();
const cacheDir = getCompileCacheDir();
if (cacheDir !== undefined) process.env.NODE_COMPILE_CACHE = cacheDir;
await import('../src/cli.ts');
