// The proxy's own answers (4xx for malformed or slow requests, 502/503/504
// when no backend can answer), written by this module alone. Each is a
// complete HTTP/1.1 message built once and reused.
import { Buffer } from 'node:buffer';

const REASONS: Record<number, string> = {
  200: 'OK',
  400: 'Bad Request',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  413: 'Content Too Large',
  414: 'URI Too Long',
  417: 'Expectation Failed',
  431: 'Request Header Fields Too Large',
  500: 'Internal Server Error',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
  505: 'HTTP Version Not Supported',
};

const cache = new Map<string, Buffer>();

export function reasonPhrase(status: number): string {
  return REASONS[status] ?? 'Error';
}

/**
 * A plain-text answer with `status`. `close` adds Connection: close (the
 * connection ends after it); a 503 says when to retry; `head` omits the body
 * (the answer to a HEAD request).
 */
export function reply(status: number, close: boolean, head = false): Buffer {
  const key = `${status}${close ? 'c' : 'k'}${head ? 'h' : ''}`;
  let b = cache.get(key);
  if (b === undefined) {
    const body = `${reasonPhrase(status)}\n`;
    const retry = status === 503 ? 'Retry-After: 1\r\n' : '';
    const conn = close ? 'Connection: close\r\n' : '';
    b = Buffer.from(`HTTP/1.1 ${status} ${reasonPhrase(status)}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n${retry}${conn}\r\n${head ? '' : body}`, 'latin1');
    cache.set(key, b);
  }
  return b;
}

/** The interim answer that lets a client waiting on Expect: 100-continue send its body. */
export const CONTINUE = Buffer.from('HTTP/1.1 100 Continue\r\n\r\n', 'latin1');
