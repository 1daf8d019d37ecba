// 50 idle container qubes on the host template: how long starting all of them takes, and how much
// host memory they add (MemAvailable before and after, once settled), per qube.
// Run as root: node --import tsx bench/many-qubes.ts   (targets: all 50 <= 10 s, <= 15 MB per qube)
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { appvmSpec, hostTemplateBackend } from './qube-fixture.js';
import { memAvailableKiB, qubeDataDir } from './stats.js';

const QUBES = Number(process.env.QUBES ?? 50);
const PARALLEL = 4;

async function main(): Promise<void> {
  using tmp = qubeDataDir('bulkhead-bench-many-');
  const backend = await hostTemplateBackend(tmp.path);
  const specs = Array.from({ length: QUBES }, (_, i) => appvmSpec(i));
  try {
    await sleep(1000);
    const before = memAvailableKiB();
    const t0 = performance.now();
    let next = 0;
    await Promise.all(Array.from({ length: PARALLEL }, async () => {
      while (next < specs.length) {
        const spec = specs[next++];
        if (spec) await backend.start(spec);
      }
    }));
    const all = performance.now() - t0;
    // Let the agents finish starting up and the kernel settle.
    await sleep(5000);
    const after = memAvailableKiB();
    const perQubeMB = (before - after) / 1024 / QUBES;
    const cgroupKiB = specs.map((s) => backend.stats(s.name)?.memKiB ?? 0);
    const avgCgroupMB = cgroupKiB.reduce((a, b) => a + b, 0) / cgroupKiB.length / 1024;
    console.log(`started ${QUBES} qubes (${PARALLEL} at a time) in ${(all / 1000).toFixed(2)} s`);
    console.log(`MemAvailable: ${(before / 1024).toFixed(0)} MB before, ${(after / 1024).toFixed(0)} MB after`);
    console.log(`cgroup memory per qube (avg, incl. page cache): ${avgCgroupMB.toFixed(1)} MB`);
    console.log(`start_all_${QUBES}: ${(all / 1000).toFixed(2)} s`);
    console.log(`added_host_memory_per_qube: ${perQubeMB.toFixed(1)} MB`);
  } finally {
    await backend.close();
  }
}

await main();
