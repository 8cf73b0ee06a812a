// bench:profile's reading of `perf report`: every sampled frame goes to the
// right part of a request's life, and our functions are summed across V8's tiers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { byPart, ourFunctions, parseReport, partOf } from '../bench/lib/perf-report.ts';

// Lines as `perf report --no-children --sort dso,sym --stdio` prints them after `perf inject --jit`.
const REPORT = `# To display the perf.data header info, please use --header/--header-only options.
#
# Overhead  Shared Object         Symbol
# ........  ....................  ......
#
    10.18%  [kernel.kallsyms]     [k] _raw_spin_unlock_irqrestore
     1.36%  jitted-12914-5212.so  [.] JS:*'onStreamRead node:internal/stream_base_commons:166:22
     1.29%  jitted-12914-4431.so  [.] JS:*'upstreamHead file:///work/main/src/head.ts:70:29
     0.40%  jitted-12914-4400.so  [.] JS:+'upstreamHead file:///work/main/src/head.ts:70:29
     1.25%  jitted-12914-4702.so  [.] JS:*'parseResponseHead file:///work/main/src/http/response.ts:80:34
     0.93%  jitted-12914-5301.so  [.] JS:*'#find file:///work/main/src/near-cache.ts:202:8
     0.30%  jitted-12914-5302.so  [.] JS:*'encodeStore file:///work/main/src/memcache/codec.ts:128:28
     0.20%  jitted-12914-5303.so  [.] JS:*'observe file:///work/main/src/stats.ts:40:3
     0.75%  jitted-12914-5304.so  [.] JS:*'upstreamData file:///work/main/src/forward.ts:270:15
     0.10%  jitted-12914-5305.so  [.] JS:*'parseSetCookie file:///work/main/node_modules/cookie/dist/index.js:230:31
     0.90%  jitted-12914-10.so    [.] Builtin:CreateTypedArray
     0.88%  node                  [.] Builtins_RecordWriteSaveFP
     0.50%  node                  [.] v8::internal::Scavenger::ScavengeObject<v8::internal::FullHeapObjectSlot>(v8::internal::FullHeapObjectSlot, v8::internal::Tagged<v8::internal::HeapObject>)
     0.40%  node                  [.] v8::internal::compiler::GraphReducer::ReduceTop()
     0.30%  node                  [.] v8::internal::JSTypedArray::GetBuffer()
     0.67%  node                  [.] node::StreamBase::CallJSOnreadMethod(long, v8::Local<v8::ArrayBuffer>, unsigned long, node::StreamBase::StreamBaseJSChecks)
     0.17%  node                  [.] uv__io_poll
     0.12%  libc.so.6             [.] __memmove_avx512_unaligned_erms
     2.00%  haproxy               [.] process_stream
`;

test('each frame goes to its part: ours by module, Node\'s JavaScript, dependencies, V8 by kind, Node\'s C++, the kernel, libc, a peer\'s own code', () => {
  assert.deepEqual(parseReport(REPORT).map(partOf), [
    'kernel',
    "Node's JavaScript (net, streams, timers)",
    'ours: heads (head.ts)',
    'ours: heads (head.ts)',
    'ours: parsing (src/http/)',
    'ours: affinity (cookies, near cache, batches, resolver, memcached client)',
    'ours: affinity (cookies, near cache, batches, resolver, memcached client)',
    'ours: metrics (stats.ts, metrics.ts)',
    'ours: connections and forwarding',
    'dependencies (node_modules)',
    'V8: builtins, inline caches, regexps',
    'V8: builtins, inline caches, regexps',
    'V8: garbage collection',
    'V8: JIT compilers',
    'V8: runtime',
    'Node C++ and libuv',
    'Node C++ and libuv',
    'libc and other native code',
    "HAProxy's own code (a peer, for comparison)",
  ]);
});

test('parts add up to every sample; a function is summed over its tiers (optimised and mid-tier code alike)', () => {
  const samples = parseReport(REPORT);
  const total = samples.reduce((t, s) => t + s.percent, 0);
  const parts = byPart(samples);
  assert.ok(Math.abs([...parts.values()].reduce((t, p) => t + p, 0) - total) < 1e-9);
  assert.ok(Math.abs(parts.get('ours: heads (head.ts)')! - 1.69) < 1e-9);
  const fns = ourFunctions(samples);
  assert.deepEqual(fns[0][0], 'upstreamHead src/head.ts');
  assert.ok(Math.abs(fns[0][1] - 1.69) < 1e-9);
  assert.ok(!fns.some(([f]) => f.includes('parseSetCookie') || f.includes('onStreamRead')), 'only our own modules');
});
