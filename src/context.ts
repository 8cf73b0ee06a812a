// What every request's trip needs from its event loop; built once per loop by proxy.ts.
import type { BlockList } from 'node:net';
import type { Affinity } from './affinity.ts';
import type { BackendSet } from './backends.ts';
import type { Balancer } from './balance.ts';
import type { ClientConnection } from './client.ts';
import type { SessionCookieNames } from './cookies.ts';
import type { Deadlines } from './deadlines.ts';
import type { Health } from './health.ts';
import type { HeadLimits } from './http/request.ts';
import type { Logger } from './log.ts';
import type { RequestIdHeader, RequestIds } from './request-id.ts';
import type { SharedState } from './shared.ts';
import type { LoopStats } from './stats.ts';

export interface ProxyContext {
  affinity: Affinity;
  backends: BackendSet;
  balancer: Balancer;
  stats: LoopStats;
  health: Health;
  /** What every loop of the process shares: backend state, connection counts. */
  state: SharedState;
  log: Logger;
  /** The access log, or null when --access-log is off. */
  access: Logger | null;
  /** This loop's request ids. */
  ids: RequestIds;
  /** --request-id-header, or null when no id is sent upstream. */
  requestId: RequestIdHeader | null;
  /** The session cookies; a request without one of these names costs no affinity work. */
  names: SessionCookieNames;
  /** Lifetime of sliding bindings, seconds: an open WebSocket refreshes its binding well within it. */
  defaultTtl: number;
  /** Retries on another backend for a connection that failed before any response byte. */
  retries: number;
  /** A backend that accepts an unbound session id (answers 2xx/3xx without a new one) adopts it. */
  adopt: boolean;
  /** Set on shutdown: answers close their connections instead of keeping them alive. */
  closing: boolean;
  /** How clients reach us: 'http' or 'https' (X-Forwarded-Proto). */
  proto: string;
  forwarded: boolean;
  rewriteHost: boolean;
  /** --accept-proxy: a connection's first bytes are a PROXY protocol header. */
  acceptProxy: boolean;
  /** --trusted-proxy: peers whose X-Forwarded-For is kept; null, nobody's. Checked once per connection. */
  trusted: BlockList | null;
  /** --monitor-uri's bytes: a request-target equal to them is answered by the proxy; null when off. */
  monitorUri: Buffer | null;
  limits: HeadLimits;
  /** --max-body-size, Infinity for none: one comparison a request. */
  maxBodyBytes: number;
  deadlines: Deadlines;
  clientHeaderTimeoutMs: number;
  clientIdleTimeoutMs: number;
  clientBodyTimeoutMs: number;
  /** Silence allowed in a tunnel both ways, and once either side has half-closed. */
  tunnelTimeoutMs: number;
  tunnelFinTimeoutMs: number;
  upstreamHeaderTimeoutMs: number;
  upstreamBodyTimeoutMs: number;
  /** Open client connections, for shutdown and the connection gauge. */
  clients: Set<ClientConnection>;
}
