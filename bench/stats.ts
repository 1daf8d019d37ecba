// Shared helpers for the hand-run benchmarks (not part of CI).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Nearest-rank percentile (p in 0..100) of unsorted samples. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) throw new Error('no samples');
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1] ?? Number.NaN;
}

export function ms(value: number): string {
  return value.toFixed(3);
}

/** A private temp dir, removed (with everything in it) when disposed. */
export function tempDir(prefix: string): { readonly path: string } & Disposable {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return {
    path: dir,
    [Symbol.dispose]: () => {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A data dir for container qubes: traversable by the qubes' host uids (see ContainerBackend). */
export function qubeDataDir(prefix: string): { readonly path: string } & Disposable {
  const t = tempDir(prefix);
  fs.chmodSync(t.path, 0o711);
  return t;
}

/** /proc/meminfo MemAvailable in KiB. */
export function memAvailableKiB(): number {
  const m = /^MemAvailable:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  if (!m?.[1]) throw new Error('no MemAvailable in /proc/meminfo');
  return Number(m[1]);
}
