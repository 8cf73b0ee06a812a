// Request ids, 32 lower-case hex digits as NGINX's $request_id, made without
// a random draw per request: a random prefix per event loop (80 bits, drawn
// once) and the loop's counter. They must be unique, not secret, so
// Math.random (seeded per thread from the OS's entropy by V8) draws the
// prefix: node:crypto would cost some 3 MiB per thread for ten bytes.
import { Buffer } from 'node:buffer';

const HEX = '0123456789abcdef';
const COUNTER_DIGITS = 12;
const PREFIX_DIGITS = 20;
export const REQUEST_ID_LENGTH = PREFIX_DIGITS + COUNTER_DIGITS;
/** The longest id a client may send and see kept (as HAProxy's unique-id-format bounds its own). */
const MAX_CLIENT_ID = 200;

/**
 * The loop's ids. The next id is kept as its own bytes and its counter is
 * stepped in place, hex digit by digit (an odometer: it wraps after 2^48 ids,
 * centuries at a million requests per second), so an id is written with one
 * short copy and no arithmetic on a 48-bit number.
 */
export class RequestIds {
  readonly #id = Buffer.alloc(REQUEST_ID_LENGTH);

  constructor() {
    for (let i = 0; i < PREFIX_DIGITS; i++) this.#id[i] = HEX.charCodeAt(Math.floor(Math.random() * 16));
    this.#id.fill(48, PREFIX_DIGITS);
  }

  /** Writes the next id into out at p, without allocating; returns its length. */
  write(out: Buffer, p: number): number {
    out.set(this.#id, p);
    this.#step();
    return REQUEST_ID_LENGTH;
  }

  /** The next id as text (for the access log, where no header carries it). */
  next(): string {
    const text = this.#id.toString('latin1');
    this.#step();
    return text;
  }

  #step(): void {
    const id = this.#id;
    for (let i = REQUEST_ID_LENGTH - 1; i >= PREFIX_DIGITS; i--) {
      const c = id[i];
      if (c === 102 /* f */) {
        id[i] = 48;
        continue;
      }
      id[i] = c === 57 /* 9 */ ? 97 : c + 1;
      return;
    }
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
