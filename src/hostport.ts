// The one "host:port" parser, for every flag that takes an address (--listen,
// --admin, --memcache) and for the memcached client's server list, so an
// address that one accepts the other never refuses.
import { isIPv6 } from 'node:net';

export interface HostPort {
  host: string;
  port: number;
}

/** Thrown for a malformed address; the message quotes the address and says what is wrong. */
export class HostPortError extends RangeError {}

// A bracketed IPv6 literal, or a host name / IPv4 address (no colon, no bracket,
// no space), then the port. The pieces are checked further in parseHostPort.
const SHAPE = /^(?:\[([^\]]+)\]|([A-Za-z0-9_.-]+)):(\d{1,5})$/;

/** The shape as a JSON Schema pattern, for editors; parseHostPort is the authority. */
export const HOST_PORT_PATTERN = SHAPE.source;

/**
 * Parses "host:port" ("[::1]:11211" for IPv6). Port 0 (an ephemeral port)
 * makes sense only for an address to listen on, so it is refused unless
 * `portZero` says this is one.
 */
export function parseHostPort(text: string, opts: { portZero?: boolean } = {}): HostPort {
  const m = SHAPE.exec(text);
  if (m === null) {
    const hint = text.split(':').length > 2 && !text.startsWith('[') ? ' (IPv6 goes in brackets: [::1]:PORT)' : '';
    throw new HostPortError(`expected HOST:PORT, got "${text}"${hint}`);
  }
  if (m[1] !== undefined && !isIPv6(m[1])) throw new HostPortError(`"${m[1]}" in "${text}" is not an IPv6 address`);
  const port = Number(m[3]);
  if (port > 65535) throw new HostPortError(`port out of range in "${text}"`);
  if (port === 0 && opts.portZero !== true) throw new HostPortError(`port 0 in "${text}": a server to connect to needs its real port`);
  return { host: m[1] ?? m[2], port };
}
