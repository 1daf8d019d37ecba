// The orchestrator's decisions with a recording runner in place of iproute2/nftables (the real
// tools are used by test/integration/network.test.ts): what is linked where, what each netvm's
// table holds, fail-closed firewall preparation, rollback of a failed apply, and clean release.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import { QubesError } from '../core/errors.js';
import { parseRule } from '../core/firewall.js';
import { emptyState } from '../core/model.js';
import { Registry } from '../core/registry.js';
import path from 'node:path';
import { daemonTag, netnsName } from './addresses.js';
import { NetworkOrchestrator } from './orchestrator.js';
import type { NetRunner } from './runner.js';

interface Call { readonly argv: readonly string[]; readonly input: string | undefined }

class RecordingRunner implements NetRunner {
  readonly calls: Call[] = [];
  failNft: ((input: string) => boolean) | undefined;
  run(argv: readonly string[], input?: string): Promise<void> {
    this.calls.push({ argv, input });
    if (argv.includes('nft') && input !== undefined && this.failNft?.(input) === true) {
      return Promise.reject(new Error('nft: Error: Could not process rule'));
    }
    return Promise.resolve();
  }
  /** The last table text applied in the namespace of `uuid`. */
  lastTable(uuid: string): string {
    const c = [...this.calls].reverse().find((x) => x.argv.includes('nft') && x.argv.some((a) => a.includes(ns(uuid))));
    if (!c?.input) throw new Error(`no table applied for ${uuid}`);
    return c.input;
  }
  has(pred: (argv: string) => boolean): boolean {
    return this.calls.some((c) => pred(c.argv.join(' ')));
  }
}

function setup(lookup?: (netvm: string, hosts: readonly string[]) => Promise<Buffer>): { reg: Registry; runner: RecordingRunner; net: NetworkOrchestrator; starts: string[] } {
  const reg = new Registry(emptyState(), () => undefined);
  reg.create({ klass: 'TemplateVM', name: 'tpl', label: 'black', source: 'dom0' });
  reg.create({ klass: 'AppVM', name: 'fw', label: 'green', template: 'tpl', source: 'dom0' });
  reg.setProp('fw', 'provides_network', 'True');
  reg.setProp('fw', 'netvm', '');
  reg.create({ klass: 'AppVM', name: 'app', label: 'red', template: 'tpl', source: 'dom0' });
  reg.setProp('app', 'netvm', 'fw');
  reg.create({ klass: 'AppVM', name: 'vault', label: 'black', template: 'tpl', source: 'dom0' });
  reg.setProp('vault', 'netvm', '');
  const runner = new RecordingRunner();
  const starts: string[] = [];
  const net = new NetworkOrchestrator({
    registry: reg, log: pino({ level: 'silent' }), dataDir: '/nonexistent/data', runner,
    lookupIn: lookup ?? (() => Promise.reject(new Error('no lookups expected'))),
    start: (name) => { starts.push(name); return Promise.resolve(); },
  });
  return { reg, runner, net, starts };
}

const uuid = (reg: Registry, name: string): string => reg.resolve(name).uuid;
const TAG = daemonTag(path.resolve('/nonexistent/data'));
/** The handle name of a qube's namespace. */
const ns = (u: string): string => netnsName(TAG, u);
/** Every qube's init in these tests: a live process (the pid is checked before use). */
const PID = process.pid;
const signal = new AbortController().signal;

async function up(net: NetworkOrchestrator, reg: Registry, name: string, pid: number): Promise<{ release: () => Promise<void> }> {
  const hooks = net.hooksFor(reg.resolve(name));
  assert.ok(hooks);
  await hooks.attach(pid, signal);
  return { release: () => hooks.release() };
}

void describe('network orchestrator', () => {
  test('resolv.conf: the virtual DNS for clients; a top netvm its upstream, or itself', () => {
    const { reg, net } = setup();
    assert.match(net.hooksFor(reg.resolve('app'))?.resolvConf ?? '', /nameserver 10\.139\.1\.1\nnameserver 10\.139\.1\.2\n/);
    assert.match(net.hooksFor(reg.resolve('fw'))?.resolvConf ?? '', /nameserver 127\.0\.0\.1\n/);
    reg.featureSet('fw', 'net.uplink-dns', '192.0.2.53 192.0.2.54');
    assert.match(net.hooksFor(reg.resolve('fw'))?.resolvConf ?? '', /nameserver 192\.0\.2\.53\nnameserver 192\.0\.2\.54\n/);
    reg.featureSet('fw', 'net.uplink-dns', '192.0.2.53;rm');
    assert.throws(() => net.hooksFor(reg.resolve('fw')), (e: unknown) => e instanceof QubesError && /net\.uplink-dns/.test(e.message));
    assert.equal(net.hooksFor(reg.resolve('dom0')), undefined);
  });

  test('a client is linked to its running netvm: veth, addresses, routes, and a table entry', async () => {
    const { reg, runner, net } = setup();
    await up(net, reg, 'fw', PID);
    await up(net, reg, 'app', PID);
    const app = reg.resolve('app');
    assert.ok(runner.has((a) => a === `ip netns attach ${ns(app.uuid)} ${PID}`));
    const link = runner.calls.find((c) => c.input?.includes(`link add vif${app.qid} type veth peer name eth0 netns ${ns(app.uuid)}`));
    assert.ok(link, 'the veth is made in the netvm');
    assert.match(link.input ?? '', /addr add 10\.137\.0\.\d+\/32 dev vif\d+/);
    assert.ok(runner.calls.some((c) => c.input?.includes(`route add default via 10.137.0.${reg.resolve('fw').qid} dev eth0`)));
    const table = runner.lastTable(uuid(reg, 'fw'));
    assert.match(table, new RegExp(`"vif${app.qid}" \\. 10\\.137\\.0\\.${app.qid}`));
    assert.match(table, new RegExp(`chain bh_fw_${app.qid} \\{\\n\\t\\taccept\\n\\t\\tdrop`));
    assert.equal(net.linkedTo('app'), 'fw');
  });

  test('a client started before its netvm is linked when the netvm comes up', async () => {
    const { reg, net } = setup();
    await up(net, reg, 'app', PID);
    assert.equal(net.linkedTo('app'), null);
    await up(net, reg, 'fw', PID);
    assert.equal(net.linkedTo('app'), 'fw');
  });

  test('a failed nft apply throws and leaves the old rules in the table', async () => {
    const { reg, runner, net } = setup();
    await up(net, reg, 'fw', PID);
    await up(net, reg, 'app', PID);
    runner.failNft = (input) => input.includes('10.9.9.0/24');
    await assert.rejects(net.applyFirewall('app', [parseRule('action=drop dst4=10.9.9.0/24'), parseRule('action=accept')]),
      (e: unknown) => e instanceof QubesError && /old rules stay/.test(e.message));
    runner.failNft = undefined;
    await net.reload('app');
    const table = runner.lastTable(uuid(reg, 'fw'));
    assert.doesNotMatch(table, /10\.9\.9\.0/);
    assert.match(table, /\t\taccept\n\t\tdrop/);
  });

  test('a hostname the netvm cannot resolve: Set fails; at attach the client is blocked (fail closed)', async () => {
    const { reg, runner, net } = setup(() => Promise.resolve(Buffer.from('@ other.test\n1.2.3.4 STREAM other.test\n')));
    await up(net, reg, 'fw', PID);
    reg.firewallSet('app', [parseRule('action=accept dsthost=gone.test'), parseRule('action=drop')]);
    await up(net, reg, 'app', PID);
    const app = reg.resolve('app');
    assert.match(runner.lastTable(uuid(reg, 'fw')), new RegExp(`chain bh_fw_${app.qid} \\{\\n\\t\\tdrop\\n\\t\\}`));
    await assert.rejects(net.applyFirewall('app', [parseRule('action=accept dsthost=gone.test')]), /cannot resolve: gone\.test/);
  });

  test('resolved hostnames become address sets in the client chain', async () => {
    const { reg, runner, net } = setup(() => Promise.resolve(Buffer.from('@ web.test\n192.0.2.7 STREAM web.test\n192.0.2.8 STREAM\n2001:db8::7 STREAM\n')));
    await up(net, reg, 'fw', PID);
    await up(net, reg, 'app', PID);
    await net.applyFirewall('app', [parseRule('action=accept dsthost=web.test proto=tcp dstports=443')]);
    const table = runner.lastTable(uuid(reg, 'fw'));
    assert.match(table, /ip daddr \{ 192\.0\.2\.7, 192\.0\.2\.8 \} meta l4proto tcp th dport 443 accept/);
    assert.match(table, /ip6 daddr 2001:db8::7 meta l4proto tcp th dport 443 accept/);
  });

  test('release removes the link and the handle, and the netvm\'s table forgets the client', async () => {
    const { reg, runner, net } = setup();
    const fw = await up(net, reg, 'fw', PID);
    const app = await up(net, reg, 'app', PID);
    const a = reg.resolve('app');
    await app.release();
    await app.release(); // once only
    assert.ok(runner.has((x) => x === `ip -n ${ns(uuid(reg, 'fw'))} link del vif${a.qid}`));
    assert.equal(runner.calls.filter((c) => c.argv.join(' ') === `ip netns del ${ns(a.uuid)}`).length, 1);
    assert.doesNotMatch(runner.lastTable(uuid(reg, 'fw')), new RegExp(`vif${a.qid}`));
    await fw.release();
    assert.ok(runner.has((x) => x === `ip netns del ${ns(uuid(reg, 'fw'))}`));
  });

  test('a netvm that stops takes its clients\' ends with it; they are linked again when it returns', async () => {
    const { reg, runner, net } = setup();
    const fw = await up(net, reg, 'fw', PID);
    await up(net, reg, 'app', PID);
    await fw.release();
    assert.ok(runner.has((x) => x === `ip -n ${ns(uuid(reg, 'app'))} link del eth0`));
    assert.equal(net.linkedTo('app'), null);
    await up(net, reg, 'fw', PID);
    assert.equal(net.linkedTo('app'), 'fw');
  });

  test('a live netvm change moves the client; to a halted netvm it starts it; to none it unlinks', async () => {
    const { reg, net, starts } = setup();
    reg.create({ klass: 'AppVM', name: 'fw2', label: 'green', template: 'tpl', source: 'dom0' });
    reg.setProp('fw2', 'provides_network', 'True');
    reg.setProp('fw2', 'netvm', '');
    await up(net, reg, 'fw', PID);
    await up(net, reg, 'app', PID);
    reg.setProp('app', 'netvm', 'fw2');
    await net.reconcile();
    assert.equal(net.linkedTo('app'), null);
    assert.deepEqual([...new Set(starts)], ['fw2']);
    await up(net, reg, 'fw2', PID);
    assert.equal(net.linkedTo('app'), 'fw2');
    reg.setProp('app', 'netvm', '');
    await net.reconcile();
    assert.equal(net.linkedTo('app'), null);
    const running = (n: string): boolean => n !== 'fw2-halted';
    assert.throws(() => { net.checkNetvmChange(reg.resolve('app'), (n) => n === 'app', 'fw2'); }, /Cannot dynamically attach to stopped NetVM: 'fw2'/);
    net.checkNetvmChange(reg.resolve('app'), running, 'fw2');
    net.close();
  });

  test('hostnames of clients linked while their netvm starts are looked up once it is Running', async () => {
    let netvmRunning = false;
    const { reg, runner, net } = setup((netvm) => (netvmRunning
      ? Promise.resolve(Buffer.from('@ web.test\n192.0.2.9 STREAM web.test\n'))
      : Promise.reject(new Error(`Domain not running: '${netvm}'`))));
    reg.firewallSet('app', [parseRule('action=accept dsthost=web.test'), parseRule('action=drop')]);
    await up(net, reg, 'app', PID);
    await up(net, reg, 'fw', PID);
    const qid = reg.resolve('app').qid;
    await new Promise((r) => setTimeout(r, 20));
    assert.match(runner.lastTable(uuid(reg, 'fw')), new RegExp(`chain bh_fw_${qid} \\{\\n\\t\\tdrop\\n`), 'blocked meanwhile');
    netvmRunning = true;
    reg.emit({ subject: 'fw', event: 'domain-start', kwargs: [] });
    await new Promise((r) => setTimeout(r, 20));
    assert.match(runner.lastTable(uuid(reg, 'fw')), /ip daddr 192\.0\.2\.9 accept/);
  });

  test('restore: when the stored rules cannot be applied, the qube is blocked, never left more open', async () => {
    const { reg, runner, net } = setup();
    await up(net, reg, 'fw', PID);
    await up(net, reg, 'app', PID);
    await net.applyFirewall('app', [parseRule('action=accept proto=tcp dstports=1-1000')]);
    runner.failNft = (input) => !/chain bh_fw_\d+ \{\n\t\tdrop\n/.test(input);
    await net.restore('app');
    const qid = reg.resolve('app').qid;
    assert.match(runner.lastTable(uuid(reg, 'fw')), new RegExp(`chain bh_fw_${qid} \\{\\n\\t\\tdrop\\n`));
  });

  test('the netvm of a running netvm cannot change (its uplink is made at start)', () => {
    const { reg, net } = setup();
    const running = (): boolean => true;
    assert.throws(() => { net.checkNetvmChange(reg.resolve('fw'), running, 'app'); }, /Cannot change the netvm of a running netvm: 'fw'/);
    net.checkNetvmChange(reg.resolve('fw'), running, '');
    net.checkNetvmChange(reg.resolve('fw'), () => false, 'app');
  });

  test('a slow lookup of rules replaced meanwhile is never applied over the new ones', async () => {
    let release!: () => void;
    const slow = new Promise<void>((r) => { release = r; });
    const { reg, runner, net } = setup(async () => {
      await slow;
      return Buffer.from('@ evil.test\n203.0.113.66 STREAM evil.test\n');
    });
    reg.firewallSet('app', [parseRule('action=accept dsthost=evil.test'), parseRule('action=drop')]);
    await up(net, reg, 'fw', PID);
    await up(net, reg, 'app', PID); // its lookup now waits
    await net.applyFirewall('app', [parseRule('action=drop')]);
    reg.firewallSet('app', [parseRule('action=drop')]);
    release();
    await new Promise((r) => setTimeout(r, 20));
    assert.doesNotMatch(runner.lastTable(uuid(reg, 'fw')), /203\.0\.113\.66/);
  });

  test('a netvm the user stopped is not started again by an unrelated change', async () => {
    const { reg, net, starts } = setup();
    const fw = await up(net, reg, 'fw', PID);
    await up(net, reg, 'app', PID);
    await fw.release(); // forced shutdown: app keeps running without network
    reg.setProp('vault', 'memory', '500');
    reg.setGlobal('default_netvm', 'fw');
    await net.reconcile();
    assert.deepEqual(starts, []);
    assert.equal(net.linkedTo('app'), null);
  });
});
