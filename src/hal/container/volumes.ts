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
import { qubePaths, type QubePaths } from './paths.js';

const run = promisify(execFile);

export interface RootMeta {
  /** The root volume has no /usr of its own; the host's /usr is bound read-only. */
  readonly hostUsr: boolean;
  /** Where the root came from (`debian-bookworm`, `host`, …), for `qvm-volume info`. */
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

/** Creates the private volume if missing: /home/user owned by uid/gid 1000 (0-based ids). */
export function ensurePrivate(dir: string): void {
  if (fs.existsSync(path.join(dir, 'home'))) return;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  fs.mkdirSync(path.join(dir, 'home', 'user'), { recursive: true, mode: 0o755 });
  fs.chmodSync(path.join(dir, 'home', 'user'), 0o700);
  fs.chownSync(path.join(dir, 'home', 'user'), 1000, 1000);
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
    const { stdout } = await run('du', ['-sb', '--', dir]);
    return Number(stdout.split('\t')[0]) || 0;
  } catch {
    return 0;
  }
}

/** Copies the persistent volumes of one qube to another (qvm-clone). */
export async function cloneVolumes(dataDir: string, srcUuid: string, dstUuid: string): Promise<void> {
  const src = qubePaths(dataDir, srcUuid);
  const dst = qubePaths(dataDir, dstUuid);
  fs.mkdirSync(dst.dir, { recursive: true, mode: 0o700 });
  try {
    if (fs.existsSync(src.private)) await copyTree(src.private, dst.private);
    if (fs.existsSync(src.root)) {
      await copyTree(src.root, dst.root);
      fs.copyFileSync(src.rootMeta, dst.rootMeta);
    }
  } catch (err) {
    fs.rmSync(dst.dir, { recursive: true, force: true });
    throw err;
  }
}

/** Gives a qube its own copy of another's root (StandaloneVM created from a template). */
export async function copyRoot(dataDir: string, srcUuid: string, dstUuid: string): Promise<void> {
  const src = qubePaths(dataDir, srcUuid);
  const dst = qubePaths(dataDir, dstUuid);
  fs.mkdirSync(dst.dir, { recursive: true, mode: 0o700 });
  await copyTree(src.root, dst.root);
  fs.copyFileSync(src.rootMeta, dst.rootMeta);
}

/** Installs a root volume from a prepared directory (template build). */
export async function importRoot(dataDir: string, uuid: string, srcDir: string, meta: RootMeta): Promise<void> {
  const p = qubePaths(dataDir, uuid);
  fs.mkdirSync(p.dir, { recursive: true, mode: 0o711 });
  const old = `${p.root}.old`;
  fs.rmSync(old, { recursive: true, force: true });
  const staged = `${p.root}.new`;
  fs.rmSync(staged, { recursive: true, force: true });
  await copyTree(srcDir, staged);
  // The volume's own top folder is never shown to a qube; keep it closed to host users.
  fs.chmodSync(staged, 0o700);
  if (fs.existsSync(p.root)) fs.renameSync(p.root, old);
  fs.renameSync(staged, p.root);
  const metaTmp = `${p.rootMeta}.tmp`;
  fs.writeFileSync(metaTmp, JSON.stringify(meta), { mode: 0o600 });
  fs.renameSync(metaTmp, p.rootMeta);
  fs.rmSync(old, { recursive: true, force: true });
}

export function removeVolumes(dataDir: string, uuid: string): void {
  fs.rmSync(qubePaths(dataDir, uuid).dir, { recursive: true, force: true });
}
