// Reading `perf report` for bench/profile.ts: each sampled symbol's own time is
// charged to one part of a request's life (our parsing, heads, affinity...;
// Node's streams; V8's collector; the kernel), so a profile reads as µs of
// CPU per request by part. JIT code is named through V8's jitdump
// (`--perf-prof`, then `perf inject --jit`): with the plain perf map
// (`--perf-basic-prof`) a code object that V8 freed and whose memory later
// code reused keeps its old name, and samples of the new code are charged to
// it (seen in memcached mode, where code is re-optimised for longer).

/** The parts, in the order a report lists them. */
export const PARTS = [
  'ours: parsing (src/http/)',
  'ours: heads (head.ts)',
  'ours: connections and forwarding',
  'ours: affinity (cookies, near cache, batches, resolver, memcached client)',
  'ours: metrics (stats.ts, metrics.ts)',
  'dependencies (node_modules)',
  "Node's JavaScript (net, streams, timers)",
  'V8: builtins, inline caches, regexps',
  'V8: garbage collection',
  'V8: JIT compilers',
  'V8: runtime',
  'Node C++ and libuv',
  "HAProxy's own code (a peer, for comparison)",
  'kernel',
  'libc and other native code',
] as const;
export type Part = (typeof PARTS)[number];

export interface Sample {
  /** Share of all samples, in per cent. */
  percent: number;
  dso: string;
  kernel: boolean;
  symbol: string;
}

// `  12.34%  jitted-1-2.so  [.] JS:*'name file:///…/src/head.ts:70:29`
const LINE = /^\s*([\d.]+)%\s+(\S+)\s+\[([k.])\]\s+(.+?)\s*$/;

/** The rows of `perf report --no-children --sort dso,sym --stdio`. */
export function parseReport(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = LINE.exec(line);
    if (m) out.push({ percent: Number(m[1]), dso: m[2], kernel: m[3] === 'k', symbol: m[4] });
  }
  return out;
}

// Our modules by part; any other file under src/ or workers/ is connection handling and forwarding.
const AFFINITY = /^src\/(affinity|near-cache|cookies|learn|resolver|batch|hash|shared-lock|route)\.ts$|^src\/(memcache|store)\/|^workers\/affinity\.ts$/;
const METRICS = /^src\/(stats|metrics)\.ts$/;
const GC = /Scaveng|MarkCompact|MinorMS|Sweep|Marking|Marker|Evacuat|Compactor|GCTracer|Heap::|HeapObject::Size|RememberedSet|SlotSet|ArrayBufferSweeper|StoreBuffer|PagedSpace|NewSpace|LargeObjectSpace|MemoryAllocator|MemoryChunk|WeakObjects|Worklist/;
const COMPILER = /compiler::|turboshaft::|maglev::|Maglev|Turbofan|TurboFan|Compiler::|Compile|Parser|Scanner|Zone|Bytecode(Generator|ArrayBuilder|Analysis)|Deoptimiz|JSHeapBroker|OptimizedCompilationJob/;

/** The module of a JavaScript frame of ours ('src/head.ts'), or null for anyone else's. */
export function ourModule(symbol: string): string | null {
  if (!symbol.startsWith('JS:') || symbol.includes('/node_modules/')) return null;
  const m = /file:\/\/\S*?\/((?:src|workers)\/[^\s:]+\.ts):\d+/.exec(symbol);
  return m ? m[1] : null;
}

export function partOf(s: Sample): Part {
  if (s.kernel) return 'kernel';
  if (s.dso === 'haproxy') return "HAProxy's own code (a peer, for comparison)";
  const sym = s.symbol;
  if (sym.startsWith('JS:')) {
    const mod = ourModule(sym);
    if (mod === null) return sym.includes('/node_modules/') ? 'dependencies (node_modules)' : "Node's JavaScript (net, streams, timers)";
    if (mod.startsWith('src/http/')) return 'ours: parsing (src/http/)';
    if (mod === 'src/head.ts') return 'ours: heads (head.ts)';
    if (AFFINITY.test(mod)) return 'ours: affinity (cookies, near cache, batches, resolver, memcached client)';
    if (METRICS.test(mod)) return 'ours: metrics (stats.ts, metrics.ts)';
    return 'ours: connections and forwarding';
  }
  if (/^(Builtin:|Builtins_|BytecodeHandler:|Handler:|Stub:|RegExp)/.test(sym)) return 'V8: builtins, inline caches, regexps';
  // Whose C++ it is, by the function's own name: its parameters name other namespaces' types.
  const name = sym.split('(')[0];
  if (/^(non-virtual thunk to )?node::/.test(name) || name.startsWith('uv_') || name.startsWith('uv__')) return 'Node C++ and libuv';
  if (name.includes('v8::') || name.startsWith('Runtime_') || s.dso.startsWith('jitted-')) {
    if (GC.test(name)) return 'V8: garbage collection';
    if (COMPILER.test(name)) return 'V8: JIT compilers';
    return 'V8: runtime';
  }
  return 'libc and other native code';
}

/** Per cent of the samples in each part. */
export function byPart(samples: Sample[]): Map<Part, number> {
  const out = new Map<Part, number>(PARTS.map((p) => [p, 0]));
  for (const s of samples) {
    const p = partOf(s);
    out.set(p, out.get(p)! + s.percent);
  }
  return out;
}

/** Our own frames' per cent, by function and module ("name src/head.ts"), most first. */
export function ourFunctions(samples: Sample[]): [string, number][] {
  const out = new Map<string, number>();
  for (const s of samples) {
    const mod = ourModule(s.symbol);
    if (mod === null) continue;
    // JS:*'name file:///…  (the tier mark and quote vary: *, +, ^, ~)
    const name = /^JS:[*+^~]?'?(\S*)/.exec(s.symbol)?.[1] ?? '?';
    const key = `${name} ${mod}`;
    out.set(key, (out.get(key) ?? 0) + s.percent);
  }
  return [...out].sort((a, b) => b[1] - a[1]);
}
