// The event loop's own affinity work per request, in nanoseconds: session keys
// out of the Cookie header (sessionKeys) and the near cache's answer for them
// (NearCache.get), on 5,000 sessions in a 65,536-entry cache (the defaults),
// and the embedded store's lookup of the same keys (EmbeddedStore.lookup, the
// store without --memcache, 262,144 entries).
// What the socket benchmarks cannot resolve: on the shared development
// machine two identical proxies differ by ±6% there, and this is ~1 µs of a
// request's ~50. Usage:
//   node bench/affinity.ts [--against DIR] [--rounds N]
// --against DIR: another checkout (say `git worktree add /tmp/base HEAD~`),
// measured in the same run, its rounds alternating with this tree's.
import { median, microRun, nsPerCall } from './lib/micro.ts';

const { trees, rounds } = microRun();
const N = 5000;
const OPS = 400_000;

interface Subject { label: string; keys(i: number): string; get(key: string): boolean; lookup(key: string): boolean }

async function subject(root: string, label: string): Promise<Subject> {
  const { sessionKeys, SessionCookieNames } = await import(`${root}/src/cookies.ts`);
  const { NearCache, nearCacheBytes } = await import(`${root}/src/near-cache.ts`);
  const { EmbeddedStore, embeddedStoreBytes } = await import(`${root}/src/store/embedded.ts`);
  const store = new EmbeddedStore(new SharedArrayBuffer(embeddedStoreBytes(262144)));
  const names = new SessionCookieNames(['connect.sid', 'PHPSESSID', 'JSESSIONID', 'ASP.NET_SessionId']);
  const backends = ['srv1', 'srv2'];
  const slots = { slotOf: (n: string) => backends.indexOf(n), nameOf: (i: number) => backends[i] ?? '' };
  const cache = new NearCache(new SharedArrayBuffer(nearCacheBytes(65536)), 65536, 60_000, 300_000, slots);
  const now = Date.now();
  for (let i = 0; i < N; i++) cache.set(`PHPSESSID:${heads.ids[i]}`, backends[i & 1], now);
  for (let i = 0; i < N; i++) await store.set(`PHPSESSID:${heads.ids[i]}`, backends[i & 1], 1800, true);
  const s = new Int32Array(1);
  const e = new Int32Array(1);
  return {
    label,
    keys(i: number): string {
      s[0] = heads.starts[i];
      e[0] = heads.ends[i];
      return sessionKeys(heads.bufs[i], s, e, 1, names);
    },
    get: (key: string) => cache.get(key, now),
    lookup: (key: string) => store.lookup(key) !== null,
  };
}

// Request heads as wrk's sessions.lua sends them: the session id between two other cookies.
const heads = { bufs: [] as Buffer[], starts: [] as number[], ends: [] as number[], ids: [] as string[] };
for (let i = 0; i < N; i++) {
  const id = (i.toString(16) + 'f3a9c1d27b8e4605a1c3e5f7b9d2').slice(0, 26);
  const pre = 'GET /cart HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nCookie: ';
  const cookie = `theme=dark; PHPSESSID=${id}; _ga=GA1.2.3`;
  heads.bufs.push(Buffer.from(`${pre}${cookie}\r\n\r\n`, 'latin1'));
  heads.starts.push(pre.length);
  heads.ends.push(pre.length + cookie.length);
  heads.ids.push(id);
}

const time = (f: (i: number) => number): number => nsPerCall(f, OPS, N);

const subjects = await Promise.all(trees.map((t, i) => subject(t, i === 0 ? 'this tree' : t)));
const results = subjects.map(() => ({ keys: [] as number[], both: [] as number[], embedded: [] as number[] }));
for (let r = 0; r < rounds; r++) {
  subjects.forEach((sub, j) => {
    results[j].keys.push(time((i) => sub.keys(i).length));
    results[j].both.push(time((i) => (sub.get(sub.keys(i)) ? 1 : 0)));
    results[j].embedded.push(time((i) => (sub.lookup(sub.keys(i)) ? 1 : 0)));
  });
}
console.log(`| tree | session keys, ns | + near cache get, ns | get alone, ns | + embedded store lookup, ns | lookup alone, ns |`);
console.log(`|---|---:|---:|---:|---:|---:|`);
subjects.forEach((sub, j) => {
  const k = median(results[j].keys);
  const b = median(results[j].both);
  const e = median(results[j].embedded);
  console.log(`| ${sub.label} | ${k.toFixed(0)} | ${b.toFixed(0)} | ${(b - k).toFixed(0)} | ${e.toFixed(0)} | ${(e - k).toFixed(0)} |`);
});
console.log(`\nmedians of ${rounds} rounds of ${OPS} requests over ${N} sessions; node ${process.version}`);
