// Names and addresses of the network plumbing, all derived from qids, uuids and the data dir,
// never from anything a qube or a client chose.
import crypto from 'node:crypto';
import net from 'node:net';

/**
 * The network namespace handle of a running qube: /run/netns/bulkhead-<tag>-<uuid> (the tag of
 * its daemon, so a daemon finds every handle it left, also of qubes no longer in its registry).
 */
export function netnsName(tag: string, uuid: string): string {
  return `${NETNS_PREFIX}${tag}-${uuid}`;
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

/** All `nat` uplink links (shared address space, RFC 6598): never routed from an uplink. */
export const UPLINK_SPACE = '100.64.0.0/10';

/**
 * The /30 of a `nat` uplink in 100.64.0.0/10: host end .1, netvm end .2, by the daemon's tag (6
 * bits: daemons side by side rarely share a block) and the qid (14 bits).
 */
export function uplinkAddresses(tag: string, qid: number): { host: string; netvm: string } {
  const block = parseInt(tag.slice(0, 2), 16) & 0x3f;
  const n = ((100 << 24) | ((64 + block) << 16)) + (qid & 0x3fff) * 4;
  const ip = (x: number): string => [24, 16, 8, 0].map((s) => String((x >>> s) & 255)).join('.');
  return { host: ip(n + 1), netvm: ip(n + 2) };
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
