// What every request's trip needs from the running proxy; built once by proxy.ts.
import type { Affinity } from './affinity.ts';
import type { BackendSet } from './backends.ts';
import type { Balancer } from './balance.ts';
import type { Health } from './health.ts';
import type { Logger } from './log.ts';
import type { ProxyMetrics } from './metrics.ts';

export interface ProxyContext {
  affinity: Affinity;
  backends: BackendSet;
  balancer: Balancer;
  health: Health;
  log: Logger;
  metrics: ProxyMetrics;
  /** The access log, or null when --access-log is off. */
  access: Logger | null;
  sessionCookies: readonly string[];
  /** Lifetime of sliding bindings, seconds: an open WebSocket refreshes its binding well within it. */
  defaultTtl: number;
  /** Retries on another backend for a connection that failed before any response byte. */
  retries: number;
  /** Set on shutdown: answers close their connections instead of keeping them alive. */
  closing: boolean;
  /** How clients reach us: 'http' or 'https' (X-Forwarded-Proto). */
  proto: string;
  forwarded: boolean;
  rewriteHost: boolean;
}
