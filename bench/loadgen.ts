// The load generator: one process, one thread, raw keep-alive sockets. It is
// forked by the suite (bench/lib/drive.ts) so it never shares an event loop with
// the suite's origins, gets one Job over IPC, and answers with progress lines
// and one Result holding its HDR histogram (compressed, base64).
//
// Clients behave like the peers' sessions.lua: a population of learnt session
// ids; a request carries `Cookie: theme=dark; PHPSESSID=<id>; _ga=GA1.2.3` for a
// random learnt id with probability 1-newShare, else no cookie; ids are learnt
// from Set-Cookie. Requests are prebuilt buffers (one per learnt session).
//
// Closed loop (rate 0): each active connection sends its next request as soon
// as the previous answer is complete. Fixed rate (rate R): each connection has a
// schedule of intended send times at R/connections per second; a request goes
// out at its intended time or, if the connection is still busy, as soon as it
// is free, and its latency counts from the intended time (wrk2's correction for
// coordinated omission).
import { connect, type Socket } from 'node:net';
import * as hdr from 'hdr-histogram-js';

export interface Job {
  port: number;
  connections: number;
  /** Extra connections that stay open, sending one request every idlePingMs. */
  idleConnections: number;
  idlePingMs: number;
  warmupMs: number;
  durationMs: number;
  /** Requests per second over all active connections; 0 = closed loop. */
  rate: number;
  /** Share of requests sent without a session cookie. */
  newShare: number;
  method: 'GET' | 'POST';
  paths: string[];
  bodyBytes: number;
  cookieName: string;
  maxSessions: number;
  requestTimeoutMs: number;
  progressMs: number;
  /** Date.now() at which to open the connections, so that generators loaded together measure the same window; absent: at once. */
  startAt?: number;
}

export interface Result {
  histogram: string;
  requests: number;
  seconds: number;
  errors: Record<string, number>;
  /** Answers to a learnt session that came from another real-server than the one that set the cookie. */
  affinityChecked: number;
  affinityMisses: number;
  sessionsLearnt: number;
  bytesIn: number;
  idleOpenAtEnd: number;
  idleReopened: number;
  idleRequests: number;
  cpuSeconds: number;
}

export type Message =
  | { type: 'progress'; phase: 'connect' | 'warmup' | 'measure'; elapsedMs: number; totalMs: number; requests: number; errors: number }
  | { type: 'measure-start' }
  | { type: 'measure-end' }
  | { type: 'result'; result: Result }
  | { type: 'fatal'; message: string };

const CRLFCRLF = Buffer.from('\r\n\r\n');
const H_HEAD = 0; // reading the response head
const H_LENGTH = 1; // Content-Length body
const H_CHUNK_SIZE = 2;
const H_CHUNK_DATA = 3;
const H_CHUNK_CRLF = 4;
const H_TRAILER = 5;
const H_UNTIL_CLOSE = 6;

const SERVER_TAG = '"real-server":"';

let job: Job;
let host = '';
let bodyBuf: Buffer = Buffer.alloc(0);
// The session population: a prebuilt request and the real-server that set it.
const popReq: Buffer[] = [];
const popServer: string[] = [];
const newReq: Buffer[] = [];

let measuring = false;
let stopped = false;
let hist: hdr.Histogram;
let requests = 0; // completed in the measured window
let progressRequests = 0; // completed since the last progress line
let progressErrors = 0;
const errors: Record<string, number> = {};
let checked = 0;
let misses = 0;
let bytesIn = 0;
let idleOpen = 0;
let idleReopened = 0;
let idleRequests = 0;
const conns: Conn[] = [];

function error(kind: string): void {
  progressErrors++;
  if (measuring) errors[kind] = (errors[kind] ?? 0) + 1;
}

function request(path: string, cookie: string | null): Buffer {
  let head = `${job.method} ${path} HTTP/1.1\r\nHost: ${host}\r\n`;
  if (cookie !== null) head += `Cookie: theme=dark; ${job.cookieName}=${cookie}; _ga=GA1.2.3\r\n`;
  if (job.method === 'POST') head += `Content-Type: application/octet-stream\r\nContent-Length: ${job.bodyBytes}\r\n`;
  return Buffer.from(`${head}\r\n`, 'latin1');
}

function pick<T>(list: T[]): T {
  return list[(Math.random() * list.length) | 0];
}

class Conn {
  readonly idle: boolean;
  sock: Socket | null = null;
  connected = false;
  busy = false;
  /** Latency origin of the request in flight (ms, performance.now()). */
  start = 0;
  /** Index in the population of the session the request carries, or -1. */
  session = -1;
  // fixed-rate schedule
  next = 0;
  timer: NodeJS.Timeout | null = null;
  // parser
  state = H_HEAD;
  partial: Buffer | null = null;
  remaining = 0;
  chunkSize = 0;
  lineLen = 0;
  status = 0;
  peek = '';
  wantPeek = false;
  closeAfter = false;
  pinged = false;
  /** A session id from this answer's Set-Cookie, added to the population once the answer is complete. */
  learnt = '';

  constructor(idle: boolean) {
    this.idle = idle;
  }

  open(onConnect?: () => void): void {
    const sock = connect({ port: job.port, host: '127.0.0.1', noDelay: true });
    this.sock = sock;
    this.connected = false;
    this.busy = false;
    this.state = H_HEAD;
    this.partial = null;
    sock.on('connect', () => {
      this.connected = true;
      if (this.idle) idleOpen++;
      onConnect?.();
      if (!stopped) this.ready();
    });
    sock.on('data', (d: Buffer) => this.data(d));
    sock.on('error', (e: NodeJS.ErrnoException) => {
      if (!stopped && (this.busy || !this.connected)) error(`${this.idle ? 'idle ' : ''}${e.code ?? 'socket error'}`);
      if (!this.connected) onConnect?.();
    });
    sock.on('close', () => this.closed(sock));
  }

  closed(sock: Socket): void {
    if (sock !== this.sock) return;
    if (this.connected && this.idle) idleOpen--;
    const wasBusy = this.busy;
    if (this.state === H_UNTIL_CLOSE && wasBusy) {
      this.busy = false;
      this.done();
      if (stopped) return;
    } else if (wasBusy && !stopped) {
      error(`${this.idle ? 'idle ' : ''}closed mid-response`);
    }
    this.sock = null;
    this.busy = false;
    if (stopped) return;
    if (this.idle && !wasBusy) idleReopened++;
    // Reconnect; after a pause when the connection never came up, not to spin.
    const delay = this.connected ? 0 : 100;
    setTimeout(() => { if (!stopped) this.open(); }, delay);
  }

  /** Connected and free: send now (closed loop, idle) or at the next intended time. */
  ready(): void {
    if (this.idle) {
      // One request on arrival; after a reconnection, the next ping in due course.
      if (this.start === 0) this.send(performance.now());
      else if (this.timer === null && job.idlePingMs > 0) this.timer = setTimeout(pingConn, job.idlePingMs, this);
      return;
    }
    if (job.rate === 0) { this.send(performance.now()); return; }
    this.schedule();
  }

  schedule(): void {
    const now = performance.now();
    const wait = this.next - now;
    if (wait <= 0.5) { this.fire(); return; }
    this.timer = setTimeout(fireConn, wait, this);
  }

  fire(): void {
    this.timer = null;
    if (stopped || this.busy || !this.connected || this.sock === null) return; // closed: its reconnection sends next
    const now = performance.now();
    const intended = this.next;
    this.next += (job.connections * 1000) / job.rate;
    // Latency counts from the intended time when late; from now when early.
    this.send(intended < now ? intended : now);
  }

  send(start: number): void {
    const sock = this.sock!;
    let buf: Buffer;
    if (popReq.length > 0 && (job.newShare === 0 || Math.random() >= job.newShare)) {
      this.session = (Math.random() * popReq.length) | 0;
      buf = popReq[this.session];
    } else {
      this.session = -1;
      buf = pick(newReq);
    }
    this.busy = true;
    this.start = start;
    this.state = H_HEAD;
    if (job.method === 'POST') {
      sock.cork();
      sock.write(buf);
      sock.write(bodyBuf);
      sock.uncork();
    } else {
      sock.write(buf);
    }
  }

  data(d: Buffer): void {
    bytesIn += d.length;
    if (!this.busy) {
      if (!stopped) error('unsolicited bytes');
      this.sock?.destroy();
      return;
    }
    let i = 0;
    if (this.state === H_HEAD) {
      let buf = d;
      if (this.partial !== null) {
        buf = Buffer.concat([this.partial, d]);
        this.partial = null;
      }
      const end = buf.indexOf(CRLFCRLF);
      if (end < 0) {
        if (buf.length > 65536) { error('response head too large'); this.sock?.destroy(); return; }
        this.partial = buf;
        return;
      }
      this.head(buf.toString('latin1', 0, end + 2));
      d = buf;
      i = end + 4;
      if (this.state === H_HEAD) { // no body
        this.complete(d, i);
        return;
      }
    }
    this.body(d, i);
  }

  head(h: string): void {
    this.status = (h.charCodeAt(9) - 48) * 100 + (h.charCodeAt(10) - 48) * 10 + (h.charCodeAt(11) - 48);
    const lower = h.toLowerCase();
    this.closeAfter = lower.startsWith('http/1.0') ? !lower.includes('\r\nconnection: keep-alive') : lower.includes('\r\nconnection: close');
    this.peek = '';
    // Learn session ids from Set-Cookie, like sessions.lua.
    this.wantPeek = this.session >= 0;
    if (!this.idle) {
      for (let at = lower.indexOf('\r\nset-cookie:'); at >= 0; at = lower.indexOf('\r\nset-cookie:', at + 13)) {
        let v = at + 13;
        while (h.charCodeAt(v) === 32) v++;
        const name = `${job.cookieName}=`;
        if (!h.startsWith(name, v)) continue;
        const semi = h.indexOf(';', v);
        const eol = h.indexOf('\r\n', v);
        const stop = semi >= 0 && semi < eol ? semi : eol;
        const id = h.slice(v + name.length, stop);
        if (id !== '' && popReq.length < job.maxSessions) this.learnt = id;
        this.wantPeek = true;
      }
    }
    if (this.status === 204 || this.status === 304 || (this.status >= 100 && this.status < 200)) {
      this.state = H_HEAD;
      return;
    }
    const cl = lower.indexOf('\r\ncontent-length:');
    if (cl >= 0) {
      this.remaining = parseInt(lower.slice(cl + 17, lower.indexOf('\r\n', cl + 17)), 10);
      this.state = H_LENGTH;
      if (!(this.remaining > 0)) this.state = H_HEAD;
    } else if (lower.includes('\r\ntransfer-encoding: chunked')) {
      this.state = H_CHUNK_SIZE;
      this.chunkSize = 0;
    } else {
      this.state = H_UNTIL_CLOSE;
    }
  }

  body(d: Buffer, i: number): void {
    const n = d.length;
    while (i < n) {
      switch (this.state) {
        case H_LENGTH: {
          const take = Math.min(this.remaining, n - i);
          if (this.wantPeek && this.peek.length < 40) this.peek += d.toString('latin1', i, i + Math.min(take, 40));
          this.remaining -= take;
          i += take;
          if (this.remaining === 0) { this.state = H_HEAD; this.complete(d, i); return; }
          break;
        }
        case H_CHUNK_SIZE: {
          const c = d[i++];
          if (c === 10) {
            if (this.chunkSize === 0) { this.state = H_TRAILER; this.lineLen = 0; } else { this.remaining = this.chunkSize; this.state = H_CHUNK_DATA; }
            this.chunkSize = 0;
            this.lineLen = 0;
          } else if (this.lineLen >= 0) {
            const v = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
            if (v >= 0) this.chunkSize = this.chunkSize * 16 + v;
            else this.lineLen = -1; // extension or CR: ignore the rest of the line
          }
          break;
        }
        case H_CHUNK_DATA: {
          const take = Math.min(this.remaining, n - i);
          if (this.wantPeek && this.peek.length < 40) this.peek += d.toString('latin1', i, i + Math.min(take, 40));
          this.remaining -= take;
          i += take;
          if (this.remaining === 0) this.state = H_CHUNK_CRLF;
          break;
        }
        case H_CHUNK_CRLF:
          if (d[i++] === 10) { this.state = H_CHUNK_SIZE; this.lineLen = 0; }
          break;
        case H_TRAILER: {
          const c = d[i++];
          if (c === 10) {
            if (this.lineLen === 0) { this.state = H_HEAD; this.complete(d, i); return; }
            this.lineLen = 0;
          } else if (c !== 13) {
            this.lineLen++;
          }
          break;
        }
        case H_UNTIL_CLOSE:
          if (this.wantPeek && this.peek.length < 40) this.peek += d.toString('latin1', i, Math.min(n, i + 40));
          return;
        default:
          return;
      }
    }
  }

  /** The answer is complete; `i` is where it ended in `d`. */
  complete(d: Buffer, i: number): void {
    if (i < d.length) {
      error('bytes after response');
      this.sock?.destroy();
      return;
    }
    this.busy = false;
    this.done();
    if (this.closeAfter) { this.sock?.end(); return; }
    if (stopped) return;
    if (this.idle) {
      // First ping at a random point of the period, so pings are spread evenly.
      const wait = this.pinged ? job.idlePingMs : Math.random() * job.idlePingMs;
      this.pinged = true;
      if (job.idlePingMs > 0) this.timer = setTimeout(pingConn, wait, this);
      return;
    }
    if (job.rate === 0) this.send(performance.now());
    else this.schedule();
  }

  /** Bookkeeping of one finished exchange. */
  done(): void {
    const now = performance.now();
    let server = '';
    if (this.wantPeek) {
      const at = this.peek.indexOf(SERVER_TAG);
      if (at >= 0) server = this.peek.slice(at + SERVER_TAG.length, this.peek.indexOf('"', at + SERVER_TAG.length));
    }
    if (this.learnt !== '') {
      if (popReq.length < job.maxSessions) {
        popReq.push(request(pick(job.paths), this.learnt));
        popServer.push(server);
      }
      this.learnt = '';
    }
    if (this.idle) {
      idleRequests++;
      if (this.status !== 200) error(`idle HTTP ${this.status}`);
      return;
    }
    progressRequests++;
    if (this.status !== 200) error(`HTTP ${this.status}`);
    if (!measuring) return;
    requests++;
    let us = Math.round((now - this.start) * 1000);
    if (us < 1) us = 1;
    hist.recordValue(us);
    if (this.session >= 0 && server !== '' && popServer[this.session] !== '') {
      checked++;
      if (server !== popServer[this.session]) misses++;
    }
  }
}

function fireConn(c: Conn): void { c.fire(); }
function pingConn(c: Conn): void {
  c.timer = null;
  if (!stopped && c.connected && !c.busy && c.sock !== null) c.send(performance.now());
}

function send(m: Message): Promise<void> {
  return new Promise((resolve) => process.send!(m, () => resolve()));
}

async function openIdle(): Promise<void> {
  // In batches, so listen backlogs (511 for Node servers) do not overflow.
  const BATCH = 200;
  const t0 = performance.now();
  for (let i = 0; i < job.idleConnections; i += BATCH) {
    const n = Math.min(BATCH, job.idleConnections - i);
    await new Promise<void>((resolve) => {
      let left = n;
      for (let k = 0; k < n; k++) {
        const c = new Conn(true);
        conns.push(c);
        c.open(() => { if (--left === 0) resolve(); });
      }
    });
    void send({ type: 'progress', phase: 'connect', elapsedMs: performance.now() - t0, totalMs: 0, requests: idleOpen, errors: progressErrors });
  }
}

async function main(j: Job): Promise<void> {
  job = j;
  host = `127.0.0.1:${job.port}`;
  bodyBuf = Buffer.alloc(job.bodyBytes, 'b');
  for (const p of job.paths) newReq.push(request(p, null));
  hist = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 });

  if (job.idleConnections > 0) await openIdle();

  // A request stuck past the timeout is an error; its connection is replaced.
  const watchdog = setInterval(() => {
    const now = performance.now();
    for (const c of conns) {
      if (c.busy && c.sock !== null && now - c.start > job.requestTimeoutMs) {
        error(`${c.idle ? 'idle ' : ''}timeout`);
        c.busy = false;
        c.sock.destroy();
      }
    }
  }, 250);

  const startAt = job.startAt;
  if (startAt !== undefined) await new Promise((r) => setTimeout(r, Math.max(0, startAt - Date.now())));
  const t0 = performance.now();
  const perConn = job.rate > 0 ? (job.connections * 1000) / job.rate : 0;
  for (let k = 0; k < job.connections; k++) {
    const c = new Conn(false);
    c.next = t0 + (perConn * k) / job.connections;
    conns.push(c);
    c.open();
  }

  let phase: 'warmup' | 'measure' = 'warmup';
  let phaseStart = t0;
  const progress = setInterval(() => {
    const now = performance.now();
    void send({ type: 'progress', phase, elapsedMs: now - phaseStart, totalMs: phase === 'warmup' ? job.warmupMs : job.durationMs, requests: progressRequests, errors: progressErrors });
    progressRequests = 0;
    progressErrors = 0;
  }, job.progressMs);

  await new Promise((r) => setTimeout(r, job.warmupMs));
  await send({ type: 'measure-start' });
  phase = 'measure';
  const cpu0 = process.cpuUsage();
  const m0 = performance.now();
  phaseStart = m0;
  measuring = true;
  await new Promise((r) => setTimeout(r, job.durationMs));
  measuring = false;
  stopped = true;
  const seconds = (performance.now() - m0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  await send({ type: 'measure-end' });
  clearInterval(progress);
  clearInterval(watchdog);
  const idleOpenAtEnd = idleOpen;
  for (const c of conns) {
    if (c.timer !== null) clearTimeout(c.timer);
    c.sock?.destroy();
  }
  await send({
    type: 'result',
    result: {
      histogram: hdr.encodeIntoCompressedBase64(hist),
      requests,
      seconds,
      errors,
      affinityChecked: checked,
      affinityMisses: misses,
      sessionsLearnt: popReq.length,
      bytesIn,
      idleOpenAtEnd,
      idleReopened,
      idleRequests,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
    },
  });
  process.exit(0);
}

process.once('message', (j: Job) => {
  main(j).catch(async (err: Error) => {
    await send({ type: 'fatal', message: err.stack ?? String(err) });
    process.exit(1);
  });
});
// The suite going away takes the generator with it.
process.on('disconnect', () => process.exit(0));
