// qrexec figures with real qubes (container backend, host template) and the daemon in this
// process: the round trip of a service call qube A → qube B (`true`) from a long-lived caller
// inside A, the wall time of `qvm-run -p B true` from dom0, and the throughput of a 1 GiB stream
// A → B. Needs the build (npm run build) and root.
// Run: node --import tsx bench/qrexec.ts   (targets: round trip p50 <= 5 ms, qvm-run <= 200 ms, >= 1 GB/s)
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { startDaemon } from '../src/daemon/daemon.js';
import { silentLogger } from '../src/daemon/log.js';
import { ContainerBackend } from '../src/hal/container/backend.js';
import type { BackendKind, HypervisorBackend } from '../src/hal/types.js';
import { cli, REPO } from './qube-fixture.js';
import { ms, percentile, qubeDataDir } from './stats.js';

const CALLS = 300;
const QVM_RUNS = 20;
const STREAM_BYTES = 1024 ** 3;
const BIN = path.join(REPO, 'bin');
const run = promisify(execFile);

/** A long-lived program in qube A streaming 1 GiB it generates to bb, 1 + 3 times: seconds of the last 3, as JSON. */
const STREAMER = `
import { connectService } from '/run/bulkhead/agent/agent/qrexec-call.js';
import { Readable } from 'node:stream';
const chunk = Buffer.alloc(1 << 20, 120);
const times = [];
// Round 0 warms up (JIT, socket buffers) and is not counted, as the round trip's first 20 calls.
for (let round = 0; round < 4; round++) {
  const conn = await connectService('bb', 'bench.Null');
  const src = Readable.from((function* () { for (let i = 0; i < ${STREAM_BYTES} / chunk.length; i++) yield chunk; })());
  const t0 = performance.now();
  conn.sendStdin(src);
  const code = await conn.receive({ stdout: () => {}, stderr: () => {} });
  if (code !== 0) throw new Error('stream failed: ' + code);
  if (round > 0) times.push((performance.now() - t0) / 1000);
}
console.log(JSON.stringify(times));
`;

/** The long-lived caller run inside qube A: sequential calls, latencies printed as JSON. */
const CALLER = `
import { callService } from '/run/bulkhead/agent/agent/qrexec-call.js';
const n = Number(process.argv[2]);
const lat = [];
for (let i = 0; i < n + 20; i++) {
  const t0 = performance.now();
  const r = await callService('bb', 'bench.True');
  if (r.code !== 0) throw new Error('call failed: ' + r.code);
  if (i >= 20) lat.push(performance.now() - t0);
}
console.log(JSON.stringify(lat));
`;

async function main(): Promise<void> {
  using tmp = qubeDataDir('bulkhead-bench-qrexec-');
  const dataDir = path.join(tmp.path, 'data');
  const socket = path.join(tmp.path, 'qubesd.sock');
  const log = silentLogger();
  const daemon = await startDaemon({
    dataDir, socketPath: socket, log,
    makeBackends: async () => new Map<BackendKind, HypervisorBackend>([
      ['container', await ContainerBackend.create({ dataDir, log, agentBundle: path.join(REPO, 'dist', 'agent-bundle') })],
    ]),
  });
  try {
    await cli(socket, 'bulkhead', ['template', 'build', 'host', 'tpl']);
    await cli(socket, 'qvm-create', ['-t', 'tpl', '-l', 'red', 'ba']);
    await cli(socket, 'qvm-create', ['-t', 'tpl', '-l', 'red', 'bb']);
    await cli(socket, 'qvm-start', ['tpl']);
    await cli(socket, 'qvm-run', ['-p', '-u', 'root', 'tpl',
      'mkdir -p /etc/qubes-rpc && ln -sf /bin/true /etc/qubes-rpc/bench.True && printf "#!/bin/sh\\nexec cat >/dev/null\\n" > /etc/qubes-rpc/bench.Null && chmod 755 /etc/qubes-rpc/bench.Null']);
    await cli(socket, 'qvm-shutdown', ['--wait', 'tpl']);
    fs.writeFileSync(path.join(dataDir, 'policy.d', '30-bench.policy'), 'bench.True * ba bb allow\nbench.Null * ba bb allow\n');
    await cli(socket, 'qvm-start', ['ba', 'bb']);

    // 1. Round trip from a long-lived caller inside ba.
    await cli(socket, 'qvm-run', ['-p', 'ba', 'cat > /tmp/caller.mjs'], CALLER);
    const lat = JSON.parse(await cli(socket, 'qvm-run', ['-p', 'ba', `/run/bulkhead/node /tmp/caller.mjs ${CALLS}`])) as number[];

    // 2. qvm-run -p bb true from dom0, as a user runs it (a fresh process each time).
    const walls: number[] = [];
    for (let i = 0; i < QVM_RUNS + 2; i++) {
      const t0 = performance.now();
      await run(process.execPath, [path.join(BIN, 'qvm-run'), '-p', 'bb', 'true'], { env: { ...process.env, BULKHEAD_SOCKET: socket } });
      if (i >= 2) walls.push(performance.now() - t0);
    }

    // 3. 1 GiB from ba to bb: from a program in ba (the qrexec library), and through
    //    qrexec-client-vm reading a pipe (head from /dev/zero), timed inside ba.
    await cli(socket, 'qvm-run', ['-p', 'ba', 'cat > /tmp/streamer.mjs'], STREAMER);
    const streamSecs = JSON.parse(await cli(socket, 'qvm-run', ['-p', 'ba', '/run/bulkhead/node /tmp/streamer.mjs'])) as number[];
    const gbps = STREAM_BYTES / percentile(streamSecs, 50) / 1e9;
    const nanos = Number((await cli(socket, 'qvm-run', ['-p', 'ba',
      `s=$(date +%s%N); head -c ${STREAM_BYTES} /dev/zero | qrexec-client-vm bb bench.Null || exit 1; e=$(date +%s%N); echo $((e-s))`])).trim());
    const cliGbps = STREAM_BYTES / (nanos / 1e9) / 1e9;

    console.log(`qvm-run -p bb true (wall, ${QVM_RUNS} runs): p50 ${ms(percentile(walls, 50))} ms, p90 ${ms(percentile(walls, 90))} ms`);
    console.log(`stream 1 GiB ba -> bb from a program (3 runs after a warm-up): ${streamSecs.map((x) => x.toFixed(2)).join(', ')} s; median ${gbps.toFixed(2)} GB/s`);
    console.log(`stream 1 GiB ba -> bb through head | qrexec-client-vm: ${(nanos / 1e9).toFixed(2)} s, ${cliGbps.toFixed(2)} GB/s`);
    console.log(`service round trip ba -> bb (${CALLS} calls): p50 ${ms(percentile(lat, 50))} ms, p90 ${ms(percentile(lat, 90))} ms, p99 ${ms(percentile(lat, 99))} ms`);
    console.log(`qvm_run_true_wall_p50: ${ms(percentile(walls, 50))} ms`);
    console.log(`qrexec_stream_throughput: ${gbps.toFixed(2)} GB/s`);
    console.log(`qrexec_roundtrip_p50: ${ms(percentile(lat, 50))} ms`);
  } finally {
    await daemon.close();
  }
}

await main();
