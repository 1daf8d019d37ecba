// Wall-clock time of `qvm-ls` (a fresh node process, as a user would run it) against a daemon
// child process holding 200 AppVMs (+ a template and dom0). Needs the build (npm run build).
// Run: node --import tsx bench/qvm-ls.ts   (target: p50 <= 300 ms)
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { AdminClient, DaemonError } from '../src/cli/client.js';
import { ms, percentile, tempDir } from './stats.js';

const QUBES = 200;
const RUNS = 20;
const TEMPLATE = 'bench-template';
const ROOT = path.resolve(import.meta.dirname, '..');
const BULKHEAD = path.join(ROOT, 'bin', 'bulkhead');
const QVM_LS = path.join(ROOT, 'bin', 'qvm-ls');

/** Keeps the last few KiB of the daemon's log, to show if it dies. */
function tail(child: ChildProcess): () => string {
  let text = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    text = (text + chunk.toString('utf8')).slice(-4096);
  });
  return () => text;
}

async function waitForDaemon(client: AdminClient, daemon: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (daemon.exitCode !== null || daemon.signalCode !== null) throw new Error(`daemon exited early:\n${log()}`);
    try {
      await client.call({ method: 'admin.vm.List', dest: 'dom0' });
      return;
    } catch (err) {
      if (!(err instanceof DaemonError) || Date.now() > deadline) throw err;
    }
    await sleep(20);
  }
}

async function stopDaemon(daemon: ChildProcess): Promise<void> {
  if (daemon.exitCode !== null || daemon.signalCode !== null) return;
  const exited = once(daemon, 'exit');
  daemon.kill('SIGTERM');
  const timer = setTimeout(() => daemon.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

/** Runs qvm-ls once, output discarded; resolves to its wall time in ms. */
async function timeQvmLs(socketPath: string): Promise<number> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [QVM_LS, '--socket', socketPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr = tail(child);
  const [code] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  const elapsed = performance.now() - t0;
  if (code !== 0) throw new Error(`qvm-ls exited with ${String(code)}:\n${stderr()}`);
  return elapsed;
}

async function main(): Promise<void> {
  using tmp = tempDir('bulkhead-bench-ls-');
  const socketPath = path.join(tmp.path, 'qubesd.sock');
  const daemon = spawn(
    process.execPath,
    [BULKHEAD, 'daemon', '--data-dir', path.join(tmp.path, 'data'), '--socket', socketPath],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, BULKHEAD_LOG_LEVEL: 'warn' } },
  );
  const daemonLog = tail(daemon);
  // Last resort if this process exits without running the finally block (process.exit, or
  // Ctrl-C / kill, turned into an exit below): no daemon and no temp dir left behind.
  const killOnExit = (): void => {
    daemon.kill('SIGKILL');
    tmp[Symbol.dispose]();
  };
  const exitOnSignal = (signal: NodeJS.Signals): void => {
    console.error(`${signal}: stopping`);
    process.exit(130);
  };
  process.once('exit', killOnExit);
  process.once('SIGINT', exitOnSignal);
  process.once('SIGTERM', exitOnSignal);
  try {
    const client = new AdminClient(socketPath);
    await waitForDaemon(client, daemon, daemonLog);
    await client.call({ method: 'admin.vm.Create.TemplateVM', dest: 'dom0', payload: `name=${TEMPLATE} label=black` });
    for (let i = 0; i < QUBES; i++) {
      const name = `bench-${String(i).padStart(3, '0')}`;
      await client.call({ method: 'admin.vm.Create.AppVM', arg: TEMPLATE, dest: 'dom0', payload: `name=${name} label=red` });
    }
    const listed = (await client.call({ method: 'admin.vm.List', dest: 'dom0' })).split('\n').length - 1;
    if (listed !== QUBES + 2) throw new Error(`daemon lists ${listed} qubes, expected ${QUBES + 2}`);

    await timeQvmLs(socketPath); // warm-up (file cache), not counted
    const samples: number[] = [];
    for (let i = 0; i < RUNS; i++) samples.push(await timeQvmLs(socketPath));

    console.log(`qvm-ls: ${listed} qubes, ${RUNS} runs (after 1 warm-up), spawned process, output discarded`);
    console.log(`  p50 ${ms(percentile(samples, 50))} ms  min ${ms(Math.min(...samples))} ms  max ${ms(Math.max(...samples))} ms`);
    console.log(`qvm_ls_200_wall_p50: ${ms(percentile(samples, 50))} ms`);
  } finally {
    await stopDaemon(daemon);
    process.off('exit', killOnExit);
    process.off('SIGINT', exitOnSignal);
    process.off('SIGTERM', exitOnSignal);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
