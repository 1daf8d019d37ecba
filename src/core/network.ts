// Qubes' network addressing, derived from the registry alone (pure): every networked qube has
// 10.137.X.Y from its qid (disposables 10.138.X.Y), a /32 point-to-point link to its netvm whose
// own address is the gateway, and the virtual DNS servers 10.139.1.1 / 10.139.1.2, which the
// netvm redirects to its resolvers. `src/net/` turns this into interfaces and nftables.
import type { QubeRecord, RegistryState } from './model.js';

/** The virtual DNS servers every networked qube is given. */
export const VIRTUAL_DNS: readonly [string, string] = ['10.139.1.1', '10.139.1.2'];
/** Qubes' MAC of a qube's interface: every link is point-to-point, so all may share it. */
export const QUBE_MAC = '00:16:3e:5e:6c:00';
export const QUBE_NETMASK = '255.255.255.255';
/** Highest qid that still yields a distinct 10.137.X.Y address. */
export const MAX_NETWORK_QID = 0xffff;

/** 10.137.X.Y (10.138.X.Y for a disposable) with X.Y the qid's two low bytes. */
export function addressFor(qid: number, disposable: boolean): string {
  return `10.${disposable ? 138 : 137}.${(qid >> 8) & 0xff}.${qid & 0xff}`;
}

/** The feature on the qube or up its template chain (Qubes' check_with_template). */
export function featureWithTemplate(s: RegistryState, q: QubeRecord, feature: string): string | undefined {
  const seen = new Set<string>();
  let cur: QubeRecord | undefined = q;
  while (cur && !seen.has(cur.name)) {
    seen.add(cur.name);
    const v = cur.features.get(feature);
    if (v !== undefined) return v;
    const t = cur.props.get('template');
    cur = typeof t === 'string' ? s.qubes.get(t) : undefined;
  }
  return undefined;
}
