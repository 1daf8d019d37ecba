// Qube lifecycle: start / shutdown / kill / pause / unpause through the HAL, with Qubes'
// events and error types. Which backend runs a qube is its `backend` property; the daemon
// only uses backends that are present, and says so clearly when one is not.
import type { Logger } from 'pino';
import { PermissionDenied, QubesError, vmNotFound } from '../core/errors.js';
import type { QubeRecord } from '../core/model.js';
import { isValidUserName } from '../core/names.js';
import { qubeValue, refValue, templateOf } from '../core/properties.js';
import type { Registry } from '../core/registry.js';
import crypto from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Duplex } from 'node:stream';
import type { BackendKind, HypervisorBackend, NetworkHooks, PowerState, QubeLaunchSpec, RootImport, ServiceRequest, VolumeInfo, VolumeManager, VolumeOwner } from '../hal/types.js';
import { ShutdownTimeout } from '../hal/types.js';

export interface ShutdownOptions {
  readonly force: boolean;
  readonly wait: boolean;
}

export class Lifecycle {
  readonly #registry: Registry;
  readonly #backends: ReadonlyMap<BackendKind, HypervisorBackend>;
  readonly #log: Logger;
  /** Starts in flight, so concurrent starts of one qube share the work; kill aborts them. */
  readonly #starting = new Map<string, { job: Promise<void>; abort: AbortController }>();
  readonly #unsubscribers: (() => void)[] = [];
  /** uuid → the backend running that qube. */
  readonly #placement = new Map<string, HypervisorBackend>();
  /** Sets up the network of each starting qube (absent: qubes start with an empty namespace). */
  #network: { hooksFor(q: QubeRecord): NetworkHooks | undefined } | undefined;

  constructor(registry: Registry, backends: ReadonlyMap<BackendKind, HypervisorBackend>, log: Logger) {
    this.#registry = registry;
    this.#backends = backends;
    this.#log = log;
    // A qube whose volumes are being copied counts as busy: no rename or removal meanwhile.
    registry.setHaltedCheck((name) => {
      const q = this.#registry.state.qubes.get(name);
      return this.powerState(name) === 'Halted' && (q === undefined || !this.#volumeBusy.has(q.uuid));
    });
    for (const backend of backends.values()) {
      const unsubscribe = backend.onNotice?.((n) => {
        // Not a Qubes event; Qubes clients ignore events they do not know.
        this.#registry.emit({ subject: n.name, event: `domain-${n.event}`, kwargs: [['detail', n.detail]] });
      });
      if (unsubscribe) this.#unsubscribers.push(unsubscribe);
      this.#unsubscribers.push(
        backend.onExit((n) => {
          this.#log.warn({ qube: n.name, state: n.state, reason: n.reason }, 'qube stopped on its own');
          const q = this.#registry.state.qubes.get(n.name);
          if (q) this.#emitStopped(q, n.reason);
        }),
      );
    }
  }

  useNetwork(network: { hooksFor(q: QubeRecord): NetworkHooks | undefined }): void {
    this.#network = network;
  }

  /** Service calls made by qubes on any backend (qrexec). */
  onServiceRequest(listener: (r: ServiceRequest) => void): void {
    for (const backend of this.#backends.values()) {
      const unsubscribe = backend.onServiceRequest?.(listener);
      if (unsubscribe) this.#unsubscribers.push(unsubscribe);
    }
  }

  /** uuid → whether this run's stop was announced: domain-stopped/-shutdown once per run. */
  readonly #runs = new Map<string, { stopped: boolean }>();

  #emitStopped(q: QubeRecord, reason?: string): void {
    const run = this.#runs.get(q.uuid);
    if (run === undefined || run.stopped) return;
    run.stopped = true;
    this.#registry.emit({ subject: q.name, event: 'domain-stopped', kwargs: [] });
    this.#registry.emit({ subject: q.name, event: 'domain-shutdown', kwargs: reason === undefined ? [] : [['reason', reason]] });
  }

  #backendKind(q: QubeRecord): BackendKind {
    const kind = qubeValue(this.#registry.state, q, 'backend');
    return kind === 'vm' ? 'vm' : 'container';
  }

  /**
   * The backend a qube was started with, while it runs. A qube's effective `backend` can change
   * under it (inherited from its template), so a running qube is always asked about where it
   * really runs, never where it would start next.
   */
  #placed(q: QubeRecord): HypervisorBackend | undefined {
    const backend = this.#placement.get(q.uuid);
    if (backend && !this.#starting.has(q.name) && backend.state(q.name) === 'Halted') {
      this.#placement.delete(q.uuid);
      return undefined;
    }
    return backend;
  }

  powerState(name: string): PowerState {
    const q = this.#registry.state.qubes.get(name);
    if (!q) return 'Halted';
    if (q.klass === 'AdminVM') return 'Running';
    if (this.#starting.has(name)) return 'Transient';
    return this.#placed(q)?.state(name) ?? 'Halted';
  }

  /** `mem=<KiB> mem_static_max=<KiB> cputime=<n> power_state=<State>` */
  currentState(q: QubeRecord): string {
    const state = this.powerState(q.name);
    if (q.klass === 'AdminVM' || state === 'Halted') return `mem=0 mem_static_max=0 cputime=0 power_state=${state}`;
    const stats = this.#placed(q)?.stats(q.name);
    const maxmem = qubeValue(this.#registry.state, q, 'maxmem');
    const staticMax = typeof maxmem === 'number' ? maxmem * 1024 : 0;
    return `mem=${stats?.memKiB ?? 0} mem_static_max=${staticMax} cputime=${stats?.cpuTimeNs ?? 0} power_state=${state}`;
  }

  async start(name: string): Promise<void> {
    const q = this.#registry.resolve(name);
    if (q.klass === 'AdminVM') return;
    // A qube still being cleaned up after a stop is started once it is Halted.
    for (let i = 0; i < 200 && this.powerState(q.name) === 'Halting'; i++) await sleep(50);
    if (this.powerState(q.name) === 'Halting') {
      // Never report a start that did not happen.
      throw new QubesError('QubesVMError', `Start failed: '${q.name}' is still stopping; try again`);
    }
    if (this.#starting.has(q.name)) return this.#starting.get(q.name)?.job;
    if (this.powerState(q.name) !== 'Halted') return;
    const root = this.#rootOf(q);
    if (this.#volumeBusy.has(q.uuid) || (root !== undefined && this.#volumeBusy.has(root.uuid))) {
      throw new QubesError('QubesVMError', `Start failed: a volume operation on '${q.name}' or its template is in progress`);
    }
    const abort = new AbortController();
    // domain-start is announced once the qube counts as Running (a listener may act on it).
    const job = this.#doStart(q, abort.signal).then(
      () => {
        this.#starting.delete(q.name);
        this.#registry.emit({ subject: q.name, event: 'domain-start', kwargs: [['start_guid', 'True']] });
      },
      (err: unknown) => {
        this.#starting.delete(q.name);
        throw err;
      },
    );
    this.#starting.set(q.name, { job, abort });
    return job;
  }

  async #doStart(q: QubeRecord, signal: AbortSignal): Promise<void> {
    const s = this.#registry.state;
    const kind = this.#backendKind(q);
    const backend = this.#backends.get(kind);
    this.#registry.emit({ subject: q.name, event: 'domain-pre-start', kwargs: [] });
    try {
      if (!backend) {
        throw new Error(`the '${kind}' isolation backend is not available on this host (see the daemon log)`);
      }
      // A qube needs its network provider running first.
      const netvm = refValue(s, q, 'netvm');
      // (A kill of this qube ends the wait; the netvm's own start goes on.)
      if (netvm !== null) await untilAborted(this.start(netvm), signal);
      signal.throwIfAborted();
      this.#placement.set(q.uuid, backend);
      this.#runs.set(q.uuid, { stopped: false });
      await backend.start(this.#launchSpec(q), signal);
      if (signal.aborted) {
        // Killed just as the start finished: the kill wins.
        await backend.kill(q.name).catch(() => undefined);
        signal.throwIfAborted();
      }
    } catch (err) {
      if (backend?.state(q.name) === 'Halted') this.#placement.delete(q.uuid);
      const reason = err instanceof QubesError ? err.message : (err as Error).message;
      this.#registry.emit({ subject: q.name, event: 'domain-start-failed', kwargs: [['reason', reason]] });
      this.#log.warn({ qube: q.name, reason }, 'start failed');
      throw new QubesError('QubesException', `Start failed: ${reason}`);
    }
  }

  #launchSpec(q: QubeRecord): QubeLaunchSpec {
    if (q.klass === 'AdminVM') throw vmNotFound(q.name);
    const s = this.#registry.state;
    const num = (prop: string, fallback: number): number => {
      const v = qubeValue(s, q, prop);
      return typeof v === 'number' ? v : fallback;
    };
    // A disposable's template is an AppVM; its root comes from that AppVM's template.
    const root = this.#rootOf(q);
    return {
      name: q.name,
      uuid: q.uuid,
      qid: q.qid,
      klass: q.klass,
      rootTemplate: root?.name ?? null,
      rootTemplateUuid: root?.uuid ?? null,
      memoryMiB: num('memory', 400),
      maxmemMiB: num('maxmem', 4000),
      vcpus: num('vcpus', 2),
      qrexecTimeoutSec: num('qrexec_timeout', 60),
      network: this.#network?.hooksFor(q),
    };
  }

  #runningBackend(name: string): { q: QubeRecord; backend: HypervisorBackend } {
    const q = this.#registry.resolve(name);
    if (q.klass === 'AdminVM') {
      throw new QubesError('QubesVMError', `The AdminVM '${q.name}' cannot be controlled this way`);
    }
    const backend = this.#placed(q);
    if (!backend) {
      throw new QubesError('QubesVMNotStartedError', `Domain is powered off: '${q.name}'`);
    }
    return { q, backend };
  }

  async shutdown(name: string, opts: ShutdownOptions): Promise<void> {
    const { q, backend } = this.#runningBackend(name);
    const state = backend.state(q.name);
    if (state === 'Transient' || this.#starting.has(q.name)) {
      throw new QubesError('QubesVMError', `Domain is starting: '${q.name}'; wait for it, or kill it`);
    }
    if (state === 'Paused' && !opts.force) {
      throw new QubesError('QubesVMNotRunningError', `Domain not running (either powered off or paused): '${q.name}'`);
    }
    if (!opts.force) {
      const users = this.#registry
        .list()
        .filter((o) => o.name !== q.name && refValue(this.#registry.state, o, 'netvm') === q.name)
        .filter((o) => this.powerState(o.name) !== 'Halted')
        .map((o) => o.name);
      if (users.length > 0) {
        throw new QubesError(
          'QubesVMInUseError',
          `Domain is in use: '${q.name}'; running qubes use it as netvm: ${users.join(', ')}`,
        );
      }
    }
    this.#registry.emit({ subject: q.name, event: 'domain-pre-shutdown', kwargs: [['force', opts.force ? 'True' : 'False']] });
    const timeout = qubeValue(this.#registry.state, q, 'shutdown_timeout');
    const job = (async () => {
      if (state === 'Paused') await backend.unpause(q.name);
      await backend.shutdown(q.name, typeof timeout === 'number' ? timeout : 60);
      this.#emitStopped(q);
    })();
    if (!opts.wait) {
      job.catch((err: unknown) => {
        const reason = err instanceof Error ? err.message : String(err);
        this.#log.warn({ qube: q.name, reason }, 'shutdown failed');
        this.#registry.emit({ subject: q.name, event: 'domain-shutdown-failed', kwargs: [['reason', reason]] });
      });
      return;
    }
    try {
      await job;
    } catch (err) {
      this.#registry.emit({ subject: q.name, event: 'domain-shutdown-failed', kwargs: [['reason', (err as Error).message]] });
      if (err instanceof ShutdownTimeout) {
        throw new QubesError('QubesVMShutdownTimeoutError', `Domain shutdown timed out: '${q.name}'`);
      }
      throw new QubesError('QubesVMError', `Shutdown failed: ${q.name}: ${(err as Error).message}`);
    }
  }

  /** Backend failures (crun errors) become Qubes errors the client can show. */
  async #backendCall(op: string, q: QubeRecord, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      if (err instanceof QubesError) throw err;
      throw new QubesError('QubesVMError', `${op} failed: ${q.name}: ${(err as Error).message}`);
    }
  }

  async kill(name: string): Promise<void> {
    const starting = this.#starting.get(this.#registry.resolve(name).name);
    if (starting !== undefined) {
      // Killing a starting qube aborts the start (waiting for its netvm, or in the backend).
      starting.abort.abort(new Error('killed while starting'));
      await starting.job.catch(() => undefined);
      return;
    }
    const { q, backend } = this.#runningBackend(name);
    await this.#backendCall('Kill', q, () => backend.kill(q.name));
    this.#emitStopped(q);
  }

  async pause(name: string): Promise<void> {
    if (this.powerState(this.#registry.resolve(name).name) === 'Halted') {
      throw new QubesError('QubesVMNotRunningError', `Domain not running (either powered off or paused): '${name}'`);
    }
    const { q, backend } = this.#runningBackend(name);
    if (backend.state(q.name) !== 'Running') {
      throw new QubesError('QubesVMNotRunningError', `Domain not running (either powered off or paused): '${q.name}'`);
    }
    if (!backend.capabilities.pause) {
      throw new QubesError('QubesNotImplementedError', `The ${backend.kind} backend cannot pause qubes`);
    }
    await this.#backendCall('Pause', q, () => backend.pause(q.name));
    this.#registry.emit({ subject: q.name, event: 'domain-paused', kwargs: [] });
  }

  async unpause(name: string): Promise<void> {
    const q = this.#registry.resolve(name);
    if (this.powerState(q.name) !== 'Paused') {
      throw new QubesError('QubesVMNotPausedError', `Domain is not paused: '${q.name}'`);
    }
    const { backend } = this.#runningBackend(name);
    await this.#backendCall('Unpause', q, () => backend.unpause(q.name));
    this.#registry.emit({ subject: q.name, event: 'domain-unpaused', kwargs: [] });
  }

  /**
   * Runs `USER:COMMAND` in a qube (qvm-run): starts it first when `autostart`, else it must be
   * running. `user` null means the qube's default_user. Resolves with the data connection.
   */
  async exec(name: string, user: string | null, command: string, autostart: boolean, justExec = false): Promise<Duplex> {
    const q = this.#registry.resolve(name);
    if (q.klass === 'AdminVM') throw new QubesError('QubesVMError', 'Commands run in qubes, not in the admin domain');
    if (autostart) await this.start(q.name);
    const state = this.powerState(q.name);
    if (state !== 'Running') {
      throw new QubesError('QubesVMNotRunningError', `Domain not running (either powered off or paused): '${q.name}'`);
    }
    const backend = this.#placed(q);
    if (!backend) throw new QubesError('QubesVMNotStartedError', `Domain is powered off: '${q.name}'`);
    const who = user ?? qubeValue(this.#registry.state, q, 'default_user');
    if (typeof who !== 'string' || !isValidUserName(who)) {
      throw new QubesError('QubesValueError', `Not a valid user name for '${q.name}': ${String(who)}`);
    }
    return backend.exec(q.name, `${who}:${command}`, justExec);
  }

  // ---------- volumes ----------

  /** uuids whose volumes are being copied or replaced: they may not start meanwhile. */
  readonly #volumeBusy = new Set<string>();

  /**
   * Runs a volume operation on halted qubes, keeping them from starting until it is done (a
   * running qube could swap directories for links under a copy running as root).
   */
  async #withHalted<T>(qubes: readonly QubeRecord[], op: () => Promise<T>): Promise<T> {
    for (const q of qubes) {
      if (this.powerState(q.name) !== 'Halted') {
        throw new QubesError('QubesVMNotHaltedError', `Domain is not powered off: '${q.name}'; shut it down first`);
      }
      if (this.#volumeBusy.has(q.uuid)) throw new QubesError('QubesVMError', `A volume operation on '${q.name}' is in progress`);
    }
    for (const q of qubes) this.#volumeBusy.add(q.uuid);
    try {
      return await op();
    } catch (err) {
      if (err instanceof QubesError) throw err;
      throw new QubesError('QubesException', `Volume operation failed: ${(err as Error).message}`);
    } finally {
      for (const q of qubes) this.#volumeBusy.delete(q.uuid);
    }
  }

  /** Pending admin.vm.volume.CloneFrom tokens → source volume (expire after a minute). */
  readonly #cloneTokens = new Map<string, { uuid: string; volume: string; expires: number }>();

  #volumes(q: QubeRecord): { manager: VolumeManager; owner: VolumeOwner } {
    if (q.klass === 'AdminVM') throw new QubesError('QubesException', 'dom0 has no volumes here');
    const backend = this.#backends.get(this.#backendKind(q));
    if (backend?.volumes === undefined) {
      throw new QubesError('QubesException', `the '${this.#backendKind(q)}' isolation backend is not available on this host`);
    }
    const root = this.#rootOf(q);
    return { manager: backend.volumes, owner: { name: q.name, uuid: q.uuid, klass: q.klass, rootTemplateUuid: root?.uuid ?? null } };
  }

  volumeNames(q: QubeRecord): readonly string[] {
    if (q.klass === 'AdminVM') return [];
    return this.#volumes(q).manager.names(this.#volumes(q).owner);
  }

  async volumeInfo(q: QubeRecord, untrustedVolume: string): Promise<VolumeInfo> {
    const { manager, owner } = this.#volumes(q);
    if (!manager.names(owner).includes(untrustedVolume)) {
      throw new PermissionDenied(`Argument not in '${q.name}' volumes`);
    }
    return manager.info(owner, untrustedVolume);
  }

  volumeCloneFrom(q: QubeRecord, untrustedVolume: string): string {
    const { manager, owner } = this.#volumes(q);
    if (!manager.names(owner).includes(untrustedVolume)) throw new PermissionDenied(`Argument not in '${q.name}' volumes`);
    const now = Date.now();
    for (const [t, v] of this.#cloneTokens) if (v.expires < now) this.#cloneTokens.delete(t);
    const token = crypto.randomBytes(16).toString('hex');
    this.#cloneTokens.set(token, { uuid: q.uuid, volume: untrustedVolume, expires: now + 60_000 });
    return token;
  }

  async volumeCloneTo(q: QubeRecord, untrustedVolume: string, untrustedToken: string): Promise<void> {
    const { manager, owner } = this.#volumes(q);
    if (!manager.names(owner).includes(untrustedVolume)) throw new PermissionDenied(`Argument not in '${q.name}' volumes`);
    const entry = this.#cloneTokens.get(untrustedToken);
    if (entry === undefined || entry.volume !== untrustedVolume || entry.expires < Date.now()) {
      throw new QubesError('QubesException', 'Invalid or expired clone token');
    }
    this.#cloneTokens.delete(untrustedToken);
    const src = [...this.#registry.state.qubes.values()].find((o) => o.uuid === entry.uuid);
    if (!src) throw new QubesError('QubesException', 'The source qube of the clone is gone');
    const qubes = src.uuid === q.uuid ? [q] : [src, q];
    // Replacing a root pulls it from under every qube running on it.
    const users = untrustedVolume === 'root' ? this.#rootUsers(q) : [];
    this.#refuseRunningUsers(q, users);
    await this.#withHalted([...qubes, ...users], () => manager.clone(this.#volumes(src).owner, owner, untrustedVolume));
  }

  async importRoot(q: QubeRecord, from: RootImport): Promise<void> {
    const { manager, owner } = this.#volumes(q);
    // Qubes running on this root keep using it as their lower layer: not while they run, and
    // none of them may start until the new root is in place.
    const users = this.#rootUsers(q);
    this.#refuseRunningUsers(q, users);
    await this.#withHalted([q, ...users], () => manager.importRoot(owner, from));
  }

  /** Whether a TemplateVM or StandaloneVM has its root volume (false without a backend). */
  hasRoot(q: QubeRecord): boolean {
    const backend = this.#backends.get(this.#backendKind(q));
    if (backend?.volumes === undefined || q.klass === 'AdminVM') return false;
    return backend.volumes.hasRoot(this.#volumes(q).owner);
  }

  /** The qubes whose root is `t`'s (AppVMs of a TemplateVM, DispVMs through their template). */
  #rootUsers(t: QubeRecord): QubeRecord[] {
    return this.#registry.list().filter((o) => o.uuid !== t.uuid && this.#rootOf(o)?.uuid === t.uuid);
  }

  #refuseRunningUsers(t: QubeRecord, users: readonly QubeRecord[]): void {
    const running = users.filter((o) => this.powerState(o.name) !== 'Halted');
    if (running.length > 0) {
      throw new QubesError('QubesVMInUseError', `Qubes based on '${t.name}' are running: ${running.map((o) => o.name).join(', ')}`);
    }
  }

  /** The TemplateVM whose root a qube uses (through its disposable template for a DispVM). */
  #rootOf(q: QubeRecord): QubeRecord | undefined {
    let root: QubeRecord | undefined = templateOf(this.#registry.state, q);
    if (root && root.klass !== 'TemplateVM') root = templateOf(this.#registry.state, root);
    return root;
  }

  /** Whether this host has the backend that runs `q` (its volumes can be managed). */
  hasBackendFor(q: QubeRecord): boolean {
    return this.#backends.has(this.#backendKind(q));
  }

  /** Deletes the volumes of a qube (removed from the registry, or about to be). */
  removeVolumes(removed: QubeRecord): void {
    for (const backend of this.#backends.values()) backend.volumes?.remove(removed.uuid);
  }

  async close(): Promise<void> {
    for (const s of this.#starting.values()) s.abort.abort(new Error('the daemon is stopping'));
    await Promise.all([...this.#starting.values()].map((s) => s.job.catch(() => undefined)));
    for (const u of this.#unsubscribers) u();
    await Promise.all([...this.#backends.values()].map((b) => b.close()));
  }
}

/** `p`, unless `signal` aborts first (then its reason). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => { reject(signal.reason instanceof Error ? signal.reason : new Error('aborted')); };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (err: unknown) => { signal.removeEventListener('abort', onAbort); reject(err instanceof Error ? err : new Error(String(err))); },
    );
  });
}
