// Root volumes for TemplateVMs of the container backend.
//   host:   a small skeleton (/etc, /var, …) whose /usr is the host's, bound read-only. No
//           download, starts fastest: for tests and quick experiments. Software comes from the
//           host; installing packages in it is not possible.
//   debian: Debian bookworm from Debian's packages (debootstrap --variant=minbase plus what
//           qubes need), cached as a tarball keyed by its package list, so a rebuild only
//           extracts. A real, independent system: use it for qubes you keep.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { RootImport } from '../types.js';

const run = promisify(execFile);

export type TemplateFlavor = 'host' | 'debian';

/** Where Debian roots are cached between builds. */
export function templateCacheDir(): string {
  return process.env.BULKHEAD_CACHE_DIR ?? '/var/cache/bulkhead';
}

/** Packages on top of minbase: what the agent (node needs libstdc++) and qubes need. */
export const DEBIAN_PACKAGES: readonly string[] = [
  'coreutils', 'bash', 'procps', 'iproute2', 'libstdc++6', 'ca-certificates', 'less', 'nano',
];
export const DEBIAN_SUITE = 'bookworm';

/** The qrexec services shipped in every template (share/qubes-rpc of this package). */
const SHIPPED_SERVICES = path.resolve(import.meta.dirname, '..', '..', '..', 'share', 'qubes-rpc');
/** Where the agent bundle's qrexec-client-vm is inside every qube. */
const QREXEC_CLIENT_VM = '/run/bulkhead/agent/bin/qrexec-client-vm';

/**
 * Installs what qrexec needs in a template root: the shipped services in /etc/qubes-rpc (an
 * executable file keeps mode 0755, a plain one — run as a shell line — 0644), an empty
 * /etc/qubes/rpc-config, and, where the root has a /usr of its own, /usr/local/etc/qubes-rpc and
 * /usr/bin/qrexec-client-vm as a link to the agent bundle's command (host templates rely on the
 * PATH the agent gives).
 */
export function installQrexecFiles(root: string, ownUsr: boolean): void {
  const rpc = path.join(root, 'etc', 'qubes-rpc');
  const dirs = [rpc, path.join(root, 'etc', 'qubes'), path.join(root, 'etc', 'qubes', 'rpc-config')];
  for (const d of dirs) {
    fs.mkdirSync(d, { recursive: true });
    // Whatever the builder's umask: services run as the qube's users, who must reach them.
    fs.chmodSync(d, 0o755);
  }
  for (const name of fs.readdirSync(SHIPPED_SERVICES)) {
    const from = path.join(SHIPPED_SERVICES, name);
    const st = fs.statSync(from);
    if (!st.isFile()) continue;
    const to = path.join(rpc, name);
    fs.rmSync(to, { force: true });
    fs.copyFileSync(from, to);
    fs.chmodSync(to, (st.mode & 0o111) !== 0 ? 0o755 : 0o644);
  }
  if (ownUsr) {
    // Searched before /etc/qubes-rpc: where a qube's own services go.
    const local = path.join(root, 'usr', 'local', 'etc', 'qubes-rpc');
    fs.mkdirSync(local, { recursive: true });
    fs.chmodSync(local, 0o755);
    const link = path.join(root, 'usr', 'bin', 'qrexec-client-vm');
    fs.rmSync(link, { force: true });
    fs.symlinkSync(QREXEC_CLIENT_VM, link);
  }
}

const PASSWD = 'root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:user:/home/user:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n';
const GROUP = 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n';

/** Builds the skeleton of a host template into `dir` (which must not exist). */
export function buildHostRoot(dir: string): void {
  fs.mkdirSync(dir, { mode: 0o755 });
  for (const d of ['etc', 'var/lib', 'var/cache', 'var/log', 'var/tmp', 'root', 'opt', 'srv', 'mnt', 'media', 'usr']) {
    fs.mkdirSync(path.join(dir, d), { recursive: true, mode: 0o755 });
  }
  fs.chmodSync(path.join(dir, 'root'), 0o700);
  fs.chmodSync(path.join(dir, 'var/tmp'), 0o1777);
  for (const l of ['bin', 'sbin', 'lib', 'lib64', 'lib32', 'libx32']) {
    if (fs.existsSync(path.join('/usr', l))) fs.symlinkSync(`usr/${l}`, path.join(dir, l));
  }
  const etc = path.join(dir, 'etc');
  fs.writeFileSync(path.join(etc, 'passwd'), PASSWD);
  fs.writeFileSync(path.join(etc, 'group'), GROUP);
  fs.writeFileSync(path.join(etc, 'shadow'), 'root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\n', { mode: 0o640 });
  fs.writeFileSync(path.join(etc, 'hosts'), '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n');
  fs.writeFileSync(path.join(etc, 'nsswitch.conf'), 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n');
  fs.writeFileSync(path.join(etc, 'resolv.conf'), '');
  fs.writeFileSync(path.join(etc, 'os-release'), 'NAME="Bulkhead host template"\nID=bulkhead-host\n');
  // The dynamic linker's cache describes the host's /usr, which this template uses.
  if (fs.existsSync('/etc/ld.so.cache')) fs.copyFileSync('/etc/ld.so.cache', path.join(etc, 'ld.so.cache'));
  for (const f of ['ld.so.conf', 'bash.bashrc', 'profile', 'shells', 'login.defs']) {
    if (fs.existsSync(`/etc/${f}`)) fs.copyFileSync(`/etc/${f}`, path.join(etc, f));
  }
  installQrexecFiles(dir, false);
}

/** The Debian mirror the host's apt uses (so the build works where only that mirror is reachable). */
export function debianMirror(): string {
  const candidates: string[] = [];
  const dir = '/etc/apt/sources.list.d';
  for (const f of fs.existsSync(dir) ? fs.readdirSync(dir).sort() : []) candidates.push(path.join(dir, f));
  candidates.push('/etc/apt/sources.list');
  for (const file of candidates) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    // deb822: URIs: ... with Suites: bookworm ; one-line: deb URI bookworm main
    for (const block of text.split(/\n\s*\n/)) {
      const uri = /^URIs:\s*(\S+)/m.exec(block)?.[1];
      const suites = /^Suites:\s*(.+)$/m.exec(block)?.[1] ?? '';
      if (uri !== undefined && suites.split(/\s+/).includes(DEBIAN_SUITE) && !uri.includes('security')) return uri;
    }
    for (const line of text.split('\n')) {
      const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line.trim());
      if (m?.[1] !== undefined && m[2] === DEBIAN_SUITE && !m[1].includes('security')) return m[1];
    }
  }
  return 'http://deb.debian.org/debian';
}

/** The cache key of a Debian root: suite, variant and package list. */
export function debianCacheKey(): string {
  return crypto.createHash('sha256').update(`${DEBIAN_SUITE}\nminbase\n${DEBIAN_PACKAGES.join(',')}`).digest('hex').slice(0, 16);
}

/**
 * Builds a Debian root into `dir` (which must not exist). The first build runs debootstrap and
 * keeps a tarball in `cacheDir`; later builds with the same package list only extract it.
 */
export async function buildDebianRoot(dir: string, cacheDir: string, progress: (m: string) => void): Promise<void> {
  fs.mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  const tarball = path.join(cacheDir, `debian-${DEBIAN_SUITE}-${debianCacheKey()}.tar`);
  if (!fs.existsSync(tarball)) {
    const stage = path.join(cacheDir, `debootstrap-${process.pid}`);
    fs.rmSync(stage, { recursive: true, force: true });
    try {
      const mirror = debianMirror();
      progress(`debootstrap ${DEBIAN_SUITE} (minbase) from ${mirror}: about a minute`);
      await run('debootstrap', ['--variant=minbase', `--include=${DEBIAN_PACKAGES.join(',')}`, DEBIAN_SUITE, stage, mirror], {
        maxBuffer: 64 * 1024 * 1024,
      });
      fs.rmSync(path.join(stage, 'var/cache/apt/archives'), { recursive: true, force: true });
      fs.mkdirSync(path.join(stage, 'var/cache/apt/archives/partial'), { recursive: true });
      configureDebianRoot(stage);
      const partial = `${tarball}.partial`;
      await run('tar', ['--numeric-owner', '--xattrs', '-C', stage, '-cf', partial, '.']);
      fs.renameSync(partial, tarball);
    } finally {
      fs.rmSync(stage, { recursive: true, force: true });
    }
  } else {
    progress(`using the cached Debian ${DEBIAN_SUITE} root (${path.basename(tarball)})`);
  }
  fs.mkdirSync(dir, { mode: 0o755 });
  try {
    await run('tar', ['--numeric-owner', '--xattrs', '-C', dir, '-xf', tarball]);
    // After the cache, so that a cached root gets the current files too.
    installQrexecFiles(dir, true);
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** What every qube's root needs: the default user, an empty resolv.conf. */
function configureDebianRoot(root: string): void {
  const passwd = fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8');
  if (!/^user:/m.test(passwd)) {
    fs.appendFileSync(path.join(root, 'etc/passwd'), 'user:x:1000:1000:user:/home/user:/bin/bash\n');
    fs.appendFileSync(path.join(root, 'etc/group'), 'user:x:1000:\n');
    fs.appendFileSync(path.join(root, 'etc/shadow'), 'user:*:19000:0:99999:7:::\n');
  }
  fs.writeFileSync(path.join(root, 'etc/hostname'), 'localhost\n');
}

/**
 * Builds a root of `flavor` in a fresh staging folder next to the cache (the same file system as
 * the data dir on a default install), hands it to `use` (which imports it), and removes the
 * staging folder whatever happens.
 */
export async function withBuiltRoot<T>(flavor: TemplateFlavor, progress: (m: string) => void, use: (root: RootImport) => Promise<T>): Promise<T> {
  const cache = templateCacheDir();
  fs.mkdirSync(cache, { recursive: true, mode: 0o700 });
  const stage = fs.mkdtempSync(path.join(cache, 'stage-'));
  const dir = path.join(stage, 'root');
  try {
    if (flavor === 'host') buildHostRoot(dir);
    else await buildDebianRoot(dir, cache, progress);
    return await use({ dir, hostUsr: flavor === 'host', source: flavor === 'host' ? 'host' : `debian-${DEBIAN_SUITE}` });
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}
