// The file access the loader needs, behind a small interface: node:fs for real directories,
// an in-memory map for tests. Every answer carries a stamp (taken before reading) that changes
// whenever the file or directory changes, so a caller can tell when to reload.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';

/** Opaque change marker; equal stamps mean "unchanged". 'missing' for a path that is not there. */
export type Stamp = string;

export type EntryKind = 'file' | 'dir' | 'other' | 'missing';

export interface PolicyFs {
  /** What a path is, following symlinks. Never throws: an unreadable path is 'missing'. */
  stat(p: string): Promise<{ kind: EntryKind; stamp: Stamp }>;
  /** A directory's entry names; the stamp is of the directory, taken before listing. */
  readDir(p: string): Promise<{ names: string[]; stamp: Stamp }>;
  /** A regular file's bytes; throws FileTooLargeError beyond maxBytes. Stamp taken before reading. */
  readFile(p: string, maxBytes: number): Promise<{ data: Uint8Array; stamp: Stamp }>;
  /**
   * The real path, links followed before `..` is applied (as Qubes resolves include paths);
   * throws when it does not exist. Without it, paths are normalised as text.
   */
  realpath?(p: string): Promise<string>;
}

export class FileTooLargeError extends Error {
  override readonly name = 'FileTooLargeError';
}

function kindOf(st: fs.BigIntStats): EntryKind {
  return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other';
}

function stampOf(st: fs.BigIntStats): Stamp {
  return `${kindOf(st)}:${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** The stamp of a path now (synchronous: the policy store's cheap change check). */
export function statStampSync(p: string): Stamp {
  try {
    return stampOf(fs.statSync(p, { bigint: true }));
  } catch {
    return 'missing';
  }
}

export const nodePolicyFs: PolicyFs = {
  realpath(p) {
    // The promise API hands the path to the OS's realpath (fs.realpathSync would drop `..` first).
    return fsp.realpath(p);
  },

  async stat(p) {
    try {
      const st = await fsp.stat(p, { bigint: true });
      return { kind: kindOf(st), stamp: stampOf(st) };
    } catch {
      return { kind: 'missing', stamp: 'missing' };
    }
  },

  async readDir(p) {
    const st = await fsp.stat(p, { bigint: true });
    const names = await fsp.readdir(p);
    return { names, stamp: stampOf(st) };
  },

  async readFile(p, maxBytes) {
    // O_NONBLOCK: a FIFO swapped in after the caller's stat must not hang the open.
    const fh = await fsp.open(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      const st = await fh.stat({ bigint: true });
      if (!st.isFile()) throw new Error('not a regular file');
      if (st.size > BigInt(maxBytes)) throw new FileTooLargeError(`larger than ${maxBytes} bytes`);
      // Read one byte past the cap so a file that grew since the fstat is caught too.
      const buf = Buffer.alloc(Math.min(maxBytes, Number(st.size)) + 1);
      let length = 0;
      for (;;) {
        const { bytesRead } = await fh.read(buf, length, buf.length - length, length);
        if (bytesRead === 0) break;
        length += bytesRead;
        if (length === buf.length) break;
      }
      if (length > maxBytes) throw new FileTooLargeError(`larger than ${maxBytes} bytes`);
      return { data: buf.subarray(0, length), stamp: stampOf(st) };
    } finally {
      await fh.close();
    }
  },
};

/**
 * Files in memory, for tests: absolute POSIX paths → contents. Directories exist implicitly
 * (every parent of a file) or explicitly through mkdir().
 */
export class MemoryPolicyFs implements PolicyFs {
  readonly #files = new Map<string, Uint8Array>();
  readonly #dirs = new Set<string>(['/']);
  readonly #versions = new Map<string, number>();
  #clock = 0;

  constructor(files: Record<string, string | Uint8Array> = {}) {
    for (const [p, content] of Object.entries(files)) this.write(p, content);
  }

  write(p: string, content: string | Uint8Array): void {
    const full = path.posix.resolve(p);
    this.#files.set(full, typeof content === 'string' ? Buffer.from(content, 'utf8') : content);
    this.#touch(full);
    for (let d = path.posix.dirname(full); ; d = path.posix.dirname(d)) {
      if (!this.#dirs.has(d)) {
        this.#dirs.add(d);
        this.#touch(path.posix.dirname(d));
      }
      if (d === '/') break;
    }
    this.#touch(path.posix.dirname(full));
  }

  mkdir(p: string): void {
    const full = path.posix.resolve(p);
    this.#dirs.add(full);
    this.#touch(full);
  }

  remove(p: string): void {
    const full = path.posix.resolve(p);
    this.#files.delete(full);
    this.#touch(full);
    this.#touch(path.posix.dirname(full));
  }

  #touch(p: string): void {
    this.#versions.set(p, ++this.#clock);
  }

  #stamp(p: string): Stamp {
    return `v${this.#versions.get(p) ?? 0}`;
  }

  stat(p: string): Promise<{ kind: EntryKind; stamp: Stamp }> {
    const full = path.posix.resolve(p);
    if (this.#files.has(full)) return Promise.resolve({ kind: 'file', stamp: this.#stamp(full) });
    if (this.#dirs.has(full)) return Promise.resolve({ kind: 'dir', stamp: this.#stamp(full) });
    return Promise.resolve({ kind: 'missing', stamp: 'missing' });
  }

  readDir(p: string): Promise<{ names: string[]; stamp: Stamp }> {
    const full = path.posix.resolve(p);
    if (!this.#dirs.has(full)) return Promise.reject(new Error(`ENOENT: no such directory, scandir '${full}'`));
    const names = new Set<string>();
    for (const entry of [...this.#files.keys(), ...this.#dirs]) {
      if (entry !== full && path.posix.dirname(entry) === full) names.add(path.posix.basename(entry));
    }
    return Promise.resolve({ names: [...names], stamp: this.#stamp(full) });
  }

  readFile(p: string, maxBytes: number): Promise<{ data: Uint8Array; stamp: Stamp }> {
    const full = path.posix.resolve(p);
    const data = this.#files.get(full);
    if (data === undefined) return Promise.reject(new Error(`ENOENT: no such file, open '${full}'`));
    if (data.length > maxBytes) return Promise.reject(new FileTooLargeError(`larger than ${maxBytes} bytes`));
    return Promise.resolve({ data, stamp: this.#stamp(full) });
  }
}
