// qvm-firewall: list, add, delete and reset a qube's firewall rules, with Qubes' syntax
// (`qvm-firewall [--raw] [--reload] VMNAME [list|add [--before N] RULE...|del [--rule-no N] [RULE...]|reset]`).
// Every change is one admin.vm.firewall.Get and one Set of the whole list.
import { formatRule, parseRule, type FirewallRule } from '../../core/firewall.js';
import { QubesError } from '../../core/errors.js';
import { ExitError, UsageError, errorLine, formatTable, out, parse, printHelp, requireDomains, runCommand, type Command } from '../common.js';
import type { AdminClient } from '../client.js';

const POSITIONAL_ORDER = ['action', 'dsthost', 'proto', 'dstports', 'icmptype'] as const;
const KEYS = new Set(['action', 'dsthost', 'proto', 'dstports', 'icmptype', 'specialtarget', 'comment', 'expire']);

/**
 * qvm-firewall's RULE words: `key=value`, or bare values filling action, dsthost, proto, dstports,
 * icmptype in that order; dst4/dst6 mean dsthost; `expire=+N` is N seconds from now.
 */
export function rulesFromWords(words: readonly string[], nowSec: number): FirewallRule {
  const kv = new Map<string, string>();
  const order: string[] = [...POSITIONAL_ORDER];
  for (const word of words) {
    const parts = word.split('=');
    let key: string;
    let value: string;
    if (parts.length === 1) {
      const next = order.find((k) => !kv.has(k));
      if (next === undefined) throw new UsageError(`invalid rule description: ${word}`);
      key = next;
      value = word;
    } else if (parts.length === 2 && parts[0] !== '' && parts[1] !== '') {
      key = parts[0] ?? '';
      value = parts[1] ?? '';
    } else if (word.startsWith('comment=')) {
      key = 'comment';
      value = word.slice('comment='.length);
    } else {
      throw new UsageError(`invalid rule description: ${word}`);
    }
    if (key === 'dst4' || key === 'dst6') key = 'dsthost';
    if (!KEYS.has(key)) throw new UsageError(`Invalid rule element: ${word}`);
    if (kv.has(key)) throw new UsageError(`invalid rule description: ${word} (${key} given twice)`);
    if (key === 'expire' && value.startsWith('+')) {
      if (!/^\+[0-9]{1,10}$/.test(value)) throw new UsageError(`invalid rule description: ${word}`);
      value = String(nowSec + Number(value.slice(1)));
    }
    kv.set(key, value);
    if (key === 'proto') {
      const drop = value === 'icmp' ? 'dstports' : 'icmptype';
      const i = order.indexOf(drop);
      if (i >= 0) order.splice(i, 1);
    }
  }
  const comment = kv.get('comment');
  const line = [...kv].filter(([k]) => k !== 'comment').map(([k, v]) => `${k}=${v}`);
  if (comment !== undefined) line.push(`comment=${comment}`);
  return parseRule(line.join(' '));
}

function hostCell(r: FirewallRule): string {
  if (r.host === undefined) return '-';
  return r.host.type === 'dsthost' ? r.host.name : `${r.host.addr}/${r.host.prefix}`;
}

/** `list`'s table, as Qubes' qvm-firewall prints it. */
export function ruleTable(rules: readonly FirewallRule[], nowSec: number): string[] {
  const rows: string[][] = [['NO', 'ACTION', 'HOST', 'PROTOCOL', 'PORT(S)', 'SPECIAL TARGET', 'ICMP TYPE', 'EXPIRE', 'COMMENT']];
  rules.forEach((r, i) => {
    const ports = r.dstports === undefined ? '-' : r.dstports[0] === r.dstports[1] ? String(r.dstports[0]) : `${r.dstports[0]}-${r.dstports[1]}`;
    rows.push([
      String(i), r.action, hostCell(r), r.proto ?? '-', ports, r.specialtarget ?? '-',
      r.icmptype === undefined ? '-' : String(r.icmptype),
      r.expire === undefined ? '-' : `+${r.expire - nowSec}s`,
      r.comment ?? '-',
    ]);
  });
  return formatTable(rows);
}

/** `--raw`: the client's order (action proto host dstports icmptype specialtarget expire comment). */
export function rawRule(r: FirewallRule): string {
  const w = [`action=${r.action}`];
  if (r.proto) w.push(`proto=${r.proto}`);
  if (r.host && !(r.host.type !== 'dsthost' && r.host.prefix === 0)) {
    w.push(r.host.type === 'dsthost' ? `dsthost=${r.host.name}` : `${r.host.type}=${r.host.addr}/${r.host.prefix}`);
  }
  if (r.dstports) w.push(`dstports=${r.dstports[0]}-${r.dstports[1]}`);
  if (r.icmptype !== undefined) w.push(`icmptype=${r.icmptype}`);
  if (r.specialtarget) w.push(`specialtarget=${r.specialtarget}`);
  if (r.expire !== undefined) w.push(`expire=${r.expire}`);
  if (r.comment !== undefined) w.push(`comment=${r.comment}`);
  return w.join(' ');
}

async function getRules(client: AdminClient, vm: string): Promise<FirewallRule[]> {
  const text = await client.call({ method: 'admin.vm.firewall.Get', dest: vm });
  return text.split('\n').filter((l) => l !== '').map((l) => parseRule(l));
}

async function setRules(client: AdminClient, vm: string, rules: readonly FirewallRule[]): Promise<void> {
  await client.call({ method: 'admin.vm.firewall.Set', dest: vm, payload: rules.map((r) => `${formatRule(r)}\n`).join('') });
}

function ruleNumber(text: string, what: string, max: number): number {
  if (!/^[0-9]{1,6}$/.test(text)) throw new UsageError(`argument ${what}: invalid int value: '${text}'`);
  const n = Number(text);
  if (n > max) throw new UsageError(`argument ${what}: no rule number ${n} (the list has ${max} rules)`);
  return n;
}

export const qvmFirewall: Command = {
  name: 'qvm-firewall',
  usage: '[-h] [--socket PATH] [--verbose] [--quiet] [--reload | -r] [--raw] VMNAME [list | add [--before=RULE_NUMBER] RULE... | del [--rule-no=RULE_NUMBER] [RULE...] | reset]',
  summary: 'Manage a qube\'s outbound firewall: rules are checked in order, the first match decides; if none matches, traffic is dropped.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {
        raw: { type: 'boolean' }, reload: { type: 'boolean', short: 'r' },
        before: { type: 'string' }, 'rule-no': { type: 'string' },
      });
      if (a.flag('help')) return printHelp(this, prog);
      const [vm, sub = 'list', ...words] = a.positionals;
      if (vm === undefined) throw new UsageError('the following arguments are required: VMNAME');
      if (!['list', 'add', 'del', 'reset'].includes(sub)) throw new UsageError(`invalid choice: '${sub}' (choose from 'add', 'del', 'list', 'reset')`);
      if (a.str('before') !== undefined && sub !== 'add') throw new UsageError('--before is an option of add');
      if (a.str('rule-no') !== undefined && sub !== 'del') throw new UsageError('--rule-no is an option of del');
      await requireDomains(a.client, [vm]);
      const now = Math.floor(Date.now() / 1000);
      const rule = (): FirewallRule => {
        try {
          return rulesFromWords(words, now);
        } catch (err) {
          if (err instanceof QubesError) {
            errorLine(prog, `invalid rule: ${err.message}`);
            throw new ExitError(1);
          }
          throw err;
        }
      };
      if (sub === 'list') {
        if (words.length > 0) throw new UsageError(`unrecognized arguments: ${words.join(' ')}`);
        const rules = await getRules(a.client, vm);
        if (a.flag('raw')) for (const r of rules) out(rawRule(r));
        else for (const line of ruleTable(rules, now)) out(line);
        if (a.flag('reload')) await a.client.call({ method: 'admin.vm.firewall.Reload', dest: vm });
        return 0;
      }
      if (sub === 'reset') {
        if (words.length > 0) throw new UsageError(`unrecognized arguments: ${words.join(' ')}`);
        await setRules(a.client, vm, [parseRule('action=accept')]);
        return 0;
      }
      if (sub === 'add') {
        if (words.length === 0) throw new UsageError('add: the following arguments are required: RULE');
        const r = rule();
        const rules = await getRules(a.client, vm);
        const before = a.str('before');
        const at = before === undefined ? rules.length : ruleNumber(before, '--before', rules.length);
        rules.splice(at, 0, r);
        await setRules(a.client, vm, rules);
        return 0;
      }
      // del
      const rules = await getRules(a.client, vm);
      const no = a.str('rule-no');
      if (no !== undefined) {
        if (words.length > 0) throw new UsageError('del: give either --rule-no or a RULE, not both');
        rules.splice(ruleNumber(no, '--rule-no', rules.length - 1), 1);
      } else {
        if (words.length === 0) throw new UsageError('del: give --rule-no or a RULE');
        const wanted = formatRule(rule());
        const i = rules.findIndex((r) => formatRule(r) === wanted);
        if (i < 0) {
          errorLine(prog, `no such rule: ${wanted}`);
          return 1;
        }
        rules.splice(i, 1);
      }
      await setRules(a.client, vm, rules);
      return 0;
    });
  },
};
