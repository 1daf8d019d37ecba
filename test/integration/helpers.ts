// Integration-test plumbing: runs the real daemon (bin/bulkhead daemon) as a child process in a
// fresh temp dir and the real qvm-* commands against it. Every process started here is tracked
// and killed, and every temp dir removed, when the test (or suite) ends — and, as a last resort,
// when the test process itself exits.
import { execFileSync, spawn, spawnSync, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { AdminClient } from '../../src/cli/client.js';
import { detectCgroupMode } from '../../src/hal/container/cgroups.js';
import { Crun } from '../../src/hal/container/crun.js';
import { daemonTag, netnsName } from '../../src/net/addresses.js';

/**
 * Removes every crun container whose bundle lies under `dir` (qubes of a test's daemon) and
 * returns their ids. Throws when crun cannot list containers, so an assertion that nothing was
 * left cannot pass because crun failed.
 */
export async function reapContainers(dir: string): Promise<string[]> {
  const crun = new Crun(detectCgroupMode());
  const all = await crun.list();
  const reaped: string[] = [];
  for (const c of all) {
    if (c.bundle.startsWith(`${dir}/`)) {
      await crun.delete(c.id, true).catch(() => undefined);
      reaped.push(c.id);
    }
  }
  return reaped;
}

/**
 * Removes the network namespace handles (/run/netns/bulkhead-<tag>-<uuid>) of the qubes in a data
 * dir whose daemon died without releasing them. Returns the names removed.
 */
export function reapNetns(dataDir: string): string[] {
  let uuids: string[];
  try {
    const doc = JSON.parse(fs.readFileSync(path.join(dataDir, 'qubes.json'), 'utf8')) as { qubes: { uuid: string }[] };
    uuids = doc.qubes.map((q) => q.uuid);
  } catch {
    return [];
  }
  const reaped: string[] = [];
  const tag = daemonTag(path.resolve(dataDir));
  for (const uuid of uuids) {
    const name = netnsName(tag, uuid);
    if (!fs.existsSync(`/run/netns/${name}`)) continue;
    spawnSync('ip', ['netns', 'del', name]);
    reaped.push(name);
  }
  return reaped;
}

export const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');
export const BIN_DIR = path.join(REPO_ROOT, 'bin');
const BULKHEAD = path.join(BIN_DIR, 'bulkhead');

/** How long a daemon may take to accept connections, and a CLI call to finish. */
const READY_TIMEOUT_MS = 15_000;
const RUN_TIMEOUT_MS = 30_000;
/** How long a signalled daemon may take to exit before it gets SIGKILL. */
const EXIT_TIMEOUT_MS = 10_000;

// ---------- last-resort cleanup ----------

const liveChildren = new Set<ChildProcess>();
const liveTempDirs = new Set<string>();

function emergencyCleanup(): void {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  liveChildren.clear();
  if (liveTempDirs.size > 0) reapContainersSync([...liveTempDirs]);
  for (const dir of liveTempDirs) fs.rmSync(dir, { recursive: true, force: true });
  liveTempDirs.clear();
}

/** The synchronous last resort of reapContainers (process exit handlers cannot wait). */
function reapContainersSync(dirs: readonly string[]): void {
  let list: { id: string; bundle: string }[] | null;
  try {
    list = JSON.parse(execFileSync('crun', ['list', '--format', 'json'], { encoding: 'utf8', timeout: 10_000 }) || '[]') as { id: string; bundle: string }[] | null;
  } catch {
    return;
  }
  const hybrid = detectCgroupMode() === 'hybrid';
  for (const c of list ?? []) {
    if (!dirs.some((d) => c.bundle.startsWith(`${d}/`))) continue;
    const args = ['--cgroup-manager=cgroupfs', 'delete', '-f', c.id];
    try {
      if (hybrid) {
        execFileSync('unshare', ['-m', '--propagation', 'private', '--', 'sh', '-c', 'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"', 'crun', ...args], { stdio: 'ignore', timeout: 10_000 });
      } else {
        execFileSync('crun', args, { stdio: 'ignore', timeout: 10_000 });
      }
    } catch {
      // best effort at exit
    }
  }
}

process.on('exit', emergencyCleanup);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    emergencyCleanup();
    process.kill(process.pid, sig);
  });
}

function track(child: ChildProcess): void {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  child.once('error', () => liveChildren.delete(child));
}

/** A fresh directory under os.tmpdir(), removed at exit at the latest. */
export function makeTempDir(prefix = 'bulkhead-it-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  liveTempDirs.add(dir);
  return dir;
}

export function removeTempDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
  liveTempDirs.delete(dir);
}

// ---------- running commands ----------

export interface RunResult {
  /** Exit code; -1 when the process was killed by a signal (see `signal`). */
  readonly code: number;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  /** Written to stdin, which is then closed (stdin is always closed). */
  readonly input?: string;
  /** BULKHEAD_SOCKET for the command; undefined removes it from the environment. */
  readonly socketPath?: string;
  readonly env?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
}

function childEnv(socketPath: string | undefined, extra: Readonly<Record<string, string>> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.BULKHEAD_SOCKET;
  delete env.NODE_TEST_CONTEXT;
  delete env.NODE_OPTIONS;
  if (socketPath !== undefined) env.BULKHEAD_SOCKET = socketPath;
  return { ...env, ...extra };
}

/** Starts node with `args` from the repository, tracked for cleanup, collecting its output. */
function spawnNode(args: readonly string[], env: NodeJS.ProcessEnv, netns?: string): { child: ChildProcessWithoutNullStreams; out: Buffer[]; err: Buffer[] } {
  // In a network namespace the test made: nsenter execs node itself (same pid).
  const child = netns === undefined
    ? spawn(process.execPath, args, { cwd: REPO_ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] })
    : spawn('nsenter', [`--net=/run/netns/${netns}`, process.execPath, ...args], { cwd: REPO_ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
  track(child);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => out.push(c));
  child.stderr.on('data', (c: Buffer) => err.push(c));
  return { child, out, err };
}

/** Runs bin/<cmd> (a qvm-* link or `bulkhead`) with node, as a user would. */
export function runCli(cmd: string, args: readonly string[] = [], opts: RunOptions = {}): Promise<RunResult> {
  const script = path.join(BIN_DIR, cmd);
  if (!fs.existsSync(script)) return Promise.reject(new Error(`no such command in bin/: ${cmd}`));
  return new Promise((resolve, reject) => {
    const { child, out, err } = spawnNode([script, ...args], childEnv(opts.socketPath, opts.env));
    child.stdin.on('error', () => undefined); // the command may exit without reading stdin
    child.stdin.end(opts.input ?? '');
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? RUN_TIMEOUT_MS);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code: code ?? -1,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
  });
}

// ---------- daemon processes ----------

export interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface DaemonProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Settles once the process has exited and been reaped. */
  readonly exited: Promise<ExitStatus>;
  /** undefined while it runs. */
  exitStatus(): ExitStatus | undefined;
  stderr(): string;
  stdout(): string;
}

export interface SpawnDaemonOptions {
  readonly dataDir: string;
  readonly socketPath: string;
  readonly defaultQubes?: boolean;
  readonly env?: Readonly<Record<string, string>>;
  /** More `bulkhead daemon` options (e.g. `--ask-timeout 2`). */
  readonly args?: readonly string[];
  /** Run the daemon in this network namespace (/run/netns/NAME) the test made. */
  readonly netns?: string;
}

/** Starts `bulkhead daemon` and returns at once (see waitForDaemon). */
export function spawnDaemon(opts: SpawnDaemonOptions): DaemonProcess {
  const args = [BULKHEAD, 'daemon', '--data-dir', opts.dataDir, '--socket', opts.socketPath];
  if (opts.defaultQubes === true) args.push('--default-qubes');
  args.push(...(opts.args ?? []));
  const { child, out, err } = spawnNode(args, childEnv(undefined, opts.env), opts.netns);
  child.stdin.end(); // the daemon reads nothing
  let status: ExitStatus | undefined;
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('close', (code, signal) => {
      status = { code, signal };
      resolve(status);
    });
    child.once('error', () => {
      status = { code: null, signal: null };
      resolve(status);
    });
  });
  if (child.pid === undefined) throw new Error('could not spawn the daemon');
  return {
    child,
    pid: child.pid,
    exited,
    exitStatus: () => status,
    stderr: () => Buffer.concat(err).toString('utf8'),
    stdout: () => Buffer.concat(out).toString('utf8'),
  };
}

/** Resolves once a connection to `socketPath` is accepted; rejects if the daemon exits first. */
export function socketAccepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => {
      resolve(false);
    });
  });
}

/**
 * Waits until the daemon serves the Admin API on `socketPath`: the socket accepts a connection
 * and answers admin.vm.List. Throws (with the daemon's stderr) if it exits or times out first.
 */
export async function waitForDaemon(proc: DaemonProcess, socketPath: string, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  const client = new AdminClient(socketPath);
  const deadline = Date.now() + timeoutMs;
  let lastError = 'never reachable';
  while (Date.now() < deadline) {
    const status = proc.exitStatus();
    if (status !== undefined) {
      throw new Error(
        `daemon exited before it was ready (code ${String(status.code)}, signal ${String(status.signal)}):\n${proc.stderr()}`,
      );
    }
    if (fs.existsSync(socketPath) && (await socketAccepts(socketPath))) {
      try {
        await client.call({ method: 'admin.vm.List', dest: 'dom0' });
        if (proc.exitStatus() === undefined) return;
      } catch (err) {
        lastError = (err as Error).message;
      }
    }
    await sleep(20);
  }
  throw new Error(`daemon not ready after ${timeoutMs} ms (${lastError}):\n${proc.stderr()}`);
}

/** Sends `signal` and waits for the exit; escalates to SIGKILL if the process lingers. */
export async function signalAndWait(proc: DaemonProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<ExitStatus> {
  const done = proc.exitStatus();
  if (done !== undefined) return done;
  proc.child.kill(signal);
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), EXIT_TIMEOUT_MS);
  try {
    return await proc.exited;
  } finally {
    clearTimeout(timer);
  }
}

/** Waits for a process expected to exit on its own; kills it and throws if it does not in time. */
export async function exitWithin(proc: DaemonProcess, ms = READY_TIMEOUT_MS): Promise<ExitStatus> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => {
      resolve('timeout');
    }, ms);
  });
  try {
    const result = await Promise.race([proc.exited, timedOut]);
    if (result === 'timeout') {
      await signalAndWait(proc, 'SIGKILL');
      throw new Error(`process ${proc.pid} still running after ${ms} ms; killed. stderr:\n${proc.stderr()}`);
    }
    return result;
  } finally {
    clearTimeout(timer);
  }
}

export interface StartOptions {
  readonly defaultQubes?: boolean;
  /** When given, the daemon is stopped and its temp dir removed after this test. */
  readonly t?: TestContext;
  readonly env?: Readonly<Record<string, string>>;
  readonly args?: readonly string[];
  /** Run the daemon in this network namespace the test made (see spawnDaemon). */
  readonly netns?: string;
}

/** A daemon in its own temp dir: `<tmp>/data` and `<tmp>/run/qubesd.sock`. */
export class Daemon {
  readonly tmpDir: string;
  readonly dataDir: string;
  readonly socketPath: string;
  readonly #opts: StartOptions;
  #proc: DaemonProcess | undefined;
  #stopped = false;
  /** stderr of every process this object started, in order (for diagnostics). */
  #pastStderr = '';

  constructor(opts: StartOptions = {}) {
    this.#opts = opts;
    this.tmpDir = makeTempDir();
    // Qubes' host uids must be able to traverse to their volatile dirs (never list them).
    fs.chmodSync(this.tmpDir, 0o711);
    this.dataDir = path.join(this.tmpDir, 'data');
    this.socketPath = path.join(this.tmpDir, 'run', 'qubesd.sock');
  }

  /** The current (or last) daemon process. */
  get proc(): DaemonProcess {
    if (!this.#proc) throw new Error('daemon not started');
    return this.#proc;
  }

  get pid(): number {
    return this.proc.pid;
  }

  get running(): boolean {
    return this.#proc !== undefined && this.#proc.exitStatus() === undefined;
  }

  /** Starts (or restarts, on the same data dir and socket) and waits until it serves. */
  async start(): Promise<void> {
    if (this.#stopped) throw new Error('daemon already stopped for good');
    if (this.running) throw new Error('daemon already running');
    if (this.#proc) this.#pastStderr += this.#proc.stderr();
    this.#proc = spawnDaemon({
      dataDir: this.dataDir,
      socketPath: this.socketPath,
      defaultQubes: this.#opts.defaultQubes === true,
      ...(this.#opts.env ? { env: this.#opts.env } : {}),
      ...(this.#opts.args ? { args: this.#opts.args } : {}),
      ...(this.#opts.netns === undefined ? {} : { netns: this.#opts.netns }),
    });
    await waitForDaemon(this.#proc, this.socketPath);
  }

  stderr(): string {
    return this.#pastStderr + (this.#proc?.stderr() ?? '');
  }

  client(): AdminClient {
    return new AdminClient(this.socketPath);
  }

  /** Runs a CLI command against this daemon (BULKHEAD_SOCKET set). */
  run(cmd: string, args: readonly string[] = [], opts: Omit<RunOptions, 'socketPath'> = {}): Promise<RunResult> {
    return runCli(cmd, args, { ...opts, socketPath: this.socketPath });
  }

  /** Runs a command that must succeed (exit 0); fails with its output otherwise. */
  async ok(cmd: string, args: readonly string[] = [], opts: Omit<RunOptions, 'socketPath'> = {}): Promise<string> {
    const r = await this.run(cmd, args, opts);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
  }

  /** Signals the daemon and waits for its exit; the data dir stays (see start() to restart). */
  async kill(signal: NodeJS.Signals = 'SIGTERM'): Promise<ExitStatus> {
    return signalAndWait(this.proc, signal);
  }

  /** Stops the daemon (if it runs) and removes the temp dir. Idempotent; safe in after hooks. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<ExitStatus | undefined> {
    if (this.#stopped) return this.#proc?.exitStatus();
    this.#stopped = true;
    try {
      return this.#proc ? await signalAndWait(this.#proc, signal) : undefined;
    } finally {
      // A daemon that died hard leaves its qubes running: never leak them past the test.
      await reapContainers(this.tmpDir).catch(() => undefined);
      reapNetns(this.dataDir);
      removeTempDir(this.tmpDir);
    }
  }
}

/** Starts a daemon in a fresh temp dir; with `t`, it is stopped after that test even on failure. */
export async function startDaemon(opts: StartOptions = {}): Promise<Daemon> {
  const d = new Daemon(opts);
  opts.t?.after(async () => {
    await d.stop();
  });
  try {
    await d.start();
  } catch (err) {
    await d.stop('SIGKILL');
    throw err;
  }
  return d;
}

/**
 * One daemon for a whole describe block: started in before(), stopped in after() (which runs
 * even when tests fail). Call at describe level; the returned function gives the daemon.
 */
export function suiteDaemon(opts: Omit<StartOptions, 't'> = {}): () => Daemon {
  let daemon: Daemon | undefined;
  before(async () => {
    daemon = await startDaemon(opts);
  });
  after(async () => {
    await daemon?.stop();
  });
  return () => {
    if (!daemon) throw new Error('suite daemon not started');
    return daemon;
  };
}

/** Polls `check` until it returns true; fails with `what` after `timeoutMs`. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

// ---------- output helpers ----------

/** Non-empty lines of a command's output. */
export function lines(text: string): string[] {
  return text.split('\n').filter((l) => l !== '');
}

/**
 * Parses a `column -t` style table (header + rows) by the header's column positions, and checks
 * the layout: every column of every row starts exactly where its header starts, preceded by a
 * blank. Returns the header words and the rows as cell arrays.
 */
export function parseTable(text: string): { header: string[]; rows: string[][] } {
  const all = lines(text);
  const headerLine = all[0];
  if (headerLine === undefined) throw new Error('empty table');
  const starts: number[] = [];
  const header: string[] = [];
  for (const m of headerLine.matchAll(/\S+/g)) {
    starts.push(m.index);
    header.push(m[0]);
  }
  const rows = all.slice(1).map((line) =>
    starts.map((start, i) => {
      if (i > 0) {
        if (line.length <= start || line[start - 1] !== ' ' || line[start] === ' ') {
          throw new Error(`column ${header[i] ?? '?'} misaligned in line ${JSON.stringify(line)} (header ${JSON.stringify(headerLine)})`);
        }
      }
      const end = starts[i + 1];
      return line.slice(start, end).trimEnd();
    }),
  );
  return { header, rows };
}

/** The cells of the row whose first cell is `name`. */
export function rowOf(rows: readonly string[][], name: string): string[] | undefined {
  return rows.find((r) => r[0] === name);
}

/** `qvm-prefs` list output → name → [flag, value]. */
export function parsePrefsList(text: string): Map<string, { flag: string; value: string }> {
  const map = new Map<string, { flag: string; value: string }>();
  for (const line of lines(text)) {
    const m = /^(\S+)\s+(\S)(?:\s+(.*))?$/.exec(line);
    if (!m) throw new Error(`unexpected prefs line ${JSON.stringify(line)}`);
    map.set(m[1] ?? '', { flag: m[2] ?? '', value: m[3] ?? '' });
  }
  return map;
}
