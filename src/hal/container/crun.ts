// Runs the crun OCI runtime. On a cgroup "hybrid" host every call runs in a private mount
// namespace with the cgroup2 mount at /sys/fs/cgroup/unified removed (crun refuses hybrid).
// `crun run -d` gets files, never pipes, as stdio: the container inherits them, and a pipe held
// by the container would keep the call from ever finishing.
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { CgroupMode } from './cgroups.js';

export class CrunError extends Error {
  override readonly name = 'CrunError';
}

export interface ContainerState {
  readonly id: string;
  readonly pid: number;
  readonly status: string;
  readonly bundle: string;
}

const CALL_TIMEOUT_MS = 30_000;

export class Crun {
  readonly #mode: CgroupMode;
  readonly #binary: string;

  constructor(mode: CgroupMode, binary = 'crun') {
    this.#mode = mode;
    this.#binary = binary;
  }

  /** The command line that runs `crun ARGS` on this host's cgroup layout. */
  commandFor(args: readonly string[]): [string, string[]] {
    const crunArgs = ['--cgroup-manager=cgroupfs', ...args];
    if (this.#mode === 'hybrid') {
      return [
        'unshare',
        ['-m', '--propagation', 'private', '--', 'sh', '-c', 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$0" "$@"', this.#binary, ...crunArgs],
      ];
    }
    return [this.#binary, crunArgs];
  }

  /** Runs crun and resolves with its stdout; rejects with its stderr. */
  call(args: readonly string[]): Promise<string> {
    const [cmd, argv] = this.commandFor(args);
    return new Promise((resolve, reject) => {
      execFile(cmd, argv, { timeout: CALL_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
        if (err) reject(new CrunError((stderr.trim() || err.message).split('\n').slice(-3).join('; ')));
        else resolve(stdout);
      });
    });
  }

  /**
   * `crun run -d`: creates and starts the container; its stdio goes to `logFile`. Resolves with
   * the host pid of the container's init (from crun's pid file: no extra `crun state` call).
   */
  async runDetached(id: string, bundle: string, logFile: string): Promise<number> {
    // O_APPEND: once the daemon truncates an overlong log, the qube's writes start over at 0.
    fs.rmSync(logFile, { force: true });
    const fd = fs.openSync(logFile, 'a', 0o600);
    try {
      const pidFile = path.join(bundle, 'init.pid');
      fs.rmSync(pidFile, { force: true });
      const [cmd, argv] = this.commandFor(['run', '-d', '--pid-file', pidFile, '--bundle', bundle, id]);
      const code = await new Promise<number>((resolve, reject) => {
        const child = spawn(cmd, argv, { stdio: ['ignore', fd, fd] });
        child.once('error', reject);
        child.once('exit', (c, signal) => { resolve(c ?? (signal === null ? 1 : 128)); });
      });
      if (code !== 0) {
        throw new CrunError(lastLines(logFile) || `crun exited with ${code}`);
      }
      const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
      if (!Number.isInteger(pid) || pid <= 0) throw new CrunError(`crun wrote no valid pid for ${id}`);
      return pid;
    } finally {
      fs.closeSync(fd);
    }
  }

  async state(id: string): Promise<ContainerState | undefined> {
    let out: string;
    try {
      out = await this.call(['state', id]);
    } catch {
      return undefined;
    }
    const s = JSON.parse(out) as { id: string; pid: number; status: string; bundle: string };
    return { id: s.id, pid: s.pid, status: s.status, bundle: s.bundle };
  }

  async list(): Promise<ContainerState[]> {
    const out = await this.call(['list', '--format', 'json']);
    const parsed = JSON.parse(out.trim() === '' ? '[]' : out) as ContainerState[] | null;
    return parsed ?? [];
  }

  /** Removes the container (and its cgroups); `force` kills it first. Missing ids are fine. */
  async delete(id: string, force: boolean): Promise<void> {
    try {
      await this.call(['delete', ...(force ? ['-f'] : []), id]);
    } catch (err) {
      if (!/not exist|No such file/i.test((err as Error).message)) throw err;
    }
  }

  async pause(id: string): Promise<void> {
    await this.call(['pause', id]);
  }

  async resume(id: string): Promise<void> {
    await this.call(['resume', id]);
  }
}

/** The last lines of a log file, for error messages. */
export function lastLines(file: string, n = 3): string {
  // The file is written by the qube: read only its tail, never the whole thing.
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const size = fs.fstatSync(fd).size;
    const len = Math.min(size, 4096);
    const buf = Buffer.alloc(len);
    fs.readSync(fd, buf, 0, len, size - len);
    return buf.toString('utf8').replace(/[^\x20-\x7e\n]/g, '?').trim().split('\n').slice(-n).join('; ').slice(0, 500);
  } catch {
    return '';
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
