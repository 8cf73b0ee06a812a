// Where sockets read into, through net's `onread` option (client sockets are
// at the end of this file). Backend sockets, and memcached's, read into
// regions of memory that are never read into again while anything refers to
// what was read in them, so what a read delivers stays valid as a view for as
// long as anything holds it (the zero-copy path forwards such views, and a
// learn holds them), without Node allocating a buffer per read and pushing it
// through a Readable stream. Measured on the seed scenario: about a tenth of
// a forwarded request's CPU goes away with it (see README, Benchmarks).
//
// A socket owns its region until a read leaves too little of it; the rest of a
// region is the socket's next read buffer. A read that filled its buffer is a
// stream in flight, whose next region is large; others get a small one, so an
// idle kept-alive socket pins little. A used-up region that nothing refers to
// is read into again from its start.
import { Buffer } from 'node:buffer';
import type { Socket } from 'node:net';

const SMALL = 16 * 1024;
const LARGE = 64 * 1024;
/** Below this, what is left of a region is not worth a read. */
const MIN_REST = 2 * 1024;

// Node calls the buffer function right after the read callback, for the same
// socket, with no `this`: the callback leaves the socket's next buffer here
// (a backend socket's or a client socket's alike).
let next: Buffer | null = null;

/** The `onread.buffer` function: the next read buffer of the socket just read, or a fresh region (a new socket). */
export function readBuffer(): Buffer {
  const b = next;
  next = null;
  return b ?? Buffer.allocUnsafeSlow(SMALL);
}

/**
 * Call at the end of the `onread.callback` with what it was given: the rest of
 * `buf` becomes the socket's next read buffer, or another region does. True
 * when `buf`'s region is used up. `kept`: some read into the region is still
 * referred to (held, queued, or part of a head). A used-up region that nothing
 * refers to is read into again from its start, if it is of the size the next
 * region should be (a socket at rest serves its short answers from one region
 * for ever, where it took a new one every 16 KiB of answers: megabytes a
 * second that the collector freed only when a full collection found them
 * dead), or else freed at once if large; a kept one is left to the
 * collector, and never read into again.
 */
export function afterRead(nread: number, buf: Buffer, kept: boolean): boolean {
  const rest = buf.length - nread;
  if (rest >= MIN_REST) {
    next = buf.subarray(nread);
    return false;
  }
  const size = rest === 0 ? LARGE : SMALL;
  const memory = buf.buffer as ArrayBuffer;
  if (!kept && memory.byteLength === size) {
    next = Buffer.from(memory);
    return true;
  }
  if (!kept && memory.byteLength === LARGE) memory.transfer(0);
  next = Buffer.allocUnsafeSlow(size);
  return true;
}

// Freeing what was read, once it is written. V8 frees an ArrayBuffer's memory
// only when a collection finds it dead, and reads of streamed bodies make
// hundreds of MiB a second of it (1 MiB uploads or answers), which V8 answers
// with full collections and the process's peak memory with growth. Detaching
// the ArrayBuffer frees its memory at once. Only memory that nothing refers
// to any more may be freed: the caller knows every byte of it was written (the
// socket's write buffer is empty) and that no view of it is kept.

/**
 * Frees a buffer Node read into (a socket without `onread`: one ArrayBuffer per
 * read) once it is written and dropped; a view that is not its whole
 * ArrayBuffer (a slice of Node's Buffer pool, say) is left to the collector.
 */
export function freeRead(view: Buffer): void {
  const ab = view.buffer;
  if (view.byteOffset === 0 && view.byteLength === ab.byteLength && ab instanceof ArrayBuffer) ab.transfer(0);
}

// Client sockets. Node's net.Server has no `onread` option for the sockets it
// accepts, so each read of one costs a fresh 64 KiB allocation, shrunk to what
// was read, an ArrayBuffer and a trip through a Readable stream. Accepted
// paused, a plain socket is given what net.connect's option would have set
// (Node's internal kBuffer, kBufferCb and kBufferGen, found by their
// descriptions on the first socket) and reads through a callback like a
// backend socket. Between requests it reads into SCRATCH, one buffer per
// thread that every such socket shares: a read is handled before the next one
// starts, and an idle socket then pins no memory of its own. Whatever of a
// scratch read outlives its callback (part of a head, pipelined bytes, body
// bytes that came with the head) is copied by the one who keeps it
// (ClientConnection.keep, Forward's body path). While a body or a tunnel
// streams in reads that fill their buffer, the socket reads into fresh
// buffers of its own, which stay valid as views for zero-copy forwarding and
// are freed once written.
const SCRATCH = Buffer.allocUnsafeSlow(LARGE);
const SCRATCH_MEMORY = SCRATCH.buffer;

interface Internals {
  buffer: symbol;
  callback: symbol;
  gen: symbol;
}

function findInternals(socket: Socket): Internals | null {
  const own = Object.getOwnPropertySymbols(socket);
  const by = (d: string): symbol | undefined => own.find((s) => s.description === d);
  const buffer = by('kBuffer');
  const callback = by('kBufferCb');
  const gen = by('kBufferGen');
  return buffer && callback && gen ? { buffer, callback, gen } : null;
}

// Looked up once, on the first socket; null: this Node has no such internals.
let internals: Internals | null | undefined;

/**
 * The `onread.buffer` function of client sockets: what the read callback
 * chose (`next`), or undefined to read into the same buffer again. For
 * undefined Node leaves the socket's read buffer as it is; for a buffer it
 * asks V8 for its memory and length again (calls into C++, on every read).
 */
function clientBuffer(): Buffer | undefined {
  const b = next;
  next = null;
  return b ?? undefined;
}

/**
 * Called by a client socket's read callback, last: its next read goes into a
 * buffer of its own while a body or tunnel streams in reads that fill their
 * buffer (`stream`, `filled`), else into SCRATCH. A stalled or trickling
 * upload pins nothing (its bytes are copied out of SCRATCH, a few at a time),
 * and a large one is copied for its first 64 KiB only. `current`: the
 * buffer just read into.
 */
export function nextClientRead(current: Buffer, stream: boolean, filled: boolean): void {
  if (stream && filled) next = Buffer.allocUnsafeSlow(LARGE);
  else next = current === SCRATCH ? null : SCRATCH;
}

/**
 * Makes a socket accepted paused read through `callback(nread, buf)` (the
 * data is buf[0, nread)), into SCRATCH first, and starts reading. False when
 * it cannot: the caller listens for 'data' instead.
 */
export function readThrough<S extends Socket>(socket: S, callback: (this: S, nread: number, buf: Uint8Array) => boolean): boolean {
  const handle = (socket as unknown as { _handle: { useUserBuffer?: (b: Uint8Array) => void } | null })._handle;
  const k = internals === undefined ? (internals = findInternals(socket)) : internals;
  if (k === null || handle === null || typeof handle.useUserBuffer !== 'function') return false;
  const s = socket as unknown as Record<symbol, unknown>;
  s[k.buffer] = SCRATCH;
  s[k.callback] = callback;
  s[k.gen] = clientBuffer;
  handle.useUserBuffer(SCRATCH);
  socket.resume();
  return true;
}

/** A view of SCRATCH: valid only until the read callback returns. */
export function isScratch(b: Buffer): boolean {
  return b.buffer === SCRATCH_MEMORY;
}

/** `b`, or a copy of it when it is a view of SCRATCH: for bytes that outlive their read. */
export function unshared(b: Buffer): Buffer {
  return b.buffer === SCRATCH_MEMORY ? Buffer.from(b) : b;
}

/** Frees a client socket's own read buffer once nothing of it is kept (it may have been freed already, written whole). */
export function freeClientRead(buf: Buffer): void {
  // The socket reads into SCRATCH itself or a buffer of its own, never a view of SCRATCH.
  if (buf === SCRATCH) return;
  const ab = buf.buffer as ArrayBuffer;
  if (!ab.detached) ab.transfer(0);
}
