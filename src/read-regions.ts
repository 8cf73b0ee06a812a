// Where backend sockets read into (net's `onread` option): regions of memory
// that are never read into twice, so what a read delivers stays valid as a view
// for as long as anything holds it (the zero-copy path forwards such views, and
// a learn holds them), without Node allocating a buffer per read and pushing it
// through a Readable stream. Measured on the seed scenario: about a tenth of a
// forwarded request's CPU goes away with it (see README, Benchmarks).
//
// A socket owns its region until a read leaves too little of it; the rest of a
// region is the socket's next read buffer. A read that filled its buffer is a
// stream in flight, whose next region is large; others get a small one, so an
// idle kept-alive socket pins little.
import { Buffer } from 'node:buffer';
import { Socket } from 'node:net';

const SMALL = 16 * 1024;
const LARGE = 64 * 1024;
/** Below this, what is left of a region is not worth a read. */
const MIN_REST = 2 * 1024;

// Node calls the buffer function right after the read callback, for the same
// socket, with no `this`: the callback leaves the socket's next buffer here.
let next: Buffer | null = null;

/** The `onread.buffer` function: the next read buffer of the socket just read, or a fresh region (a new socket). */
export function readBuffer(): Buffer {
  const b = next;
  next = null;
  return b ?? Buffer.allocUnsafeSlow(SMALL);
}

/**
 * Call at the end of the `onread.callback` with what it was given: the rest of
 * `buf` becomes the socket's next read buffer, or a fresh region does. True
 * when `buf`'s region is used up: nothing will be read into it again.
 */
export function afterRead(nread: number, buf: Buffer): boolean {
  const rest = buf.length - nread;
  if (rest >= MIN_REST) {
    next = buf.subarray(nread);
    return false;
  }
  next = Buffer.allocUnsafeSlow(rest === 0 ? LARGE : SMALL);
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
 * Frees a used-up region (afterRead returned true) whose every read was
 * written and dropped, if it is a large one: a stream's. Small regions (short
 * answers) turn over slowly and are left to the collector: freed one by one,
 * they raised the peak memory of 5,000 idle connections under the seed load
 * by 13 MiB (105-106 against 117-121 MiB, two runs each), where freeing only
 * large ones kept it and all of the large answers' gain.
 */
export function freeRegion(buf: Buffer): void {
  const ab = buf.buffer as ArrayBuffer;
  if (ab.byteLength === LARGE) ab.transfer(0);
}

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
// descriptions) and reads through a callback like a backend socket. Between
// requests it reads into SCRATCH, one buffer per thread that every such
// socket shares: a read is handled before the next one starts, and an idle
// socket then pins no memory of its own. Whatever of a scratch read outlives
// its callback (part of a head, pipelined bytes, body bytes that came with
// the head) is copied by the one who keeps it (`keptCopy`). While a body or
// a tunnel streams, the socket reads into fresh buffers of its own, which
// stay valid as views for zero-copy forwarding and are freed once written.
const SCRATCH = Buffer.allocUnsafeSlow(LARGE);
const SCRATCH_MEMORY = SCRATCH.buffer;

interface Internals {
  buffer: symbol;
  callback: symbol;
  gen: symbol;
}

function findInternals(): Internals | null {
  const own = Object.getOwnPropertySymbols(new Socket());
  const by = (d: string): symbol | undefined => own.find((s) => s.description === d);
  const buffer = by('kBuffer');
  const callback = by('kBufferCb');
  const gen = by('kBufferGen');
  return buffer && callback && gen ? { buffer, callback, gen } : null;
}

const internals = findInternals();

/** Whether accepted sockets can read through a callback: on a Node without these internals they use 'data' events. */
export const CLIENT_READS = internals !== null;

// The buffer the read callback of a client socket chose for its next read (null: SCRATCH).
let clientNext: Buffer | null = null;

function clientBuffer(): Buffer {
  const b = clientNext ?? SCRATCH;
  clientNext = null;
  return b;
}

/** Called by a client socket's read callback, last: its next read goes into a buffer of its own (`stream`) or SCRATCH. */
export function nextClientRead(stream: boolean): void {
  clientNext = stream ? Buffer.allocUnsafeSlow(LARGE) : null;
}

/**
 * Makes a socket accepted paused read through `callback(nread, buf)` (the
 * data is buf[0, nread)), into SCRATCH first, and starts reading. False when
 * it cannot: the caller listens for 'data' instead.
 */
export function readThrough<S extends Socket>(socket: S, callback: (this: S, nread: number, buf: Uint8Array) => boolean): boolean {
  const handle = (socket as unknown as { _handle: { useUserBuffer?: (b: Uint8Array) => void } | null })._handle;
  if (internals === null || handle === null || typeof handle.useUserBuffer !== 'function') return false;
  const s = socket as unknown as Record<symbol, unknown>;
  s[internals.buffer] = SCRATCH;
  s[internals.callback] = callback;
  s[internals.gen] = clientBuffer;
  handle.useUserBuffer(SCRATCH);
  socket.resume();
  return true;
}

/** A view of SCRATCH: valid only until the read callback returns. */
export function isScratch(b: Buffer): boolean {
  return b.buffer === SCRATCH_MEMORY;
}

/** `b` itself, or a copy of it when it is a view of SCRATCH. */
export function keptCopy(b: Buffer): Buffer {
  return b.buffer === SCRATCH_MEMORY ? Buffer.from(b) : b;
}

/** Frees a client socket's own read buffer once nothing of it is kept (it may have been freed already, written whole). */
export function freeClientRead(buf: Buffer): void {
  const ab = buf.buffer as ArrayBuffer;
  if (ab !== SCRATCH_MEMORY && !ab.detached) ab.transfer(0);
}
