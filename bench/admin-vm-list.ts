// Latency of admin.vm.List against an in-process daemon holding 200 AppVMs (+ a template and
// dom0): 1000 sequential requests, one connection each, as qubesadmin makes them.
// Run: node --import tsx bench/admin-vm-list.ts   (target: p50 <= 2 ms)
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { AdminClient } from '../src/cli/client.js';
import { startDaemon } from '../src/daemon/daemon.js';
import { silentLogger } from '../src/daemon/log.js';
import { ms, percentile, tempDir } from './stats.js';

const QUBES = 200;
const WARMUP = 100;
const REQUESTS = 1000;
const TEMPLATE = 'bench-template';

async function main(): Promise<void> {
  using tmp = tempDir('bulkhead-bench-list-');
  const socketPath = path.join(tmp.path, 'qubesd.sock');
  const daemon = await startDaemon({ dataDir: path.join(tmp.path, 'data'), socketPath, log: silentLogger() });
  try {
    const { registry } = daemon;
    registry.create({ klass: 'TemplateVM', name: TEMPLATE, label: 'black', source: 'dom0' });
    for (let i = 0; i < QUBES; i++) {
      registry.create({ klass: 'AppVM', name: `bench-${String(i).padStart(3, '0')}`, label: 'red', template: TEMPLATE, source: 'dom0' });
    }

    const client = new AdminClient(socketPath);
    const list = (): Promise<string> => client.call({ method: 'admin.vm.List', dest: 'dom0' });
    const expectedLines = QUBES + 2; // the AppVMs, the template, dom0
    const first = await list();
    if (first.split('\n').length - 1 !== expectedLines) {
      throw new Error(`admin.vm.List returned ${first.split('\n').length - 1} lines, expected ${expectedLines}`);
    }
    for (let i = 0; i < WARMUP; i++) await list();

    const samples: number[] = [];
    let replyBytes = 0;
    const started = performance.now();
    for (let i = 0; i < REQUESTS; i++) {
      const t0 = performance.now();
      const reply = await list();
      samples.push(performance.now() - t0);
      replyBytes = reply.length;
    }
    const total = performance.now() - started;

    console.log(`admin.vm.List: ${expectedLines} qubes, ${replyBytes} bytes per reply, ${REQUESTS} sequential requests (after ${WARMUP} warm-up)`);
    console.log(`  p50 ${ms(percentile(samples, 50))} ms  p90 ${ms(percentile(samples, 90))} ms  p99 ${ms(percentile(samples, 99))} ms`);
    console.log(`  min ${ms(Math.min(...samples))} ms  max ${ms(Math.max(...samples))} ms  throughput ${(REQUESTS / (total / 1000)).toFixed(0)} req/s`);
    console.log(`admin_vm_list_p50: ${ms(percentile(samples, 50))} ms`);
  } finally {
    await daemon.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
