// The daemon's qrexec policy: `<data-dir>/policy.d`, loaded at start and again whenever a file it
// depends on changes (fs.watch, debounced, plus a stamp check so no edit is missed). A policy
// that fails to load denies every call until it is fixed (fail closed), and says why in the log.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import {
  loadPolicyDir,
  statStampSync,
  type Policy,
  type PolicyRequest,
  type Resolution,
  type SystemInfo,
  type Watched,
  loadFailure,
} from '../policy/index.js';

/** The package's policy files (share/policy.d); the same two levels up from src/ and dist/. */
export const PACKAGE_POLICY_DIR = path.resolve(import.meta.dirname, '..', '..', 'share', 'policy.d');
/** The package-owned file, installed into every policy dir (replaced when it differs). */
export const DEFAULT_POLICY_FILE = '90-default.policy';

const DEBOUNCE_MS = 30;
/** evaluate() re-stats the policy's files at most this often (the watcher's safety net). */
const CHECK_EVERY_MS = 500;

/** Puts the package's default policy into `dir` unless an identical copy is there. */
async function installDefault(packageDir: string, dir: string, log: Logger): Promise<void> {
  let content: Buffer;
  try {
    content = await fsp.readFile(path.join(packageDir, DEFAULT_POLICY_FILE));
  } catch (err) {
    log.error({ err: (err as Error).message, packageDir }, 'the package default policy is missing; not installed');
    return;
  }
  const dest = path.join(dir, DEFAULT_POLICY_FILE);
  const current = await fsp.readFile(dest).catch(() => null);
  if (current?.equals(content) === true) return;
  // A dot name: the loader never reads the temp file, even if a crash leaves it behind.
  const tmp = path.join(dir, `.${DEFAULT_POLICY_FILE}.${process.pid}.tmp`);
  try {
    await fsp.writeFile(tmp, content, { mode: 0o644 });
    await fsp.rename(tmp, dest);
    log.info({ file: dest }, current === null ? 'default policy installed' : 'default policy updated (it is package-owned; put your rules in another file)');
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    log.error({ err: (err as Error).message, file: dest }, 'cannot install the default policy');
  }
}

export interface PolicyStoreOptions {
  /** Where the package default policy comes from (default: share/policy.d of this package). */
  readonly packageDir?: string;
  /** fs.watch the policy's directories (default true; the stamp check runs either way). */
  readonly watch?: boolean;
}

export class PolicyStore {
  readonly #dir: string;

  /** The policy folder this store watches. */
  get dir(): string {
    return this.#dir;
  }
  readonly #log: Logger;
  readonly #useWatch: boolean;
  #policy: Policy | null = null;
  #errors: readonly string[] = ['not loaded yet'];
  #watched: readonly Watched[] = [];
  readonly #watchers = new Map<string, fs.FSWatcher>();
  #debounce: NodeJS.Timeout | null = null;
  #loading: Promise<void> | null = null;
  #again = false;
  #lastCheck = 0;
  #closed = false;

  private constructor(dir: string, log: Logger, watch: boolean) {
    this.#dir = dir;
    this.#log = log;
    this.#useWatch = watch;
  }

  /** Creates `dir` (0755) if needed, installs the package default policy, loads, watches. */
  static async open(dir: string, log: Logger, opts: PolicyStoreOptions = {}): Promise<PolicyStore> {
    const absolute = path.resolve(dir);
    await fsp.mkdir(absolute, { recursive: true, mode: 0o755 });
    await installDefault(opts.packageDir ?? PACKAGE_POLICY_DIR, absolute, log);
    const store = new PolicyStore(absolute, log, opts.watch ?? true);
    store.#watchDirs([absolute]);
    await store.#reload();
    return store;
  }

  evaluate(req: PolicyRequest, sys: SystemInfo): Resolution {
    this.#checkSoon();
    if (this.#policy === null) {
      return loadFailure(this.#errors);
    }
    return this.#policy.evaluate(req, sys);
  }

  /** The load errors of the current policy (empty when fine). */
  errors(): readonly string[] {
    return this.#errors;
  }

  /** Reloads now if anything changed since the last load; waits for a reload in progress. */
  async refresh(): Promise<void> {
    if (this.#closed) return;
    if (this.#loading !== null) await this.#loading;
    this.#lastCheck = Date.now();
    if (this.#debounce !== null || this.#stale()) {
      this.#cancelDebounce();
      await this.#reload();
    }
  }

  close(): void {
    this.#closed = true;
    this.#cancelDebounce();
    for (const w of this.#watchers.values()) w.close();
    this.#watchers.clear();
  }

  /** A change arrived during the last load (read through a method: it changes across awaits). */
  #rerunWanted(): boolean {
    return this.#again && !this.#closed;
  }

  #isOpen(): boolean {
    return !this.#closed;
  }

  #stale(): boolean {
    return this.#watched.some((w) => statStampSync(w.path) !== w.stamp);
  }

  /** The safety net: a throttled stamp check from evaluate(); a change schedules a reload. */
  #checkSoon(): void {
    const now = Date.now();
    if (this.#closed || this.#loading !== null || now - this.#lastCheck < CHECK_EVERY_MS) return;
    this.#lastCheck = now;
    if (this.#stale()) void this.#reload();
  }

  #cancelDebounce(): void {
    if (this.#debounce !== null) clearTimeout(this.#debounce);
    this.#debounce = null;
  }

  #changed(): void {
    if (this.#closed) return;
    this.#cancelDebounce();
    this.#debounce = setTimeout(() => {
      this.#debounce = null;
      if (!this.#closed && this.#stale()) void this.#reload();
    }, DEBOUNCE_MS);
  }

  /** One load at a time; a change noticed during a load runs another one after it. */
  #reload(): Promise<void> {
    if (this.#loading !== null) {
      this.#again = true;
      return this.#loading;
    }
    const run = async (): Promise<void> => {
      do {
        this.#again = false;
        await this.#loadOnce();
      } while (this.#rerunWanted());
    };
    this.#loading = run().finally(() => {
      this.#loading = null;
    });
    return this.#loading;
  }

  async #loadOnce(): Promise<void> {
    let result;
    try {
      result = await loadPolicyDir(this.#dir);
    } catch (err) {
      result = { ok: false as const, errors: [`${this.#dir}: policy load failed: ${(err as Error).message}`], files: [], watched: [{ path: this.#dir, stamp: 'missing' }] };
    }
    // close() may have run during the load.
    if (!this.#isOpen()) return;
    this.#lastCheck = Date.now();
    this.#watched = result.watched;
    if (result.ok) {
      this.#policy = result.policy;
      this.#errors = [];
      this.#log.info({ dir: this.#dir, rules: result.policy.ruleCount, files: result.files.length }, 'qrexec policy loaded');
    } else {
      this.#policy = null;
      this.#errors = result.errors;
      this.#log.error({ dir: this.#dir, errors: result.errors }, 'qrexec policy failed to load; every call is denied until it is fixed');
    }
    const dirs = new Set<string>([this.#dir]);
    for (const w of result.watched) {
      dirs.add(path.dirname(w.path));
      if (w.stamp.startsWith('dir:')) dirs.add(w.path);
    }
    this.#watchDirs([...dirs]);
  }

  /** Watches exactly `dirs` (a directory that cannot be watched is left to the stamp check). */
  #watchDirs(dirs: readonly string[]): void {
    const wanted = new Set(this.#useWatch ? dirs : []);
    for (const [d, w] of this.#watchers) {
      if (!wanted.has(d)) {
        w.close();
        this.#watchers.delete(d);
      }
    }
    for (const d of wanted) {
      if (this.#watchers.has(d)) continue;
      try {
        const w = fs.watch(d, { persistent: false }, () => { this.#changed(); });
        w.on('error', () => {
          w.close();
          if (this.#watchers.get(d) === w) this.#watchers.delete(d);
          this.#changed();
        });
        this.#watchers.set(d, w);
      } catch {
        // Missing or unreadable: the stamp check notices when it appears.
      }
    }
  }
}
