// Container-qube volumes: plain directories under the data dir, stored with the qube's own
// (0-based) uids and idmapped at mount time. Qubes semantics:
//   root     TemplateVM / StandaloneVM: persistent, writable. AppVM / DispVM: the template's
//            root read-only, under a volatile upper layer (snap_on_start).
//   private  persistent (save_on_stop), mounted at /rw, /home from /rw/home; DispVM: volatile.
//   volatile discarded at every start.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { RootImport, VolumeInfo, VolumeManager, VolumeOwner } from '../types.js';
import { qubePaths, type QubePaths } from './paths.js';

const run = promisify(execFile);

export interface RootMeta {
  /** The root volume has no /usr of its own; the host's /usr is bound read-only. */
  readonly hostUsr: boolean;
  /** Where the root came from (`debian-bookworm`, `host`, …), recorded with the volume. */
  readonly source: string;
}

export function readRootMeta(p: QubePaths): RootMeta | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(p.rootMeta, 'utf8'));
  } catch {
    return undefined;
  }
  if (typeof raw !== 'object' || raw === null) return undefined;
  const r = raw as Record<string, unknown>;
  return { hostUsr: r.hostUsr === true, source: typeof r.source === 'string' ? r.source : 'unknown' };
}

/** A usable root volume: a directory with /etc (and /usr unless the host's is used). */
export function checkRootVolume(p: QubePaths, owner: string): RootMeta {
  const meta = readRootMeta(p);
  if (meta === undefined || !fs.existsSync(path.join(p.root, 'etc'))) {
    throw new Error(`'${owner}' has no root volume: build one with 'bulkhead template build host|debian ${owner}'`);
  }
  if (!meta.hostUsr && !fs.existsSync(path.join(p.root, 'usr', 'bin'))) {
    throw new Error(`the root volume of '${owner}' is broken (no /usr/bin)`);
  }
  return meta;
}

/**
 * Creates the private volume if missing: /home/user owned by uid/gid 1000 (0-based ids).
 * Everything inside a private volume is written by its qube: the admin domain never follows a
 * link in it and never writes into it, except to create /home/user in a volume that has no
 * `home` entry at all (lstat: a planted symlink counts as present and is left alone).
 */
export function ensurePrivate(dir: string): void {
  const top = fs.lstatSync(dir, { throwIfNoEntry: false });
  if (top === undefined) {
    // /rw inside the qube; its parent folder keeps host users out.
    fs.mkdirSync(dir, { mode: 0o755 });
  } else if (!top.isDirectory()) {
    throw new Error(`the private volume is damaged (${dir} is not a directory); it was left untouched`);
  }
  const home = path.join(dir, 'home');
  if (fs.lstatSync(home, { throwIfNoEntry: false }) !== undefined) return;
  fs.mkdirSync(home, { mode: 0o755 });
  const user = path.join(home, 'user');
  fs.mkdirSync(user, { mode: 0o700 });
  fs.chownSync(user, 1000, 1000);
}

/** Copies a directory tree with owners, modes, times and links (`cp -a`; reflinks when possible). */
export async function copyTree(src: string, dst: string): Promise<void> {
  if (fs.existsSync(dst)) throw new Error(`refusing to copy over an existing volume: ${dst}`);
  const tmp = `${dst}.partial`;
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    await run('cp', ['-a', '--reflink=auto', '--', src, tmp]);
    fs.renameSync(tmp, dst);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** Disk usage in bytes (`du -sb`), 0 when missing. */
export async function usageBytes(dir: string): Promise<number> {
  if (!fs.existsSync(dir)) return 0;
  try {
    const { stdout } = await run('du', ['-sb', '--', dir], { timeout: 30_000 });
    return Number(stdout.split('\t')[0]) || 0;
  } catch {
    return 0;
  }
}

/** Installs a root volume from a prepared directory (template build). */
export async function importRoot(dataDir: string, uuid: string, srcDir: string, meta: RootMeta): Promise<void> {
  const p = qubePaths(dataDir, uuid);
  fs.mkdirSync(p.dir, { recursive: true, mode: 0o700 });
  await replaceTree(srcDir, p.root);
  const metaTmp = `${p.rootMeta}.tmp`;
  fs.writeFileSync(metaTmp, JSON.stringify(meta), { mode: 0o600 });
  fs.renameSync(metaTmp, p.rootMeta);
}

export function removeVolumes(dataDir: string, uuid: string): void {
  const p = qubePaths(dataDir, uuid);
  fs.rmSync(p.volatile, { recursive: true, force: true });
  fs.rmSync(p.dir, { recursive: true, force: true });
}

const POOL = 'bulkhead-dir';

function ownsRoot(o: VolumeOwner): boolean {
  return o.klass === 'TemplateVM' || o.klass === 'StandaloneVM';
}

/** The container backend's volumes (admin.vm.volume.*). */
export class ContainerVolumes implements VolumeManager {
  readonly #dataDir: string;

  constructor(dataDir: string) {
    this.#dataDir = dataDir;
  }

  names(): readonly string[] {
    return ['private', 'root', 'volatile'];
  }

  async info(o: VolumeOwner, volume: string): Promise<VolumeInfo> {
    const p = qubePaths(this.#dataDir, o.uuid);
    const vid = `${o.uuid}/${volume}`;
    const base = { pool: POOL, vid, rw: true, revisions_to_keep: 0, ephemeral: false };
    switch (volume) {
      case 'root': {
        if (ownsRoot(o)) {
          const usage = await usageBytes(p.root);
          return { ...base, size: usage, usage, source: null, path: p.root, save_on_stop: true, snap_on_start: false };
        }
        // A snapshot of the template's root: its usage is what the qube changed (the upper
        // layer); the template's own size is asked of the template (no du of it per AppVM).
        const t = o.rootTemplateUuid === null ? undefined : qubePaths(this.#dataDir, o.rootTemplateUuid);
        const usage = await usageBytes(path.join(p.volatile, 'upper'));
        return {
          ...base, size: usage, usage,
          source: o.rootTemplateUuid === null ? null : `${o.rootTemplateUuid}/root`,
          path: t?.root ?? '', save_on_stop: false, snap_on_start: true,
        };
      }
      case 'private': {
        const disp = o.klass === 'DispVM';
        const dir = disp ? p.dispPrivate : p.private;
        const usage = await usageBytes(dir);
        return { ...base, size: usage, usage, source: null, path: dir, save_on_stop: !disp, snap_on_start: false };
      }
      case 'volatile': {
        const usage = await usageBytes(p.volatile);
        return { ...base, size: usage, usage, source: null, path: p.volatile, save_on_stop: false, snap_on_start: false };
      }
      default:
        throw new Error(`no volume '${volume}'`);
    }
  }

  async clone(src: VolumeOwner, dst: VolumeOwner, volume: string): Promise<void> {
    const s = qubePaths(this.#dataDir, src.uuid);
    const d = qubePaths(this.#dataDir, dst.uuid);
    fs.mkdirSync(d.dir, { recursive: true, mode: 0o700 });
    if (volume === 'private') {
      if (src.klass === 'DispVM' || dst.klass === 'DispVM') throw new Error('a disposable\'s private volume is not persistent');
      await replaceTree(fs.existsSync(s.private) ? s.private : undefined, d.private);
      return;
    }
    if (volume === 'root') {
      if (!ownsRoot(src) || !ownsRoot(dst)) throw new Error('only a TemplateVM or StandaloneVM root can be copied');
      // A template that was never built has no root yet: the copy has none either.
      if (readRootMeta(s) === undefined) return;
      checkRootVolume(s, src.name);
      await replaceTree(s.root, d.root);
      fs.copyFileSync(s.rootMeta, d.rootMeta);
      return;
    }
    throw new Error(`volume '${volume}' cannot be cloned`);
  }

  async importRoot(o: VolumeOwner, from: RootImport): Promise<void> {
    if (!ownsRoot(o)) throw new Error(`only a TemplateVM or StandaloneVM has its own root (not a ${o.klass})`);
    await importRoot(this.#dataDir, o.uuid, from.dir, { hostUsr: from.hostUsr, source: from.source });
  }

  hasRoot(o: VolumeOwner): boolean {
    return readRootMeta(qubePaths(this.#dataDir, o.uuid)) !== undefined;
  }

  remove(uuid: string): void {
    removeVolumes(this.#dataDir, uuid);
  }
}

/** Replaces `dst` with a copy of `src` (or an empty private volume) without a half-copied state. */
async function replaceTree(src: string | undefined, dst: string): Promise<void> {
  const staged = `${dst}.new`;
  fs.rmSync(staged, { recursive: true, force: true });
  if (src === undefined) ensurePrivate(staged);
  else await copyTree(src, staged);
  const old = `${dst}.old`;
  fs.rmSync(old, { recursive: true, force: true });
  if (fs.existsSync(dst)) fs.renameSync(dst, old);
  fs.renameSync(staged, dst);
  fs.rmSync(old, { recursive: true, force: true });
}
