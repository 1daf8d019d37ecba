// The qube registry's data: qubes, their explicitly set properties, features, tags, notes,
// and the global properties. Maps everywhere: names come from clients, and a plain object
// keyed by an untrusted name ("constructor", "__proto__") would reach its prototype.

export const QUBE_CLASSES = ['AppVM', 'TemplateVM', 'StandaloneVM', 'AdminVM', 'DispVM'] as const;
export type QubeClass = (typeof QUBE_CLASSES)[number];

/** A stored property value: str, int, bool; vm references by name (null = None); label by name. */
export type PropValue = string | number | boolean | null;

export interface QubeRecord {
  name: string;
  readonly klass: QubeClass;
  readonly qid: number;
  readonly uuid: string;
  /** Only the explicitly set properties; everything else comes from defaults. */
  readonly props: Map<string, PropValue>;
  /** Insertion order is the order admin.vm.feature.List reports. */
  readonly features: Map<string, string>;
  readonly tags: Set<string>;
  notes: string;
  /** Firewall rules in canonical form (src/core/firewall.ts), in order; replaced whole on change. */
  firewall: readonly string[];
}

export interface RegistryState {
  readonly qubes: Map<string, QubeRecord>;
  readonly globals: Map<string, PropValue>;
}

export const DOM0_UUID = '00000000-0000-0000-0000-000000000000';

export function newDom0(): QubeRecord {
  return {
    name: 'dom0',
    klass: 'AdminVM',
    qid: 0,
    uuid: DOM0_UUID,
    props: new Map([['label', 'black']]),
    features: new Map(),
    tags: new Set(),
    notes: '',
    firewall: [],
  };
}

export function emptyState(): RegistryState {
  const dom0 = newDom0();
  return { qubes: new Map([[dom0.name, dom0]]), globals: new Map() };
}

export function cloneQube(q: QubeRecord): QubeRecord {
  return { ...q, props: new Map(q.props), features: new Map(q.features), tags: new Set(q.tags) };
}

/** A deep copy: write operations work on a draft and replace the state only when they succeed. */
export function cloneState(s: RegistryState): RegistryState {
  const qubes = new Map<string, QubeRecord>();
  for (const [name, q] of s.qubes) qubes.set(name, cloneQube(q));
  return { qubes, globals: new Map(s.globals) };
}
