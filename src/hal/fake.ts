// A test double of the HAL for unit tests: keeps power states in memory, starts nothing.
// Never wired into the daemon outside tests.
import type { Duplex } from 'node:stream';
import type {
  BackendCapabilities,
  BackendKind,
  ExitNotice,
  HypervisorBackend,
  PowerState,
  QubeLaunchSpec,
  QubeStats,
} from './types.js';
import { ShutdownTimeout } from './types.js';

export interface FakeBackendOptions {
  readonly kind?: BackendKind;
  readonly capabilities?: Partial<BackendCapabilities>;
  /** Names whose start fails with this message. */
  readonly failStart?: ReadonlyMap<string, string>;
  /** Names whose start never finishes by itself (only an abort ends it). */
  readonly slowStart?: ReadonlySet<string>;
  /** Names that ignore graceful shutdown (to exercise timeouts). */
  readonly hangOnShutdown?: ReadonlySet<string>;
}

export class FakeBackend implements HypervisorBackend {
  readonly kind: BackendKind;
  readonly capabilities: BackendCapabilities;
  readonly started: QubeLaunchSpec[] = [];
  readonly #states = new Map<string, PowerState>();
  readonly #listeners = new Set<(n: ExitNotice) => void>();
  readonly #opts: FakeBackendOptions;

  constructor(opts: FakeBackendOptions = {}) {
    this.#opts = opts;
    this.kind = opts.kind ?? 'container';
    this.capabilities = {
      pause: true,
      memoryLimit: true,
      cpuLimit: true,
      gracefulShutdown: true,
      ownKernel: false,
      ...opts.capabilities,
    };
  }

  start(spec: QubeLaunchSpec, signal?: AbortSignal): Promise<void> {
    const failure = this.#opts.failStart?.get(spec.name);
    if (failure !== undefined) return Promise.reject(new Error(failure));
    if (this.#opts.slowStart?.has(spec.name)) {
      this.#states.set(spec.name, 'Transient');
      return new Promise((_resolve, reject) => {
        signal?.addEventListener('abort', () => {
          this.#states.set(spec.name, 'Halted');
          reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
        }, { once: true });
      });
    }
    this.started.push(spec);
    this.#states.set(spec.name, 'Running');
    return Promise.resolve();
  }

  async shutdown(name: string, timeoutSec: number): Promise<void> {
    if (this.#opts.hangOnShutdown?.has(name)) {
      await new Promise((r) => setTimeout(r, timeoutSec * 1000));
      throw new ShutdownTimeout(`shutdown of ${name} timed out`);
    }
    this.#states.set(name, 'Halted');
  }

  kill(name: string): Promise<void> {
    this.#states.set(name, 'Halted');
    return Promise.resolve();
  }

  pause(name: string): Promise<void> {
    this.#states.set(name, 'Paused');
    return Promise.resolve();
  }

  unpause(name: string): Promise<void> {
    this.#states.set(name, 'Running');
    return Promise.resolve();
  }

  state(name: string): PowerState {
    return this.#states.get(name) ?? 'Halted';
  }

  stats(name: string): QubeStats | undefined {
    return this.state(name) === 'Halted' ? undefined : { memKiB: 409600, cpuTimeNs: 0 };
  }

  exec(name: string): Promise<Duplex> {
    return Promise.reject(new Error(`the fake backend runs no commands ('${name}')`));
  }

  onExit(listener: (n: ExitNotice) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Test hook: the qube dies on its own. */
  crash(name: string, reason: string): void {
    this.#states.set(name, 'Halted');
    for (const l of this.#listeners) l({ name, state: 'Crashed', reason });
  }

  close(): Promise<void> {
    this.#states.clear();
    return Promise.resolve();
  }
}
