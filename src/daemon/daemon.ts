// bulkheadd: owns the registry and store, serves the Admin API, drives the HAL.
import fs from 'node:fs';
import type { Logger } from 'pino';
import { emptyState } from '../core/model.js';
import { Registry } from '../core/registry.js';
import { Store } from '../core/store.js';
import type { BackendKind, HypervisorBackend } from '../hal/types.js';
import { defineDefaultQubes } from './defaults.js';
import { Lifecycle } from './lifecycle.js';
import { execSocketPath, ExecServer } from './exec-server.js';
import { DataDirLock } from './lock.js';
import { AdminDispatcher, AdminServer, type ServerDeps } from './server.js';
import { AskBroker, DEFAULT_ASK_TIMEOUT_MS, type PromptProvider } from './ask.js';
import { PolicyStore } from './policy-store.js';
import { QrexecRouter, removeLeftoverDisposables } from './router.js';
import path from 'node:path';
import { NetworkOrchestrator } from '../net/orchestrator.js';
import { lookupHostnames } from './qube-command.js';

export const DEFAULT_DATA_DIR = '/var/lib/bulkhead';
export const DEFAULT_SOCKET = '/run/bulkhead/qubesd.sock';

export interface DaemonOptions {
  readonly dataDir: string;
  readonly socketPath: string;
  readonly log: Logger;
  /** Backends present on this host; a qube whose backend is missing cannot start. */
  readonly backends?: ReadonlyMap<BackendKind, HypervisorBackend>;
  /**
   * Makes the backends once the data-dir lock is held (they stop qubes an earlier daemon of this
   * data dir left behind, which must never hit a live daemon's qubes).
   */
  readonly makeBackends?: () => Promise<ReadonlyMap<BackendKind, HypervisorBackend>>;
  /** Define the default qubes when the data dir holds no registry yet. */
  readonly defaultQubes?: boolean;
  /** How long a qrexec ask waits for an answer before it is denied. */
  readonly askTimeoutMs?: number;
  /** Set up qubes' networks (default true; unit tests without root turn it off). */
  readonly network?: boolean;
  /** Where asks are shown besides `bulkhead ask list` (the daemon's terminal). */
  readonly promptProvider?: PromptProvider;
}

export interface RunningDaemon {
  readonly registry: Registry;
  readonly lifecycle: Lifecycle;
  readonly router: QrexecRouter;
  close(): Promise<void>;
}

export async function startDaemon(opts: DaemonOptions): Promise<RunningDaemon> {
  fs.mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const lock = await DataDirLock.acquire(opts.dataDir);
  // What is made before a later step fails is closed again (qubes, namespaces, subscriptions).
  let made: { lifecycle?: Lifecycle; network?: NetworkOrchestrator } = {};
  try {
    const store = new Store(opts.dataDir);
    const loaded = store.load();
    const registry = new Registry(loaded ?? emptyState(), (s) => { store.save(s); });
    if (!loaded) {
      store.save(registry.state);
      if (opts.defaultQubes === true) defineDefaultQubes(registry);
      opts.log.info({ dataDir: opts.dataDir }, 'new registry created');
    }
    const backends = opts.makeBackends ? await opts.makeBackends() : (opts.backends ?? new Map<BackendKind, HypervisorBackend>());
    const lifecycle = new Lifecycle(registry, backends, opts.log);
    made = { lifecycle };
    removeLeftoverDisposables(registry, lifecycle, opts.log);
    let network: NetworkOrchestrator | undefined;
    if (opts.network !== false) {
      network = new NetworkOrchestrator({
        registry,
        log: opts.log,
        dataDir: opts.dataDir,
        lookupIn: (netvm, hosts) => lookupHostnames(lifecycle, netvm, hosts),
        start: (name) => lifecycle.start(name),
      });
      made = { lifecycle, network };
      try {
        await network.init();
      } catch (err) {
        throw new Error(`networking needs iproute2 and nftables (${(err as Error).message}); install them, or start the daemon with --no-network`, { cause: err });
      }
      lifecycle.useNetwork(network);
    }
    const policy = await PolicyStore.open(path.join(opts.dataDir, 'policy.d'), opts.log);
    const asks = new AskBroker(opts.log, opts.askTimeoutMs ?? DEFAULT_ASK_TIMEOUT_MS);
    if (opts.promptProvider) asks.addProvider(opts.promptProvider);
    // The router serves the Admin API's ask/policy methods and uses the same dispatcher for
    // qubes' admin.* calls: the dispatcher's deps reach the router lazily.
    const holder: { router?: QrexecRouter } = {};
    const deps: ServerDeps = { registry, lifecycle, log: opts.log, network, get qrexec() { return holder.router; } };
    const qrexec = new QrexecRouter({ registry, lifecycle, policy, asks, dispatcher: new AdminDispatcher(deps), log: opts.log });
    holder.router = qrexec;
    lifecycle.onServiceRequest((r) => { qrexec.handle(r); });
    const server = new AdminServer(deps);
    const execServer = new ExecServer(lifecycle, opts.log);
    try {
      await server.listen(opts.socketPath);
      await execServer.listen(execSocketPath(opts.socketPath));
    } catch (err) {
      await server.close();
      await qrexec.close();
      policy.close();
      throw err;
    }
    opts.log.info({ socket: opts.socketPath, dataDir: opts.dataDir, qubes: registry.state.qubes.size }, 'daemon ready');
    let closing: Promise<void> | undefined;
    return {
      registry,
      lifecycle,
      router: qrexec,
      close: () => {
        closing ??= (async () => {
          await server.close();
          await execServer.close();
          await qrexec.close();
          policy.close();
          await lifecycle.close();
          network?.close();
          await lock.release();
          opts.log.info('daemon stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    made.network?.close();
    await made.lifecycle?.close().catch(() => undefined);
    await lock.release();
    throw err;
  }
}
