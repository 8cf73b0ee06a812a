// An event loop in a worker thread: the whole request path (accept → affinity
// → balance → forward → learn) on its own connections, the same code as the
// main thread's loop, listening on the same address (SO_REUSEPORT). The main
// thread tells it of reloads, asks it for metrics, and closes it.
import { parentPort, workerData } from 'node:worker_threads';
import { ConfigError } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { Loop, type LoopSettings } from '../src/loop.ts';
import type { FromLoop, ToLoop } from '../src/proxy.ts';

const settings = workerData as LoopSettings;
const port = parentPort!;
const log = createLogger(settings.config.logLevel, settings.config.logFormat).child({ loop: settings.index });
const send = (m: FromLoop): void => port.postMessage(m);

let loop: Loop;
try {
  loop = await Loop.start(settings, log);
} catch (err) {
  const e = err as Error;
  send(e instanceof ConfigError ? { type: 'failed', flag: e.flag, message: e.message.slice(e.flag.length + 2) } : { type: 'failed', flag: '--threads', message: e.message });
  process.exit(1);
}

port.on('message', (m: ToLoop) => {
  switch (m.type) {
    case 'backends':
      loop.applyBackends(m.backends);
      // From now on this loop routes to none of the backends the list removed.
      send({ type: 'applied', generation: m.generation });
      break;
    case 'reload':
      loop.reload(m.settings);
      break;
    case 'metrics':
      send({ type: 'metrics', id: m.id, parts: loop.metricParts() });
      break;
    case 'close':
      loop.close(m.timeoutMs, m.graceMs).then(() => {
        send({ type: 'closed' });
        port.close();
      }, (err: Error) => {
        log.error({ err: err.message }, 'closing the event loop failed');
        process.exit(1);
      });
      break;
    case 'reopen-logs':
      loop.reopenLogs();
      break;
    case 'terminate-worker':
      loop.terminateOneWorker();
      break;
    case 'crash':
      // A test hook (STICKY_PROXY_TEST_HOOKS=1): an uncaught exception, as a bug would throw.
      throw new Error('test hook: this event loop crashes');
  }
});
send({ type: 'ready' });
