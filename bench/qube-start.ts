// Cold start of a container qube on the host template, to the agent's HELLO (the moment the
// qube counts as Running), and graceful shutdown through the agent. 30 rounds, one qube.
// Run as root: node --import tsx bench/qube-start.ts   (targets: start p50 <= 150 ms, shutdown <= 150 ms)
import { performance } from 'node:perf_hooks';
import { appvmSpec, hostTemplateBackend } from './qube-fixture.js';
import { ms, percentile, qubeDataDir } from './stats.js';

const ROUNDS = 30;

async function main(): Promise<void> {
  using tmp = qubeDataDir('bulkhead-bench-start-');
  const backend = await hostTemplateBackend(tmp.path);
  const spec = appvmSpec(1);
  const starts: number[] = [];
  const stops: number[] = [];
  try {
    // One warm-up round (page cache, first crun run).
    await backend.start(spec);
    await backend.shutdown(spec.name, 10);
    for (let i = 0; i < ROUNDS; i++) {
      const t0 = performance.now();
      await backend.start(spec);
      starts.push(performance.now() - t0);
      const t1 = performance.now();
      await backend.shutdown(spec.name, 10);
      stops.push(performance.now() - t1);
    }
  } finally {
    await backend.close();
  }
  console.log(`cgroups: ${backend.cgroupMode}; rounds: ${ROUNDS}`);
  console.log(`start to HELLO: p50 ${ms(percentile(starts, 50))} ms, p90 ${ms(percentile(starts, 90))} ms, max ${ms(Math.max(...starts))} ms`);
  console.log(`shutdown:       p50 ${ms(percentile(stops, 50))} ms, p90 ${ms(percentile(stops, 90))} ms`);
  console.log(`qube_shutdown_p50: ${ms(percentile(stops, 50))} ms`);
  console.log(`qube_start_to_hello_p50: ${ms(percentile(starts, 50))} ms`);
}

await main();
