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
import { AdminServer } from './server.js';

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
}

export interface RunningDaemon {
  readonly registry: Registry;
  readonly lifecycle: Lifecycle;
  close(): Promise<void>;
}

export async function startDaemon(opts: DaemonOptions): Promise<RunningDaemon> {
  fs.mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const lock = await DataDirLock.acquire(opts.dataDir);
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
    const server = new AdminServer({ registry, lifecycle, log: opts.log });
    const execServer = new ExecServer(lifecycle, opts.log);
    try {
      await server.listen(opts.socketPath);
      await execServer.listen(execSocketPath(opts.socketPath));
    } catch (err) {
      await server.close();
      await lifecycle.close();
      throw err;
    }
    opts.log.info({ socket: opts.socketPath, dataDir: opts.dataDir, qubes: registry.state.qubes.size }, 'daemon ready');
    let closing: Promise<void> | undefined;
    return {
      registry,
      lifecycle,
      close: () => {
        closing ??= (async () => {
          await server.close();
          await execServer.close();
          await lifecycle.close();
          await lock.release();
          opts.log.info('daemon stopped');
        })();
        return closing;
      },
    };
  } catch (err) {
    await lock.release();
    throw err;
  }
}
