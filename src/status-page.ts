// The admin listener's HTML status page (GET /): the backends with their state,
// weight and requests in flight, and how often affinity lookups find a binding.
// One self-contained document: no script, no external asset, every value escaped.

export interface BackendView {
  name: string;
  url: string;
  weight: number;
  state: string;
  active: number;
}

/** Affinity lookups of the whole process, from its metrics; null when affinity is off. */
export interface Lookups {
  hit: number;
  miss: number;
  storeFailed: number;
}

export interface StatusView {
  backends: BackendView[];
  lookups: Lookups | null;
  /** 'ok', 'degraded' or 'off', as /readyz says it. */
  affinity: string;
  /** memcached servers and whether each answers; absent with the embedded store. */
  store?: Record<string, boolean>;
  version: string;
  /** Seconds between reloads of the page; 0: none. */
  refreshSeconds: number;
}

const LOOKUP_LINE = /^sticky_affinity_lookups_total\{outcome="(hit|miss|store_failed)"\} (\S+)$/gm;

/** The process's affinity lookups, read from its Prometheus text (the same numbers /metrics shows). */
export function lookupsFromMetrics(text: string): Lookups {
  const l: Lookups = { hit: 0, miss: 0, storeFailed: 0 };
  for (const m of text.matchAll(LOOKUP_LINE)) {
    const n = Number(m[2]);
    if (m[1] === 'hit') l.hit = n;
    else if (m[1] === 'miss') l.miss = n;
    else l.storeFailed = n;
  }
  return l;
}

/** Hits over all lookups, or null before the first lookup. */
export function hitRate(l: Lookups): number | null {
  const total = l.hit + l.miss + l.storeFailed;
  return total === 0 ? null : l.hit / total;
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

function cell(v: string | number, cls = ''): string {
  return `<td${cls === '' ? '' : ` class="${escapeHtml(cls)}"`}>${escapeHtml(String(v))}</td>`;
}

function affinityText(v: StatusView): string {
  if (v.lookups === null) return 'off (plain load balancing)';
  const rate = hitRate(v.lookups);
  const { hit, miss, storeFailed } = v.lookups;
  const counts = `${hit} hits, ${miss} misses, ${storeFailed} store failures`;
  return rate === null ? 'no lookups yet' : `${(rate * 100).toFixed(1)}% (${counts})`;
}

export function renderStatusPage(v: StatusView): string {
  const rows = v.backends.map((b) => `<tr>${cell(b.name)}${cell(b.url)}${cell(b.state, `state ${b.state}`)}${cell(b.weight, 'n')}${cell(b.active, 'n')}</tr>`).join('\n');
  const store = v.store === undefined ? '' : `<p>memcached: ${Object.entries(v.store).map(([s, up]) => `<span class="state ${up ? 'up' : 'down'}">${escapeHtml(s)} ${up ? 'up' : 'down'}</span>`).join(', ')}</p>`;
  const refresh = v.refreshSeconds > 0 ? `<meta http-equiv="refresh" content="${v.refreshSeconds}">` : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
${refresh}
<title>sticky-proxy status</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; min-width: 40em; }
th, td { padding: .35em .8em; border-bottom: 1px solid #ddd; text-align: left; }
th { background: #f3f3f3; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.state { font-weight: 600; }
.up { color: #17702a; }
.down, .disabled { color: #b3261e; }
.draining { color: #9a6700; }
footer { margin-top: 2em; color: #777; font-size: 13px; }
</style>
</head>
<body>
<h1>sticky-proxy</h1>
<h2>Backends</h2>
<table id="backends">
<thead><tr><th>name</th><th>url</th><th>state</th><th>weight</th><th>active requests</th></tr></thead>
<tbody>
${rows}
</tbody>
</table>
<h2>Affinity</h2>
<p>Lookup hit rate: <strong id="hit-rate">${escapeHtml(affinityText(v))}</strong></p>
<p>Affinity: <span class="state ${escapeHtml(v.affinity === 'ok' ? 'up' : v.affinity === 'degraded' ? 'down' : '')}">${escapeHtml(v.affinity)}</span></p>
${store}
<footer>sticky-proxy ${escapeHtml(v.version)}${v.refreshSeconds > 0 ? ` · reloads every ${v.refreshSeconds} s` : ''}</footer>
</body>
</html>
`;
}
