// Loading a policy directory (facts §7, one directory instead of /run + /etc): `DIR/*.policy` in
// code-point order of the names, directives resolved in place, every error collected. Any error
// means no policy at all: the caller denies everything.
import path from 'node:path';
import { Policy, type Resolution } from './engine.js';
import { FileTooLargeError, nodePolicyFs, type PolicyFs, type Stamp } from './fs.js';
import { DEFAULT_MAX_ERRORS, formatError, parseOldSyntaxText, parsePolicyText, type Entry, type PolicyError, type Rule } from './parser.js';

/** Caps: every byte read (includes read again count again), files opened, include depth. */
export const MAX_POLICY_BYTES = 16 * 1024 * 1024;
export const MAX_POLICY_FILES = 10_000;
export const MAX_INCLUDE_DEPTH = 32;
const MAX_ERRORS = DEFAULT_MAX_ERRORS;

const FILE_NAME = /^[0-9a-z_.-]+$/;

/** A path the loaded policy depends on, with its stamp at load time. */
export interface Watched {
  readonly path: string;
  readonly stamp: Stamp;
}

export type LoadResult =
  | { ok: true; policy: Policy; files: string[]; watched: Watched[] }
  | { ok: false; errors: string[]; files: string[]; watched: Watched[] };

type Syntax = { readonly kind: 'new' } | { readonly kind: 'old'; readonly service: string | null; readonly argument: string | null };

interface Place {
  readonly file: string;
  readonly line: number | null;
}

const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The 1-based line (universal newlines) holding the first byte that is not UTF-8. */
function badUtf8Line(data: Uint8Array): number {
  let line = 1;
  let start = 0;
  for (let i = 0; i <= data.length; i++) {
    const b = data[i];
    if (i < data.length && b !== 0x0a && b !== 0x0d) continue;
    try {
      decoder.decode(data.subarray(start, i));
    } catch {
      return line;
    }
    if (b === 0x0d && data[i + 1] === 0x0a) i++;
    start = i + 1;
    line++;
  }
  return line;
}

/** Code-point order of names (valid names are ASCII, where UTF-16 order is the same). */
function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

class Loader {
  readonly rules: Rule[] = [];
  readonly errors: PolicyError[] = [];
  readonly files: string[] = [];
  readonly #seen = new Set<string>();
  readonly #watched = new Map<string, Stamp>();
  readonly #fs: PolicyFs;
  readonly #topDir: string;
  #bytesLeft = MAX_POLICY_BYTES;
  #filesLeft = MAX_POLICY_FILES;

  constructor(fsImpl: PolicyFs, topDir: string) {
    this.#fs = fsImpl;
    this.#topDir = topDir;
  }

  get watched(): Watched[] {
    return [...this.#watched].map(([p, stamp]) => ({ path: p, stamp }));
  }

  get full(): boolean {
    return this.errors.length >= MAX_ERRORS;
  }

  #error(at: Place, message: string): void {
    if (!this.full) this.errors.push({ file: at.file, line: at.line, message });
  }

  #watch(p: string, stamp: Stamp): void {
    if (!this.#watched.has(p)) this.#watched.set(p, stamp);
  }

  /** An include path: relative to the top-level policy folder, links followed before `..`. */
  async #resolve(p: string): Promise<string> {
    const joined = path.isAbsolute(p) ? p : `${this.#topDir}/${p}`;
    if (this.#fs.realpath !== undefined) {
      try {
        return await this.#fs.realpath(joined);
      } catch {
        // Missing: reported by the stat that follows, under the name as written.
      }
    }
    return path.resolve(joined);
  }

  /** Listings already made in this load: a folder included many times is read once. */
  readonly #listings = new Map<string, string[] | null>();

  /** The policy files of a directory in load order; bad names are errors. Null when unreadable. */
  async listDir(dir: string, at: Place): Promise<string[] | null> {
    const known = this.#listings.get(dir);
    if (known !== undefined) return known;
    const files = await this.#listDir(dir, at);
    this.#listings.set(dir, files);
    return files;
  }

  async #listDir(dir: string, at: Place): Promise<string[] | null> {
    let listing;
    try {
      listing = await this.#fs.readDir(dir);
    } catch (err) {
      this.#watch(dir, 'missing');
      const code = (err as NodeJS.ErrnoException).code;
      const reason = code ?? (err as Error).message;
      this.#error(at, at.file === dir ? `cannot read the policy directory: ${reason}` : `cannot read directory ${dir}: ${reason}`);
      return null;
    }
    this.#watch(dir, listing.stamp);
    const files: string[] = [];
    for (const name of listing.names.filter((n) => n.endsWith('.policy') && !n.startsWith('.')).sort(byCodePoint)) {
      const full = path.join(dir, name);
      const st = await this.#fs.stat(full);
      if (st.kind !== 'file') continue;
      if (!FILE_NAME.test(name)) {
        this.#error({ file: full, line: null }, `invalid policy file name '${name}' (allowed characters: 0-9 a-z _ . -)`);
        continue;
      }
      files.push(full);
    }
    return files;
  }

  async loadFile(file: string, syntax: Syntax, chain: readonly string[], at: Place): Promise<void> {
    if (this.full) return;
    if (chain.includes(file)) {
      this.#error(at, `include loop: ${[...chain, file].join(' -> ')}`);
      return;
    }
    if (chain.length >= MAX_INCLUDE_DEPTH) {
      this.#error(at, `includes nested more than ${MAX_INCLUDE_DEPTH} deep`);
      return;
    }
    if (this.#filesLeft-- <= 0) {
      this.#error(at, `more than ${MAX_POLICY_FILES} policy files read`);
      return;
    }
    let read;
    try {
      read = await this.#fs.readFile(file, this.#bytesLeft);
    } catch (err) {
      this.#watch(file, 'missing');
      const reason = err instanceof FileTooLargeError
        ? `policy files larger than ${MAX_POLICY_BYTES} bytes in total`
        : ((err as NodeJS.ErrnoException).code ?? (err as Error).message);
      this.#error(at, at.file === file ? `cannot read: ${reason}` : `cannot read ${file}: ${reason}`);
      return;
    }
    this.#bytesLeft -= read.data.length;
    this.#watch(file, read.stamp);
    if (!this.#seen.has(file)) {
      this.#seen.add(file);
      this.files.push(file);
    }
    let text;
    try {
      text = decoder.decode(read.data);
    } catch {
      this.#error({ file, line: badUtf8Line(read.data) }, 'invalid UTF-8');
      return;
    }
    const budget = MAX_ERRORS - this.errors.length;
    const parsed = syntax.kind === 'new' ? parsePolicyText(text, file, budget) : parseOldSyntaxText(text, file, syntax.service, syntax.argument, budget);
    for (const e of parsed.errors) this.#error(e, e.message);
    const inner = [...chain, file];
    for (const entry of parsed.entries) await this.#entry(entry, file, syntax, inner);
  }

  async #entry(entry: Entry, file: string, syntax: Syntax, chain: readonly string[]): Promise<void> {
    if (entry.kind === 'rule') {
      this.rules.push(entry.rule);
      return;
    }
    const at = { file, line: entry.line };
    // Includes cost reads whether or not they repeat: once the budget is gone (or the error list
    // is full), the rest are not even looked at. The policy has failed by then anyway.
    if (this.full) return;
    if (this.#filesLeft <= 0) {
      this.#error(at, `more than ${MAX_POLICY_FILES} policy files read`);
      return;
    }
    const target = await this.#resolve(entry.path);
    const st = await this.#fs.stat(target);
    this.#watch(target, st.stamp);
    if (entry.kind === 'include-dir') {
      if (st.kind !== 'dir') {
        this.#error(at, `!include-dir ${entry.path}: not a directory`);
        return;
      }
      // A listing counts against the file budget like a file.
      this.#filesLeft--;
      const files = await this.listDir(target, at);
      for (const f of files ?? []) await this.loadFile(f, { kind: 'new' }, chain, at);
      return;
    }
    const directive = entry.kind === 'include-service' ? '!include-service' : '!include';
    if (st.kind !== 'file') {
      this.#error(at, `${directive} ${entry.path}: not a file`);
      return;
    }
    const next: Syntax =
      entry.kind === 'include' ? { kind: 'new' } : entry.kind === 'include-service' ? { kind: 'old', service: entry.service, argument: entry.argument } : syntax;
    await this.loadFile(target, next, chain, at);
  }
}

/**
 * Loads `<dir>/*.policy` and everything they include. Relative include paths resolve against
 * `dir`. `watched` lists every file and directory the result depends on (also on failure, so a
 * fix is noticed).
 */
export async function loadPolicyDir(dir: string, fsImpl: PolicyFs = nodePolicyFs): Promise<LoadResult> {
  const topDir = path.resolve(dir);
  const loader = new Loader(fsImpl, topDir);
  const files = await loader.listDir(topDir, { file: topDir, line: null });
  for (const f of files ?? []) await loader.loadFile(f, { kind: 'new' }, [], { file: f, line: null });
  if (loader.errors.length > 0) {
    const errors = loader.errors.map(formatError);
    if (loader.full) errors.push(`${topDir}: too many errors; stopped after ${MAX_ERRORS}`);
    return { ok: false, errors, files: loader.files, watched: loader.watched };
  }
  return { ok: true, policy: new Policy(loader.rules), files: loader.files, watched: loader.watched };
}

/**
 * A policy from one text with no directives (tests, tools). Include directives are errors here:
 * they need a directory to resolve against.
 */
export function policyFromText(text: string, file = '<policy>'): { ok: true; policy: Policy } | { ok: false; errors: string[] } {
  const parsed = parsePolicyText(text, file);
  const errors = parsed.errors.map(formatError);
  const rules: Rule[] = [];
  for (const entry of parsed.entries) {
    if (entry.kind === 'rule') rules.push(entry.rule);
    else errors.push(formatError({ file, line: entry.line, message: 'includes need a policy directory (use loadPolicyDir)' }));
  }
  return errors.length > 0 ? { ok: false, errors } : { ok: true, policy: new Policy(rules) };
}

/** What every call gets while the policy does not load: denied, naming the first error. */
export function loadFailure(errors: readonly string[]): Resolution {
  return { result: 'deny', reason: `policy failed to load: ${errors[0] ?? 'unknown error'}`, notify: true };
}
