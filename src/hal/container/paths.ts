// Where a container qube's volumes and runtime files live under the data dir, and the host uid
// range its user namespace maps to. Directories are named by the qube's uuid, never its name, so
// the host paths a qube sees in its own mount table reveal nothing about other qubes.
import path from 'node:path';

/** Each qube's uid 0..65535 maps to host uids UID_BASE + qid·65536 and up (distinct per qube). */
export const UID_BASE = 0x10000000;
export const UID_RANGE = 65536;

export function hostUidBase(qid: number): number {
  if (!Number.isInteger(qid) || qid < 1 || qid > 10000) throw new RangeError(`qid out of range: ${qid}`);
  return UID_BASE + qid * UID_RANGE;
}

export interface QubePaths {
  /** Everything of this qube: removed with it. */
  readonly dir: string;
  /** Persistent root (TemplateVM, StandaloneVM), stored with the qube's own uids (0-based). */
  readonly root: string;
  /** Metadata of a root volume (`root.json`: what the root provides, e.g. the host's /usr). */
  readonly rootMeta: string;
  /** Persistent private volume, mounted at /rw (and /home from /rw/home). */
  readonly private: string;
  /** A DispVM's private volume, discarded at shutdown (in the root-only folder, like `private`). */
  readonly dispPrivate: string;
  /**
   * Discarded at every start: the top-level skeleton, overlay upper/work dirs, DispVM private.
   * Kept apart from `dir`: crun, running as the qube's host uid, must traverse to it, while
   * `dir` (the persistent volumes) stays closed (0700) to every host uid but root.
   */
  readonly volatile: string;
  /** Runtime: OCI bundle, the qube's channel socket, console log. */
  readonly run: string;
  readonly socket: string;
  /** The call-only socket every user of the qube may use (service calls). */
  readonly callSocket: string;
  readonly console: string;
}

export function qubePaths(dataDir: string, uuid: string): QubePaths {
  if (!/^[0-9a-f-]{36}$/.test(uuid)) throw new RangeError(`not a uuid: ${uuid}`);
  const dir = path.join(dataDir, 'vm', uuid);
  return {
    dir,
    root: path.join(dir, 'root'),
    rootMeta: path.join(dir, 'root.json'),
    private: path.join(dir, 'private'),
    dispPrivate: path.join(dir, 'disp-private'),
    volatile: path.join(dataDir, 'volatile', uuid),
    run: path.join(dir, 'run'),
    socket: path.join(dir, 'run', 'qrexec.sock'),
    callSocket: path.join(dir, 'run', 'qrexec-call.sock'),
    console: path.join(dir, 'run', 'console.log'),
  };
}

/** crun container ids: unique per qube across every daemon on the host. */
export function containerId(uuid: string): string {
  return `bh-${uuid}`;
}
