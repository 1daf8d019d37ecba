// The OCI runtime configuration (config.json) of a container qube, built from its launch spec.
// Pure: takes the resolved inputs, returns the document; `backend.ts` prepares the directories.
//
// Root filesystem: crun's root is a per-start skeleton directory (owned by the qube's root) that
// holds the template's top-level symlinks and empty mount points. Each top-level directory of the
// root volume is mounted onto it:
//   - AppVM / DispVM: an overlay with the template's directory (through an idmapped, read-only
//     view) as the lower layer and a volatile upper layer, so changes vanish at the next start;
//   - TemplateVM / StandaloneVM: an idmapped read-write bind of its own persistent root.
// Volumes are stored with the qube's own uids (0-based) and idmapped onto its host uid range at
// mount time, so every qube sees its files owned by its own users and no data is ever re-owned.
import type { QubeLaunchSpec } from '../types.js';
import { hostUidBase, UID_RANGE } from './paths.js';
import { seccompProfile, type SeccompProfile } from './seccomp.js';

export interface OciInputs {
  readonly spec: QubeLaunchSpec;
  /** The skeleton directory crun uses as root. */
  readonly top: string;
  /** The root volume the qube's / comes from (its template's, or its own). */
  readonly rootVolume: string;
  /** true: overlay with a volatile upper (AppVM, DispVM); false: the volume itself, writable. */
  readonly volatileRoot: boolean;
  /** Top-level directories of the root volume (symlinks are copied into `top` beforehand). */
  readonly topDirs: readonly string[];
  /** The overlay upper/work parents (volatileRoot only). */
  readonly upper: string;
  readonly work: string;
  /** The root volume provides no /usr of its own: bind the host's /usr read-only. */
  readonly hostUsr: boolean;
  /** The private volume (persistent, or volatile for a DispVM). */
  readonly privateVolume: string;
  readonly socket: string;
  readonly callSocket: string;
  /** A resolv.conf to bind read-only over the qube's (null: the template's stays). */
  readonly resolvConf: string | null;
  readonly agentBundle: string;
  readonly nodeBinary: string;
  readonly initBinary: string;
  /** null: no cgroup limits (host without usable cgroups). */
  readonly cgroupsPath: string | null;
  readonly pidsLimit: number;
}

/** Where the admin domain's agent bundle appears inside every qube. */
export const AGENT_DIR = '/run/bulkhead';
/** Where the idmapped template layer is staged inside the qube (masked once mounted). */
const LOWER_STAGE = '/.bulkhead-lower';

/** Capabilities of a qube's root, effective only inside its own user namespace. */
export const QUBE_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID',
  'CAP_SETUID', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_AUDIT_WRITE',
];

export const MASKED_PATHS: readonly string[] = [
  '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats',
  '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/proc/sysrq-trigger',
  '/proc/kallsyms', '/proc/kmsg', '/proc/config.gz', '/sys/firmware', '/sys/kernel',
  '/sys/fs/cgroup', '/sys/module', '/sys/devices/virtual/powercap', LOWER_STAGE,
];

export const READONLY_PATHS: readonly string[] = [
  '/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger',
];

interface Mount {
  destination: string;
  type: string;
  source: string;
  options?: string[];
}

export interface OciConfig {
  readonly ociVersion: string;
  readonly process: unknown;
  readonly root: { path: string; readonly: boolean };
  readonly hostname: string;
  readonly mounts: Mount[];
  readonly linux: {
    uidMappings: unknown[];
    gidMappings: unknown[];
    namespaces: { type: string }[];
    maskedPaths: readonly string[];
    readonlyPaths: readonly string[];
    seccomp: SeccompProfile;
    cgroupsPath?: string;
    resources?: unknown;
  };
}

function idmapOption(base: number): string {
  // The volume's 0-based ids map onto the qube's host uid range.
  return `idmap=uids=0-${base}-${UID_RANGE};gids=0-${base}-${UID_RANGE}`;
}

/**
 * Top-level directories never taken from the root volume (the runtime provides them; /home is a
 * link to rw/home in the skeleton, resolved inside the qube — never a host path built from what
 * the qube wrote into its private volume).
 */
export const RUNTIME_DIRS: ReadonlySet<string> = new Set(['proc', 'sys', 'dev', 'run', 'tmp', 'home', 'rw', 'lost+found', '.bulkhead-lower']);

export function buildOciConfig(i: OciInputs): OciConfig {
  const base = hostUidBase(i.spec.qid);
  const idmap = idmapOption(base);
  const mounts: Mount[] = [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=1m'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
  ];
  if (i.volatileRoot) {
    mounts.push({ destination: LOWER_STAGE, type: 'bind', source: i.rootVolume, options: ['rbind', 'ro', 'nosuid', 'nodev', idmap] });
  }
  for (const dir of i.topDirs) {
    const destination = `/${dir}`;
    if (i.volatileRoot) {
      mounts.push({
        destination,
        type: 'overlay',
        source: 'overlay',
        options: [`lowerdir=${i.top}${LOWER_STAGE}/${dir}`, `upperdir=${i.upper}/${dir}`, `workdir=${i.work}/${dir}`],
      });
    } else {
      mounts.push({ destination, type: 'bind', source: `${i.rootVolume}/${dir}`, options: ['rbind', 'rw', 'nodev', idmap] });
    }
  }
  if (i.hostUsr) mounts.push({ destination: '/usr', type: 'bind', source: '/usr', options: ['rbind', 'ro', 'nosuid', 'nodev'] });
  mounts.push(
    { destination: '/rw', type: 'bind', source: i.privateVolume, options: ['rbind', 'rw', 'nosuid', 'nodev', idmap] },
    { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', 'size=256m'] },
    { destination: '/run', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=755', 'size=64m'] },
    { destination: `${AGENT_DIR}/agent`, type: 'bind', source: i.agentBundle, options: ['rbind', 'ro', 'nosuid', 'nodev'] },
    { destination: `${AGENT_DIR}/node`, type: 'bind', source: i.nodeBinary, options: ['bind', 'ro', 'nosuid', 'nodev'] },
    { destination: `${AGENT_DIR}/init`, type: 'bind', source: i.initBinary, options: ['bind', 'ro', 'nosuid', 'nodev'] },
    { destination: `${AGENT_DIR}/qrexec.sock`, type: 'bind', source: i.socket, options: ['bind', 'nosuid', 'nodev', 'noexec'] },
    { destination: `${AGENT_DIR}/qrexec-call.sock`, type: 'bind', source: i.callSocket, options: ['bind', 'nosuid', 'nodev', 'noexec'] },
  );
  // After /etc's own mount: crun resolves the destination inside the qube's root.
  if (i.resolvConf !== null) {
    mounts.push({ destination: '/etc/resolv.conf', type: 'bind', source: i.resolvConf, options: ['bind', 'ro', 'nosuid', 'nodev', 'noexec'] });
  }
  const caps = [...QUBE_CAPABILITIES];
  const linux: OciConfig['linux'] = {
    uidMappings: [{ containerID: 0, hostID: base, size: UID_RANGE }],
    gidMappings: [{ containerID: 0, hostID: base, size: UID_RANGE }],
    namespaces: ['pid', 'network', 'ipc', 'uts', 'user', 'mount', 'cgroup'].map((type) => ({ type })),
    maskedPaths: MASKED_PATHS,
    readonlyPaths: READONLY_PATHS,
    seccomp: seccompProfile(),
  };
  if (i.cgroupsPath !== null) {
    const memMiB = Math.max(i.spec.maxmemMiB > 0 ? i.spec.maxmemMiB : i.spec.memoryMiB, 32);
    linux.cgroupsPath = i.cgroupsPath;
    linux.resources = {
      devices: [{ allow: false, access: 'rwm' }],
      memory: { limit: memMiB * 1024 * 1024, swap: memMiB * 1024 * 1024 },
      pids: { limit: i.pidsLimit },
      cpu: { quota: Math.max(1, i.spec.vcpus) * 100000, period: 100000 },
    };
  }
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: [
        `${AGENT_DIR}/init`, '-s', '-g', '--',
        `${AGENT_DIR}/node`, '--max-old-space-size=32', '--max-semi-space-size=1', '--disable-proto=delete',
        `${AGENT_DIR}/agent/agent/main.js`,
      ],
      env: [
        'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
        'HOME=/root',
      ],
      cwd: '/',
      noNewPrivileges: true,
      capabilities: { bounding: caps, effective: caps, permitted: caps, inheritable: [], ambient: [] },
      oomScoreAdj: 500,
    },
    root: { path: i.top, readonly: false },
    hostname: i.spec.name,
    mounts,
    linux,
  };
}
