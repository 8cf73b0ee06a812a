// memcached binary protocol: the 24-byte header, request encoders that write
// straight into a caller-owned buffer, and an incremental response parser.
// Layout and codes follow memcached's doc/protocol-binary.txt.
import { Buffer } from 'node:buffer';

export const HEADER_SIZE = 24;
export const MAGIC_REQUEST = 0x80;
export const MAGIC_RESPONSE = 0x81;

// Header field offsets.
const OFF_OPCODE = 1;
const OFF_KEY_LEN = 2;
const OFF_EXT_LEN = 4;
const OFF_STATUS = 6; // vbucket id in requests
const OFF_BODY_LEN = 8;
const OFF_OPAQUE = 12;
const OFF_CAS = 16;

export const Op = {
  GET: 0x00,
  SET: 0x01,
  DELETE: 0x04,
  NOOP: 0x0a,
  GETK: 0x0c,
  GETKQ: 0x0d,
  SETQ: 0x11,
  DELETEQ: 0x14,
  TOUCH: 0x1c,
  GAT: 0x1d,
  GATK: 0x23,
  GATKQ: 0x24,
} as const;

export const Status = {
  OK: 0x00,
  KEY_NOT_FOUND: 0x01,
  KEY_EXISTS: 0x02,
  VALUE_TOO_LARGE: 0x03,
  INVALID_ARGUMENTS: 0x04,
  NOT_STORED: 0x05,
  UNKNOWN_COMMAND: 0x81,
  OUT_OF_MEMORY: 0x82,
} as const;

const STATUS_NAMES = new Map<number, string>([
  [Status.OK, 'no error'],
  [Status.KEY_NOT_FOUND, 'key not found'],
  [Status.KEY_EXISTS, 'key exists'],
  [Status.VALUE_TOO_LARGE, 'value too large'],
  [Status.INVALID_ARGUMENTS, 'invalid arguments'],
  [Status.NOT_STORED, 'item not stored'],
  [Status.UNKNOWN_COMMAND, 'unknown command'],
  [Status.OUT_OF_MEMORY, 'out of memory'],
]);

export function statusName(status: number): string {
  return STATUS_NAMES.get(status) ?? `status 0x${status.toString(16)}`;
}

// Byte-wise reads and writes: on this hot path they beat Buffer's
// read/writeUInt*BE, which re-check their arguments on every call.
function put16(buf: Buffer, off: number, v: number): void {
  buf[off] = v >>> 8;
  buf[off + 1] = v;
}

function put32(buf: Buffer, off: number, v: number): void {
  buf[off] = v >>> 24;
  buf[off + 1] = v >>> 16;
  buf[off + 2] = v >>> 8;
  buf[off + 3] = v;
}

function get16(buf: Buffer, off: number): number {
  return (buf[off] << 8) | buf[off + 1];
}

export function get32(buf: Buffer, off: number): number {
  return ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
}

/** Writes a header at `off`. CAS is always zero: this client does not do CAS. */
export function writeHeader(
  buf: Buffer, off: number, magic: number, opcode: number, keyLen: number,
  extLen: number, status: number, bodyLen: number, opaque: number,
): void {
  buf[off] = magic;
  buf[off + OFF_OPCODE] = opcode;
  put16(buf, off + OFF_KEY_LEN, keyLen);
  buf[off + OFF_EXT_LEN] = extLen;
  buf[off + 5] = 0; // data type: raw bytes
  put16(buf, off + OFF_STATUS, status);
  put32(buf, off + OFF_BODY_LEN, bodyLen);
  put32(buf, off + OFF_OPAQUE, opaque);
  put32(buf, off + OFF_CAS, 0);
  put32(buf, off + OFF_CAS + 4, 0);
}

/**
 * A string of one byte per char (keys reaching the encoders are printable
 * ASCII, see keys.ts; so are backend names). A JS loop beats a native write
 * call for strings this short.
 */
function putLatin1(buf: Buffer, off: number, key: string): number {
  const n = key.length;
  for (let i = 0; i < n; i++) buf[off + i] = key.charCodeAt(i);
  return off + n;
}

/** GET/GETK/GETKQ/DELETE/DELETEQ: header + key. Returns the end offset. */
export function encodeKeyOnly(buf: Buffer, off: number, opcode: number, opaque: number, key: string): number {
  const keyLen = key.length;
  writeHeader(buf, off, MAGIC_REQUEST, opcode, keyLen, 0, 0, keyLen, opaque);
  return putLatin1(buf, off + HEADER_SIZE, key);
}

/** TOUCH/GAT/GATK/GATKQ: header + 4-byte expiration + key. */
export function encodeTouch(
  buf: Buffer, off: number, opcode: number, opaque: number, key: string, exptime: number,
): number {
  const keyLen = key.length;
  writeHeader(buf, off, MAGIC_REQUEST, opcode, keyLen, 4, 0, keyLen + 4, opaque);
  put32(buf, off + HEADER_SIZE, exptime);
  return putLatin1(buf, off + HEADER_SIZE + 4, key);
}

/** SET/SETQ: header + flags + expiration + key + value. `valueLen` is the value's byte length. */
export function encodeStore(
  buf: Buffer, off: number, opcode: number, opaque: number, key: string,
  flags: number, exptime: number, value: Buffer | string, valueLen: number,
): number {
  const keyLen = key.length;
  writeHeader(buf, off, MAGIC_REQUEST, opcode, keyLen, 8, 0, 8 + keyLen + valueLen, opaque);
  let p = off + HEADER_SIZE;
  put32(buf, p, flags);
  put32(buf, p + 4, exptime);
  p = putLatin1(buf, p + 8, key);
  // An ASCII string (a backend name) is one byte per char, as keys are.
  if (typeof value === 'string') {
    if (valueLen === value.length) putLatin1(buf, p, value);
    else buf.write(value, p, valueLen, 'utf8');
  } else {
    value.copy(buf, p);
  }
  return p + valueLen;
}

/** UTF-8 bytes of `s`: counted here for ASCII (backend names), natively otherwise. */
export function utf8Length(s: string): number {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return Buffer.byteLength(s, 'utf8');
  return s.length;
}

export function encodeNoop(buf: Buffer, off: number, opaque: number): number {
  writeHeader(buf, off, MAGIC_REQUEST, Op.NOOP, 0, 0, 0, 0, opaque);
  return off + HEADER_SIZE;
}

/**
 * One decoded frame. The parser reuses a single instance and `buf` may be the
 * socket's chunk, so a handler must copy what it keeps before returning.
 */
export class Frame {
  buf: Buffer = Buffer.alloc(0);
  off = 0;
  magic = 0;
  opcode = 0;
  keyLen = 0;
  extLen = 0;
  status = 0;
  bodyLen = 0;
  opaque = 0;

  get extrasStart(): number { return this.off + HEADER_SIZE; }
  get keyStart(): number { return this.off + HEADER_SIZE + this.extLen; }
  get valueStart(): number { return this.off + HEADER_SIZE + this.extLen + this.keyLen; }
  get end(): number { return this.off + HEADER_SIZE + this.bodyLen; }
}

export class ProtocolError extends Error {}

// memcached's largest configurable item is 1 GiB (-I); a claim beyond this
// is a corrupt stream, and must not make us allocate it.
const MAX_BODY = 1024 * 1024 * 1024 + 4096;

/**
 * Incremental parser: frames wholly inside a chunk are handed over in place;
 * only a frame straddling chunks is copied, once, into a buffer sized for that
 * frame, so no byte is copied twice however the stream is split.
 */
export class FrameParser {
  private readonly frame = new Frame();
  private readonly onFrame: (frame: Frame) => void;
  private readonly magic: number;
  private partial: Buffer | null = null;
  private partialLen = 0;
  private partialTotal = 0; // 0 until the partial frame's header is complete

  constructor(onFrame: (frame: Frame) => void, magic: number = MAGIC_RESPONSE) {
    this.onFrame = onFrame;
    this.magic = magic;
  }

  /** Forgets any partial frame, for a new connection. */
  reset(): void {
    this.partial = null;
  }

  /** Throws ProtocolError on a malformed stream; the caller must then drop the connection. */
  feed(chunk: Buffer): void {
    let off = 0;
    const len = chunk.length;
    if (this.partial !== null) {
      off = this.fillPartial(chunk);
      if (this.partial !== null) return; // chunk consumed, frame still incomplete
    }
    while (len - off >= HEADER_SIZE) {
      const total = this.frameSize(chunk, off);
      if (len - off < total) break;
      this.emit(chunk, off);
      off += total;
    }
    if (off < len) {
      const rest = len - off;
      const total = rest >= HEADER_SIZE ? this.frameSize(chunk, off) : 0;
      this.partial = Buffer.allocUnsafe(total > 0 ? total : HEADER_SIZE);
      chunk.copy(this.partial, 0, off, len);
      this.partialLen = rest;
      this.partialTotal = total;
    }
  }

  private fillPartial(chunk: Buffer): number {
    let off = 0;
    let partial = this.partial as Buffer;
    if (this.partialTotal === 0) {
      const need = HEADER_SIZE - this.partialLen;
      const n = Math.min(need, chunk.length);
      chunk.copy(partial, this.partialLen, 0, n);
      this.partialLen += n;
      off = n;
      if (this.partialLen < HEADER_SIZE) return off;
      this.partialTotal = this.frameSize(partial, 0);
      if (this.partialTotal > HEADER_SIZE) {
        const grown = Buffer.allocUnsafe(this.partialTotal);
        partial.copy(grown, 0, 0, HEADER_SIZE);
        this.partial = partial = grown;
      }
    }
    const n = Math.min(this.partialTotal - this.partialLen, chunk.length - off);
    chunk.copy(partial, this.partialLen, off, off + n);
    this.partialLen += n;
    off += n;
    if (this.partialLen === this.partialTotal) {
      this.partial = null;
      this.emit(partial, 0);
    }
    return off;
  }

  /** Checks a complete header before anything is buffered for its body. */
  private frameSize(buf: Buffer, off: number): number {
    if (buf[off] !== this.magic) throw new ProtocolError(`bad magic 0x${buf[off].toString(16)}`);
    const bodyLen = get32(buf, off + OFF_BODY_LEN);
    if (bodyLen > MAX_BODY) throw new ProtocolError(`body of ${bodyLen} bytes`);
    return HEADER_SIZE + bodyLen;
  }

  private emit(buf: Buffer, off: number): void {
    const f = this.frame;
    f.magic = buf[off];
    f.buf = buf;
    f.off = off;
    f.opcode = buf[off + OFF_OPCODE];
    f.keyLen = get16(buf, off + OFF_KEY_LEN);
    f.extLen = buf[off + OFF_EXT_LEN];
    f.status = get16(buf, off + OFF_STATUS);
    f.bodyLen = get32(buf, off + OFF_BODY_LEN);
    f.opaque = get32(buf, off + OFF_OPAQUE);
    if (f.extLen + f.keyLen > f.bodyLen) throw new ProtocolError('key and extras longer than body');
    this.onFrame(f);
  }
}
