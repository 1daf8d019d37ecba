// The `container` isolation backend: each qube is a crun container with its own user (uid 0 =
// an unprivileged host uid range per qube), mount, pid, ipc, uts, cgroup and network namespaces,
// a bounded capability set, no_new_privs and a seccomp profile. Its only door to the admin
// domain is its channel socket, on which the in-qube agent says HELLO before the qube counts as
// Running. All mounts live in the container's own mount namespace: when it dies, they go.
import fs from 'node:fs';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { QubeChannel } from '../channel.js';
import { procStat } from '../proc.js';
import type {
  BackendCapabilities,
  NetworkHooks,
  ExitNotice,
  HypervisorBackend,
  PowerState,
  QubeLaunchSpec,
  QubeNotice,
  ServiceRequest,
  QubeStats,
} from '../types.js';
import { cgroupOomKills, cgroupUsage, detectCgroupMode, type CgroupMode } from './cgroups.js';
import { Crun, lastLines } from './crun.js';
import { buildOciConfig, RUNTIME_DIRS } from './oci.js';
import { containerId, hostUidBase, qubePaths, type QubePaths } from './paths.js';
import { checkRootVolume, ContainerVolumes, ensurePrivate } from './volumes.js';

export interface ContainerBackendOptions {
  readonly dataDir: string;
  readonly log: Logger;
  /** Directory with the agent (package.json + agent/ + protocol/), bound read-only into qubes. */
  readonly agentBundle: string;
  readonly nodeBinary?: string;
  readonly initBinary?: string;
  readonly pidsLimit?: number;
}

interface RunningQube {
  readonly name: string;
  readonly uuid: string;
  readonly id: string;
  readonly paths: QubePaths;
  readonly channel: QubeChannel;
  readonly cgroupsPath: string | null;
  readonly dispPrivate: boolean;
  /** The admin domain's network hooks of this run (released once, at teardown). */
  readonly network: NetworkHooks | undefined;
  pid: number;
  /** The init process's start time (/proc/PID/stat field 22): a reused pid is not our qube. */
  pidStart: string;
  state: PowerState;
  /** OOM kills already reported. */
  oomKills: number;
  /** Set when the admin domain asked it to stop (no exit notice then). */
  stopping: boolean;
  readonly exited: Promise<void>;
  markExited: () => void;
  /** The one teardown of this run (kill during a shutdown reuses it). */
  teardown?: Promise<void>;
  /** The graceful shutdown in progress (a second shutdown waits for it). */
  shutdownJob?: Promise<void>;
}

const WATCHDOG_MS = 1000;
/** A qube's console log (written by the qube) is cut back to nothing beyond this size. */
export const CONSOLE_LOG_MAX_BYTES = 1024 * 1024;

/**
 * The qube's init is alive: the pid exists, is the same process (start time), and is not a
 * zombie waiting for the host's init to reap it.
 */
function initAlive(pid: number, start: string): boolean {
  const s = procStat(pid);
  return s !== undefined && s.start === start && s.state !== 'Z' && s.state !== 'X';
}

/**
 * The data dir and its volatile/ folder must be traversable (mode 0711, never listable) by the
 * qubes' host uids, and so must every folder above it; vm/ (persistent volumes) is root's alone.
 */
function prepareDataDir(dataDir: string): void {
  const vm = path.join(dataDir, 'vm');
  const volatile = path.join(dataDir, 'volatile');
  fs.mkdirSync(vm, { recursive: true, mode: 0o700 });
  fs.mkdirSync(volatile, { recursive: true, mode: 0o711 });
  fs.chmodSync(dataDir, 0o711);
  fs.chmodSync(vm, 0o700);
  fs.chmodSync(volatile, 0o711);
  for (let dir = path.dirname(path.resolve(dataDir)); ; dir = path.dirname(dir)) {
    if ((fs.statSync(dir).mode & 0o001) === 0) {
      throw new Error(`the data dir must be reachable by unprivileged uids, but ${dir} is not (chmod o+x it, or pick another --data-dir)`);
    }
    if (dir === path.dirname(dir)) break;
  }
}

export class ContainerBackend implements HypervisorBackend {
  readonly kind = 'container' as const;
  readonly capabilities: BackendCapabilities;
  readonly volumes: ContainerVolumes;
  readonly #opts: ContainerBackendOptions;
  readonly #log: Logger;
  readonly #crun: Crun;
  readonly #cgroupMode: CgroupMode;
  readonly #running = new Map<string, RunningQube>();
  /** Starts in progress (before and while in #running as Transient): kill aborts them. */
  readonly #starting = new Map<string, { abort: AbortController; done: Promise<void> }>();
  /** The agent bundle qubes bind: this daemon's own copy (see #snapshotAgentBundle). */
  #agentBundle: string;
  readonly #listeners = new Set<(n: ExitNotice) => void>();
  readonly #noticeListeners = new Set<(n: QubeNotice) => void>();
  /** Who routes the qubes' service calls (the daemon's router); without one, calls are refused. */
  #serviceListener: ((r: ServiceRequest) => void) | undefined;
  readonly #watchdog: NodeJS.Timeout;
  #closed = false;

  private constructor(opts: ContainerBackendOptions, mode: CgroupMode) {
    this.#opts = opts;
    this.#agentBundle = opts.agentBundle;
    this.#log = opts.log;
    this.#cgroupMode = mode;
    this.#crun = new Crun(mode);
    this.volumes = new ContainerVolumes(opts.dataDir);
    const cg = mode !== 'none';
    this.capabilities = { pause: cg, memoryLimit: cg, cpuLimit: cg, gracefulShutdown: true, ownKernel: false };
    this.#watchdog = setInterval(() => { this.#checkAll(); }, WATCHDOG_MS);
    this.#watchdog.unref();
  }

  /**
   * Checks the host (crun present, agent bundle built), then stops containers a previous daemon
   * of this data dir left behind: a restarted daemon never inherits orphaned qubes.
   */
  static async create(opts: ContainerBackendOptions): Promise<ContainerBackend> {
    const mode = detectCgroupMode();
    if (!fs.existsSync(path.join(opts.agentBundle, 'agent', 'main.js'))) {
      throw new Error(`the agent bundle is missing at ${opts.agentBundle} (run npm run build)`);
    }
    prepareDataDir(opts.dataDir);
    const backend = new ContainerBackend(opts, mode);
    try {
      await backend.#crun.call(['--version']);
    } catch (err) {
      clearInterval(backend.#watchdog);
      throw new Error(`crun is not usable: ${(err as Error).message}`, { cause: err });
    }
    try {
      await backend.#reapLeftovers();
      backend.#snapshotAgentBundle();
    } catch (err) {
      clearInterval(backend.#watchdog);
      throw err;
    }
    opts.log.info({ cgroups: mode }, 'container backend ready');
    return backend;
  }

  /**
   * Qubes bind the agent bundle from a copy this daemon made when it started: a rebuild of the
   * project (npm run build replaces dist/agent-bundle) must not pull the agent and its tools
   * out from under running qubes, nor mix versions. No qube of this data dir runs here yet.
   */
  #snapshotAgentBundle(): void {
    const copy = path.join(this.#opts.dataDir, 'agent-bundle');
    const staged = `${copy}.new`;
    fs.rmSync(staged, { recursive: true, force: true });
    try {
      // The real folder, not a link to it: a link would be copied as a link.
      fs.cpSync(fs.realpathSync(this.#opts.agentBundle), staged, { recursive: true });
      fs.chmodSync(staged, 0o755);
      fs.rmSync(copy, { recursive: true, force: true });
      fs.renameSync(staged, copy);
    } catch (err) {
      fs.rmSync(staged, { recursive: true, force: true });
      throw new Error(`cannot copy the agent bundle into the data dir: ${(err as Error).message}`, { cause: err });
    }
    this.#agentBundle = copy;
  }

  get cgroupMode(): CgroupMode {
    return this.#cgroupMode;
  }

  async #reapLeftovers(): Promise<void> {
    const mine = path.join(this.#opts.dataDir, 'vm') + path.sep;
    const stuck = new Set<string>();
    for (const c of await this.#crun.list()) {
      if (!c.id.startsWith('bh-') || !c.bundle.startsWith(mine)) continue;
      this.#log.warn({ container: c.id }, 'stopping a qube left running by a previous daemon');
      try {
        await this.#crun.delete(c.id, true);
      } catch (err) {
        this.#log.error({ container: c.id, err: (err as Error).message }, 'cannot remove a leftover container; its files are left alone');
        stuck.add(c.id.slice(3));
      }
    }
    // No qube of this data dir runs now: volatile data of earlier runs goes (never a stuck one's).
    const volatileRoot = path.join(this.#opts.dataDir, 'volatile');
    for (const uuid of fs.readdirSync(volatileRoot)) {
      if (!stuck.has(uuid)) fs.rmSync(path.join(volatileRoot, uuid), { recursive: true, force: true });
    }
    for (const uuid of fs.readdirSync(path.join(this.#opts.dataDir, 'vm'))) {
      if (stuck.has(uuid) || !/^[0-9a-f-]{36}$/.test(uuid)) continue;
      fs.rmSync(qubePaths(this.#opts.dataDir, uuid).dispPrivate, { recursive: true, force: true });
    }
  }

  async start(spec: QubeLaunchSpec, signal?: AbortSignal): Promise<void> {
    if (this.#closed) throw new Error('the container backend is shutting down');
    if (this.#running.has(spec.name) || this.#starting.has(spec.name)) throw new Error(`'${spec.name}' is already running`);
    // Transient from the first moment: nobody may take this qube for Halted while it starts.
    const abort = new AbortController();
    const combined = signal === undefined ? abort.signal : AbortSignal.any([signal, abort.signal]);
    const done = this.#start(spec, combined);
    this.#starting.set(spec.name, { abort, done });
    try {
      await done;
    } finally {
      this.#starting.delete(spec.name);
    }
  }

  async #start(spec: QubeLaunchSpec, signal: AbortSignal): Promise<void> {
    await Promise.resolve(); // registered in #starting before any work
    const paths = qubePaths(this.#opts.dataDir, spec.uuid);
    const id = containerId(spec.uuid);
    const base = hostUidBase(spec.qid);
    const ownRoot = spec.klass === 'TemplateVM' || spec.klass === 'StandaloneVM';
    const rootPaths = ownRoot ? paths : spec.rootTemplateUuid === null ? undefined : qubePaths(this.#opts.dataDir, spec.rootTemplateUuid);
    if (rootPaths === undefined) throw new Error(`'${spec.name}' has no template`);
    const meta = checkRootVolume(rootPaths, ownRoot ? spec.name : (spec.rootTemplate ?? '?'));
    const dispPrivate = spec.klass === 'DispVM';

    // No second container with this id can exist: an earlier daemon's are reaped in create(), and
    // one this daemon could not remove stays in #running, which refuses the start above.
    signal.throwIfAborted();
    const volatile = paths.volatile;
    fs.mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
    if (!dispPrivate) ensurePrivate(paths.private);
    const cgroupsPath = this.#cgroupMode === 'none' ? null : `/bulkhead/${id}`;
    let channel: QubeChannel | undefined;
    try {
      fs.rmSync(volatile, { recursive: true, force: true });
      const top = path.join(volatile, 'top');
      const upper = path.join(volatile, 'upper');
      const work = path.join(volatile, 'work');
      // crun sets up the root and the overlays as the qube's host uid: only it (by group) and
      // root may traverse its volatile directory. Volumes and runtime files stay 0700.
      fs.mkdirSync(volatile, { mode: 0o710 });
      fs.chownSync(volatile, 0, base);
      fs.chmodSync(volatile, 0o710);
      fs.mkdirSync(top, { mode: 0o755 });
      fs.chownSync(top, base, base);
      for (const d of [upper, work]) {
        fs.mkdirSync(d, { mode: 0o700 });
        fs.chownSync(d, base, base);
      }
      const topDirs: string[] = [];
      fs.symlinkSync('rw/home', path.join(top, 'home'));
      fs.lchownSync(path.join(top, 'home'), base, base);
      for (const e of fs.readdirSync(rootPaths.root, { withFileTypes: true })) {
        if (RUNTIME_DIRS.has(e.name) || (meta.hostUsr && e.name === 'usr')) continue;
        // Names end up in mount options: only plain ones (an imported root has nothing else).
        if (!/^[A-Za-z0-9._+-]+$/.test(e.name)) continue;
        const target = path.join(top, e.name);
        if (e.isSymbolicLink()) {
          fs.symlinkSync(fs.readlinkSync(path.join(rootPaths.root, e.name)), target);
          fs.lchownSync(target, base, base);
        } else if (e.isDirectory()) {
          fs.mkdirSync(target);
          topDirs.push(e.name);
          if (!ownRoot) {
            for (const d of [path.join(upper, e.name), path.join(work, e.name)]) {
              fs.mkdirSync(d);
              fs.chownSync(d, base, base);
            }
          }
        }
      }
      // A DispVM's private volume is discarded too, but kept in the root-only volume folder.
      const privateVolume = dispPrivate ? paths.dispPrivate : paths.private;
      if (dispPrivate) {
        fs.rmSync(privateVolume, { recursive: true, force: true });
        ensurePrivate(privateVolume);
      }

      fs.mkdirSync(paths.run, { recursive: true, mode: 0o700 });
      let resolvConf: string | null = null;
      if (spec.network !== undefined) {
        // Bound read-only over the qube's /etc/resolv.conf: readable by every user in the qube.
        resolvConf = path.join(volatile, 'resolv.conf');
        fs.writeFileSync(resolvConf, spec.network.resolvConf, { mode: 0o644 });
      }
      channel = await QubeChannel.listen(paths.socket, paths.callSocket, base, base);
      channel.onServiceRequest((trigger, reply) => {
        const listener = this.#serviceListener;
        if (listener === undefined) {
          reply.refuse();
          return;
        }
        listener({ source: spec.name, trigger, connect: () => reply.connect(), refuse: () => { reply.refuse(); }, alive: () => reply.alive() });
      });
      const config = buildOciConfig({
        spec,
        top,
        rootVolume: rootPaths.root,
        volatileRoot: !ownRoot,
        topDirs,
        upper,
        work,
        hostUsr: meta.hostUsr,
        privateVolume,
        socket: paths.socket,
        callSocket: paths.callSocket,
        agentBundle: this.#agentBundle,
        nodeBinary: this.#opts.nodeBinary ?? process.execPath,
        initBinary: this.#opts.initBinary ?? '/usr/bin/tini-static',
        cgroupsPath,
        pidsLimit: this.#opts.pidsLimit ?? 4096,
        resolvConf,
      });
      fs.writeFileSync(path.join(paths.run, 'config.json'), JSON.stringify(config), { mode: 0o600 });
    } catch (err) {
      // Nothing half-made stays behind: no volatile dir, no socket. Persistent volumes untouched.
      await channel?.close();
      fs.rmSync(volatile, { recursive: true, force: true });
      if (dispPrivate) fs.rmSync(paths.dispPrivate, { recursive: true, force: true });
      throw err;
    }
    let markExited!: () => void;
    const exited = new Promise<void>((resolve) => { markExited = resolve; });
    const q: RunningQube = {
      name: spec.name, uuid: spec.uuid, id, paths, channel, cgroupsPath, dispPrivate, network: spec.network,
      pid: 0, pidStart: '', state: 'Transient', stopping: false, exited, markExited, oomKills: 0,
    };
    this.#running.set(spec.name, q);
    try {
      signal.throwIfAborted();
      q.pid = await this.#crun.runDetached(id, paths.run, paths.console);
      signal.throwIfAborted();
      q.pidStart = procStat(q.pid)?.start ?? '';
      // The agent's HELLO, unless the qube dies first (broken template, missing libraries).
      let poll: NodeJS.Timeout | undefined;
      const died = new Promise<never>((_resolve, reject) => {
        poll = setInterval(() => {
          if (!initAlive(q.pid, q.pidStart)) reject(new Error(`the qube stopped before its agent connected: ${lastLines(paths.console) || 'no output'}`));
        }, 20);
      });
      died.catch(() => undefined);
      try {
        // The network is connected while the agent boots; the qube is Running when both are done.
        const network = spec.network?.attach(q.pid, signal);
        network?.catch(() => undefined);
        await Promise.race([channel.waitHello(spec.qrexecTimeoutSec * 1000, signal), died]);
        await network;
      } finally {
        clearInterval(poll);
      }
      // A kill that came just as the agent said HELLO still wins.
      signal.throwIfAborted();
      q.state = 'Running';
      channel.onDisconnect(() => { this.#watchExit(q); });
      this.#log.info({ qube: spec.name, pid: q.pid }, 'qube running');
    } catch (err) {
      q.stopping = true;
      await this.#teardown(q);
      throw err;
    }
  }

  /** Notices a qube that died on its own. */
  #check(q: RunningQube): void {
    if (q.state === 'Halted' || q.stopping || initAlive(q.pid, q.pidStart)) return;
    const kills = q.cgroupsPath === null ? 0 : cgroupOomKills(this.#cgroupMode, q.cgroupsPath);
    const reason = kills > q.oomKills ? 'out of memory' : 'the qube powered off or crashed';
    q.stopping = true;
    this.#teardown(q).then(
      () => { for (const l of this.#listeners) l({ name: q.name, state: 'Halted', reason }); },
      (err: unknown) => { this.#log.error({ qube: q.name, err: (err as Error).message }, 'cleaning up a dead qube failed'); },
    );
  }

  /** After the agent hung up: notice the qube's end at once rather than at the next watchdog tick. */
  #watchExit(q: RunningQube): void {
    let tries = 0;
    const t = setInterval(() => {
      this.#check(q);
      if (q.state === 'Halted' || q.stopping || ++tries > 100) clearInterval(t);
    }, 20);
  }

  #checkAll(): void {
    for (const q of this.#running.values()) {
      if (q.state === 'Transient') continue;
      this.#check(q);
      this.#checkOom(q);
      this.#capConsole(q);
    }
  }

  /** The console log is the qube's to write: keep it from filling the host's disk. */
  #capConsole(q: RunningQube): void {
    try {
      if (fs.statSync(q.paths.console).size > CONSOLE_LOG_MAX_BYTES) {
        fs.truncateSync(q.paths.console, 0);
        this.#log.warn({ qube: q.name }, `console log over ${CONSOLE_LOG_MAX_BYTES} bytes; truncated`);
      }
    } catch {
      // gone with the qube
    }
  }

  /** Reports processes the memory limit killed inside a qube that keeps running. */
  #checkOom(q: RunningQube): void {
    if (q.cgroupsPath === null || q.state === 'Halted' || q.stopping) return;
    const kills = cgroupOomKills(this.#cgroupMode, q.cgroupsPath);
    if (kills <= q.oomKills) return;
    const detail = `${kills - q.oomKills} process(es) killed for exceeding the qube's memory limit`;
    q.oomKills = kills;
    this.#log.warn({ qube: q.name, oomKills: kills }, 'out of memory inside the qube');
    for (const l of this.#noticeListeners) l({ name: q.name, event: 'out-of-memory', detail });
  }

  onServiceRequest(listener: (request: ServiceRequest) => void): () => void {
    this.#serviceListener = listener;
    return () => {
      if (this.#serviceListener === listener) this.#serviceListener = undefined;
    };
  }

  onNotice(listener: (notice: QubeNotice) => void): () => void {
    this.#noticeListeners.add(listener);
    return () => this.#noticeListeners.delete(listener);
  }

  /**
   * Removes the container, its channel and its volatile data; never touches persistent volumes.
   * One teardown per run. If the container cannot be removed, nothing of the qube's is deleted
   * (a live qube could redirect deletions through links) and it stays Running.
   */
  #teardown(q: RunningQube): Promise<void> {
    q.teardown ??= (async () => {
      const before = q.state;
      q.state = 'Halting';
      try {
        await this.#crun.delete(q.id, true);
      } catch (err) {
        const message = (err as Error).message;
        if ((await this.#crun.state(q.id)) !== undefined) {
          this.#log.error({ qube: q.name, err: message }, 'cannot remove the container; the qube is left as it is');
          // Still there: watched again like any running qube, and stoppable again.
          q.state = before === 'Transient' ? 'Running' : before;
          q.stopping = false;
          q.teardown = undefined;
          throw new Error(`cannot stop '${q.name}': ${message}`, { cause: err });
        }
      }
      await q.network?.release();
      try {
        await q.channel.close();
        fs.rmSync(q.paths.volatile, { recursive: true, force: true });
        if (q.dispPrivate) fs.rmSync(q.paths.dispPrivate, { recursive: true, force: true });
      } catch (err) {
        this.#log.error({ qube: q.name, err: (err as Error).message }, 'cleaning up after a qube failed');
      } finally {
        // The container is gone: the qube is Halted whatever else failed.
        q.state = 'Halted';
        if (this.#running.get(q.name) === q) this.#running.delete(q.name);
        q.markExited();
      }
    })();
    return q.teardown;
  }

  /** This run of the qube is still the live one and nobody is stopping it. */
  #current(q: RunningQube): boolean {
    return this.#running.get(q.name) === q && !q.stopping;
  }

  #get(name: string): RunningQube {
    const q = this.#running.get(name);
    if (q === undefined || q.state === 'Halted') throw new Error(`'${name}' is not running`);
    return q;
  }

  async shutdown(name: string, timeoutSec: number): Promise<void> {
    const q = this.#get(name);
    if (q.teardown) return q.teardown;
    q.shutdownJob ??= (async () => {
      q.stopping = true;
      try {
        if (q.channel.requestShutdown() && !(await this.#waitGone(q, timeoutSec * 1000))) {
          this.#log.warn({ qube: name, timeoutSec }, 'graceful shutdown timed out; killing');
        }
        await this.#teardown(q);
      } finally {
        q.shutdownJob = undefined;
      }
    })();
    return q.shutdownJob;
  }

  /** Resolves true once the qube's init is gone (or its teardown ran), false after `ms`. */
  #waitGone(q: RunningQube, ms: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const done = (gone: boolean): void => {
        clearInterval(poll);
        clearTimeout(timer);
        resolve(gone);
      };
      const poll = setInterval(() => { if (!initAlive(q.pid, q.pidStart)) done(true); }, 10);
      const timer = setTimeout(() => { done(false); }, Math.max(0, ms));
      void q.exited.then(() => { done(true); });
    });
  }

  async kill(name: string): Promise<void> {
    const starting = this.#starting.get(name);
    if (starting !== undefined) {
      // Killing a starting qube aborts its start, which cleans everything up.
      starting.abort.abort(new Error(`'${name}' was killed while starting`));
      await starting.done.catch(() => undefined);
      return;
    }
    const q = this.#get(name);
    q.stopping = true;
    await this.#teardown(q);
  }

  async pause(name: string): Promise<void> {
    const q = this.#get(name);
    if (q.stopping) throw new Error(`'${name}' is shutting down`);
    await this.#crun.pause(q.id);
    // The qube may have been stopped meanwhile: only a still-current, still-running one is Paused.
    if (this.#current(q) && q.state === 'Running') q.state = 'Paused';
  }

  async unpause(name: string): Promise<void> {
    const q = this.#get(name);
    await this.#crun.resume(q.id);
    if (this.#current(q) && q.state === 'Paused') q.state = 'Running';
  }

  state(name: string): PowerState {
    return this.#running.get(name)?.state ?? (this.#starting.has(name) ? 'Transient' : 'Halted');
  }

  stats(name: string): QubeStats | undefined {
    const q = this.#running.get(name);
    if (q?.cgroupsPath == null) return undefined;
    const u = cgroupUsage(this.#cgroupMode, q.cgroupsPath);
    return u === undefined ? undefined : { memKiB: Math.round(u.memBytes / 1024), cpuTimeNs: u.cpuNs };
  }

  async exec(name: string, cmdline: string, justExec = false): Promise<Duplex> {
    const q = this.#get(name);
    if (q.state !== 'Running' || q.stopping) {
      throw new Error(`'${name}' is ${q.state === 'Paused' ? 'paused' : q.stopping ? 'shutting down' : 'not running'}`);
    }
    return q.channel.exec(cmdline, justExec);
  }

  onExit(listener: (notice: ExitNotice) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Stops every qube (a short graceful shutdown, then kill); nothing is left running. */
  async close(): Promise<void> {
    this.#closed = true;
    // Starts in progress end first (aborted, cleaned up), then every running qube.
    const starting = [...this.#starting.entries()];
    for (const [name, s] of starting) s.abort.abort(new Error(`'${name}': the daemon is stopping`));
    await Promise.all(starting.map(([, s]) => s.done.catch(() => undefined)));
    clearInterval(this.#watchdog);
    await Promise.all([...this.#running.values()].map(async (q) => {
      if (q.state === 'Paused') await this.#crun.resume(q.id).catch(() => undefined);
      try {
        await this.shutdown(q.name, 3);
      } catch {
        await this.#teardown(q).catch((err: unknown) => {
          this.#log.error({ qube: q.name, err: (err as Error).message }, 'a qube could not be stopped');
        });
      }
    }));
  }
}
