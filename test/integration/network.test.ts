// Networking in qubes, end to end with real qubes, iproute2 and nftables. Nothing here touches the
// host's own network: the daemon runs in a network namespace the test makes ("adm", the admin
// domain), and the stand-in internet is a second one ("inet") with TCP servers and a DNS server
// (net-peer.ts). sys-net's `nat` uplink goes adm → inet; its `nic` uplink is a veth the test
// made in adm, whose other end is in inet.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RemoteError } from '../../src/cli/client.js';
import { daemonTag, NETNS_DIR, netnsName } from '../../src/net/addresses.js';
import { lines, REPO_ROOT, startDaemon, waitFor } from './helpers.js';
import { QubeHost } from './qube-helpers.js';

const tag = crypto.randomBytes(3).toString('hex');
const ADM = `bht-adm-${tag}`;
const INET = `bht-inet-${tag}`;
/** The stand-in internet's servers, and its resolver (reached through sys-net). */
const SERVER_A = '203.0.113.10';
const SERVER_B = '203.0.113.20';
const RESOLVER = '203.0.113.53';
const ADM_ADDR = '192.0.2.1';
const PORT_A = 7001;
const PORT_B = 7002;
const ADM_PORT = 7003;

function sh(argv: readonly string[], input?: string): string {
  const r = spawnSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function inNs(ns: string, argv: readonly string[]): string {
  return sh(['ip', 'netns', 'exec', ns, ...argv]);
}

/** A TCP connect from inside a qube (python3 from the host template): `ok <banner>` or `fail <why>`. */
const PROBE = `
import socket, sys
host, port, src = sys.argv[1], int(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else '')
s = socket.socket(); s.settimeout(1.5)
try:
    if src: s.bind((src, 0))
    s.connect((host, port)); print('ok', s.recv(200).decode().strip())
except Exception as e:
    print('fail', type(e).__name__)
`;

const children: ChildProcess[] = [];

function startIn(ns: string, argv: readonly string[]): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  return child;
}

async function ready(child: ChildProcess): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve(); });
    child.once('exit', (code) => { reject(new Error(`helper exited ${String(code)}`)); });
  });
}

void describe('networking: sys-net, sys-firewall, firewall, isolation', () => {
  let host: QubeHost | undefined;
  const q = (): QubeHost => {
    if (!host) throw new Error('suite not started');
    return host;
  };

  before(async () => {
    // The admin domain's namespace and the stand-in internet, linked; and the stand-in NIC.
    sh(['ip', 'netns', 'add', ADM]);
    sh(['ip', 'netns', 'add', INET]);
    sh(['ip', '-n', ADM, '-b', '-'], [
      'link set lo up',
      `link add wan0 type veth peer name adm0 netns ${INET}`,
      `addr add ${ADM_ADDR}/24 dev wan0`,
      'link set wan0 up',
      'link add nic0 type veth peer name lan0 netns ' + INET,
    ].join('\n'));
    sh(['ip', '-n', INET, '-b', '-'], [
      'link set lo up',
      'addr add 192.0.2.254/24 dev adm0',
      'link set adm0 up',
      'addr add 198.51.100.254/24 dev lan0',
      'link set lan0 up',
      `addr add ${SERVER_A}/32 dev lo`,
      `addr add ${SERVER_B}/32 dev lo`,
      `addr add ${RESOLVER}/32 dev lo`,
    ].join('\n'));
    sh(['ip', '-n', ADM, 'route', 'add', 'default', 'via', '192.0.2.254']);
    const peer = startIn(INET, [process.execPath, '--import', 'tsx', path.join(REPO_ROOT, 'test/integration/net-peer.ts'),
      '--tcp', `${PORT_A},${PORT_B}`, '--dns', `allowed.test=${SERVER_A},blocked.test=${SERVER_B}`, '--dns-address', RESOLVER]);
    await ready(peer);
    // A service of the admin domain itself, which no qube may reach.
    const adm = startIn(ADM, [process.execPath, '--import', 'tsx', path.join(REPO_ROOT, 'test/integration/net-peer.ts'), '--tcp', String(ADM_PORT)]);
    await ready(adm);

    const daemon = await startDaemon({ netns: ADM });
    host = new QubeHost(daemon);
    await host.ok('bulkhead', ['template', 'build', 'host', 'tpl']);
    const make = async (name: string, props: string[]): Promise<void> => {
      await q().ok('qvm-create', ['-t', 'tpl', '-l', 'red', ...props.flatMap((p) => ['--prop', p]), name]);
    };
    await make('sys-net', ['provides_network=True', 'netvm=']);
    await q().ok('qvm-features', ['sys-net', 'net.uplink', 'nat']);
    await q().ok('qvm-features', ['sys-net', 'net.uplink-dns', RESOLVER]);
    await make('sys-firewall', ['provides_network=True', 'netvm=sys-net']);
    await q().ok('qubes-prefs', ['default_netvm', 'sys-firewall']);
    await make('app1', []);
    await make('app2', []);
    await make('vault', ['netvm=']);
    await q().ok('qvm-start', ['app1', 'app2', 'vault']);
  });

  after(async () => {
    await host?.daemon.stop();
    for (const c of children) c.kill('SIGKILL');
    spawnSync('ip', ['netns', 'del', ADM]);
    spawnSync('ip', ['netns', 'del', INET]);
  });

  const probe = async (vm: string, target: string, port: number): Promise<string> => {
    const r = await q().exec(vm, `python3 - ${target} ${port}`, { input: PROBE });
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  const ip = async (vm: string): Promise<string> => (await q().ok('qvm-prefs', [vm, 'ip'])).trim();
  /** The name of a running qube's network namespace handle (under /run/netns). */
  const handle = async (vm: string): Promise<string> => netnsName(daemonTag(path.resolve(q().daemon.dataDir)), await q().uuid(vm));
  /** The handles of this daemon's qubes that exist now. */
  const handles = (): string[] => {
    const prefix = netnsName(daemonTag(path.resolve(q().daemon.dataDir)), '');
    return fs.existsSync(NETNS_DIR) ? fs.readdirSync(NETNS_DIR).filter((n) => n.startsWith(prefix)) : [];
  };

  it('an AppVM reaches the stand-in internet through sys-firewall and sys-net, with Qubes\' addressing', async () => {
    const appIp = await ip('app1');
    const fwIp = await ip('sys-firewall');
    assert.match(appIp, /^10\.137\.0\.\d+$/);
    const inside = await q().ok('qvm-run', ['-p', 'app1', 'ip -o -4 addr show; ip route; cat /etc/resolv.conf']);
    assert.match(inside, new RegExp(`eth0\\s+inet ${appIp.replace(/\./g, '\\.')}/32`));
    assert.match(inside, new RegExp(`default via ${fwIp.replace(/\./g, '\\.')} dev eth0`));
    assert.match(inside, /nameserver 10\.139\.1\.1\nnameserver 10\.139\.1\.2/);
    assert.equal(await q().ok('qvm-run', ['-p', 'app1', 'cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6']), '1\n', 'no IPv6');
    assert.equal((await q().ok('qvm-prefs', ['app1', 'visible_gateway'])).trim(), fwIp);
    assert.equal((await q().ok('qvm-prefs', ['app1', 'dns'])).trim(), '10.139.1.1 10.139.1.2');
    // Masqueraded at each hop: the internet sees the admin domain's uplink address.
    assert.equal(await probe('app1', SERVER_A, PORT_A), `ok peer ${PORT_A} ${ADM_ADDR}`);
  });

  it('DNS goes to the virtual servers and is redirected by the netvms to sys-net\'s resolver', async () => {
    const r = await q().ok('qvm-run', ['-p', 'app1', 'getent ahostsv4 allowed.test | head -1']);
    assert.match(r, new RegExp(`^${SERVER_A.replace(/\./g, '\\.')}\\s`));
    const nx = await q().exec('app1', 'getent hosts nosuch.test');
    assert.equal(nx.code, 2, 'an unknown name is not found');
  });

  it('a vault has no interface but lo and no route', async () => {
    const r = await q().ok('qvm-run', ['-p', 'vault', 'ls /sys/class/net; ip route']);
    assert.deepEqual(lines(r), ['lo']);
    assert.equal((await q().ok('qvm-prefs', ['vault', 'ip'])).trim(), '');
    assert.match(await probe('vault', SERVER_A, PORT_A), /^fail /);
  });

  it('the firewall allows and drops destinations as its rules say, live; Get shows the canonical rules', async () => {
    await q().ok('qvm-firewall', ['app1', 'reset']);
    await q().ok('qvm-firewall', ['app1', 'add', '--before', '0', 'action=accept', 'dsthost=allowed.test', 'proto=tcp', `dstports=${PORT_A}`]);
    await q().ok('qvm-firewall', ['app1', 'add', '--before', '1', 'accept', 'specialtarget=dns']);
    await q().ok('qvm-firewall', ['app1', 'del', '--rule-no', '2']); // the old `action=accept`: now nothing else passes
    const listed = await q().daemon.client().call({ method: 'admin.vm.firewall.Get', dest: 'app1' });
    assert.equal(listed, `action=accept dsthost=allowed.test proto=tcp dstports=${PORT_A}-${PORT_A}\naction=accept specialtarget=dns\n`);
    // Header cells have blanks ("SPECIAL TARGET"): columns are two or more blanks apart.
    const table = lines(await q().ok('qvm-firewall', ['app1', 'list'])).map((l) => l.split(/ {2,}/));
    assert.deepEqual(table[0], ['NO', 'ACTION', 'HOST', 'PROTOCOL', 'PORT(S)', 'SPECIAL TARGET', 'ICMP TYPE', 'EXPIRE', 'COMMENT']);
    assert.deepEqual(table[1], ['0', 'accept', 'allowed.test', 'tcp', String(PORT_A), '-', '-', '-', '-']);
    assert.deepEqual(table[2], ['1', 'accept', '-', '-', '-', 'dns', '-', '-', '-']);
    assert.equal(await probe('app1', SERVER_A, PORT_A), `ok peer ${PORT_A} ${ADM_ADDR}`);
    assert.match(await probe('app1', SERVER_B, PORT_A), /^fail /, 'another host');
    assert.match(await probe('app1', SERVER_A, PORT_B), /^fail /, 'another port');
    assert.match(await q().ok('qvm-run', ['-p', 'app1', 'getent ahostsv4 blocked.test | head -1']), /^203\.0\.113\.20/, 'DNS allowed');
    // app2's rules are its own.
    assert.match(await probe('app2', SERVER_B, PORT_B), /^ok /);
    await q().ok('qvm-firewall', ['app1', 'reset']);
    assert.match(await probe('app1', SERVER_B, PORT_B), /^ok /);
  });

  it('invalid rules are refused with a precise message and the old rules stay in force', async () => {
    const client = q().daemon.client();
    await q().ok('qvm-firewall', ['app1', 'add', '--before', '0', 'action=drop', `dst4=${SERVER_B}`]);
    const before = await client.call({ method: 'admin.vm.firewall.Get', dest: 'app1' });
    const bad: [string, RegExp][] = [
      ['action=accept dst4=10.0.0.0/33\n', /netmask for IPv4 must be <= 32/],
      ['action=accept dst4=10.0.0.300\n', /Invalid IP address/],
      ['action=accept proto=tcp dstports=70000\n', /Ports out of range/],
      ['action=accept proto=tcp dstports=90-80\n', /Invalid port range/],
      ['action=accept colour=red\n', /Unknown firewall option: 'colour'/],
      ['action=accept dsthost=Evil;host\n', /strange characters|Invalid hostname/],
      ['action=maybe\n', /Invalid action/],
      ['action=accept dstports=80\n', /dstports valid only for 'tcp' and 'udp'/],
      ['action=accept\naction=drop dst4=1.2.3.4/8 bogus\n', /Rule 2: Invalid rule element/],
      ['action=accept comment=h\xe9\n', /printable ASCII/],
    ];
    for (const [payload, message] of bad) {
      await assert.rejects(client.call({ method: 'admin.vm.firewall.Set', dest: 'app1', payload: Buffer.from(payload, 'latin1') }), (err: unknown) => {
        assert.ok(err instanceof RemoteError, String(err));
        assert.equal(err.type, 'QubesValueError');
        assert.match(err.message, message);
        return true;
      });
    }
    const cli = await q().run('qvm-firewall', ['app1', 'add', 'action=accept', 'proto=udp', 'dstports=1-99999']);
    assert.equal(cli.code, 1);
    assert.match(cli.stderr, /Ports out of range/);
    assert.equal(await client.call({ method: 'admin.vm.firewall.Get', dest: 'app1' }), before);
    assert.match(await probe('app1', SERVER_B, PORT_A), /^fail /, 'the old drop still applies');
    assert.match(await probe('app1', SERVER_A, PORT_A), /^ok /);
    await q().ok('qvm-firewall', ['app1', 'reset']);
  });

  it('a rule with expire= vanishes on time, from the list and from the netvm', async () => {
    await q().ok('qvm-firewall', ['app1', 'add', '--before', '0', 'action=drop', `dst4=${SERVER_A}`, 'expire=+2']);
    assert.match(await probe('app1', SERVER_A, PORT_A), /^fail /);
    assert.match((await q().ok('qvm-firewall', ['app1', 'list'])), /\+[12]s/);
    await waitFor(async () => !(await q().daemon.client().call({ method: 'admin.vm.firewall.Get', dest: 'app1' })).includes('expire='), 6000, 'the rule to expire');
    await waitFor(async () => (await probe('app1', SERVER_A, PORT_A)).startsWith('ok '), 6000, 'the netvm to let the traffic through');
    assert.equal(await q().daemon.client().call({ method: 'admin.vm.firewall.Get', dest: 'app1' }), 'action=accept\n');
  });

  it('a qube cannot send from another address: it cannot add one, and the netvm drops spoofed packets', async () => {
    const r = await q().root('app1', 'ip addr add 10.137.0.250/32 dev eth0');
    assert.notEqual(r.code, 0, 'root in a qube has no say over its network');
    // As if the qube had full control of its interface (a vm qube has): spoof from its namespace.
    const ns = await handle('app1');
    inNs(ns, ['ip', 'addr', 'add', '10.137.0.250/32', 'dev', 'eth0']);
    try {
      const py = (src: string): string => inNs(ns, ['python3', '-c', PROBE, SERVER_A, String(PORT_A), src]).trim();
      assert.match(py(await ip('app1')), /^ok /, 'control: its own address passes');
      assert.match(py('10.137.0.250'), /^fail /);
      assert.match(py(await ip('app2')), /^fail /, 'a sibling\'s address');
    } finally {
      inNs(ns, ['ip', 'addr', 'del', '10.137.0.250/32', 'dev', 'eth0']);
    }
  });

  it('sibling qubes cannot reach each other', async () => {
    const server = `python3 -c "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',7100));s.listen();c,_=s.accept();c.send(b'app2');c.close()"`;
    await q().ok('qvm-run', ['app2', `${server} >/dev/null 2>&1 &`]);
    await sleep(300);
    assert.match(await probe('app1', await ip('app2'), 7100), /^fail /);
    assert.match(await probe('app1', await ip('sys-firewall'), 7100), /^fail /, 'nor services of their netvm');
    assert.match(await probe('sys-firewall', await ip('app2'), 7100), /^fail /, 'nor may their netvm open a connection to them');
    assert.match(inNs(INET, ['python3', '-c', PROBE, await ip('app2'), '7100']).trim(), /^fail /, 'nor the internet');
    assert.match(await probe('app2', '127.0.0.1', 7100), /^ok app2/, 'control: the listener works');
  });

  it('the admin domain is unreachable from qubes, netvms included', async () => {
    const uplinkHost = (await q().ok('qvm-run', ['-p', 'sys-net', 'ip route show default'])).split(' ')[2] ?? '';
    assert.match(uplinkHost, /^100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\./);
    for (const vm of ['app1', 'sys-firewall', 'sys-net']) {
      assert.match(await probe(vm, ADM_ADDR, ADM_PORT), /^fail /, `${vm} → admin domain`);
      assert.match(await probe(vm, uplinkHost, ADM_PORT), /^fail /, `${vm} → admin domain's uplink address`);
    }
    // Control: the listener answers from the internet side.
    assert.match(inNs(INET, ['python3', '-c', PROBE, ADM_ADDR, String(ADM_PORT)]), /^ok peer/);
  });

  it('changing the netvm of a running qube re-attaches it live; a chain of qubes alone works as a network', async () => {
    // A qube standing in for the internet, serving its clients, behind a firewall qube.
    await q().ok('qvm-create', ['-t', 'tpl', '-l', 'red', '--prop', 'provides_network=True', '--prop', 'netvm=', 'inetq']);
    await q().ok('qvm-features', ['inetq', 'net.serve-clients', '1']);
    await q().ok('qvm-create', ['-t', 'tpl', '-l', 'red', '--prop', 'provides_network=True', '--prop', 'netvm=inetq', 'fw2']);
    const refused = await q().run('qvm-prefs', ['app1', 'netvm', 'fw2']);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /Cannot dynamically attach to stopped NetVM: 'fw2'/);
    await q().ok('qvm-start', ['fw2']);
    await q().ok('qvm-run', ['inetq', `python3 -c "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',7200));s.listen()
while True:
  c,a=s.accept();c.send(('inetq '+a[0]).encode());c.close()" >/dev/null 2>&1 &`]);
    await sleep(300);
    await q().ok('qvm-prefs', ['app1', 'netvm', 'fw2']);
    assert.equal(await probe('app1', await ip('inetq'), 7200), `ok inetq ${await ip('fw2')}`);
    assert.match(await probe('app1', SERVER_A, PORT_A), /^fail /, 'no way to the other internet');
    await q().ok('qvm-prefs', ['app1', 'netvm', '']);
    assert.deepEqual(lines(await q().ok('qvm-run', ['-p', 'app1', 'ls /sys/class/net'])), ['lo']);
    await q().ok('qvm-prefs', ['-D', 'app1', 'netvm']);
    assert.match(await probe('app1', SERVER_A, PORT_A), /^ok /);
    await q().ok('qvm-shutdown', ['--wait', 'fw2', 'inetq']);
    await q().ok('qvm-remove', ['-f', 'fw2', 'inetq']);
  });

  it('a netvm in use is not stopped unless forced; its clients then lose network, not state, and get it back', async () => {
    const refused = await q().run('qvm-shutdown', ['--wait', 'sys-firewall']);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /in use/);
    await q().ok('qvm-run', ['app1', 'echo kept > /tmp/state']);
    // A rule naming a host: looked up again by the netvm once it is back.
    await q().ok('qvm-firewall', ['app1', 'add', '--before', '0', 'action=drop', 'dsthost=blocked.test']);
    await q().ok('qvm-kill', ['sys-firewall']);
    assert.equal(await q().state('app1'), 'Running');
    assert.deepEqual(lines(await q().ok('qvm-run', ['-p', 'app1', 'ls /sys/class/net'])), ['lo']);
    await q().ok('qvm-start', ['sys-firewall']);
    await waitFor(async () => (await probe('app1', SERVER_A, PORT_A)).startsWith('ok '), 5000, 'app1 to be connected again');
    assert.match(await probe('app1', SERVER_B, PORT_A), /^fail /, 'its hostname rule applies again');
    assert.equal(await q().ok('qvm-run', ['-p', 'app1', 'cat /tmp/state']), 'kept\n');
    await q().ok('qvm-firewall', ['app1', 'reset']);
  });

  it('the nic uplink moves a named interface into sys-net, and gives it back', async () => {
    await q().ok('qvm-shutdown', ['--all', '--wait', '--force']);
    await q().ok('qvm-features', ['sys-net', 'net.uplink', 'nic']);
    await q().ok('qvm-features', ['sys-net', 'net.uplink-dev', 'nic0']);
    await q().ok('qvm-features', ['sys-net', 'net.uplink-address', '198.51.100.2/24']);
    await q().ok('qvm-features', ['sys-net', 'net.uplink-gateway', '198.51.100.254']);
    await q().ok('qvm-start', ['app1']);
    assert.doesNotMatch(sh(['ip', '-n', ADM, '-o', 'link']), /nic0/, 'moved out of the admin domain');
    assert.equal(await probe('app1', SERVER_A, PORT_A), `ok peer ${PORT_A} 198.51.100.2`);
    await q().ok('qvm-shutdown', ['--all', '--wait', '--force']);
    assert.match(sh(['ip', '-n', ADM, '-o', 'link']), /nic0/, 'back in the admin domain');
    await q().ok('qvm-features', ['sys-net', 'net.uplink', 'nat']);
  });

  it('a bad uplink configuration fails the start clearly and leaves nothing behind', async () => {
    await q().ok('qvm-features', ['sys-net', 'net.uplink', 'nic']);
    await q().ok('qvm-features', ['sys-net', 'net.uplink-dev', 'no-such-if']);
    const r = await q().run('qvm-start', ['sys-net']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /the interface 'no-such-if'/);
    assert.equal(await q().state('sys-net'), 'Halted');
    await q().ok('qvm-features', ['sys-net', 'net.uplink', 'nat']);
  });

  it('a daemon killed with its qubes running leaves no handle past its next start', async () => {
    await q().ok('qvm-start', ['app1']);
    assert.ok(handles().length >= 3);
    await q().daemon.kill('SIGKILL');
    await q().daemon.start();
    assert.deepEqual(handles(), []);
    assert.equal(inNs(ADM, ['nft', 'list', 'tables']).trim(), '');
  });

  it('stopping everything leaves no namespace handle, veth or nft table behind', async () => {
    await q().ok('qvm-start', ['app1', 'app2']);
    assert.match(sh(['ip', '-n', ADM, '-o', 'link']), /bh[0-9a-f]{5}-\d+@/, 'the nat uplink is there while sys-net runs');
    await q().ok('qvm-shutdown', ['--all', '--wait', '--force']);
    assert.deepEqual(handles(), []);
    const links = sh(['ip', '-n', ADM, '-o', 'link']).split('\n').filter((l) => l !== '').map((l) => l.split(':')[1]?.trim().split('@')[0]);
    assert.deepEqual(links.sort(), ['lo', 'nic0', 'wan0']);
    assert.equal(inNs(ADM, ['nft', 'list', 'tables']).trim(), '');
  });
});
