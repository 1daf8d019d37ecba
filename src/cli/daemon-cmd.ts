// `bulkhead daemon`: runs the admin daemon in the foreground until SIGTERM / SIGINT.
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { DEFAULT_DATA_DIR, DEFAULT_SOCKET, startDaemon, type RunningDaemon } from '../daemon/daemon.js';
import { DEFAULT_TEMPLATE } from '../daemon/defaults.js';
import { createLogger } from '../daemon/log.js';
import { TtyPrompt } from '../daemon/tty-prompt.js';
import { ContainerBackend } from '../hal/container/backend.js';
import { withBuiltRoot } from '../hal/container/templates.js';
import type { BackendKind, HypervisorBackend } from '../hal/types.js';

/** The in-qube agent, assembled by the build (scripts/agent-bundle.mjs). */
const AGENT_BUNDLE = path.resolve(import.meta.dirname, '..', 'agent-bundle');

export async function daemonMain(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        'data-dir': { type: 'string' },
        socket: { type: 'string' },
        'default-qubes': { type: 'boolean' },
        'build-default-template': { type: 'boolean' },
        'ask-timeout': { type: 'string' },
        'no-tty-prompt': { type: 'boolean' },
        'no-network': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`bulkhead daemon: error: ${(err as Error).message}\n`);
    return 2;
  }
  if (values.help === true) {
    process.stdout.write('usage: bulkhead daemon [--data-dir DIR] [--socket PATH] [--default-qubes] [--build-default-template] [--ask-timeout SECONDS] [--no-tty-prompt] [--no-network]\n');
    return 0;
  }
  const askTimeout = values['ask-timeout'] === undefined ? 60 : Number(values['ask-timeout']);
  if (!Number.isInteger(askTimeout) || askTimeout < 1 || askTimeout > 86_400) {
    process.stderr.write(`bulkhead daemon: error: --ask-timeout must be a whole number of seconds from 1 to 86400, got '${values['ask-timeout']}'\n`);
    return 2;
  }
  // Asks are also put to the terminal the daemon runs in (until the desktop exists).
  const tty = process.stdin.isTTY && values['no-tty-prompt'] !== true ? new TtyPrompt(process.stdin, process.stderr) : undefined;
  const log = createLogger('bulkheadd');
  // A bug in one request must not take down the daemon (and with it every qube's channel).
  process.on('unhandledRejection', (reason) => {
    log.error({ err: reason }, 'unhandled rejection');
  });
  let daemon;
  const dataDir = path.resolve(values['data-dir'] ?? DEFAULT_DATA_DIR);
  try {
    daemon = await startDaemon({
      dataDir,
      socketPath: values.socket ?? process.env.BULKHEAD_SOCKET ?? DEFAULT_SOCKET,
      log,
      makeBackends: async () => {
        const backends = new Map<BackendKind, HypervisorBackend>();
        try {
          backends.set('container', await ContainerBackend.create({ dataDir, log, agentBundle: AGENT_BUNDLE }));
        } catch (err) {
          log.error({ err: (err as Error).message }, 'the container backend is not available; qubes cannot start');
        }
        return backends;
      },
      defaultQubes: values['default-qubes'] === true,
      // Qubes start with an empty network namespace (hosts without nftables, measurements).
      network: values['no-network'] !== true,
      askTimeoutMs: askTimeout * 1000,
      promptProvider: tty,
    });
  } catch (err) {
    const message = (err as Error).message;
    tty?.close();
    log.fatal({ err: message }, 'daemon cannot start');
    process.stderr.write(`bulkhead daemon: error: ${message}\n`);
    return 1;
  }
  const running = daemon;
  if (values['build-default-template'] === true) void ensureDefaultTemplate(running, log);
  return new Promise<number>((resolve) => {
    const stop = (signal: string): void => {
      log.info({ signal }, 'stopping');
      tty?.close();
      running.close().then(
        () => { resolve(0); },
        (err: unknown) => {
          log.error({ err }, 'error while stopping');
          resolve(1);
        },
      );
    };
    process.once('SIGTERM', () => { stop('SIGTERM'); });
    process.once('SIGINT', () => { stop('SIGINT'); });
  });
}

/**
 * The default TemplateVM (debian-12) gets its Debian root built in the background when it has
 * none yet (first start; cached afterwards), so a newcomer's qubes can start without extra steps.
 */
async function ensureDefaultTemplate(daemon: RunningDaemon, log: Logger): Promise<void> {
  const tpl = daemon.registry.state.qubes.get(DEFAULT_TEMPLATE);
  if (tpl?.klass !== 'TemplateVM' || daemon.lifecycle.hasRoot(tpl)) return;
  try {
    log.info({ template: DEFAULT_TEMPLATE }, 'building the default template root in the background');
    await withBuiltRoot('debian', (m) => { log.info({ template: DEFAULT_TEMPLATE }, m); }, (root) => daemon.lifecycle.importRoot(tpl, root));
    log.info({ template: DEFAULT_TEMPLATE }, 'default template ready');
  } catch (err) {
    log.error({ template: DEFAULT_TEMPLATE, err: (err as Error).message }, 'building the default template failed; run: bulkhead template build debian');
  }
}
