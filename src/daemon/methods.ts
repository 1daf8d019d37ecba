// Every Admin API method, declared once: name, destination, argument, payload, scope, help,
// handler. The dispatcher enforces the declaration before the handler runs; the method table in
// docs/protocol/admin-api.md is checked against this list by a test.
import { z } from 'zod';
import { PermissionDenied, ProtocolError, QubesError } from '../core/errors.js';
import type { RootImport, VolumeInfo } from '../hal/types.js';
import { LABELS, findLabel } from '../core/labels.js';
import { QUBE_CLASSES, type QubeRecord } from '../core/model.js';
import { formatReading, type PropReading } from '../core/properties.js';
import type { Registry, RegistryEvent } from '../core/registry.js';
import type { Lifecycle } from './lifecycle.js';
import { formatRule, parseRulesPayload, type FirewallRule } from '../core/firewall.js';

export type Scope = 'read' | 'write';

export interface CallContext {
  readonly registry: Registry;
  readonly lifecycle: Lifecycle;
  readonly source: QubeRecord;
  readonly dest: QubeRecord;
  readonly arg: string;
  readonly untrustedPayload: Buffer;
  readonly qrexec?: QrexecAdmin | undefined;
  readonly network?: FirewallControl | undefined;
  /** Set for a call from a qube (qrexec): the qubes it may see in admin.vm.List / admin.Events. */
  readonly visible?: ((q: QubeRecord) => boolean) | undefined;
}

/** What the firewall methods need from the network orchestrator (src/net/orchestrator.ts). */
export interface FirewallControl {
  /** Applies rules to the running qube's netvm before they are stored; throws, changing nothing, on failure. */
  applyFirewall(name: string, rules: readonly FirewallRule[]): Promise<void>;
  reload(name: string): Promise<void>;
  /** The stored rules in force again, or the qube blocked when that fails; never rejects on lookups. */
  restore(name: string): Promise<void>;
  checkNetvmChange(q: QubeRecord, running: (name: string) => boolean, newNetvm: string): void;
}

/** A pending ask (qrexec `ask` action) as the admin domain sees it. */
export interface PendingAsk {
  readonly id: string;
  readonly source: string;
  readonly service: string;
  /** `+ARG`, or `+` for none. */
  readonly argument: string;
  readonly targets: readonly string[];
  readonly defaultTarget: string | null;
  /** Seconds until it is denied unanswered. */
  readonly expiresIn: number;
}

export type AskAnswer = { readonly allow: true; readonly target: string } | { readonly allow: false };

/** What the admin-only Bulkhead methods need from qrexec. */
export interface QrexecAdmin {
  /** The policy's view of the system (Qubes' system-info shape), as JSON-able data. */
  systemInfo(): unknown;
  /** The folder the daemon reads its policy from. */
  policyDir(): string;
  asks(): readonly PendingAsk[];
  /** Throws QubesError for an unknown id or a target not offered. */
  answerAsk(id: string, answer: AskAnswer): void;
}

/** Applied in the netvm first, then stored; a failed save puts the old rules back. */
async function setFirewall(c: CallContext, rules: readonly FirewallRule[]): Promise<void> {
  const name = c.dest.name;
  await c.network?.applyFirewall(name, rules);
  try {
    c.registry.firewallSet(name, rules);
  } catch (err) {
    // Not stored: the stored rules go back in force (or, failing that, nothing passes).
    await c.network?.restore(name).catch(() => undefined);
    throw err;
  }
}

function qrexecOf(c: CallContext): QrexecAdmin {
  if (c.qrexec === undefined) throw new QubesError('QubesException', 'qrexec is not running in this daemon');
  return c.qrexec;
}

/** Stream methods push events until the client goes away; they return an unsubscribe. */
export type EventSink = (e: RegistryEvent) => void;

export interface MethodDecl {
  readonly name: string;
  readonly scope: Scope;
  /** `adminvm`: the destination must be dom0; `vm`: must not be; `any`: either. */
  readonly dest: 'adminvm' | 'vm' | 'any';
  readonly arg: 'none' | 'required' | 'optional';
  readonly payload: 'none' | 'required' | 'optional';
  readonly help: string;
  readonly handler?: (c: CallContext) => string | undefined | Promise<string | undefined>;
  readonly stream?: (c: CallContext, sink: EventSink) => () => void;
}

function lines(items: readonly string[]): string {
  return items.map((i) => `${i}\n`).join('');
}

function payloadText(c: CallContext): string {
  const text = c.untrustedPayload.toString('utf8');
  if (!Buffer.from(text, 'utf8').equals(c.untrustedPayload)) throw new ProtocolError('payload is not valid UTF-8');
  return text;
}

function asciiPayload(c: CallContext): string {
  for (const b of c.untrustedPayload) if (b < 0x20 || b > 0x7e) throw new ProtocolError('payload must be printable ASCII');
  return c.untrustedPayload.toString('ascii');
}

function getAll(names: readonly string[], read: (n: string) => PropReading): string {
  // GetAll escapes `\` as `\\` and newline as `\n` inside each value.
  return names
    .map((n) => `${n} ${formatReading(read(n)).replaceAll('\\', '\\\\').replaceAll('\n', '\\n')}\n`)
    .join('');
}

function getDefault(r: PropReading | undefined): string | undefined {
  if (r === undefined) return undefined;
  return formatReading(r).replace(/^default=\S+ /, '');
}

function parseShutdownArg(arg: string): { force: boolean; wait: boolean } {
  const opts = { force: false, wait: false };
  if (arg === '') return opts;
  for (const part of arg.split('+')) {
    if (part === 'force') opts.force = true;
    else if (part === 'wait') opts.wait = true;
    else throw new ProtocolError(`invalid shutdown argument`);
  }
  return opts;
}

/** `name=N label=L` — unique keys, nothing else. */
function parseCreatePayload(text: string): { name: string; label: string } {
  const found = new Map<string, string>();
  for (const untrustedPart of text.split(' ')) {
    const eq = untrustedPart.indexOf('=');
    if (eq < 0) throw new ProtocolError('Invalid create option');
    const key = untrustedPart.slice(0, eq);
    if (key !== 'name' && key !== 'label') throw new ProtocolError(`Invalid create option '${key}'`);
    if (found.has(key)) throw new ProtocolError('Options must be unique');
    found.set(key, untrustedPart.slice(eq + 1));
  }
  const name = found.get('name');
  const label = found.get('label');
  if (name === undefined) throw new ProtocolError('Creation requested without key: name');
  if (label === undefined) throw new ProtocolError('Creation requested without key: label');
  return { name, label };
}

function propertyMethods(prefix: string, dest: 'adminvm' | 'any', global: boolean): MethodDecl[] {
  const names = (c: CallContext): string[] => (global ? c.registry.globalNames() : c.registry.propNames(c.dest.name));
  const read = (c: CallContext, p: string): PropReading =>
    global ? c.registry.getGlobal(p) : c.registry.getProp(c.dest.name, p);
  return [
    { name: `${prefix}.List`, scope: 'read', dest, arg: 'none', payload: 'none',
      help: 'Property names, one per line.', handler: (c) => lines(names(c)) },
    { name: `${prefix}.Get`, scope: 'read', dest, arg: 'required', payload: 'none',
      help: '`default=True|False type=T VALUE`.', handler: (c) => formatReading(read(c, c.arg)) },
    { name: `${prefix}.GetAll`, scope: 'read', dest, arg: 'none', payload: 'none',
      help: 'One `NAME default=... type=... VALUE` line per property (\\ and newline escaped).',
      handler: (c) => getAll(names(c), (p) => read(c, p)) },
    { name: `${prefix}.GetDefault`, scope: 'read', dest, arg: 'required', payload: 'none',
      help: '`type=T VALUE` of the default, or empty when there is none.',
      handler: (c) =>
        getDefault(global ? c.registry.getGlobalDefault(c.arg) : c.registry.getPropDefault(c.dest.name, c.arg)) },
    { name: `${prefix}.Set`, scope: 'write', dest, arg: 'required', payload: 'optional',
      help: 'Sets the property to the payload (empty = None for qube references).',
      handler: (c) => {
        const value = asciiPayload(c);
        if (!global && c.arg === 'netvm') {
          c.network?.checkNetvmChange(c.dest, (n) => c.lifecycle.powerState(n) !== 'Halted', value === 'None' ? '' : value);
        }
        if (global) c.registry.setGlobal(c.arg, value);
        else c.registry.setProp(c.dest.name, c.arg, value);
        return undefined;
      } },
    { name: `${prefix}.Reset`, scope: 'write', dest, arg: 'required', payload: 'none',
      help: 'Returns the property to its default.',
      handler: (c) => {
        if (!global && c.arg === 'netvm') {
          const def = c.registry.getPropDefault(c.dest.name, 'netvm');
          c.network?.checkNetvmChange(c.dest, (n) => c.lifecycle.powerState(n) !== 'Halted', typeof def?.value === 'string' ? def.value : '');
        }
        if (global) c.registry.resetGlobal(c.arg);
        else c.registry.resetProp(c.dest.name, c.arg);
        return undefined;
      } },
    { name: `${prefix}.Help`, scope: 'read', dest, arg: 'required', payload: 'none',
      help: 'The property documentation.',
      handler: (c) => (global ? c.registry.globalHelp(c.arg) : c.registry.propHelp(c.dest.name, c.arg)) },
  ];
}

const METHOD_LIST: readonly MethodDecl[] = [
  { name: 'admin.vmclass.List', scope: 'read', dest: 'adminvm', arg: 'none', payload: 'none',
    help: 'Qube classes, one per line.', handler: () => lines(QUBE_CLASSES) },
  { name: 'admin.vm.List', scope: 'read', dest: 'any', arg: 'none', payload: 'none',
    help: '`NAME class=CLASS state=STATE uuid=UUID` per qube (all for dom0, else only the destination).',
    handler: (c) => {
      const visible = c.visible ?? (() => true);
      const qubes = c.dest.klass === 'AdminVM' ? c.registry.list().filter(visible) : [c.dest];
      return qubes.map((q) => `${q.name} class=${q.klass} state=${c.lifecycle.powerState(q.name)} uuid=${q.uuid}\n`).join('');
    } },
  ...QUBE_CLASSES.filter((k) => k !== 'AdminVM').map(
    (klass): MethodDecl => ({
      name: `admin.vm.Create.${klass}`, scope: 'write', dest: 'adminvm', arg: 'optional', payload: 'required',
      help: `Creates a ${klass}; argument = template; payload \`name=N label=L\`.`,
      handler: (c) => {
        const { name, label } = parseCreatePayload(asciiPayload(c));
        c.registry.create({ klass, name, label, template: c.arg, source: c.source.name });
        return undefined;
      },
    }),
  ),
  { name: 'admin.vm.Remove', scope: 'write', dest: 'any', arg: 'none', payload: 'none',
    help: 'Removes a halted qube nothing depends on, and its volumes.',
    handler: (c) => {
      c.registry.remove(c.dest.name);
      c.lifecycle.removeVolumes(c.dest);
      return undefined;
    } },
  { name: 'admin.vm.volume.List', scope: 'read', dest: 'any', arg: 'none', payload: 'none',
    help: 'Volume names, one per line (none for dom0).', handler: (c) => lines(c.lifecycle.volumeNames(c.dest)) },
  { name: 'admin.vm.volume.Info', scope: 'read', dest: 'vm', arg: 'required', payload: 'none',
    help: '`key=value` lines: pool, vid, size, usage, rw, source, path, save_on_stop, snap_on_start, revisions_to_keep, ephemeral.',
    handler: async (c) => formatVolumeInfo(await c.lifecycle.volumeInfo(c.dest, c.arg)) },
  { name: 'admin.vm.volume.CloneFrom', scope: 'read', dest: 'vm', arg: 'required', payload: 'none',
    help: 'A one-time token naming this volume as the source of a CloneTo (valid one minute).',
    handler: (c) => c.lifecycle.volumeCloneFrom(c.dest, c.arg) },
  { name: 'admin.vm.volume.CloneTo', scope: 'write', dest: 'vm', arg: 'required', payload: 'required',
    help: 'Replaces this (halted) qube\'s volume with a copy of the CloneFrom token\'s volume.',
    handler: async (c) => { await c.lifecycle.volumeCloneTo(c.dest, c.arg, asciiPayload(c)); return undefined; } },
  { name: 'bulkhead.vm.volume.ImportDir', scope: 'write', dest: 'vm', arg: 'required', payload: 'required',
    help: 'Bulkhead only, admin domain only: installs a prepared directory (JSON `{"dir","hostUsr","source"}`) as the root volume of a halted TemplateVM or StandaloneVM.',
    handler: async (c) => {
      if (c.arg !== 'root') throw new PermissionDenied(`Argument not in '${c.dest.name}' volumes`);
      await c.lifecycle.importRoot(c.dest, parseImport(payloadText(c)));
      return undefined;
    } },
  ...propertyMethods('admin.vm.property', 'any', false),
  ...propertyMethods('admin.property', 'adminvm', true),
  { name: 'admin.vm.feature.List', scope: 'read', dest: 'any', arg: 'none', payload: 'none',
    help: 'Feature names, one per line.', handler: (c) => lines([...c.dest.features.keys()]) },
  { name: 'admin.vm.feature.Get', scope: 'read', dest: 'any', arg: 'required', payload: 'none',
    help: 'The feature value.', handler: (c) => c.registry.featureGet(c.dest.name, c.arg) },
  { name: 'admin.vm.feature.CheckWithTemplate', scope: 'read', dest: 'any', arg: 'required', payload: 'none',
    help: 'The feature value from the qube or its template chain.',
    handler: (c) => c.registry.featureCheckWithTemplate(c.dest.name, c.arg) },
  { name: 'admin.vm.feature.Set', scope: 'write', dest: 'any', arg: 'required', payload: 'optional',
    help: 'Sets a feature (printable ASCII value).',
    handler: (c) => { c.registry.featureSet(c.dest.name, c.arg, asciiPayload(c)); return undefined; } },
  { name: 'admin.vm.feature.Remove', scope: 'write', dest: 'any', arg: 'required', payload: 'none',
    help: 'Removes a feature.', handler: (c) => { c.registry.featureRemove(c.dest.name, c.arg); return undefined; } },
  { name: 'admin.vm.tag.List', scope: 'read', dest: 'any', arg: 'none', payload: 'none',
    help: 'Tags, sorted, one per line.', handler: (c) => lines([...c.dest.tags].sort()) },
  { name: 'admin.vm.tag.Get', scope: 'read', dest: 'any', arg: 'required', payload: 'none',
    help: '`1` if the qube has the tag, else `0`.', handler: (c) => (c.dest.tags.has(c.arg) ? '1' : '0') },
  { name: 'admin.vm.tag.Set', scope: 'write', dest: 'any', arg: 'required', payload: 'none',
    help: 'Adds a tag (idempotent).', handler: (c) => { c.registry.tagSet(c.dest.name, c.arg); return undefined; } },
  { name: 'admin.vm.tag.Remove', scope: 'write', dest: 'any', arg: 'required', payload: 'none',
    help: 'Removes a tag.', handler: (c) => { c.registry.tagRemove(c.dest.name, c.arg); return undefined; } },
  { name: 'admin.vm.firewall.Get', scope: 'read', dest: 'vm', arg: 'none', payload: 'none',
    help: 'The firewall rules in force, one per line (`action=accept` when none were ever set).',
    handler: (c) => c.registry.firewallRules(c.dest.name, Math.floor(Date.now() / 1000)).map((r) => `${formatRule(r)}\n`).join('') },
  { name: 'admin.vm.firewall.Set', scope: 'write', dest: 'vm', arg: 'none', payload: 'optional',
    help: 'Replaces the rules (payload: one rule per line, ASCII); applied at once in the netvm, all or nothing.',
    handler: async (c) => {
      const rules = parseRulesPayload(c.untrustedPayload);
      await setFirewall(c, rules);
      return undefined;
    } },
  { name: 'admin.vm.firewall.Reload', scope: 'write', dest: 'vm', arg: 'none', payload: 'none',
    help: 'Applies the rules again (hostnames looked up again by the netvm).',
    handler: async (c) => {
      await c.network?.reload(c.dest.name);
      c.registry.emit({ subject: c.dest.name, event: 'firewall-changed', kwargs: [] });
      return undefined;
    } },
  { name: 'admin.vm.notes.Get', scope: 'read', dest: 'any', arg: 'none', payload: 'none',
    help: 'The qube notes (UTF-8 text).', handler: (c) => c.dest.notes },
  { name: 'admin.vm.notes.Set', scope: 'write', dest: 'any', arg: 'none', payload: 'optional',
    help: 'Replaces the qube notes.', handler: (c) => { c.registry.notesSet(c.dest.name, payloadText(c)); return undefined; } },
  { name: 'admin.label.List', scope: 'read', dest: 'adminvm', arg: 'none', payload: 'none',
    help: 'Label names in index order.', handler: () => lines(LABELS.map((l) => l.name)) },
  { name: 'admin.label.Get', scope: 'read', dest: 'adminvm', arg: 'required', payload: 'none',
    help: 'Label colour as `0xRRGGBB`.', handler: (c) => labelOf(c.arg).color },
  { name: 'admin.label.Index', scope: 'read', dest: 'adminvm', arg: 'required', payload: 'none',
    help: 'Label index (1–8).', handler: (c) => String(labelOf(c.arg).index) },
  { name: 'admin.vm.CurrentState', scope: 'read', dest: 'any', arg: 'none', payload: 'none',
    help: '`mem=KiB mem_static_max=KiB cputime=N power_state=STATE`.', handler: (c) => c.lifecycle.currentState(c.dest) },
  { name: 'admin.vm.Start', scope: 'write', dest: 'vm', arg: 'none', payload: 'none',
    help: 'Starts the qube (and its netvm chain); OK at once if it is not halted.',
    handler: async (c) => { await c.lifecycle.start(c.dest.name); return undefined; } },
  { name: 'admin.vm.Shutdown', scope: 'write', dest: 'vm', arg: 'optional', payload: 'none',
    help: 'Graceful shutdown; argument `force`, `wait` or `force+wait` (wait: reply once halted).',
    handler: async (c) => { await c.lifecycle.shutdown(c.dest.name, parseShutdownArg(c.arg)); return undefined; } },
  { name: 'admin.vm.Kill', scope: 'write', dest: 'vm', arg: 'none', payload: 'none',
    help: 'Stops the qube at once.', handler: async (c) => { await c.lifecycle.kill(c.dest.name); return undefined; } },
  { name: 'admin.vm.Pause', scope: 'write', dest: 'vm', arg: 'none', payload: 'none',
    help: 'Freezes a running qube.', handler: async (c) => { await c.lifecycle.pause(c.dest.name); return undefined; } },
  { name: 'admin.vm.Unpause', scope: 'write', dest: 'vm', arg: 'none', payload: 'none',
    help: 'Thaws a paused qube.', handler: async (c) => { await c.lifecycle.unpause(c.dest.name); return undefined; } },
  { name: 'admin.Events', scope: 'read', dest: 'any', arg: 'none', payload: 'none',
    help: 'Event stream: `connection-established`, then every event (of the destination qube only, unless dom0).',
    stream: (c, sink) => {
      // Follow the qube by uuid: a rename must not silence its stream.
      const only = c.dest.klass === 'AdminVM' ? undefined : c.dest.uuid;
      const visible = c.visible;
      // A qube's stream shows only events about qubes policy lets it see (a global event
      // naming a qube in `vm`, like domain-add, counts as about that qube).
      const shown = (e: RegistryEvent): boolean => {
        if (visible === undefined) return true;
        const about = e.subject !== '' ? e.subject : e.kwargs.find(([k]) => k === 'vm')?.[1];
        if (about === undefined) return true;
        const q = c.registry.state.qubes.get(about);
        return q !== undefined && visible(q);
      };
      sink({ subject: '', event: 'connection-established', kwargs: [] });
      return c.registry.subscribe((e) => {
        if ((only === undefined || c.registry.state.qubes.get(e.subject)?.uuid === only) && shown(e)) sink(e);
      });
    } },
  { name: 'bulkhead.policy.SystemInfo', scope: 'read', dest: 'adminvm', arg: 'none', payload: 'none',
    help: 'Bulkhead, admin domain only: the qrexec policy\'s view of the qubes as JSON in Qubes\' system-info shape (`bulkhead policy eval`).',
    handler: (c) => `${JSON.stringify(qrexecOf(c).systemInfo())}\n` },
  { name: 'bulkhead.policy.Dir', scope: 'read', dest: 'adminvm', arg: 'none', payload: 'none',
    help: 'Bulkhead, admin domain only: the folder the daemon reads its qrexec policy from (`bulkhead policy lint|eval`).',
    handler: (c) => `${qrexecOf(c).policyDir()}\n` },
  { name: 'bulkhead.ask.List', scope: 'read', dest: 'adminvm', arg: 'none', payload: 'none',
    help: 'Bulkhead, admin domain only: pending qrexec asks, one per line: `ID source=S service=SVC argument=+ARG targets=A,B default_target=T expires_in=SECONDS`.',
    handler: (c) => lines(qrexecOf(c).asks().map((a) =>
      `${a.id} source=${a.source} service=${a.service} argument=${a.argument} targets=${a.targets.join(',')} default_target=${a.defaultTarget ?? ''} expires_in=${a.expiresIn}`)) },
  { name: 'bulkhead.ask.Answer', scope: 'write', dest: 'adminvm', arg: 'required', payload: 'required',
    help: 'Bulkhead, admin domain only: answers the pending ask named by the argument; payload `allow TARGET` or `deny`.',
    handler: (c) => {
      const text = asciiPayload(c);
      const m = /^(?:allow ([A-Za-z0-9_.:@-]{1,64})|deny)$/.exec(text);
      if (m === null) throw new QubesError('QubesValueError', 'The answer must be `allow TARGET` or `deny`');
      qrexecOf(c).answerAsk(c.arg, m[1] === undefined ? { allow: false } : { allow: true, target: m[1] });
      return undefined;
    } },
];

function formatVolumeInfo(v: VolumeInfo): string {
  const show = (x: string | number | boolean | null): string => (x === null ? '' : typeof x === 'boolean' ? (x ? 'True' : 'False') : String(x));
  const keys = ['pool', 'vid', 'size', 'usage', 'rw', 'source', 'path', 'save_on_stop', 'snap_on_start', 'revisions_to_keep', 'ephemeral'] as const;
  return keys.map((k) => `${k}=${show(v[k])}\n`).join('');
}

const ImportSchema = z.object({ dir: z.string().startsWith('/').max(4096), hostUsr: z.boolean(), source: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/) }).strict();

function parseImport(untrustedText: string): RootImport {
  let raw: unknown;
  try {
    raw = JSON.parse(untrustedText);
  } catch {
    throw new ProtocolError('import payload is not JSON');
  }
  const parsed = ImportSchema.safeParse(raw);
  if (!parsed.success) throw new ProtocolError('invalid import payload');
  return parsed.data;
}

function labelOf(untrustedSpec: string) {
  const label = findLabel(untrustedSpec);
  if (!label) throw new QubesError('QubesLabelNotFoundError', `Label does not exist: ${untrustedSpec}`);
  return label;
}

export const METHODS: ReadonlyMap<string, MethodDecl> = new Map(METHOD_LIST.map((m) => [m.name, m]));
