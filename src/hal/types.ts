// The hypervisor abstraction layer (HAL): the contract every isolation backend implements.
// Callers ask for capabilities, never for a backend by name. The `container` backend (crun)
// and the `vm` backend (QEMU) implement this in later issues; `fake.ts` is the unit-test double.

import type { Duplex } from 'node:stream';
import type { ServiceTrigger } from '../protocol/qrexec.js';

export type BackendKind = 'container' | 'vm';

/** Qubes power states, as admin.vm.List / CurrentState report them. */
export type PowerState = 'Halted' | 'Transient' | 'Running' | 'Paused' | 'Halting' | 'Dying' | 'Crashed';

export interface BackendCapabilities {
  /** Freeze and thaw a running qube (admin.vm.Pause / Unpause). */
  readonly pause: boolean;
  /** Enforce `maxmem` as a hard memory limit. */
  readonly memoryLimit: boolean;
  /** Enforce `vcpus` as a CPU quota. */
  readonly cpuLimit: boolean;
  /** Graceful shutdown through the in-qube agent (otherwise shutdown = kill). */
  readonly gracefulShutdown: boolean;
  /** A separate kernel per qube (stronger isolation than namespaces). */
  readonly ownKernel: boolean;
}

/** Everything a backend needs to start a qube, resolved by the daemon from the registry. */
export interface QubeLaunchSpec {
  readonly name: string;
  readonly uuid: string;
  readonly qid: number;
  readonly klass: 'TemplateVM' | 'AppVM' | 'StandaloneVM' | 'DispVM';
  /** The TemplateVM whose root this qube uses (AppVM, DispVM via its disposable template). */
  readonly rootTemplate: string | null;
  readonly rootTemplateUuid: string | null;
  readonly memoryMiB: number;
  readonly maxmemMiB: number;
  readonly vcpus: number;
  /** How long to wait for the agent's HELLO before the start counts as failed. */
  readonly qrexecTimeoutSec: number;
  /** The qube's network, set up by the admin domain (absent: the qube keeps an empty namespace). */
  readonly network?: NetworkHooks;
}

/**
 * How a backend hands a qube's network namespace to the admin domain's network orchestrator.
 * The backend creates the namespace (with the qube's other namespaces); the orchestrator fills it.
 */
export interface NetworkHooks {
  /** The qube's /etc/resolv.conf (bound read-only over the template's). */
  readonly resolvConf: string;
  /**
   * Connects the network namespace of process `pid` (the qube's init). Called once the process
   * exists, before the start counts as done; a rejection fails the start.
   */
  attach(pid: number, signal: AbortSignal): Promise<void>;
  /** Undoes everything attach did. Called exactly once when the qube stops for any reason, and after a failed start. Never rejects. */
  release(): Promise<void>;
}

export interface QubeStats {
  readonly memKiB: number;
  readonly cpuTimeNs: number;
}

/** Why a running qube stopped without being asked to. */
export interface ExitNotice {
  readonly name: string;
  readonly state: 'Halted' | 'Crashed';
  readonly reason: string;
}

/** Whose volumes: the qube and, for AppVM/DispVM, the TemplateVM its root comes from. */
export interface VolumeOwner {
  readonly name: string;
  readonly uuid: string;
  readonly klass: 'TemplateVM' | 'AppVM' | 'StandaloneVM' | 'DispVM';
  readonly rootTemplateUuid: string | null;
}

/** admin.vm.volume.Info, in Qubes' key order. */
export interface VolumeInfo {
  readonly pool: string;
  readonly vid: string;
  readonly size: number;
  readonly usage: number;
  readonly rw: boolean;
  readonly source: string | null;
  readonly path: string;
  readonly save_on_stop: boolean;
  readonly snap_on_start: boolean;
  readonly revisions_to_keep: number;
  readonly ephemeral: boolean;
}

/** A prepared directory tree to install as a TemplateVM's root volume. */
export interface RootImport {
  readonly dir: string;
  /** The tree has no /usr; the host's /usr is bound read-only (host templates). */
  readonly hostUsr: boolean;
  readonly source: string;
}

export interface VolumeManager {
  /** Volume names of the qube (`root`, `private`, `volatile`, …). */
  names(owner: VolumeOwner): readonly string[];
  info(owner: VolumeOwner, volume: string): Promise<VolumeInfo>;
  /** Copies one persistent volume from `src` to `dst` (qvm-clone); `dst`'s old copy is replaced. */
  clone(src: VolumeOwner, dst: VolumeOwner, volume: string): Promise<void>;
  importRoot(owner: VolumeOwner, from: RootImport): Promise<void>;
  /** The qube (a TemplateVM or StandaloneVM) has a root volume installed. */
  hasRoot(owner: VolumeOwner): boolean;
  /** Deletes every volume of a removed qube. */
  remove(uuid: string): void;
}

/** Something the admin domain should hear about a running qube. */
export interface QubeNotice {
  readonly name: string;
  /** `out-of-memory`: the kernel killed processes in the qube for exceeding its memory limit. */
  readonly event: 'out-of-memory';
  readonly detail: string;
}

/**
 * A service call a running qube asked for (TRIGGER_SERVICE3 on its channel). `source` is the
 * qube the channel belongs to, never anything the qube said; the trigger's fields are
 * charset-checked but otherwise untrusted. Answer exactly once: connect() or refuse().
 */
export interface ServiceRequest {
  readonly source: string;
  readonly trigger: ServiceTrigger;
  /** Tells the caller to go ahead; resolves with its data connection (paused). */
  connect(): Promise<Duplex>;
  refuse(): void;
  /** False once the caller is known to be gone (its agent disconnected, or it hung up). */
  alive(): boolean;
}

export interface HypervisorBackend {
  readonly kind: BackendKind;
  readonly capabilities: BackendCapabilities;
  readonly volumes?: VolumeManager;
  /** Resolves once the qube is Running (agent connected); rejects with a user-facing message. */
  start(spec: QubeLaunchSpec, signal?: AbortSignal): Promise<void>;
  /**
   * Graceful shutdown. A backend that can, kills the qube once `timeoutSec` has passed and
   * resolves; one that cannot rejects with ShutdownTimeout.
   */
  shutdown(name: string, timeoutSec: number): Promise<void>;
  kill(name: string): Promise<void>;
  pause(name: string): Promise<void>;
  unpause(name: string): Promise<void>;
  /** The current power state; Halted for qubes the backend does not know. */
  state(name: string): PowerState;
  stats(name: string): QubeStats | undefined;
  /**
   * Runs `USER:COMMAND` in a running qube through its agent; resolves with the data connection
   * (qrexec DATA_* frames both ways, docs/protocol/qrexec.md). The caller owns the socket.
   * `justExec`: start it without I/O; the connection only reports whether it started.
   */
  exec(name: string, cmdline: string, justExec?: boolean): Promise<Duplex>;
  /** Called when a qube stops on its own (crash, OOM, poweroff inside). */
  onExit(listener: (notice: ExitNotice) => void): () => void;
  /** Notices about running qubes (optional: a backend that cannot tell has none). */
  onNotice?(listener: (notice: QubeNotice) => void): () => void;
  /** Service calls made by qubes (qrexec); a backend without a listener refuses them. */
  onServiceRequest?(listener: (request: ServiceRequest) => void): () => void;
  /** Stops or re-adopts everything on daemon shutdown; no orphaned processes or mounts. */
  close(): Promise<void>;
}

export class ShutdownTimeout extends Error {
  override readonly name = 'ShutdownTimeout';
}
