// Typed qube and global properties, declared once: type, classes, access, default (and where
// the default comes from: the template, a global property, a constant), and checks.
import os from 'node:os';
import { QubesError, propertyValueError } from './errors.js';
import { findLabel } from './labels.js';
import type { PropValue, QubeClass, QubeRecord, RegistryState } from './model.js';
import { addressFor, QUBE_MAC, QUBE_NETMASK, VIRTUAL_DNS } from './network.js';

export type PropType = 'str' | 'int' | 'bool' | 'vm' | 'label';
export type Access = 'rw' | 'ro' | 'write-once';

/** A property of a holder H: a qube (QubeRecord) or the global holder (null). */
export interface PropDef<H> {
  readonly name: string;
  readonly type: PropType;
  readonly help: string;
  readonly access: Access;
  /** Value that does not live in the props map (name, qid, uuid, klass, computed ones). */
  readonly intrinsic?: (h: H, s: RegistryState) => PropValue;
  /** Whether an intrinsic value counts as a default (klass, icon, updateable do). */
  readonly intrinsicIsDefault?: boolean;
  /** The default when not explicitly set; undefined means no default (empty value). */
  readonly default?: (h: H, s: RegistryState) => PropValue | undefined;
  /** vm properties: whether None (empty) may be set explicitly. */
  readonly allowNone?: boolean;
  /** Checks a parsed value for this holder; throws QubesError. */
  readonly check?: (h: H, s: RegistryState, value: PropValue) => void;
  /** May only change while the qube is halted. */
  readonly haltedOnly?: boolean;
}

export type QubePropDef = PropDef<QubeRecord> & { readonly classes: readonly QubeClass[] };
export type GlobalPropDef = PropDef<null>;

const VM_CLASSES: readonly QubeClass[] = ['AppVM', 'TemplateVM', 'StandaloneVM', 'DispVM'];
const ALL_CLASSES: readonly QubeClass[] = ['AdminVM', ...VM_CLASSES];

export const DEFAULT_MEMORY_MIB = 400;
export const DEFAULT_VCPUS = 2;
export const BACKENDS = ['container', 'vm'] as const;

function hostMemoryMiB(): number {
  return Math.floor(os.totalmem() / (1024 * 1024));
}

// ---------- reading values ----------

/** The qube a property of `q` inherits from: its template, if it has one. */
export function templateOf(s: RegistryState, q: QubeRecord): QubeRecord | undefined {
  const t = q.props.get('template');
  return typeof t === 'string' ? s.qubes.get(t) : undefined;
}

function fromTemplate(name: string, fallback: (q: QubeRecord, s: RegistryState) => PropValue | undefined) {
  return (q: QubeRecord, s: RegistryState): PropValue | undefined => {
    const t = templateOf(s, q);
    return t ? qubeValue(s, t, name) : fallback(q, s);
  };
}

function globalValue(s: RegistryState, name: string): PropValue | undefined {
  const def = GLOBAL_PROPS.get(name);
  if (!def) return undefined;
  if (def.intrinsic) return def.intrinsic(null, s);
  return s.globals.has(name) ? s.globals.get(name) : def.default?.(null, s);
}

/** The effective value of a qube property (explicit, intrinsic or default); undefined if none. */
export function qubeValue(s: RegistryState, q: QubeRecord, name: string): PropValue | undefined {
  const def = propDefFor(q.klass, name);
  if (!def) return undefined;
  if (def.intrinsic) return def.intrinsic(q, s);
  return q.props.has(name) ? q.props.get(name) : def.default?.(q, s);
}

export function globalPropValue(s: RegistryState, name: string): PropValue | undefined {
  return globalValue(s, name);
}

export function boolValue(s: RegistryState, q: QubeRecord, name: string): boolean {
  return qubeValue(s, q, name) === true;
}

/** Effective reference (vm-typed property) of a qube, or null. */
export function refValue(s: RegistryState, q: QubeRecord, name: string): string | null {
  const v = qubeValue(s, q, name);
  return typeof v === 'string' && v !== '' ? v : null;
}

/** Whether the qube has an address: it has a netvm, or it provides network itself. */
export function isNetworked(s: RegistryState, q: QubeRecord): boolean {
  if (q.klass === 'AdminVM') return false;
  return boolValue(s, q, 'provides_network') || refValue(s, q, 'netvm') !== null;
}

function visibleIp(s: RegistryState, q: QubeRecord): string | undefined {
  if (!isNetworked(s, q)) return undefined;
  return addressFor(q.qid, q.klass === 'DispVM');
}

// ---------- checks ----------

function mustBeQube(s: RegistryState, name: string, prop: string): QubeRecord {
  const target = s.qubes.get(name);
  if (!target) throw propertyValueError(`Can't set ${prop} to non-existing qube ${name}`);
  return target;
}

function checkTemplate(q: QubeRecord, s: RegistryState, v: PropValue): void {
  if (typeof v !== 'string') throw propertyValueError('template cannot be None');
  const t = mustBeQube(s, v, 'template');
  if (q.klass === 'DispVM') {
    if (!(t.klass === 'AppVM' || t.klass === 'StandaloneVM') || !boolValue(s, t, 'template_for_dispvms')) {
      throw propertyValueError(`'${t.name}' is not a disposable template (template_for_dispvms is not set)`);
    }
  } else if (t.klass !== 'TemplateVM') {
    throw propertyValueError(`'${t.name}' is not a TemplateVM (it is a ${t.klass})`);
  }
}

function checkNetvm(q: QubeRecord, s: RegistryState, v: PropValue): void {
  if (v === null) return;
  if (typeof v !== 'string') return;
  if (v === q.name) throw propertyValueError(`A qube cannot be its own netvm: '${q.name}'`);
  const t = mustBeQube(s, v, 'netvm');
  if (t.klass === 'AdminVM' || !boolValue(s, t, 'provides_network')) {
    throw propertyValueError(`The qube '${t.name}' does not provide network (provides_network is False)`);
  }
}

function checkDispvmTemplate(s: RegistryState, v: PropValue, prop: string): void {
  if (typeof v !== 'string') return;
  const t = mustBeQube(s, v, prop);
  if (!(t.klass === 'AppVM' || t.klass === 'StandaloneVM') || !boolValue(s, t, 'template_for_dispvms')) {
    throw propertyValueError(`'${t.name}' is not a disposable template (template_for_dispvms is not set)`);
  }
}

function checkRange(min: number, max: number) {
  return (_h: unknown, _s: RegistryState, v: PropValue): void => {
    if (typeof v !== 'number' || v < min || v > max) {
      throw propertyValueError(`Value must be between ${min} and ${max}, got ${String(v)}`);
    }
  };
}

function checkOneOf(allowed: readonly string[]) {
  return (_h: unknown, _s: RegistryState, v: PropValue): void => {
    if (typeof v !== 'string' || !allowed.includes(v)) {
      throw propertyValueError(`Value must be one of ${allowed.join(', ')}, got '${String(v)}'`);
    }
  };
}

// ---------- declarations ----------

const iconPrefix: Record<QubeClass, string> = {
  AdminVM: 'adminvm',
  TemplateVM: 'templatevm',
  AppVM: 'appvm',
  StandaloneVM: 'standalonevm',
  DispVM: 'dispvm',
};

const QUBE_PROP_LIST: readonly QubePropDef[] = [
  { name: 'name', type: 'str', access: 'rw', classes: ALL_CLASSES, haltedOnly: true,
    help: 'User-visible name of the qube (renaming needs the qube halted).', intrinsic: (q) => q.name },
  { name: 'qid', type: 'int', access: 'write-once', classes: ALL_CLASSES,
    help: 'Internal, persistent identifier of the qube.', intrinsic: (q) => q.qid },
  { name: 'uuid', type: 'str', access: 'write-once', classes: ALL_CLASSES,
    help: 'UUID of the qube.', intrinsic: (q) => q.uuid },
  { name: 'klass', type: 'str', access: 'ro', classes: ALL_CLASSES, intrinsicIsDefault: true,
    help: 'Class of the qube.', intrinsic: (q) => q.klass },
  { name: 'label', type: 'label', access: 'rw', classes: ALL_CLASSES,
    help: 'Colourful label assigned to the qube; marks its trust level.' },
  { name: 'icon', type: 'str', access: 'ro', classes: ALL_CLASSES, intrinsicIsDefault: true,
    help: 'Icon name, derived from class and label.',
    intrinsic: (q) => {
      const dvm = q.klass === 'AppVM' && q.props.get('template_for_dispvms') === true;
      const prefix = dvm ? 'templatevm' : iconPrefix[q.klass];
      const label = q.props.get('label');
      return `${prefix}-${typeof label === 'string' ? label : 'black'}`;
    } },
  { name: 'template', type: 'vm', access: 'rw', classes: ['AppVM', 'DispVM'], haltedOnly: true,
    help: 'Template on which this qube is based (its root filesystem).', check: checkTemplate },
  { name: 'netvm', type: 'vm', access: 'rw', classes: VM_CLASSES, allowNone: true,
    help: 'Qube that provides network to this qube; empty means no network.',
    default: (q, s) => {
      if (q.klass === 'TemplateVM' || q.props.get('provides_network') === true) return null;
      if (q.klass === 'DispVM') {
        const t = templateOf(s, q);
        return t ? (qubeValue(s, t, 'netvm') ?? null) : null;
      }
      return globalValue(s, 'default_netvm') ?? null;
    },
    check: checkNetvm },
  { name: 'provides_network', type: 'bool', access: 'rw', classes: VM_CLASSES, haltedOnly: true,
    help: 'Whether this qube can act as a netvm for other qubes (changed while it is halted).', default: () => false },
  // Qubes' network properties, computed (read-only here): see src/core/network.ts.
  { name: 'ip', type: 'str', access: 'ro', classes: VM_CLASSES,
    help: 'IPv4 address of this qube (10.137.X.Y from its qid; disposables 10.138.X.Y); empty without network.',
    default: (q, s) => (isNetworked(s, q) ? addressFor(q.qid, q.klass === 'DispVM') : undefined) },
  { name: 'visible_ip', type: 'str', access: 'ro', classes: VM_CLASSES,
    help: 'IPv4 address of this qube as the qube sees it (the same as ip: net.fake-* features are not supported).',
    default: (q, s) => visibleIp(s, q) },
  { name: 'visible_gateway', type: 'str', access: 'ro', classes: VM_CLASSES,
    help: 'Default gateway of this qube as the qube sees it (its netvm\'s gateway).',
    default: (q, s) => {
      const netvm = refValue(s, q, 'netvm');
      const n = netvm === null ? undefined : s.qubes.get(netvm);
      return n ? visibleIp(s, n) : undefined;
    } },
  { name: 'visible_netmask', type: 'str', access: 'ro', classes: VM_CLASSES,
    help: 'Netmask of this qube as the qube sees it (point-to-point: 255.255.255.255).',
    default: (q, s) => (isNetworked(s, q) ? QUBE_NETMASK : undefined) },
  { name: 'gateway', type: 'str', access: 'ro', classes: VM_CLASSES,
    help: 'Gateway for the qubes that use this qube as their netvm (its visible_ip); empty unless it provides network.',
    default: (q, s) => (boolValue(s, q, 'provides_network') ? visibleIp(s, q) : undefined) },
  { name: 'dns', type: 'str', access: 'ro', classes: VM_CLASSES,
    help: 'DNS servers of this qube (virtual; its netvm redirects them to real resolvers).',
    default: (q, s) => (isNetworked(s, q) ? VIRTUAL_DNS.join(' ') : undefined) },
  { name: 'mac', type: 'str', access: 'ro', classes: VM_CLASSES,
    help: 'MAC address of the qube\'s network interface.', default: () => QUBE_MAC },
  { name: 'memory', type: 'int', access: 'rw', classes: VM_CLASSES,
    help: 'Memory (MiB) at start; for containers, the soft limit.',
    default: fromTemplate('memory', () => DEFAULT_MEMORY_MIB), check: checkRange(32, 1024 * 1024) },
  { name: 'maxmem', type: 'int', access: 'rw', classes: ALL_CLASSES,
    help: 'Maximum memory (MiB) the qube may use; 0 = same as memory.',
    default: (q, s) => {
      if (q.klass === 'AdminVM') return hostMemoryMiB();
      const t = templateOf(s, q);
      if (t && !q.props.has('memory')) return qubeValue(s, t, 'maxmem');
      const memory = qubeValue(s, q, 'memory');
      const m = typeof memory === 'number' ? memory : DEFAULT_MEMORY_MIB;
      return Math.max(m, Math.min(m * 10, 4000));
    },
    check: (q, s, v) => {
      if (q.klass === 'AdminVM') throw propertyValueError('maxmem of the AdminVM is read-only');
      checkRange(0, 1024 * 1024)(q, s, v);
    } },
  { name: 'vcpus', type: 'int', access: 'rw', classes: VM_CLASSES,
    help: 'Number of virtual CPUs (CPU quota for containers).',
    default: fromTemplate('vcpus', () => DEFAULT_VCPUS), check: checkRange(1, 256) },
  { name: 'default_dispvm', type: 'vm', access: 'rw', classes: ALL_CLASSES, allowNone: true,
    help: 'Disposable template used for disposables started from this qube.',
    default: (q, s) => {
      if (q.klass === 'DispVM') return q.props.get('template') ?? null;
      return globalValue(s, 'default_dispvm') ?? null;
    },
    check: (_q, s, v) => { checkDispvmTemplate(s, v, 'default_dispvm'); } },
  { name: 'template_for_dispvms', type: 'bool', access: 'rw', classes: ['AppVM', 'StandaloneVM'],
    help: 'Whether this qube is a disposable template (DispVMs can be based on it).', default: () => false },
  { name: 'autostart', type: 'bool', access: 'rw', classes: VM_CLASSES,
    help: 'Start the qube when the daemon starts.', default: () => false },
  { name: 'debug', type: 'bool', access: 'rw', classes: VM_CLASSES,
    help: 'Debug mode: keep logs verbose.', default: () => false },
  { name: 'include_in_backups', type: 'bool', access: 'rw', classes: ALL_CLASSES,
    help: 'Whether the qube is included in backups by default.',
    default: (q, s) => (q.klass === 'DispVM' ? !boolValue(s, q, 'auto_cleanup') : true) },
  { name: 'auto_cleanup', type: 'bool', access: 'rw', classes: ['DispVM'],
    help: 'Remove the disposable when it halts.', default: () => false },
  { name: 'updateable', type: 'bool', access: 'ro', classes: ALL_CLASSES, intrinsicIsDefault: true,
    help: 'Whether changes to the root filesystem persist (no template).',
    intrinsic: (q) => q.klass === 'TemplateVM' || q.klass === 'StandaloneVM' || q.klass === 'AdminVM' },
  { name: 'default_user', type: 'str', access: 'rw', classes: VM_CLASSES,
    help: 'Default user for commands run in the qube.',
    default: fromTemplate('default_user', () => 'user'),
    check: (_q, _s, v) => {
      if (typeof v !== 'string' || !/^[a-z_][a-z0-9_-]{0,31}$/.test(v)) {
        throw propertyValueError(`Invalid user name: '${String(v)}'`);
      }
    } },
  { name: 'qrexec_timeout', type: 'int', access: 'rw', classes: VM_CLASSES,
    help: 'Seconds to wait for the qube agent to connect at start.',
    default: fromTemplate('qrexec_timeout', (_q, s) => globalValue(s, 'default_qrexec_timeout')),
    check: checkRange(1, 3600) },
  { name: 'shutdown_timeout', type: 'int', access: 'rw', classes: VM_CLASSES,
    help: 'Seconds to wait for a graceful shutdown before it counts as failed.',
    default: fromTemplate('shutdown_timeout', (_q, s) => globalValue(s, 'default_shutdown_timeout')),
    check: checkRange(1, 3600) },
  { name: 'backend', type: 'str', access: 'rw', classes: VM_CLASSES, haltedOnly: true,
    help: 'Isolation backend of the hypervisor abstraction layer: container (crun) or vm (QEMU).',
    default: fromTemplate('backend', () => 'container'), check: checkOneOf(BACKENDS) },
];

const QUBE_PROPS = new Map(QUBE_PROP_LIST.map((d) => [d.name, d]));

export function propDefFor(klass: QubeClass, name: string): QubePropDef | undefined {
  const def = QUBE_PROPS.get(name);
  return def?.classes.includes(klass) ? def : undefined;
}

export function propNamesFor(klass: QubeClass): string[] {
  return QUBE_PROP_LIST.filter((d) => d.classes.includes(klass)).map((d) => d.name).sort();
}

const GLOBAL_PROP_LIST: readonly GlobalPropDef[] = [
  { name: 'default_template', type: 'vm', access: 'rw', allowNone: true,
    help: 'Template for new AppVMs created without one.',
    check: (_h, s, v) => {
      if (typeof v !== 'string') return;
      const t = mustBeQube(s, v, 'default_template');
      if (t.klass !== 'TemplateVM') throw propertyValueError(`'${v}' is not a TemplateVM`);
    } },
  { name: 'default_netvm', type: 'vm', access: 'rw', allowNone: true, default: () => null,
    help: 'Default netvm of qubes that do not set their own.',
    check: (_h, s, v) => {
      if (typeof v !== 'string') return;
      const t = mustBeQube(s, v, 'default_netvm');
      if (t.klass === 'AdminVM' || !boolValue(s, t, 'provides_network')) {
        throw propertyValueError(`The qube '${v}' does not provide network (provides_network is False)`);
      }
    } },
  { name: 'default_dispvm', type: 'vm', access: 'rw', allowNone: true, default: () => null,
    help: 'Default disposable template.',
    check: (_h, s, v) => { checkDispvmTemplate(s, v, 'default_dispvm'); } },
  { name: 'clockvm', type: 'vm', access: 'rw', allowNone: true, default: () => null,
    help: 'Qube that synchronises the clock.',
    check: (_h, s, v) => {
      if (typeof v === 'string' && mustBeQube(s, v, 'clockvm').klass === 'AdminVM') {
        throw propertyValueError('clockvm cannot be the AdminVM');
      }
    } },
  { name: 'updatevm', type: 'vm', access: 'rw', allowNone: true, default: () => null,
    help: 'Qube through which the admin domain downloads updates.',
    check: (_h, s, v) => {
      if (typeof v === 'string' && mustBeQube(s, v, 'updatevm').klass === 'AdminVM') {
        throw propertyValueError('updatevm cannot be the AdminVM');
      }
    } },
  { name: 'default_qrexec_timeout', type: 'int', access: 'rw', default: () => 60,
    help: 'Default qrexec_timeout of qubes.', check: checkRange(1, 3600) },
  { name: 'default_shutdown_timeout', type: 'int', access: 'rw', default: () => 60,
    help: 'Default shutdown_timeout of qubes.', check: checkRange(1, 3600) },
  { name: 'maxmem', type: 'int', access: 'ro', intrinsicIsDefault: true,
    help: 'Host memory in MiB.', intrinsic: () => hostMemoryMiB() },
  { name: 'no_cpus', type: 'int', access: 'ro', intrinsicIsDefault: true,
    help: 'Number of host CPUs.', intrinsic: () => os.cpus().length },
];

export const GLOBAL_PROPS: ReadonlyMap<string, GlobalPropDef> = new Map(GLOBAL_PROP_LIST.map((d) => [d.name, d]));

export function globalPropNames(): string[] {
  return [...GLOBAL_PROPS.keys()].sort();
}

// ---------- Get / parse ----------

export interface PropReading {
  readonly isDefault: boolean;
  readonly type: PropType;
  /** undefined: no value and no default. */
  readonly value: PropValue | undefined;
}

export function readProp<H>(def: PropDef<H>, h: H, explicit: Map<string, PropValue>, s: RegistryState): PropReading {
  if (def.intrinsic) return { isDefault: def.intrinsicIsDefault === true, type: def.type, value: def.intrinsic(h, s) };
  if (explicit.has(def.name)) return { isDefault: false, type: def.type, value: explicit.get(def.name) };
  return { isDefault: true, type: def.type, value: def.default?.(h, s) };
}

/** Python str() of a value, as the wire format shows it (None → empty). */
export function formatValue(value: PropValue | undefined): string {
  if (value === undefined || value === null) return '';
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  return String(value);
}

/** `default=True|False type=T VALUE` — always two spaces, even with an empty value. */
export function formatReading(r: PropReading): string {
  return `default=${r.isDefault ? 'True' : 'False'} type=${r.type} ${formatValue(r.value)}`;
}

/** Whether a stored value has the shape of the property's type (used when loading the store). */
export function valueFitsType(type: PropType, value: PropValue): boolean {
  switch (type) {
    case 'str':
      return typeof value === 'string';
    case 'int':
      return typeof value === 'number' && Number.isSafeInteger(value);
    case 'bool':
      return typeof value === 'boolean';
    case 'vm':
      return value === null || typeof value === 'string';
    case 'label':
      return typeof value === 'string' && findLabel(value)?.name === value;
  }
}

const TRUE_WORDS = new Set(['1', 'yes', 'true', 'on']);
const FALSE_WORDS = new Set(['0', 'no', 'false', 'off']);

/** Parses an untrusted Set payload by the property's type. Existence/class checks come after. */
export function parseValue(
  def: Pick<PropDef<unknown>, 'name' | 'type' | 'allowNone'>,
  holderName: string,
  untrustedValue: string,
): PropValue {
  if (!/^[\x20-\x7e]*$/.test(untrustedValue)) {
    throw propertyValueError(`Invalid value for property '${def.name}' of ${holderName}: only printable ASCII allowed`);
  }
  switch (def.type) {
    case 'str':
      return untrustedValue;
    case 'int': {
      if (!/^-?[0-9]{1,15}$/.test(untrustedValue)) {
        throw propertyValueError(`Failed to parse property value as int: '${untrustedValue}' for '${def.name}'`);
      }
      return Number(untrustedValue);
    }
    case 'bool': {
      const lower = untrustedValue.toLowerCase();
      if (TRUE_WORDS.has(lower)) return true;
      if (FALSE_WORDS.has(lower)) return false;
      throw propertyValueError(`Invalid literal for boolean property: '${untrustedValue}'`);
    }
    case 'vm': {
      if (untrustedValue === '' || untrustedValue.toLowerCase() === 'none') {
        if (def.allowNone === true) return null;
        throw propertyValueError(`Property '${def.name}' of ${holderName} cannot be None`);
      }
      return untrustedValue;
    }
    case 'label': {
      const label = findLabel(untrustedValue);
      if (!label) throw new QubesError('QubesLabelNotFoundError', `Label does not exist: ${untrustedValue}`);
      return label.name;
    }
  }
}
