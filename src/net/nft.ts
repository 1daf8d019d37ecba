// nftables rule sets (pure text): the table each netvm's network namespace gets, and the admin
// domain's table for `nat` uplinks. Every table is replaced whole in one `nft -f` transaction
// (create-if-missing, delete, define), so a change applies atomically or not at all.
// Only validated values reach this text: keywords, digits, canonical addresses, interface names
// built from qids (src/core/firewall.ts, src/net/addresses.ts).
import { VIRTUAL_DNS } from '../core/network.js';
import { canonicalAddress, type FirewallRule } from '../core/firewall.js';
import { UPLINK_SPACE } from './addresses.js';

export const NETVM_TABLE = 'bulkhead';
/** The verdict for `action=drop` (as Qubes: refused at once, so connections fail fast). */
const REJECT = 'reject with icmpx type admin-prohibited';

/** A client rule with its hostname resolved (by the netvm) into addresses. */
export interface ResolvedRule {
  readonly rule: FirewallRule;
  /** For a `dsthost` rule: its IPv4 and IPv6 addresses (may be empty: matches nothing). */
  readonly addrs4?: readonly string[];
  readonly addrs6?: readonly string[];
}

export interface ClientPlan {
  readonly qid: number;
  readonly ip: string;
  readonly vif: string;
  /** Ordered rules; `block` when they could not be prepared (fail closed: nothing passes). */
  readonly rules: readonly ResolvedRule[] | 'block';
}

export interface NetvmPlan {
  /** The netvm's own address: its clients' gateway. */
  readonly self: string;
  /** The interface toward its own upstream (masqueraded), or null (no upstream). */
  readonly uplink: string | null;
  /**
   * Where the virtual DNS servers go: 'forward' (the upstream netvm redirects them), a list of
   * resolvers (DNAT to them), or 'self' (a resolver in the netvm itself).
   */
  readonly dns: 'forward' | 'self' | readonly string[];
  /** Clients may reach the netvm's own services (subject to their firewall), not only DNS. */
  readonly serveClients: boolean;
  readonly clients: readonly ClientPlan[];
}

const DNS_SET = `{ ${VIRTUAL_DNS.join(', ')} }`;
const DNS_MATCH = `ct original ip daddr ${DNS_SET} meta l4proto { tcp, udp } th dport 53`;

function set(values: readonly string[]): string {
  return values.length === 1 ? (values[0] ?? '') : `{ ${values.join(', ')} }`;
}

/**
 * Resolved addresses (a netvm's lookup: untrusted even once checked) in canonical text, once
 * each: nft refuses some valid IPv6 spellings (`1::1.2.3.4`, `0:0:0:0:0:0:1.2.3.4`).
 */
function addressSet(values: readonly string[], family: 4 | 6): string {
  const out = new Set<string>();
  for (const v of values) {
    const c = canonicalAddress(v);
    if (c === undefined || c.includes(':') !== (family === 6)) throw new Error(`not an IPv${family} address: ${JSON.stringify(v)}`);
    out.add(c);
  }
  return set([...out]);
}

/** One client rule as nft rule lines (several when a hostname has both families). */
export function renderRule(r: ResolvedRule): string[] {
  const { rule } = r;
  const verdict = rule.action === 'accept' ? 'accept' : REJECT;
  const tail: string[] = [];
  if (rule.proto !== undefined) tail.push(`meta l4proto ${rule.proto}`);
  if (rule.specialtarget === 'dns') {
    // The virtual DNS addresses as the qube asked for them (before the netvm's redirect).
    tail.push(`ct original ip daddr ${DNS_SET}`);
    if (rule.proto === undefined) tail.push('meta l4proto { tcp, udp }');
    if (rule.dstports === undefined) tail.push('th dport 53');
  }
  if (rule.dstports !== undefined) {
    const [lo, hi] = rule.dstports;
    tail.push(`th dport ${lo === hi ? String(lo) : `${lo}-${hi}`}`);
  }
  if (rule.icmptype !== undefined) tail.push(`icmp type ${rule.icmptype}`);
  // The kernel itself ends the rule on time (the registry forgets it a moment later).
  if (rule.expire !== undefined) tail.push(`meta time < ${rule.expire}`);
  const host = rule.host;
  // The virtual DNS addresses are IPv4: an IPv6 destination with `specialtarget=dns` matches
  // nothing (and nft refuses `ip6 daddr` next to `ct original ip daddr`), so it gets no line.
  const v6 = rule.specialtarget !== 'dns';
  const heads: string[] = [];
  if (host === undefined) heads.push('');
  else if (host.type === 'dst4') heads.push(`ip daddr ${host.addr}/${host.prefix} `);
  else if (host.type === 'dst6') {
    if (v6) heads.push(`ip6 daddr ${host.addr}/${host.prefix} `);
  } else {
    if (r.addrs4 !== undefined && r.addrs4.length > 0) heads.push(`ip daddr ${addressSet(r.addrs4, 4)} `);
    if (v6 && r.addrs6 !== undefined && r.addrs6.length > 0) heads.push(`ip6 daddr ${addressSet(r.addrs6, 6)} `);
  }
  const body = tail.join(' ');
  return heads.map((h) => `${h}${body}${body === '' ? '' : ' '}${verdict}`);
}

function clientChain(c: ClientPlan): string[] {
  const lines = [`\tchain bh_fw_${c.qid} {`];
  if (c.rules !== 'block') {
    for (const r of c.rules) for (const line of renderRule(r)) lines.push(`\t\t${line}`);
  }
  // Nothing matched: Qubes' policy is drop.
  lines.push('\t\tdrop', '\t}');
  return lines;
}

/** The whole table of one netvm, ready for `nft -f -` in its network namespace. */
export function renderNetvmTable(p: NetvmPlan): string {
  const t = NETVM_TABLE;
  const out: string[] = [`table inet ${t} {`, '}', `delete table inet ${t}`, `table inet ${t} {`];
  const fwMap = p.clients.map((c) => `"${c.vif}" : jump bh_fw_${c.qid}`);
  const spoof = p.clients.map((c) => `"${c.vif}" . ${c.ip}`);
  out.push('\tmap fw {', '\t\ttype ifname : verdict');
  if (fwMap.length > 0) out.push(`\t\telements = { ${fwMap.join(', ')} }`);
  out.push('\t}');
  out.push('\tset clients {', '\t\ttype ifname . ipv4_addr');
  if (spoof.length > 0) out.push(`\t\telements = { ${spoof.join(', ')} }`);
  out.push('\t}');
  // Anti-spoofing: a client sends only from its own address, and never IPv6.
  out.push(
    '\tchain bh_guard {',
    '\t\ttype filter hook prerouting priority raw; policy accept;',
    '\t\tiifname "vif*" meta nfproto ipv6 drop',
    '\t\tiifname "vif*" iifname . ip saddr != @clients drop',
    '\t}',
  );
  out.push('\tchain bh_dnat {', '\t\ttype nat hook prerouting priority dstnat; policy accept;');
  if (p.dns === 'self') {
    for (const v of VIRTUAL_DNS) out.push(`\t\tiifname "vif*" ip daddr ${v} meta l4proto { tcp, udp } th dport 53 dnat ip to ${p.self}`);
  } else if (p.dns !== 'forward' && p.dns.length > 0) {
    VIRTUAL_DNS.forEach((v, i) => {
      const to = p.dns[i % p.dns.length] ?? '';
      out.push(`\t\tiifname "vif*" ip daddr ${v} meta l4proto { tcp, udp } th dport 53 dnat ip to ${to}`);
    });
  }
  out.push('\t}');
  out.push(
    '\tchain bh_forward {',
    '\t\ttype filter hook forward priority filter; policy drop;',
    '\t\tct state invalid drop',
    '\t\tct state established,related accept',
    // No traffic between clients, none started from outside toward a client.
    '\t\toifname "vif*" drop',
    '\t\tiifname vmap @fw',
    '\t}',
  );
  // The netvm itself opens nothing toward its clients (only replies go back to them).
  out.push(
    '\tchain bh_output {',
    '\t\ttype filter hook output priority filter; policy accept;',
    '\t\toifname "vif*" ct state established,related accept',
    '\t\toifname "vif*" drop',
    '\t}',
  );
  out.push(
    '\tchain bh_input {',
    '\t\ttype filter hook input priority filter; policy drop;',
    '\t\tiif "lo" accept',
    '\t\tct state invalid drop',
    '\t\tct state established,related accept',
  );
  if (p.serveClients) out.push('\t\tiifname vmap @fw');
  else if (p.dns === 'self') out.push(`\t\tiifname "vif*" ${DNS_MATCH} iifname vmap @fw`);
  out.push('\t}');
  out.push('\tchain bh_snat {', '\t\ttype nat hook postrouting priority srcnat; policy accept;');
  if (p.uplink !== null) out.push(`\t\tiifname "vif*" oifname "${p.uplink}" masquerade`);
  out.push('\t}');
  for (const c of p.clients) out.push(...clientChain(c));
  out.push('}');
  return `${out.join('\n')}\n`;
}

/** A `nat` uplink: a veth from a top netvm into the admin domain. */
export interface HostUplink {
  readonly hostIf: string;
  /** The netvm's address on the link (the only source accepted from it). */
  readonly netvmAddr: string;
}

/**
 * The admin domain's table: what comes in through an uplink veth is only forwarded out
 * (masqueraded), never delivered to the admin domain itself, never to another uplink.
 */
export function renderHostTable(table: string, ifPrefix: string, uplinks: readonly HostUplink[]): string {
  const out: string[] = [`table inet ${table} {`, '}', `delete table inet ${table}`];
  if (uplinks.length === 0) return `${out.join('\n')}\n`;
  const wild = `"${ifPrefix}*"`;
  out.push(`table inet ${table} {`, '\tset uplinks {', '\t\ttype ifname . ipv4_addr');
  out.push(`\t\telements = { ${uplinks.map((u) => `"${u.hostIf}" . ${u.netvmAddr}`).join(', ')} }`, '\t}');
  out.push(
    '\tchain bh_input {',
    '\t\ttype filter hook input priority filter - 10; policy accept;',
    `\t\tiifname ${wild} ct state established,related accept`,
    `\t\tiifname ${wild} drop`,
    '\t}',
    '\tchain bh_forward {',
    '\t\ttype filter hook forward priority filter - 10; policy accept;',
    `\t\tiifname ${wild} meta nfproto ipv6 drop`,
    `\t\tiifname ${wild} iifname . ip saddr != @uplinks drop`,
    // Nothing the admin domain redirects (published container ports), no link-local services
    // (cloud metadata), no other uplink (of this daemon or another).
    `\t\tiifname ${wild} ct status dnat drop`,
    `\t\tiifname ${wild} ip daddr { 169.254.0.0/16, ${UPLINK_SPACE} } drop`,
    `\t\toifname ${wild} ct state established,related accept`,
    `\t\toifname ${wild} drop`,
    '\t}',
    '\tchain bh_snat {',
    '\t\ttype nat hook postrouting priority srcnat; policy accept;',
    `\t\tiifname ${wild} oifname != ${wild} masquerade`,
    '\t}',
    '}',
  );
  return `${out.join('\n')}\n`;
}
