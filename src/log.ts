// Structured JSON logs through pino, on stderr (stdout carries the human
// start-up banner). Nothing sensitive is logged: no cookie values, no session
// ids in clear.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string): Logger {
  return pino({ level, base: { name: 'sticky-proxy' } }, pino.destination({ fd: 2, sync: false }));
}

/** A logger that discards everything, for components built without one. */
export const silent: Logger = pino({ level: 'silent' });
