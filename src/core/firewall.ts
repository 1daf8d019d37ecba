// Qubes firewall rules (pure): parsing of untrusted rule lines (admin.vm.firewall.Set payloads,
// qvm-firewall words, the stored list) and their canonical form, as Qubes' server writes it:
//   action [expire] [dst4|dst6|dsthost] [proto] [specialtarget] [dstports] [icmptype] [comment]
// Rules are checked in full before anything is stored; every value that later reaches nftables
// is one of: a keyword, digits, a canonical IPv4/IPv6 network, or a lowercase hostname.
import net from 'node:net';
import { QubesError } from './errors.js';

export type FirewallAction = 'accept' | 'drop';
export type FirewallProto = 'tcp' | 'udp' | 'icmp';

export type FirewallHost =
  | { readonly type: 'dst4'; readonly addr: string; readonly prefix: number }
  | { readonly type: 'dst6'; readonly addr: string; readonly prefix: number }
  | { readonly type: 'dsthost'; readonly name: string };

export interface FirewallRule {
  readonly action: FirewallAction;
  /** UNIX time (seconds) after which the rule no longer exists. */
  readonly expire?: number;
  readonly host?: FirewallHost;
  readonly proto?: FirewallProto;
  readonly specialtarget?: 'dns';
  readonly dstports?: readonly [number, number];
  readonly icmptype?: number;
  readonly comment?: string;
}

/** The list of a qube that never had rules set: accept everything (Qubes' default). */
export const DEFAULT_FIREWALL: readonly string[] = ['action=accept'];
/** Rules per qube: far above any real list, and it bounds a Set payload's work. */
export const MAX_FIREWALL_RULES = 4096;
/** Longest hostname (DNS limit). */
const MAX_HOSTNAME = 253;
const MAX_COMMENT = 512;
const MAX_EXPIRE = 2 ** 40;

export function firewallError(message: string): QubesError {
  return new QubesError('QubesValueError', message);
}

const VALUE_CHARS = /^[A-Za-z0-9:;,./_[\]-]*$/;
const COMMENT_CHARS = /^[A-Za-z0-9:;,./_[\] -]*$/;
/** Starts with a letter or digit: never read as an option by the netvm's lookup. */
const HOSTNAME = /^[a-z0-9][a-z0-9._-]*$/;
const KEYS = new Set(['action', 'expire', 'dst4', 'dst6', 'dsthost', 'dstname', 'proto', 'specialtarget', 'dstports', 'icmptype']);

function parseDecimal(untrusted: string, what: string): number {
  if (!/^[0-9]{1,15}$/.test(untrusted)) throw firewallError(`Invalid ${what}: '${untrusted}' (expected a decimal number)`);
  return Number(untrusted);
}

/** An IP host with optional prefix, or a hostname, in Qubes' dsthost rules. */
export function parseHost(untrustedKey: string, untrusted: string): FirewallHost {
  if (untrusted === '') throw firewallError(`Empty ${untrustedKey}`);
  const parts = untrusted.split('/');
  if (parts.length > 2) throw firewallError(`Too many /: ${untrusted}`);
  const [addr = '', prefixText] = parts;
  const family = net.isIP(addr);
  if (prefixText === undefined && family === 0) {
    if (untrustedKey === 'dst4' || untrustedKey === 'dst6') throw firewallError(`Invalid IP address: ${untrusted}`);
    if (addr.length > MAX_HOSTNAME || !HOSTNAME.test(addr) || !/[a-z0-9]/.test(addr)) {
      throw firewallError(`Invalid hostname: '${untrusted}' (lowercase letters, digits, '.', '-' and '_' only)`);
    }
    return { type: 'dsthost', name: addr };
  }
  if (family === 0) throw firewallError(`Invalid IP address: ${addr}`);
  if (untrustedKey === 'dst4' && family !== 4) throw firewallError(`Not an IPv4 address: ${untrusted}`);
  if (untrustedKey === 'dst6' && family !== 6) throw firewallError(`Not an IPv6 address: ${untrusted}`);
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (prefixText !== undefined) {
    if (!/^[0-9]{1,3}$/.test(prefixText)) throw firewallError(`Invalid netmask: '${prefixText}' (must be a non-negative number)`);
    prefix = Number(prefixText);
    if (prefix > max) throw firewallError(`netmask for IPv${family} must be <= ${max}`);
  }
  // nftables refuses a network with host bits set: keep the network address only.
  const network = maskAddress(addr, family === 4 ? 4 : 6, prefix);
  return family === 4 ? { type: 'dst4', addr: network, prefix } : { type: 'dst6', addr: network, prefix };
}

/**
 * The canonical text of a plain IP address (IPv4 dotted quad; IPv6 compressed lowercase hex
 * groups, never an embedded IPv4 tail, which nft cannot parse in most forms), or undefined.
 */
export function canonicalAddress(untrusted: string): string | undefined {
  const family = /^[0-9A-Fa-f:.]{2,45}$/.test(untrusted) ? net.isIP(untrusted) : 0;
  if (family === 0) return undefined;
  return family === 4 ? maskAddress(untrusted, 4, 32) : maskAddress(untrusted, 6, 128);
}

function maskAddress(addr: string, family: 4 | 6, prefix: number): string {
  if (family === 4) {
    const n = addr.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
    const mask = prefix === 0 ? 0n : ((1n << 32n) - 1n) ^ ((1n << BigInt(32 - prefix)) - 1n);
    const m = n & mask;
    return [24n, 16n, 8n, 0n].map((sh) => String((m >> sh) & 255n)).join('.');
  }
  const groups = expandIpv6(addr);
  const n = groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
  const all = (1n << 128n) - 1n;
  const mask = prefix === 0 ? 0n : all ^ ((1n << BigInt(128 - prefix)) - 1n);
  const m = n & mask;
  const out: string[] = [];
  for (let i = 7; i >= 0; i--) out.push(((m >> BigInt(i * 16)) & 0xffffn).toString(16));
  return compressIpv6(out);
}

function expandIpv6(addr: string): number[] {
  let text = addr;
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const fill = tail === undefined ? [] : new Array<string>(8 - h.length - t.length).fill('0');
  return [...h, ...fill, ...t].map((g) => parseInt(g, 16));
}

function compressIpv6(groups: string[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

function parsePorts(untrusted: string): readonly [number, number] {
  const parts = untrusted.split('-');
  if (parts.length > 2) throw firewallError(`Invalid port range: '${untrusted}'`);
  const lo = parseDecimal(parts[0] ?? '', 'port');
  const hi = parts.length === 2 ? parseDecimal(parts[1] ?? '', 'port') : lo;
  if (lo > 65535 || hi > 65535) throw firewallError(`Ports out of range: '${untrusted}' (0-65535)`);
  if (lo > hi) throw firewallError(`Invalid port range: '${untrusted}'`);
  return [lo, hi];
}

/**
 * Parses one rule line (`key=value` words separated by spaces; everything after the first
 * `comment=` is the comment). Throws QubesValueError naming what is wrong.
 */
export function parseRule(untrustedLine: string): FirewallRule {
  let line = untrustedLine;
  let comment: string | undefined;
  const at = line.search(/(^| )comment=/);
  if (at >= 0) {
    const start = line.indexOf('comment=', at);
    comment = line.slice(start + 'comment='.length);
    line = line.slice(0, start);
    if (comment.length > MAX_COMMENT) throw firewallError(`Comment too long (at most ${MAX_COMMENT} characters)`);
    if (!COMMENT_CHARS.test(comment)) throw firewallError("strange characters in comment (letters, digits, spaces and ':;,./-_[]' only)");
  }
  const seen = new Map<string, string>();
  for (const word of line.split(' ')) {
    if (word === '') continue;
    const eq = word.indexOf('=');
    if (eq <= 0) throw firewallError(`Invalid rule element: '${word}' (expected key=value)`);
    const key = word.slice(0, eq);
    const value = word.slice(eq + 1);
    if (!KEYS.has(key)) throw firewallError(`Unknown firewall option: '${key}'`);
    if (!VALUE_CHARS.test(value)) throw firewallError(`strange characters in rule: '${word}'`);
    const slot = key === 'dst4' || key === 'dst6' || key === 'dstname' ? 'dsthost' : key;
    if (seen.has(slot)) throw firewallError(`Option '${slot}' already set`);
    seen.set(slot, `${key}=${value}`);
  }
  const get = (k: string): [string, string] | undefined => {
    const kv = seen.get(k);
    if (kv === undefined) return undefined;
    const eq = kv.indexOf('=');
    return [kv.slice(0, eq), kv.slice(eq + 1)];
  };
  const action = get('action')?.[1];
  if (action === undefined) throw firewallError('Missing action= (accept or drop)');
  if (action !== 'accept' && action !== 'drop') throw firewallError(`Invalid action: '${action}' (accept or drop)`);
  const rule: { -readonly [K in keyof FirewallRule]: FirewallRule[K] } = { action };
  const expire = get('expire')?.[1];
  if (expire !== undefined) {
    rule.expire = parseDecimal(expire, 'expire');
    if (rule.expire > MAX_EXPIRE) throw firewallError(`Invalid expire: '${expire}' (too far in the future)`);
  }
  const host = get('dsthost');
  if (host !== undefined) rule.host = parseHost(host[0], host[1]);
  const proto = get('proto')?.[1];
  if (proto !== undefined) {
    if (proto !== 'tcp' && proto !== 'udp' && proto !== 'icmp') throw firewallError(`Invalid proto: '${proto}' (tcp, udp or icmp)`);
    rule.proto = proto;
  }
  const special = get('specialtarget')?.[1];
  if (special !== undefined) {
    if (special !== 'dns') throw firewallError(`Invalid specialtarget: '${special}' (only dns)`);
    rule.specialtarget = 'dns';
  }
  const ports = get('dstports')?.[1];
  if (ports !== undefined) {
    if (proto !== 'tcp' && proto !== 'udp') throw firewallError("dstports valid only for 'tcp' and 'udp' protocols");
    rule.dstports = parsePorts(ports);
  }
  const icmp = get('icmptype')?.[1];
  if (icmp !== undefined) {
    if (proto !== 'icmp') throw firewallError("icmptype valid only for 'icmp' protocol");
    rule.icmptype = parseDecimal(icmp, 'icmptype');
    if (rule.icmptype > 255) throw firewallError(`ICMP type out of range: ${icmp} (0-255)`);
  }
  if (comment !== undefined) rule.comment = comment;
  return rule;
}

function hostText(h: FirewallHost): string {
  return h.type === 'dsthost' ? `dsthost=${h.name}` : `${h.type}=${h.addr}/${h.prefix}`;
}

/** The canonical line (Qubes' server order; admin.vm.firewall.Get). */
export function formatRule(r: FirewallRule): string {
  const words = [`action=${r.action}`];
  if (r.expire !== undefined) words.push(`expire=${r.expire}`);
  if (r.host) words.push(hostText(r.host));
  if (r.proto) words.push(`proto=${r.proto}`);
  if (r.specialtarget) words.push(`specialtarget=${r.specialtarget}`);
  if (r.dstports) words.push(`dstports=${r.dstports[0]}-${r.dstports[1]}`);
  if (r.icmptype !== undefined) words.push(`icmptype=${r.icmptype}`);
  if (r.comment !== undefined) words.push(`comment=${r.comment}`);
  return words.join(' ');
}

/** Parses a whole list (one rule per line); any bad line refuses the whole list. */
export function parseRules(untrustedLines: readonly string[]): FirewallRule[] {
  if (untrustedLines.length > MAX_FIREWALL_RULES) throw firewallError(`Too many firewall rules (at most ${MAX_FIREWALL_RULES})`);
  return untrustedLines.map((line, i) => {
    try {
      return parseRule(line);
    } catch (err) {
      if (err instanceof QubesError) throw firewallError(`Rule ${i + 1}: ${err.message}`);
      throw err;
    }
  });
}

/**
 * An admin.vm.firewall.Set payload: strict ASCII, one rule per line, each ending in a newline
 * (a final line without one is accepted). No blank lines.
 */
export function parseRulesPayload(untrusted: Buffer): FirewallRule[] {
  for (const b of untrusted) {
    if (b > 0x7e || (b < 0x20 && b !== 0x0a)) throw firewallError('Firewall rules must be printable ASCII, one rule per line');
  }
  const text = untrusted.toString('ascii');
  if (text === '') return [];
  const lines = text.endsWith('\n') ? text.slice(0, -1).split('\n') : text.split('\n');
  return parseRules(lines);
}

/** Whether the rule still exists at `nowSec`. */
export function ruleActive(r: FirewallRule, nowSec: number): boolean {
  return r.expire === undefined || r.expire > nowSec;
}
