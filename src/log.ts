// Structured JSON logs through pino, on stderr (stdout carries the human
// start-up banner), and the access log, a pino logger of its own on stdout or
// a file. Nothing sensitive is logged: no cookie values, no session ids in clear.
import { pino, type Logger, type LoggerOptions } from 'pino';

export type { Logger };
export type LogFormat = 'json' | 'pretty';

// Each event loop writes with its own destination; a write of at most PIPE_BUF
// bytes to a pipe is atomic, so the loops' lines never interleave on stdout or
// stderr read through a pipe (files are opened O_APPEND, where no write interleaves).
const PIPE_BUF = 4096;

/** `pretty`: the time as an ISO 8601 string (UTC) and the level by name, for reading; the lines stay JSON, for jq and collectors. */
function formatOptions(format: LogFormat): LoggerOptions {
  return format === 'pretty' ? { timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } } : {};
}

export function createLogger(level: string, format: LogFormat = 'json'): Logger {
  return pino({ level, base: { name: 'sticky-proxy' }, ...formatOptions(format) }, pino.destination({ fd: 2, sync: false, maxWrite: PIPE_BUF }));
}

/**
 * One event loop's access log: its own pino instance at info, so
 * --log-level never silences it, writing one line per request. `to` is ''
 * for stdout, else a file appended to; reopen() (SIGUSR1) opens the file at
 * that path again, so logrotate can move the old one away.
 */
export class AccessLog {
  readonly logger: Logger;
  readonly #dest: ReturnType<typeof pino.destination>;
  readonly #file: boolean;

  constructor(to: string, format: LogFormat, loop: number, log: Logger) {
    this.#file = to !== '';
    this.#dest = this.#file
      ? pino.destination({ dest: to, append: true, sync: false })
      : pino.destination({ fd: 1, sync: false, maxWrite: PIPE_BUF });
    // A file that cannot be written or reopened (a full disk, a removed directory) is reported, never fatal; after a
    // failed reopen the old file goes on. pino's own listener emits each error once more: it is reported once.
    let last: Error | null = null;
    this.#dest.on('error', (err: NodeJS.ErrnoException) => {
      if (err === last) return;
      last = err;
      log.error({ err: err.message, code: err.code, file: to || 'stdout' }, 'access log: cannot open or write');
    });
    this.logger = pino({ level: 'info', base: { access: true, loop }, ...formatOptions(format) }, this.#dest);
  }

  reopen(): void {
    if (this.#file) this.#dest.reopen();
  }
}
