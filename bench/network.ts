// Networking figures with real qubes (container backend, host template): TCP throughput AppVM →
// sys-firewall → sys-net (nat uplink) → a stand-in internet, with iperf3; the time to apply
// 1,000 firewall rules to one running qube (admin.vm.firewall.Set, nft transaction included);
// and what network attach adds to a qube start (the same start with the daemon's networking off).
// Everything runs in network namespaces this bench makes (the daemon in "adm", the internet in
// "inet"); nothing touches the host's own network. Needs the build (npm run build) and root.
// Run: node --import tsx bench/network.ts   (targets: >= 5 Gbit/s, <= 500 ms, <= 30 ms)
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { AdminClient } from '../src/cli/client.js';
import { startDaemon, type RunningDaemon } from '../src/daemon/daemon.js';
import { silentLogger } from '../src/daemon/log.js';
import { ContainerBackend } from '../src/hal/container/backend.js';
import type { BackendKind, HypervisorBackend } from '../src/hal/types.js';
import { cli, REPO } from './qube-fixture.js';
import { ms, percentile, qubeDataDir } from './stats.js';

const SERVER = '203.0.113.10';
const RULES = 1000;
const STARTS = 10;

function sh(argv: readonly string[], input?: string): string {
  const r = spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

async function daemonIn(dataDir: string, socket: string, network: boolean): Promise<RunningDaemon> {
  const log = silentLogger();
  return startDaemon({
    dataDir, socketPath: socket, log, network,
    makeBackends: async () => new Map<BackendKind, HypervisorBackend>([
      ['container', await ContainerBackend.create({ dataDir, log, agentBundle: path.join(REPO, 'dist', 'agent-bundle') })],
    ]),
  });
}

/** Start wall times (admin.vm.Start, qube halted before each) of `vm`, after one warm-up. */
async function startTimes(socket: string, vm: string): Promise<number[]> {
  const client = new AdminClient(socket);
  const out: number[] = [];
  for (let i = 0; i <= STARTS; i++) {
    const t0 = performance.now();
    await client.call({ method: 'admin.vm.Start', dest: vm });
    if (i > 0) out.push(performance.now() - t0);
    await client.call({ method: 'admin.vm.Kill', dest: vm });
  }
  return out;
}

/** Runs inside the admin domain's namespace (see the end of the file). */
async function inner(tmp: string): Promise<void> {
  const dataDir = path.join(tmp, 'data');
  const socket = path.join(tmp, 'qubesd.sock');
  let daemon = await daemonIn(dataDir, socket, true);
  try {
    await cli(socket, 'bulkhead', ['template', 'build', 'host', 'tpl']);
    await cli(socket, 'qvm-create', ['-t', 'tpl', '-l', 'red', '--prop', 'provides_network=True', '--prop', 'netvm=', 'sys-net']);
    await cli(socket, 'qvm-features', ['sys-net', 'net.uplink', 'nat']);
    await cli(socket, 'qvm-create', ['-t', 'tpl', '-l', 'green', '--prop', 'provides_network=True', '--prop', 'netvm=sys-net', 'sys-firewall']);
    await cli(socket, 'qvm-create', ['-t', 'tpl', '-l', 'red', '--prop', 'netvm=sys-firewall', 'app']);
    await cli(socket, 'qvm-start', ['app']);

    // 1. iperf3 from the AppVM to the stand-in internet, three 5 s runs.
    const gbits: number[] = [];
    for (let i = 0; i < 3; i++) {
      const json = JSON.parse(await cli(socket, 'qvm-run', ['-p', 'app', `iperf3 -c ${SERVER} -t 5 -J`])) as { end: { sum_received: { bits_per_second: number } } };
      gbits.push(json.end.sum_received.bits_per_second / 1e9);
    }

    // 2. 1,000 rules to the running AppVM: Set applies them in sys-firewall before answering.
    const client = new AdminClient(socket);
    const rules = Array.from({ length: RULES }, (_, i) => `action=accept dst4=10.${(i >> 8) & 255}.${i & 255}.0/24 proto=tcp dstports=${1000 + i}-${1000 + i}\n`).join('');
    const sets: number[] = [];
    for (let i = 0; i < 6; i++) {
      const payload = i % 2 === 0 ? rules : `${rules}action=drop\n`;
      const t0 = performance.now();
      await client.call({ method: 'admin.vm.firewall.Set', dest: 'app', payload });
      if (i > 0) sets.push(performance.now() - t0);
    }
    await client.call({ method: 'admin.vm.firewall.Set', dest: 'app', payload: 'action=accept\n' });

    // 3. Start of the AppVM with sys-firewall running, with networking on and off.
    const withNet = await startTimes(socket, 'app');
    await cli(socket, 'qvm-shutdown', ['--all', '--wait', '--force']);
    await daemon.close();
    daemon = await daemonIn(dataDir, socket, false);
    await cli(socket, 'qvm-start', ['sys-firewall']);
    const withoutNet = await startTimes(socket, 'app');
    await cli(socket, 'qvm-shutdown', ['--all', '--wait', '--force']);

    const attach = percentile(withNet, 50) - percentile(withoutNet, 50);
    console.log(`iperf3 app -> sys-firewall -> sys-net -> internet (3 x 5 s): ${gbits.map((g) => g.toFixed(1)).join(', ')} Gbit/s`);
    console.log(`firewall Set of ${RULES} rules to a running qube (5 runs): p50 ${ms(percentile(sets, 50))} ms, max ${ms(Math.max(...sets))} ms`);
    console.log(`qube start with its netvm running (${STARTS} runs): network on p50 ${ms(percentile(withNet, 50))} ms, off p50 ${ms(percentile(withoutNet, 50))} ms`);
    console.log(`firewall_apply_1000_rules_p50: ${ms(percentile(sets, 50))} ms`);
    console.log(`network_attach_start_overhead_p50: ${ms(attach)} ms`);
    console.log(`tcp_throughput_app_to_internet: ${percentile(gbits, 50).toFixed(1)} Gbit/s`);
  } finally {
    await daemon.close();
  }
}

async function main(): Promise<void> {
  if (process.argv[2] === '--inner') {
    await inner(process.argv[3] ?? '');
    return;
  }
  const tag = crypto.randomBytes(3).toString('hex');
  const adm = `bhb-adm-${tag}`;
  const inet = `bhb-inet-${tag}`;
  using tmp = qubeDataDir('bulkhead-bench-network-');
  sh(['ip', 'netns', 'add', adm]);
  sh(['ip', 'netns', 'add', inet]);
  let iperf: ReturnType<typeof spawn> | undefined;
  try {
    sh(['ip', '-n', adm, '-b', '-'], ['link set lo up', `link add wan0 type veth peer name adm0 netns ${inet}`, 'addr add 192.0.2.1/24 dev wan0', 'link set wan0 up', 'route add default via 192.0.2.254'].join('\n'));
    sh(['ip', '-n', inet, '-b', '-'], ['link set lo up', 'addr add 192.0.2.254/24 dev adm0', 'link set adm0 up', `addr add ${SERVER}/32 dev lo`].join('\n'));
    iperf = spawn('ip', ['netns', 'exec', inet, 'iperf3', '-s', '-B', SERVER], { stdio: 'ignore' });
    const child = spawn('nsenter', [`--net=/run/netns/${adm}`, process.execPath, '--import', 'tsx', import.meta.filename, '--inner', tmp.path], { stdio: 'inherit' });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    if (code !== 0) process.exitCode = 1;
  } finally {
    iperf?.kill();
    spawnSync('ip', ['netns', 'del', adm]);
    spawnSync('ip', ['netns', 'del', inet]);
  }
}

await main();
