// The admin domain's network orchestrator: the Qubes topology with veth pairs between the network
// namespaces of running qubes, configured from outside by iproute2 and nftables.
//
// - Every qube's namespace (made by its backend) gets a handle /run/netns/bulkhead-<uuid>, the
//   sysctls of a qube (no IPv6, unprivileged ping; forwarding in a netvm) and `lo`.
// - A networked qube gets `eth0` (10.137.X.Y/32, default route to its netvm's address); its netvm
//   gets the other end `vif<qid>` with the gateway address on it and a /32 route back.
// - Each netvm holds one nftables table (src/net/nft.ts): anti-spoofing, no client-to-client
//   traffic, DNS redirection, NAT to its uplink, and each client's firewall as a chain.
// - A netvm without a netvm has an uplink from its features: `nat` (a veth into the admin domain,
//   masqueraded there) or `nic` (a named interface moved into it); without one it has none.
// The qubes' own processes have no capability over their network namespace: nothing here can be
// undone from inside a qube. All changes are serialised; a netvm's table is replaced whole.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { canonicalAddress, formatRule, parseRules, ruleActive, type FirewallRule } from '../core/firewall.js';
import { QubesError } from '../core/errors.js';
import type { QubeRecord } from '../core/model.js';
import { addressFor, featureWithTemplate, QUBE_MAC, VIRTUAL_DNS } from '../core/network.js';
import { boolValue, refValue } from '../core/properties.js';
import type { Registry, RegistryEvent } from '../core/registry.js';
import { procStat } from '../hal/proc.js';
import type { NetworkHooks } from '../hal/types.js';
import {
  CLIENT_IF,
  daemonTag,
  hostTableName,
  hostUplinkName,
  hostUplinkPrefix,
  isInterfaceName,
  NETNS_DIR,
  netnsName,
  parseIpv4Cidr,
  resolvConfServers,
  resolvConfText,
  uplinkAddresses,
  vifName,
} from './addresses.js';
import { renderHostTable, renderNetvmTable, type ClientPlan, type HostUplink, type NetvmPlan, type ResolvedRule } from './nft.js';
import { ProcessRunner, type NetRunner } from './runner.js';

export interface OrchestratorDeps {
  readonly registry: Registry;
  readonly log: Logger;
  readonly dataDir: string;
  readonly runner?: NetRunner;
  /**
   * Looks up hostnames inside a running netvm: `getent ahosts` output for each name, each block
   * headed by `@ NAME`. The output is the netvm's: untrusted.
   */
  readonly lookupIn: (netvm: string, hostnames: readonly string[]) => Promise<Buffer>;
  /** Starts a halted netvm that a running qube now needs. */
  readonly start: (name: string) => Promise<void>;
  /** The admin domain's resolv.conf (the upstream DNS of `nat` uplinks). */
  readonly hostResolvConf?: string;
}

type DnsPlan = NetvmPlan['dns'];

interface Node {
  readonly name: string;
  readonly qid: number;
  readonly ns: string;
  readonly provider: boolean;
  readonly ip: string;
  readonly dns: DnsPlan;
  readonly serveClients: boolean;
  /** The netvm this qube is linked to now. */
  linkedTo: Node | null;
  /** A provider: its table is in place and it takes clients. */
  ready: boolean;
  uplinkIf: string | null;
  hostUplink: HostUplink | null;
  nicDev: string | null;
  /** As a client: its prepared rules in its netvm's table, and the stored lines they came from. */
  rules: readonly ResolvedRule[] | 'block';
  rulesKey: string;
  /** Its rules name hostnames its netvm has not looked up yet (blocked until then). */
  needsLookup: boolean;
  /** Counts refreshes of its rules: only the latest one started is applied. */
  refreshSeq: number;
  /** The netvm the registry named when it was last linked or looked at (reconcile acts on changes). */
  wantedNetvm: string | null;
}

/** Most addresses kept per hostname of a rule. */
const MAX_ADDRS_PER_HOST = 32;

const ON = new Set(['1', 'true', 'True', 'yes']);

export class NetworkOrchestrator {
  readonly #d: OrchestratorDeps;
  readonly #run: NetRunner;
  readonly #tag: string;
  readonly #nodes = new Map<string, Node>();
  readonly #hostUplinks = new Map<string, HostUplink>();
  #queue: Promise<unknown> = Promise.resolve();
  /** Netvms a reconcile is starting (one start each). */
  readonly #starting = new Set<string>();
  #expiry: NodeJS.Timeout | undefined;
  readonly #unsubscribe: () => void;

  constructor(deps: OrchestratorDeps) {
    this.#d = deps;
    this.#run = deps.runner ?? new ProcessRunner();
    this.#tag = daemonTag(path.resolve(deps.dataDir));
    this.#unsubscribe = deps.registry.subscribe((e) => { this.#onEvent(e); });
  }

  /** Removes what a daemon of this data dir that died may have left: handles and its host table. */
  async init(): Promise<void> {
    const prefix = netnsName(this.#tag, '');
    let names: string[] = [];
    try {
      names = fs.readdirSync(NETNS_DIR).filter((n) => n.startsWith(prefix));
    } catch {
      // no /run/netns yet: nothing left
    }
    for (const ns of names) {
      this.#d.log.warn({ netns: ns }, 'removing a network namespace handle a previous daemon left');
      await this.#run.run(['ip', 'netns', 'del', ns]).catch((err: unknown) => { this.#warn('removing a leftover namespace handle', err); });
    }
    // Their uplinks' admin-domain ends go with the namespaces, but only when the kernel gets to it.
    for (const dev of ownInterfaces().filter((i) => i.startsWith(hostUplinkPrefix(this.#tag)))) {
      await this.#run.run(['ip', 'link', 'del', dev]).catch((err: unknown) => { this.#warn(`removing the leftover uplink ${dev}`, err); });
    }
    await this.#run.run(['nft', '-f', '-'], renderHostTable(hostTableName(this.#tag), hostUplinkPrefix(this.#tag), []));
    this.#scheduleExpiry();
  }

  close(): void {
    this.#unsubscribe();
    clearTimeout(this.#expiry);
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const job = this.#queue.then(fn, fn);
    this.#queue = job.catch(() => undefined);
    return job;
  }

  #warn(what: string, err: unknown): void {
    this.#d.log.warn({ err: err instanceof Error ? err.message : String(err) }, `network: ${what} failed`);
  }

  // ---------- what a starting qube gets ----------

  /** The hooks of a qube about to start (every qube but dom0 gets its namespace prepared). */
  hooksFor(q: QubeRecord): NetworkHooks | undefined {
    if (q.klass === 'AdminVM') return undefined;
    const s = this.#d.registry.state;
    const provider = boolValue(s, q, 'provides_network');
    const top = provider && refValue(s, q, 'netvm') === null;
    let dns: DnsPlan = 'forward';
    let resolv = resolvConfText(VIRTUAL_DNS);
    if (top) {
      const upstream = this.#upstreamDns(q);
      dns = upstream.length > 0 ? upstream : 'self';
      resolv = resolvConfText(upstream.length > 0 ? upstream : ['127.0.0.1']);
    }
    let released = false;
    return {
      resolvConf: resolv,
      attach: async (pid, signal) => {
        // The queue may hold this a while: make sure the pid is still the qube's init then.
        const started = procStat(pid)?.start;
        await this.#serial(() => this.#attach(q, pid, started, dns, signal));
        this.#lookUpPending();
      },
      release: async () => {
        if (released) return;
        released = true;
        await this.#serial(() => this.#release(q.name)).catch((err: unknown) => { this.#warn(`releasing the network of '${q.name}'`, err); });
      },
    };
  }

  /** DNS servers of a top netvm: its `net.uplink-dns` feature, else (nat) the host's. */
  #upstreamDns(q: QubeRecord): string[] {
    const s = this.#d.registry.state;
    const feature = featureWithTemplate(s, q, 'net.uplink-dns');
    if (feature !== undefined) {
      const list = feature.split(/[\s,]+/).filter((x) => x !== '');
      for (const ip of list) {
        if (!net.isIPv4(ip)) throw new QubesError('QubesValueError', `net.uplink-dns of '${q.name}' must list IPv4 addresses, not '${ip}'`);
      }
      return list.slice(0, 3);
    }
    if (featureWithTemplate(s, q, 'net.uplink') !== 'nat') return [];
    try {
      return resolvConfServers(fs.readFileSync(this.#d.hostResolvConf ?? '/etc/resolv.conf', 'utf8'));
    } catch {
      return [];
    }
  }

  async #attach(startingQ: QubeRecord, pid: number, started: string | undefined, dns: DnsPlan, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const gone = (): boolean => started === undefined || procStat(pid)?.start !== started;
    if (gone()) throw new Error(`the qube's init (pid ${pid}) is gone`);
    const s = this.#d.registry.state;
    // The registry as it is now (its netvm may have changed since the start began).
    const q = s.qubes.get(startingQ.name);
    if (q?.uuid !== startingQ.uuid) throw new Error(`'${startingQ.name}' is no longer in the registry`);
    const provider = boolValue(s, q, 'provides_network');
    const node: Node = {
      name: q.name, qid: q.qid, ns: netnsName(this.#tag, q.uuid), provider,
      ip: addressFor(q.qid, q.klass === 'DispVM'), dns,
      serveClients: provider && ON.has(featureWithTemplate(s, q, 'net.serve-clients') ?? ''),
      linkedTo: null, ready: false, uplinkIf: null, hostUplink: null, nicDev: null, rules: [], rulesKey: '', needsLookup: false,
      refreshSeq: 0, wantedNetvm: refValue(s, q, 'netvm'),
    };
    if (fs.existsSync(path.join(NETNS_DIR, node.ns))) await this.#run.run(['ip', 'netns', 'del', node.ns]);
    await this.#run.run(['ip', 'netns', 'attach', node.ns, String(pid)]);
    if (gone()) {
      // The pid was reused between the check and the handle: never touch that namespace.
      await this.#run.run(['ip', 'netns', 'del', node.ns]).catch(() => undefined);
      throw new Error(`the qube's init (pid ${pid}) is gone`);
    }
    this.#nodes.set(node.name, node);
    const sysctls = [
      'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1',
      'net.ipv4.ping_group_range=0 2147483647', `net.ipv4.ip_forward=${provider ? 1 : 0}`,
    ];
    await this.#run.run(['nsenter', `--net=${path.join(NETNS_DIR, node.ns)}`, 'sysctl', '-q', '-w', ...sysctls]);
    await this.#run.run(['ip', '-n', node.ns, 'link', 'set', 'lo', 'up']);
    if (provider) {
      if (refValue(s, q, 'netvm') === null) await this.#setUpUplink(node, q);
      else node.uplinkIf = CLIENT_IF;
      // The running qubes waiting for this netvm, then its table once, with them in it.
      const waiting = [...this.#nodes.values()].filter((c) => c.linkedTo === null && c !== node && this.#netvmOf(c.name) === node.name);
      for (const c of waiting) {
        await this.#link(c, node, false).catch((err: unknown) => { this.#warn(`connecting '${c.name}' to '${node.name}'`, err); });
      }
      await this.#applyTable(node);
      node.ready = true;
    }
    signal.throwIfAborted();
    const netvm = refValue(s, q, 'netvm');
    const upstream = netvm === null ? undefined : this.#nodes.get(netvm);
    if (upstream?.ready === true) await this.#link(node, upstream, true);
  }

  #netvmOf(name: string): string | null {
    const q = this.#d.registry.state.qubes.get(name);
    return q === undefined ? null : refValue(this.#d.registry.state, q, 'netvm');
  }

  async #setUpUplink(node: Node, q: QubeRecord): Promise<void> {
    const s = this.#d.registry.state;
    const mode = featureWithTemplate(s, q, 'net.uplink') ?? '';
    const nsPath = node.ns;
    if (mode === '' || mode === 'none') return;
    if (mode === 'nat') {
      const hostIf = hostUplinkName(this.#tag, node.qid);
      const a = uplinkAddresses(this.#tag, node.qid);
      if (ownInterfaces().includes(hostIf)) await this.#run.run(['ip', 'link', 'del', hostIf]);
      await this.#run.run(['ip', '-b', '-'], [
        `link add ${hostIf} type veth peer name ${CLIENT_IF} netns ${nsPath}`,
        `addr add ${a.host}/30 dev ${hostIf}`,
        `link set ${hostIf} up`,
      ].join('\n'));
      // Recorded at once: a failure below still gets this end removed at release.
      node.hostUplink = { hostIf, netvmAddr: a.netvm };
      await this.#run.run(['ip', '-n', nsPath, '-b', '-'], [
        `link set ${CLIENT_IF} up`,
        `addr add ${a.netvm}/30 dev ${CLIENT_IF}`,
        `route add default via ${a.host} dev ${CLIENT_IF}`,
      ].join('\n'));
      node.uplinkIf = CLIENT_IF;
      this.#hostUplinks.set(node.name, node.hostUplink);
      // The admin domain forwards for its nat uplinks (its table keeps everything else out).
      fs.writeFileSync('/proc/sys/net/ipv4/ip_forward', '1');
      await this.#applyHostTable();
      return;
    }
    if (mode === 'nic') {
      const dev = featureWithTemplate(s, q, 'net.uplink-dev') ?? '';
      if (!isInterfaceName(dev)) throw new Error(`the 'nic' uplink of '${q.name}' needs the feature net.uplink-dev (an interface name), not '${dev}'`);
      const addrText = featureWithTemplate(s, q, 'net.uplink-address') ?? '';
      const addr = parseIpv4Cidr(addrText);
      if (addr === undefined) throw new Error(`the 'nic' uplink of '${q.name}' needs the feature net.uplink-address (A.B.C.D/N), not '${addrText}'`);
      const gw = featureWithTemplate(s, q, 'net.uplink-gateway');
      if (gw !== undefined && !net.isIPv4(gw)) throw new Error(`net.uplink-gateway of '${q.name}' must be an IPv4 address, not '${gw}'`);
      if (!ownInterfaces().includes(dev)) throw new Error(`the interface '${dev}' (net.uplink-dev of '${q.name}') does not exist in the admin domain`);
      await this.#run.run(['ip', 'link', 'set', dev, 'netns', nsPath]);
      node.nicDev = dev;
      node.uplinkIf = dev;
      const batch = [`link set ${dev} up`, `addr add ${addr.addr}/${addr.prefix} dev ${dev}`];
      if (gw !== undefined) batch.push(`route add default via ${gw} dev ${dev}`);
      await this.#run.run(['ip', '-n', nsPath, '-b', '-'], batch.join('\n'));
      return;
    }
    throw new Error(`net.uplink of '${q.name}' must be 'nat' or 'nic', not '${mode}'`);
  }

  async #applyHostTable(): Promise<void> {
    await this.#run.run(['nft', '-f', '-'], renderHostTable(hostTableName(this.#tag), hostUplinkPrefix(this.#tag), [...this.#hostUplinks.values()]));
  }

  /** Connects client `c` to netvm `n` (both attached); `apply`: update n's table now. */
  async #link(c: Node, n: Node, apply: boolean): Promise<void> {
    const vif = vifName(c.qid);
    await this.#run.run(['ip', '-n', n.ns, '-b', '-'], [
      `link add ${vif} type veth peer name ${CLIENT_IF} netns ${c.ns}`,
      `link set ${vif} up`,
      `addr add ${n.ip}/32 dev ${vif}`,
      `route add ${c.ip}/32 dev ${vif}`,
    ].join('\n'));
    try {
      await this.#run.run(['ip', '-n', c.ns, '-b', '-'], [
        `link set ${CLIENT_IF} address ${QUBE_MAC}`,
        `link set ${CLIENT_IF} up`,
        `addr add ${c.ip}/32 dev ${CLIENT_IF}`,
        `route add ${n.ip}/32 dev ${CLIENT_IF}`,
        `route add default via ${n.ip} dev ${CLIENT_IF}`,
      ].join('\n'));
      c.linkedTo = n;
      this.#rulesBeforeLookup(c);
      if (apply) await this.#applyTable(n);
    } catch (err) {
      c.linkedTo = null;
      await this.#run.run(['ip', '-n', n.ns, 'link', 'del', vif]).catch(() => undefined);
      throw err;
    }
  }

  async #unlink(c: Node): Promise<void> {
    const n = c.linkedTo;
    if (n === null) return;
    c.linkedTo = null;
    // The client's end goes with it, and with that its address and routes.
    await this.#run.run(['ip', '-n', n.ns, 'link', 'del', vifName(c.qid)]).catch((err: unknown) => { this.#warn(`disconnecting '${c.name}'`, err); });
    await this.#applyTable(n).catch((err: unknown) => { this.#warn(`updating the table of '${n.name}'`, err); });
  }

  async #release(name: string): Promise<void> {
    const node = this.#nodes.get(name);
    if (node === undefined) return;
    this.#nodes.delete(name);
    node.ready = false;
    const n = node.linkedTo;
    node.linkedTo = null;
    try {
      if (node.provider) {
        // Its clients keep running without network until it is back (their ends are removed now,
        // not whenever the kernel gets to this namespace, so a quick restart can link them again).
        for (const c of this.#nodes.values()) {
          if (c.linkedTo !== node) continue;
          c.linkedTo = null;
          await this.#run.run(['ip', '-n', c.ns, 'link', 'del', CLIENT_IF]).catch((err: unknown) => { this.#warn(`disconnecting '${c.name}'`, err); });
        }
        if (node.nicDev !== null) {
          // A physical interface would fall back to the host's first namespace: bring it home.
          await this.#run.run(['ip', '-n', node.ns, 'link', 'set', node.nicDev, 'netns', String(process.pid)])
            .catch((err: unknown) => { this.#warn(`returning ${node.nicDev ?? ''} to the admin domain`, err); });
        }
      }
      // A namespace is destroyed asynchronously by the kernel, and its veths with it: the links
      // are deleted here first, so nothing dangles (a restart could not recreate `vif<qid>`).
      if (n !== null && this.#nodes.get(n.name) === n) {
        await this.#run.run(['ip', '-n', n.ns, 'link', 'del', vifName(node.qid)]).catch((err: unknown) => { this.#warn(`removing the link of '${name}'`, err); });
      }
      if (node.hostUplink !== null) {
        await this.#run.run(['ip', 'link', 'del', node.hostUplink.hostIf]).catch((err: unknown) => { this.#warn(`removing the uplink of '${name}'`, err); });
      }
    } finally {
      // Each step on its own: one failing never keeps the others from running.
      await this.#run.run(['ip', 'netns', 'del', node.ns]).catch((err: unknown) => { this.#warn(`removing the namespace handle of '${name}'`, err); });
      if (node.hostUplink !== null) {
        this.#hostUplinks.delete(node.name);
        await this.#applyHostTable().catch((err: unknown) => { this.#warn('updating the admin domain\'s table', err); });
      }
      if (n !== null && this.#nodes.get(n.name) === n) await this.#applyTable(n).catch((err: unknown) => { this.#warn(`updating the table of '${n.name}'`, err); });
    }
  }

  // ---------- firewall ----------

  /**
   * A client's stored rules as they can be used at once: a list naming hostnames stays blocked
   * (fail closed) until its netvm has looked them up (#lookUpPending, outside the queue).
   */
  #rulesBeforeLookup(c: Node): void {
    const rules = this.#activeRules(c.name);
    c.rulesKey = rulesKey(rules);
    c.needsLookup = rules.some((r) => r.host?.type === 'dsthost');
    c.rules = c.needsLookup ? 'block' : rules.map((rule) => ({ rule }));
  }

  #activeRules(name: string): FirewallRule[] {
    const now = Math.floor(Date.now() / 1000);
    return this.#d.registry.firewallRules(name, now);
  }

  /** Looks up (in each netvm, outside the queue) what blocked clients wait for, then applies. */
  #lookUpPending(): void {
    for (const c of this.#nodes.values()) {
      if (c.needsLookup && c.linkedTo !== null) void this.#refresh(c.name, false);
    }
  }

  /**
   * Applies a client's stored rules again, hostnames looked up anew. `strict`: a failed lookup
   * or apply is thrown and the old rules stay; otherwise the client is blocked (fail closed).
   */
  async #refresh(name: string, strict: boolean, candidate?: readonly FirewallRule[]): Promise<void> {
    const c = this.#nodes.get(name);
    const n = c?.linkedTo;
    if (c === undefined || n === null || n === undefined) return;
    const rules = candidate ?? this.#activeRules(name);
    const seq = ++c.refreshSeq;
    let resolved: ResolvedRule[] | 'block';
    try {
      resolved = await this.#resolve(n, rules);
    } catch (err) {
      if (strict) throw err;
      this.#warn(`looking up the hostnames of '${name}' in '${n.name}' (its traffic stays blocked)`, err);
      resolved = 'block';
    }
    await this.#serial(async () => {
      // Linked elsewhere (or gone) meanwhile: that link made its own rules.
      if (this.#nodes.get(name) !== c || c.linkedTo !== n) return;
      if (!strict) {
        // A later refresh was started (it applies), or the stored rules changed since the lookup
        // (their change brings its own refresh): this result is stale.
        if (c.refreshSeq !== seq) return;
        if (candidate === undefined && rulesKey(this.#activeRules(name)) !== rulesKey(rules)) return;
      }
      const before = { rules: c.rules, key: c.rulesKey, needsLookup: c.needsLookup };
      c.rules = resolved;
      c.rulesKey = rulesKey(rules);
      c.needsLookup = resolved === 'block' && rules.some((r) => r.host?.type === 'dsthost');
      try {
        await this.#applyTable(n);
      } catch (err) {
        if (strict) {
          Object.assign(c, { rules: before.rules, rulesKey: before.key, needsLookup: before.needsLookup });
          throw new QubesError('QubesException', `Applying the firewall of '${name}' failed; the old rules stay: ${(err as Error).message}`);
        }
        this.#warn(`applying the firewall of '${name}' (blocking its traffic)`, err);
        c.rules = 'block';
        await this.#applyTable(n).catch((e: unknown) => { this.#warn(`blocking the traffic of '${name}'`, e); });
      }
    });
  }

  async #resolve(n: Node, rules: readonly FirewallRule[]): Promise<ResolvedRule[]> {
    const hosts = [...new Set(rules.flatMap((r) => (r.host?.type === 'dsthost' ? [r.host.name] : [])))];
    let found = new Map<string, { v4: string[]; v6: string[] }>();
    if (hosts.length > 0) {
      const untrusted = await this.#d.lookupIn(n.name, hosts);
      found = parseLookup(untrusted, hosts);
      const missing = hosts.filter((h) => (found.get(h)?.v4.length ?? 0) + (found.get(h)?.v6.length ?? 0) === 0);
      if (missing.length > 0) throw new QubesError('QubesException', `'${n.name}' cannot resolve: ${missing.join(', ')}`);
    }
    return rules.map((rule) => {
      if (rule.host?.type !== 'dsthost') return { rule };
      const f = found.get(rule.host.name);
      return { rule, addrs4: f?.v4 ?? [], addrs6: f?.v6 ?? [] };
    });
  }

  async #applyTable(n: Node): Promise<void> {
    // A netvm already released has no table left to change.
    if (this.#nodes.get(n.name) !== n) return;
    const clients: ClientPlan[] = [...this.#nodes.values()]
      .filter((c) => c.linkedTo === n)
      .sort((a, b) => a.qid - b.qid)
      .map((c) => ({ qid: c.qid, ip: c.ip, vif: vifName(c.qid), rules: c.rules }));
    const plan: NetvmPlan = { self: n.ip, uplink: n.uplinkIf, dns: n.dns, serveClients: n.serveClients, clients };
    await this.#run.run(['nsenter', `--net=${path.join(NETNS_DIR, n.ns)}`, 'nft', '-f', '-'], renderNetvmTable(plan));
  }

  /**
   * Applies a new rule list of a qube before it is stored: hostnames are looked up by its netvm
   * and the netvm's table is replaced in one transaction. Any failure leaves the old rules in force.
   */
  applyFirewall(name: string, rules: readonly FirewallRule[]): Promise<void> {
    const now = Math.floor(Date.now() / 1000);
    return this.#refresh(name, true, rules.filter((r) => ruleActive(r, now)));
  }

  /** admin.vm.firewall.Reload: hostnames looked up again, the table rebuilt. */
  reload(name: string): Promise<void> {
    return this.#refresh(name, true);
  }

  /** Puts the stored rules in force again, or blocks the qube if that fails (never more open). */
  restore(name: string): Promise<void> {
    return this.#refresh(name, false);
  }

  /**
   * Qubes refuses to move a running qube onto a halted netvm. `running`: not Halted (a starting
   * or paused qube counts as running).
   */
  checkNetvmChange(q: QubeRecord, running: (name: string) => boolean, newNetvm: string): void {
    if (!running(q.name)) return;
    if (boolValue(this.#d.registry.state, q, 'provides_network') && (refValue(this.#d.registry.state, q, 'netvm') ?? '') !== newNetvm) {
      // Its uplink (or its link upstream) is made when it starts.
      throw new QubesError('QubesVMNotHaltedError', `Cannot change the netvm of a running netvm: '${q.name}'; shut it down first`);
    }
    if (newNetvm === '' || running(newNetvm)) return;
    throw new QubesError('QubesVMNotStartedError', `Cannot dynamically attach to stopped NetVM: '${newNetvm}'`);
  }

  #onEvent(e: RegistryEvent): void {
    if (e.event === 'firewall-changed') {
      this.#scheduleExpiry();
      const c = this.#nodes.get(e.subject);
      if (c?.linkedTo == null) return;
      if (rulesKey(this.#activeRules(c.name)) === c.rulesKey) return;
      void this.#refresh(c.name, false);
      return;
    }
    if (e.event === 'domain-start' || e.event === 'domain-unpaused') {
      // A netvm that just became Running can look up its clients' hostnames now.
      this.#lookUpPending();
      return;
    }
    const prop = /^property-(?:set|reset):(.+)$/.exec(e.event)?.[1];
    if (prop === 'netvm' || prop === 'default_netvm' || prop === 'provides_network' || prop === 'template' || prop === 'name') {
      this.reconcile().catch((err: unknown) => { this.#warn('re-attaching qubes', err); });
    }
  }

  /** Brings running qubes onto the netvm the registry now says (live netvm change). */
  reconcile(): Promise<void> {
    const toStart = new Set<string>();
    const job = this.#serial(async () => {
      for (const c of [...this.#nodes.values()]) {
        if (!this.#nodes.has(c.name)) continue;
        const want = this.#netvmOf(c.name);
        if (want === (c.linkedTo?.name ?? null)) {
          c.wantedNetvm = want;
          continue;
        }
        // Unchanged in the registry: a netvm the user stopped is not started again behind their back.
        const changed = want !== c.wantedNetvm;
        c.wantedNetvm = want;
        await this.#unlink(c);
        if (want === null) continue;
        const n = this.#nodes.get(want);
        if (n?.ready === true) await this.#link(c, n, true).catch((err: unknown) => { this.#warn(`connecting '${c.name}' to '${want}'`, err); });
        else if (n === undefined && changed) toStart.add(want);
      }
    });
    return job.then(() => {
      this.#lookUpPending();
      // Outside the queue: the netvm's own attach links its waiting clients.
      for (const name of toStart) {
        if (this.#starting.has(name)) continue;
        this.#starting.add(name);
        void this.#d.start(name)
          .catch((err: unknown) => { this.#warn(`starting the netvm '${name}'`, err); })
          .finally(() => this.#starting.delete(name));
      }
    });
  }

  // ---------- expiry ----------

  #scheduleExpiry(): void {
    clearTimeout(this.#expiry);
    const now = Math.floor(Date.now() / 1000);
    let next = Infinity;
    for (const q of this.#d.registry.state.qubes.values()) {
      for (const r of parseRules(q.firewall)) if (r.expire !== undefined && r.expire > now) next = Math.min(next, r.expire);
    }
    if (next === Infinity) return;
    const delayMs = Math.min(Math.max(0, (next - now) * 1000 + 50), 0x7fffffff);
    this.#expiry = setTimeout(() => {
      const at = Math.floor(Date.now() / 1000);
      for (const q of [...this.#d.registry.state.qubes.values()]) {
        try {
          this.#d.registry.firewallDropExpired(q.name, at);
        } catch (err) {
          this.#warn(`removing expired firewall rules of '${q.name}'`, err);
        }
      }
      this.#scheduleExpiry();
    }, delayMs);
    this.#expiry.unref();
  }

  // ---------- introspection (tests, qvm-ls) ----------

  /** Which netvm a running qube is linked to now (null: none). */
  linkedTo(name: string): string | null {
    return this.#nodes.get(name)?.linkedTo?.name ?? null;
  }
}

/** Identifies a rule list (expired rules already left out by the caller). */
function rulesKey(rules: readonly FirewallRule[]): string {
  return rules.map(formatRule).join('\n');
}

/** Interfaces of the admin domain's (this process's) network namespace. */
function ownInterfaces(): string[] {
  try {
    return fs.readFileSync('/proc/self/net/dev', 'utf8').split('\n').slice(2)
      .map((l) => l.split(':')[0]?.trim() ?? '').filter((n) => n !== '');
  } catch {
    return [];
  }
}

/**
 * Parses the netvm's lookup output: `@ NAME` heads a block; each following line starts with an
 * address. Anything else is ignored; only the asked names count, each capped.
 */
export function parseLookup(untrusted: Buffer, hosts: readonly string[]): Map<string, { v4: string[]; v6: string[] }> {
  const out = new Map<string, { v4: string[]; v6: string[] }>();
  const wanted = new Set(hosts);
  let cur: { v4: string[]; v6: string[] } | undefined;
  for (const line of untrusted.toString('latin1').split('\n')) {
    const head = /^@ (\S+)$/.exec(line);
    if (head) {
      const name = head[1] ?? '';
      cur = undefined;
      if (wanted.has(name)) {
        cur = out.get(name) ?? { v4: [], v6: [] };
        out.set(name, cur);
      }
      continue;
    }
    if (cur === undefined) continue;
    // Plain addresses only (no zone index), in canonical form: they go into nftables text.
    const addr = canonicalAddress(line.split(/\s+/)[0] ?? '');
    if (addr === undefined) continue;
    const list = addr.includes(':') ? cur.v6 : cur.v4;
    if (!list.includes(addr) && list.length < MAX_ADDRS_PER_HOST) list.push(addr);
  }
  return out;
}
