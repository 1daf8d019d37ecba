// Which cgroup layout the host has (detected, never assumed), and reading a qube's usage.
//   unified: pure cgroup v2 — crun works directly.
//   hybrid:  v1 controllers plus a v2 mount at /sys/fs/cgroup/unified. crun refuses this, so
//            every crun call runs in a private mount namespace with that mount removed (it then
//            sees plain v1, where memory/pids/cpu limits and the freezer work).
//   legacy:  plain v1.
import fs from 'node:fs';
import path from 'node:path';

export type CgroupMode = 'unified' | 'hybrid' | 'legacy' | 'none';

const ROOT = '/sys/fs/cgroup';

export function detectCgroupMode(): CgroupMode {
  let mounts: string;
  try {
    mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return 'none';
  }
  return cgroupModeOf(mounts);
}

/** The layout described by a /proc/self/mountinfo text. */
export function cgroupModeOf(mounts: string): CgroupMode {
  let v2AtRoot = false;
  let v2Elsewhere = false;
  let v1 = false;
  for (const line of mounts.split('\n')) {
    const [left, right] = line.split(' - ');
    if (left === undefined || right === undefined) continue;
    const mountPoint = left.split(' ')[4] ?? '';
    const fsType = right.split(' ')[0];
    if (fsType === 'cgroup2') {
      if (mountPoint === ROOT) v2AtRoot = true;
      else if (mountPoint.startsWith(`${ROOT}/`)) v2Elsewhere = true;
    } else if (fsType === 'cgroup' && mountPoint.startsWith(`${ROOT}/`)) {
      v1 = true;
    }
  }
  if (v2AtRoot) return 'unified';
  if (v1 && v2Elsewhere) return 'hybrid';
  if (v1) return 'legacy';
  return 'none';
}

function readNumber(file: string): number | undefined {
  try {
    const n = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

function readKeyed(file: string, key: string): number | undefined {
  try {
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      const [k, v] = line.split(' ');
      if (k === key && v !== undefined) return Number(v);
    }
  } catch {
    return undefined;
  }
  return undefined;
}

export interface CgroupUsage {
  readonly memBytes: number;
  readonly cpuNs: number;
}

/** Usage of the cgroup at `relPath` (the OCI cgroupsPath), or undefined when unreadable. */
export function cgroupUsage(mode: CgroupMode, relPath: string): CgroupUsage | undefined {
  if (mode === 'unified') {
    const dir = path.join(ROOT, relPath);
    const mem = readNumber(path.join(dir, 'memory.current'));
    if (mem === undefined) return undefined;
    const cpuUsec = readKeyed(path.join(dir, 'cpu.stat'), 'usage_usec') ?? 0;
    return { memBytes: mem, cpuNs: cpuUsec * 1000 };
  }
  if (mode === 'hybrid' || mode === 'legacy') {
    const mem = readNumber(path.join(ROOT, 'memory', relPath, 'memory.usage_in_bytes'));
    if (mem === undefined) return undefined;
    return {
      memBytes: mem,
      cpuNs: readNumber(path.join(ROOT, 'cpuacct', relPath, 'cpuacct.usage')) ?? 0,
    };
  }
  return undefined;
}

/**
 * Processes the kernel killed in the cgroup for exceeding its memory limit (0 when unreadable):
 * one file, read every second for every qube by the watchdog.
 */
export function cgroupOomKills(mode: CgroupMode, relPath: string): number {
  if (mode === 'unified') return readKeyed(path.join(ROOT, relPath, 'memory.events'), 'oom_kill') ?? 0;
  if (mode === 'hybrid' || mode === 'legacy') return readKeyed(path.join(ROOT, 'memory', relPath, 'memory.oom_control'), 'oom_kill') ?? 0;
  return 0;
}
