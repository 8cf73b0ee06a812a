// Request ids, 32 lower-case hex digits as NGINX's $request_id, made without
// a random draw per request: a random prefix per event loop (80 bits, drawn
// once) and the loop's counter. They must be unique, not secret, so
// Math.random (seeded per thread from the OS's entropy by V8) draws the
// prefix: node:crypto would cost some 3 MiB per thread for ten bytes.
import { Buffer } from 'node:buffer';

const HEX = '0123456789abcdef';
const COUNTER_DIGITS = 12;
export const REQUEST_ID_LENGTH = 20 + COUNTER_DIGITS;
/** The counter wraps after 2^48 ids, centuries at a million requests per second. */
const COUNTER_SPAN = 2 ** (4 * COUNTER_DIGITS);
/** The longest id a client may send and see kept (as HAProxy's unique-id-format bounds its own). */
const MAX_CLIENT_ID = 200;

export class RequestIds {
  readonly #prefix: Buffer;
  readonly #prefixText: string;
  #n = 0;

  constructor() {
    let text = '';
    for (let i = 0; i < 20; i++) text += HEX[Math.floor(Math.random() * 16)];
    this.#prefixText = text;
    this.#prefix = Buffer.from(text, 'latin1');
  }

  /** Writes the next id into out at p, without allocating; returns its length. */
  write(out: Buffer, p: number): number {
    p += this.#prefix.copy(out, p);
    let n = this.#take();
    for (let i = p + COUNTER_DIGITS - 1; i >= p; i--) {
      const d = n % 16;
      out[i] = HEX.charCodeAt(d);
      n = (n - d) / 16;
    }
    return REQUEST_ID_LENGTH;
  }

  /** The next id as text (for the access log, where no header carries it). */
  next(): string {
    return this.#prefixText + this.#take().toString(16).padStart(COUNTER_DIGITS, '0');
  }

  #take(): number {
    const n = this.#n;
    this.#n = n + 1 === COUNTER_SPAN ? 0 : n + 1;
    return n;
  }
}

/** --request-id-header, ready to write: the line's start as bytes, the name to match in lower case, and the loop's ids. */
export interface RequestIdHeader {
  /** "Name: ", as configured. */
  line: Buffer;
  /** The name in lower case, '_' read as '-' (how CGI-style apps see header names). */
  lower: string;
  ids: RequestIds;
}

export function requestIdHeader(name: string, ids: RequestIds): RequestIdHeader {
  return { line: Buffer.from(`${name}: `, 'latin1'), lower: name.toLowerCase().replace(/_/g, '-'), ids };
}

/** A client's id is kept when it is 1 to 200 visible ASCII characters; anything else could break a log or a backend's parser. */
export function saneId(buf: Buffer, s: number, e: number): boolean {
  if (e <= s || e - s > MAX_CLIENT_ID) return false;
  for (let i = s; i < e; i++) if (buf[i] < 0x21 || buf[i] > 0x7e) return false;
  return true;
}
