// Names and addresses of the network plumbing, all derived from qids, uuids and the data dir,
// never from anything a qube or a client chose.
import crypto from 'node:crypto';
import net from 'node:net';

/** The network namespace handle of a running qube: /run/netns/bulkhead-<uuid>. */
export function netnsName(uuid: string): string {
  return `bulkhead-${uuid}`;
}

export const NETNS_DIR = '/run/netns';
export const NETNS_PREFIX = 'bulkhead-';

/** The netvm's end of a client's link (the client's end is always `eth0`). */
export function vifName(qid: number): string {
  return `vif${qid}`;
}

export const CLIENT_IF = 'eth0';

/** A short tag of the data dir, so several daemons on one host never share names. */
export function daemonTag(dataDir: string): string {
  return crypto.createHash('sha256').update(dataDir).digest('hex').slice(0, 5);
}

/** The admin domain's end of a `nat` uplink veth (at most 15 characters). */
export function hostUplinkName(tag: string, qid: number): string {
  return `bh${tag}-${qid}`;
}

export function hostUplinkPrefix(tag: string): string {
  return `bh${tag}-`;
}

export function hostTableName(tag: string): string {
  return `bulkhead_${tag}`;
}

/** The /30 of a `nat` uplink inside 10.136.0.0/16: host end .1, netvm end .2 (by qid). */
export function uplinkAddresses(qid: number): { host: string; netvm: string } {
  const base = qid * 4;
  const hi = (base >> 8) & 0xff;
  const lo = base & 0xff;
  return { host: `10.136.${hi}.${lo + 1}`, netvm: `10.136.${hi}.${lo + 2}` };
}

/** Interface names a qube feature may give (`net.uplink-dev`): what the kernel accepts, no wildcards. */
export function isInterfaceName(untrusted: string): boolean {
  return /^[A-Za-z0-9_.-]{1,15}$/.test(untrusted) && untrusted !== '.' && untrusted !== '..';
}

/** `a.b.c.d/n` with 0 < n ≤ 32. */
export function parseIpv4Cidr(untrusted: string): { addr: string; prefix: number } | undefined {
  const m = /^([0-9.]{7,15})\/([0-9]{1,2})$/.exec(untrusted);
  if (!m || !net.isIPv4(m[1] ?? '')) return undefined;
  const prefix = Number(m[2]);
  if (prefix < 1 || prefix > 32) return undefined;
  return { addr: m[1] ?? '', prefix };
}

/** Nameservers of a resolv.conf text: IPv4, not loopback (unreachable from a qube), at most 3. */
export function resolvConfServers(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    const ip = m?.[1];
    if (ip !== undefined && net.isIPv4(ip) && !ip.startsWith('127.') && !out.includes(ip)) out.push(ip);
  }
  return out.slice(0, 3);
}

export function resolvConfText(servers: readonly string[]): string {
  return `# Written by Bulkhead: DNS goes through this qube's netvm.\n${servers.map((s) => `nameserver ${s}`).join('\n')}\n`;
}
