// Chunked transfer coding (RFC 9112 section 7.1), tracked while the bytes pass
// through unchanged: the reader only finds where each chunk, and the message,
// ends, and refuses anything malformed. Used for request and response bodies.
// With a sink it also hands out the data ranges alone, for an HTTP/1.0 client
// that cannot read chunked framing.
import { CR, HEX, LF, TOKEN, VALUE, ascii, lower } from './syntax.ts';

const SIZE_FIRST = 0;
const SIZE = 1;
const EXT_NAME_FIRST = 2;
const EXT_NAME = 3;
const EXT_VALUE_FIRST = 4;
const EXT_VALUE_TOKEN = 5;
const EXT_QUOTED = 6;
const EXT_QUOTED_ESC = 7;
const EXT_AFTER_QUOTED = 8;
const SIZE_LF = 9;
const DATA = 10;
const DATA_CR = 11;
const DATA_LF = 12;
const TRAILER_START = 13;
const TRAILER_NAME = 14;
const TRAILER_VALUE = 15;
const TRAILER_LF = 16;
const FINAL_LF = 17;
const DONE = 18;

// Bigger chunks than this are refused: 2^64-1 and every overflow among them.
const MAX_CHUNK = Number.MAX_SAFE_INTEGER;
/** Most bytes of chunk extensions on one size line. */
export const MAX_EXTENSION_BYTES = 1024;
/** Most bytes of trailer fields. */
export const MAX_TRAILER_BYTES = 16 * 1024;

// Trailer fields refused: framing fields (llhttp refuses Content-Length there,
// and Transfer-Encoding in requests), and Connection, which llhttp acts on in
// trailers and RFC 9110 section 6.5.1 lets no recipient act on: a peer
// behind us could close where we do not.
const REFUSED_TRAILERS = [ascii('content-length'), ascii('transfer-encoding'), ascii('connection')];
const REFUSED_WHY = ['Content-Length in trailers', 'Transfer-Encoding in trailers', 'Connection in trailers'];
const ALL_REFUSED = (1 << REFUSED_TRAILERS.length) - 1;

/** Receives the data bytes of each chunk, without the framing. */
export interface ChunkSink {
  chunkData(buf: Buffer, start: number, end: number): void;
}

export class ChunkedReader {
  state = SIZE_FIRST;
  /** Data bytes left in the current chunk. */
  remaining = 0;
  /** Data bytes of the message so far, each chunk's counted once its size line is read. */
  total = 0;
  /** Bytes of the current size line's extensions, or of the trailers. */
  #extra = 0;
  /** The current trailer name: bytes read, and which refused names (bits 0-2) it may still be. */
  #nameLength = 0;
  #mayBe = 0;
  /** Why the framing was refused. */
  error = '';

  get done(): boolean {
    return this.state === DONE;
  }

  /**
   * Reads buf[start, end). Returns the offset just past the message's last
   * byte once it is complete (`done`), `end` when more is needed, or -1 when
   * the framing is malformed (`error` says why).
   */
  feed(buf: Buffer, start: number, end: number, sink: ChunkSink | null = null): number {
    let s = this.state;
    let i = start;
    while (i < end) {
      if (s === DATA) {
        const n = Math.min(this.remaining, end - i);
        if (sink !== null) sink.chunkData(buf, i, i + n);
        i += n;
        this.remaining -= n;
        if (this.remaining === 0) s = DATA_CR;
        continue;
      }
      const c = buf[i++];
      switch (s) {
        case SIZE_FIRST: {
          const d = HEX[c];
          if (d < 0) return this.#fail('invalid chunk size');
          this.remaining = d;
          s = SIZE;
          break;
        }
        case SIZE: {
          const d = HEX[c];
          if (d >= 0) {
            if (this.remaining > (MAX_CHUNK - d) / 16) return this.#fail('chunk size too large');
            this.remaining = this.remaining * 16 + d;
          } else if (c === CR) {
            s = SIZE_LF;
          } else if (c === 59 /* ; */) {
            this.#extra = 0;
            s = EXT_NAME_FIRST;
          } else {
            return this.#fail('invalid chunk size');
          }
          break;
        }
        case EXT_NAME_FIRST:
          if (TOKEN[c] === 0) return this.#fail(c === 61 || c === 59 ? 'empty chunk extension name' : 'invalid chunk extension');
          s = EXT_NAME;
          break;
        case EXT_NAME:
          if (c === 61 /* = */) s = EXT_VALUE_FIRST;
          else if (c === 59) s = EXT_NAME_FIRST;
          else if (c === CR) s = SIZE_LF;
          else if (TOKEN[c] === 0) return this.#fail('invalid chunk extension');
          break;
        case EXT_VALUE_FIRST:
          if (c === 34 /* " */) s = EXT_QUOTED;
          else if (TOKEN[c] === 1) s = EXT_VALUE_TOKEN;
          else return this.#fail(c === CR || c === 59 ? 'empty chunk extension value' : 'invalid chunk extension');
          break;
        case EXT_VALUE_TOKEN:
          if (c === 59) s = EXT_NAME_FIRST;
          else if (c === CR) s = SIZE_LF;
          else if (TOKEN[c] === 0) return this.#fail(c === 34 ? 'quote inside a chunk extension token' : 'invalid chunk extension');
          break;
        case EXT_QUOTED:
          if (c === 34) s = EXT_AFTER_QUOTED;
          else if (c === 92 /* \ */) s = EXT_QUOTED_ESC;
          else if (VALUE[c] === 0) return this.#fail('invalid chunk extension');
          break;
        case EXT_QUOTED_ESC:
          if (VALUE[c] === 0) return this.#fail('invalid chunk extension');
          s = EXT_QUOTED;
          break;
        case EXT_AFTER_QUOTED:
          if (c === 59) s = EXT_NAME_FIRST;
          else if (c === CR) s = SIZE_LF;
          else return this.#fail('invalid chunk extension');
          break;
        case SIZE_LF:
          if (c !== LF) return this.#fail('bare CR in chunk size line');
          if (this.remaining === 0) {
            this.#extra = 0;
            s = TRAILER_START;
          } else {
            this.total += this.remaining;
            s = DATA;
          }
          break;
        case DATA_CR:
          if (c !== CR) return this.#fail('chunk data longer than its size');
          s = DATA_LF;
          break;
        case DATA_LF:
          if (c !== LF) return this.#fail('bare CR after chunk data');
          s = SIZE_FIRST;
          break;
        case TRAILER_START:
          if (c === CR) s = FINAL_LF;
          else if (TOKEN[c] === 1) {
            s = TRAILER_NAME;
            this.#nameLength = 0;
            this.#mayBe = ALL_REFUSED;
            this.#nameByte(c);
          } else return this.#fail('invalid trailer field');
          break;
        case TRAILER_NAME:
          if (c === 58 /* : */) {
            s = TRAILER_VALUE;
            const why = this.#refusedName();
            if (why !== '') return this.#fail(why);
          } else if (TOKEN[c] === 0) return this.#fail('invalid trailer field');
          else if (this.#mayBe !== 0) this.#nameByte(c);
          break;
        case TRAILER_VALUE:
          if (c === CR) s = TRAILER_LF;
          else if (VALUE[c] === 0) return this.#fail('invalid trailer field');
          break;
        case TRAILER_LF:
          if (c !== LF) return this.#fail('bare CR in trailer');
          s = TRAILER_START;
          break;
        case FINAL_LF:
          if (c !== LF) return this.#fail('bare CR after the last chunk');
          this.state = DONE;
          return i;
        default:
          return this.#fail('data after the last chunk');
      }
      if (s >= EXT_NAME_FIRST && s <= EXT_AFTER_QUOTED && ++this.#extra > MAX_EXTENSION_BYTES) return this.#fail('chunk extensions too long');
      if (s >= TRAILER_START && s <= TRAILER_LF && ++this.#extra > MAX_TRAILER_BYTES) return this.#fail('trailers too long');
    }
    this.state = s;
    return end;
  }

  /** Narrows the refused names the trailer name being read may still be. */
  #nameByte(c: number): void {
    const i = this.#nameLength++;
    const l = lower(c);
    for (let k = 0; k < REFUSED_TRAILERS.length; k++) if (REFUSED_TRAILERS[k][i] !== l) this.#mayBe &= ~(1 << k);
  }

  #refusedName(): string {
    for (let k = 0; k < REFUSED_TRAILERS.length; k++) {
      if ((this.#mayBe & (1 << k)) !== 0 && this.#nameLength === REFUSED_TRAILERS[k].length) return REFUSED_WHY[k];
    }
    return '';
  }

  #fail(why: string): number {
    this.error = why;
    return -1;
  }
}
