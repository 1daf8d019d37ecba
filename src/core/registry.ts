// The qube registry: every query and every change to qubes and global properties goes through
// here. A change runs on a draft copy, the whole draft is checked for integrity, persisted, and
// only then replaces the live state — an operation applies fully or not at all. Events fire
// after the change is committed.
import { randomUUID } from 'node:crypto';
import { ProtocolError, QubesError, propertyValueError, valueError, vmNotFound } from './errors.js';
import { findLabel } from './labels.js';
import { cloneState, type PropValue, type QubeClass, type QubeRecord, type RegistryState } from './model.js';
import { assertValidQubeName, isValidFeatureName, isValidFeatureValue, isValidTag } from './names.js';
import { featureWithTemplate } from './network.js';
import { DEFAULT_FIREWALL, formatRule, parseRules, ruleActive, type FirewallRule } from './firewall.js';
import {
  GLOBAL_PROPS,
  boolValue,
  formatValue,
  globalPropNames,
  globalPropValue,
  parseValue,
  propDefFor,
  propNamesFor,
  readProp,
  refValue,
  type PropDef,
  type PropReading,
} from './properties.js';

export interface RegistryEvent {
  /** Qube name, or empty for events of the whole system (domain-add, global properties). */
  readonly subject: string;
  readonly event: string;
  readonly kwargs: ReadonlyArray<readonly [string, string]>;
}

export type EventListener = (e: RegistryEvent) => void;

/** Persists a complete state; throws if it could not be made durable. */
export type Persist = (s: RegistryState) => void;

const MAX_QID = 10000;
const MAX_NOTES = 256000;
/** References between qubes held in vm-typed properties. */
const REF_PROPS = ['template', 'netvm', 'default_dispvm'] as const;

interface Draft {
  readonly s: RegistryState;
  readonly events: RegistryEvent[];
}

export class Registry {
  #state: RegistryState;
  readonly #persist: Persist;
  readonly #listeners = new Set<EventListener>();
  #isHalted: (name: string) => boolean = () => true;

  constructor(state: RegistryState, persist: Persist) {
    validateIntegrity(state);
    this.#state = state;
    this.#persist = persist;
  }

  /** The live state. Callers must not mutate it. */
  get state(): RegistryState {
    return this.#state;
  }

  /** The lifecycle layer tells the registry which qubes are halted (renames, removal, template). */
  setHaltedCheck(isHalted: (name: string) => boolean): void {
    this.#isHalted = isHalted;
  }

  subscribe(listener: EventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Fires an event that is not a registry change (lifecycle events). */
  emit(e: RegistryEvent): void {
    for (const l of [...this.#listeners]) {
      try {
        l(e);
      } catch (err) {
        // A listener (an event stream) failing must not undo a committed change nor starve the
        // other listeners.
        process.emitWarning(`event listener failed on ${e.event}: ${String(err)}`);
      }
    }
  }

  #change<T>(fn: (d: Draft) => T): T {
    const d: Draft = { s: cloneState(this.#state), events: [] };
    const result = fn(d);
    validateIntegrity(d.s);
    this.#persist(d.s);
    this.#state = d.s;
    for (const e of d.events) this.emit(e);
    return result;
  }

  // ---------- qubes ----------

  /** Resolves a destination: a qube name or `uuid:<uuid>`. */
  resolve(untrustedRef: string): QubeRecord {
    if (untrustedRef.startsWith('uuid:')) {
      const uuid = untrustedRef.slice(5);
      for (const q of this.#state.qubes.values()) if (q.uuid === uuid) return q;
      throw vmNotFound(untrustedRef);
    }
    const q = this.#state.qubes.get(untrustedRef);
    if (!q) throw vmNotFound(untrustedRef);
    return q;
  }

  list(): QubeRecord[] {
    return [...this.#state.qubes.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  create(opts: { klass: QubeClass; name: string; label: string; template?: string; source: string }): QubeRecord {
    const { klass, name } = opts;
    if (klass === 'AdminVM') throw new ProtocolError('AdminVM cannot be created');
    return this.#change((d) => {
      assertValidQubeName(name);
      if (d.s.qubes.has(name)) throw new QubesError('QubesVMAlreadyExistsError', `Qube already exists: ${name}`);
      if (!/^[A-Za-z0-9._-]+$/.test(opts.label) || /^[0-9]+$/.test(opts.label)) {
        throw new QubesError('QubesInvalidLabelError', 'Invalid label name');
      }
      const label = findLabel(opts.label);
      if (!label) throw new QubesError('QubesLabelNotFoundError', `Label does not exist: ${opts.label}`);
      const props = new Map<string, PropValue>([['label', label.name]]);
      if (klass === 'AppVM' || klass === 'DispVM') {
        let template = opts.template;
        if (template === undefined || template === '') {
          const fallback = globalPropValue(d.s, klass === 'AppVM' ? 'default_template' : 'default_dispvm');
          if (typeof fallback !== 'string') {
            throw valueError('Template for the qube not specified, nor default template set.');
          }
          template = fallback;
        }
        if (!d.s.qubes.has(template)) throw vmNotFound(template);
        props.set('template', template);
      } else if (opts.template !== undefined && opts.template !== '') {
        throw new ProtocolError(`${klass} cannot be based on template`);
      }
      const q: QubeRecord = {
        name,
        klass,
        qid: nextQid(d.s),
        uuid: randomUUID(),
        props,
        features: new Map(),
        tags: new Set([`created-by-${opts.source}`]),
        notes: '',
        firewall: [...DEFAULT_FIREWALL],
      };
      const templateDef = propDefFor(klass, 'template');
      const template = props.get('template');
      if (templateDef?.check && template !== undefined) templateDef.check(q, d.s, template);
      d.s.qubes.set(name, q);
      d.events.push({ subject: '', event: 'domain-add', kwargs: [['vm', name]] });
      return q;
    });
  }

  /** Names what depends on a qube: other qubes' references and global properties. */
  dependents(s: RegistryState, name: string): string[] {
    const found: string[] = [];
    for (const other of s.qubes.values()) {
      if (other.name === name) continue;
      for (const prop of REF_PROPS) {
        if (other.props.get(prop) === name) found.push(`${prop} of ${other.name}`);
      }
    }
    for (const [prop, value] of s.globals) {
      if (GLOBAL_PROPS.get(prop)?.type === 'vm' && value === name) found.push(`global property ${prop}`);
    }
    return found;
  }

  remove(name: string): void {
    this.#change((d) => {
      const q = d.s.qubes.get(name);
      if (!q) throw vmNotFound(name);
      if (q.klass === 'AdminVM') throw new QubesError('QubesVMInUseError', `'${name}' cannot be removed`);
      if (!this.#isHalted(name)) throw new QubesError('QubesVMNotHaltedError', `Domain is not powered off: '${name}'`);
      const deps = this.dependents(d.s, name);
      if (deps.length > 0) {
        throw new QubesError('QubesVMInUseError', `Domain is in use: '${name}'; used as ${deps.join(', ')}`);
      }
      d.s.qubes.delete(name);
      d.events.push({ subject: '', event: 'domain-delete', kwargs: [['vm', name]] });
    });
  }

  // ---------- qube properties ----------

  #def(q: QubeRecord, prop: string): PropDef<QubeRecord> {
    const def = propDefFor(q.klass, prop);
    if (!def) throw new QubesError('QubesNoSuchPropertyError', `Invalid property '${prop}' of ${q.name}`);
    return def;
  }

  propNames(name: string): string[] {
    return propNamesFor(this.resolve(name).klass);
  }

  getProp(name: string, prop: string): PropReading {
    const q = this.resolve(name);
    return readProp(this.#def(q, prop), q, q.props, this.#state);
  }

  /** The default a property would have if it were reset; undefined when it has none. */
  getPropDefault(name: string, prop: string): PropReading | undefined {
    const q = this.resolve(name);
    const def = this.#def(q, prop);
    if (def.intrinsic) return undefined;
    const value = def.default?.(q, this.#state);
    return value === undefined ? undefined : { isDefault: true, type: def.type, value };
  }

  propHelp(name: string, prop: string): string {
    return this.#def(this.resolve(name), prop).help;
  }

  setProp(name: string, prop: string, untrustedValue: string): void {
    this.#change((d) => {
      const q = draftQube(d, this.resolve(name));
      const def = this.#def(q, prop);
      if (prop === 'name') {
        this.#rename(d, q, untrustedValue);
        return;
      }
      if (def.access !== 'rw') throw propertyValueError(`Property '${prop}' of ${q.name} is read-only`);
      if (def.haltedOnly === true && !this.#isHalted(q.name)) {
        throw new QubesError('QubesVMNotHaltedError', `Cannot change ${prop} of a running qube: '${q.name}'`);
      }
      const value = parseValue(def, q.name, untrustedValue);
      def.check?.(q, d.s, value);
      const old = readProp(def, q, q.props, d.s).value;
      q.props.set(prop, value);
      d.events.push({
        subject: q.name,
        event: `property-set:${prop}`,
        kwargs: [['name', prop], ['newvalue', formatValue(value)], ['oldvalue', formatValue(old)]],
      });
    });
  }

  resetProp(name: string, prop: string): void {
    this.#change((d) => {
      const q = draftQube(d, this.resolve(name));
      const def = this.#def(q, prop);
      if (def.access !== 'rw' || def.intrinsic) throw propertyValueError(`Property '${prop}' of ${q.name} cannot be reset`);
      if (prop === 'label' || (prop === 'template' && q.props.has('template'))) {
        throw propertyValueError(`Property '${prop}' of ${q.name} has no default and cannot be reset`);
      }
      if (def.haltedOnly === true && !this.#isHalted(q.name)) {
        throw new QubesError('QubesVMNotHaltedError', `Cannot change ${prop} of a running qube: '${q.name}'`);
      }
      const old = readProp(def, q, q.props, d.s).value;
      q.props.delete(prop);
      d.events.push(
        { subject: q.name, event: `property-reset:${prop}`, kwargs: [['name', prop], ['oldvalue', formatValue(old)]] },
        { subject: q.name, event: `property-del:${prop}`, kwargs: [['name', prop], ['oldvalue', formatValue(old)]] },
      );
    });
  }

  #rename(d: Draft, q: QubeRecord, untrustedNewName: string): void {
    if (q.klass === 'AdminVM') throw propertyValueError("The AdminVM 'dom0' cannot be renamed");
    if (!this.#isHalted(q.name)) {
      throw new QubesError('QubesVMNotHaltedError', `Cannot rename a running qube: '${q.name}'`);
    }
    assertValidQubeName(untrustedNewName);
    const newName = untrustedNewName;
    if (newName === q.name) return;
    if (d.s.qubes.has(newName)) throw new QubesError('QubesVMAlreadyExistsError', `Qube already exists: ${newName}`);
    const oldName = q.name;
    const busy = [...d.s.qubes.values()].filter(
      (o) => o.klass !== 'AdminVM' && REF_PROPS.some((p) => refValue(d.s, o, p) === oldName) && !this.#isHalted(o.name),
    );
    if (busy.length > 0) {
      throw new QubesError(
        'QubesVMInUseError',
        `Cannot rename '${oldName}' while qubes that use it are running: ${busy.map((o) => o.name).join(', ')}`,
      );
    }
    d.s.qubes.delete(oldName);
    q.name = newName;
    d.s.qubes.set(newName, q);
    for (const other of d.s.qubes.values()) {
      for (const prop of REF_PROPS) if (other.props.get(prop) === oldName) other.props.set(prop, newName);
    }
    for (const [prop, value] of d.s.globals) {
      if (GLOBAL_PROPS.get(prop)?.type === 'vm' && value === oldName) d.s.globals.set(prop, newName);
    }
    // Clients cache the qube list and refresh it on domain-add / domain-delete.
    d.events.push(
      { subject: '', event: 'domain-delete', kwargs: [['vm', oldName]] },
      { subject: '', event: 'domain-add', kwargs: [['vm', newName]] },
      { subject: newName, event: 'property-set:name', kwargs: [['name', 'name'], ['newvalue', newName], ['oldvalue', oldName]] },
    );
  }

  // ---------- global properties ----------

  #globalDef(prop: string): PropDef<null> {
    const def = GLOBAL_PROPS.get(prop);
    if (!def) throw new QubesError('QubesNoSuchPropertyError', `Invalid property '${prop}' of dom0`);
    return def;
  }

  globalNames(): string[] {
    return globalPropNames();
  }

  getGlobal(prop: string): PropReading {
    return readProp(this.#globalDef(prop), null, this.#state.globals, this.#state);
  }

  getGlobalDefault(prop: string): PropReading | undefined {
    const def = this.#globalDef(prop);
    if (def.intrinsic) return undefined;
    const value = def.default?.(null, this.#state);
    return value === undefined ? undefined : { isDefault: true, type: def.type, value };
  }

  globalHelp(prop: string): string {
    return this.#globalDef(prop).help;
  }

  setGlobal(prop: string, untrustedValue: string): void {
    this.#change((d) => {
      const def = this.#globalDef(prop);
      if (def.access !== 'rw') throw propertyValueError(`Property '${prop}' is read-only`);
      const value = parseValue(def, 'dom0', untrustedValue);
      def.check?.(null, d.s, value);
      const old = readProp(def, null, d.s.globals, d.s).value;
      d.s.globals.set(prop, value);
      d.events.push({
        subject: '',
        event: `property-set:${prop}`,
        kwargs: [['name', prop], ['newvalue', formatValue(value)], ['oldvalue', formatValue(old)]],
      });
    });
  }

  resetGlobal(prop: string): void {
    this.#change((d) => {
      const def = this.#globalDef(prop);
      if (def.access !== 'rw') throw propertyValueError(`Property '${prop}' is read-only`);
      const old = readProp(def, null, d.s.globals, d.s).value;
      d.s.globals.delete(prop);
      d.events.push(
        { subject: '', event: `property-reset:${prop}`, kwargs: [['name', prop], ['oldvalue', formatValue(old)]] },
        { subject: '', event: `property-del:${prop}`, kwargs: [['name', prop], ['oldvalue', formatValue(old)]] },
      );
    });
  }

  // ---------- features, tags, notes ----------

  featureGet(name: string, feature: string): string {
    const q = this.resolve(name);
    const v = q.features.get(feature);
    if (v === undefined) throw featureNotFound(q.name, feature);
    return v;
  }

  /** Looks on the qube, then up its template chain. */
  featureCheckWithTemplate(name: string, feature: string): string {
    const v = featureWithTemplate(this.#state, this.resolve(name), feature);
    if (v === undefined) throw featureNotFound(name, feature);
    return v;
  }

  featureSet(name: string, untrustedFeature: string, untrustedValue: string): void {
    if (!isValidFeatureName(untrustedFeature)) throw new ProtocolError('invalid feature name');
    if (!isValidFeatureValue(untrustedValue)) throw new ProtocolError('feature value must be printable ASCII');
    this.#change((d) => {
      const q = draftQube(d, this.resolve(name));
      const old = q.features.get(untrustedFeature);
      q.features.set(untrustedFeature, untrustedValue);
      const kwargs: [string, string][] = [['feature', untrustedFeature], ['value', untrustedValue]];
      if (old !== undefined) kwargs.push(['oldvalue', old]);
      d.events.push({ subject: q.name, event: `domain-feature-set:${untrustedFeature}`, kwargs });
    });
  }

  featureRemove(name: string, feature: string): void {
    this.#change((d) => {
      const q = draftQube(d, this.resolve(name));
      if (!q.features.delete(feature)) throw featureNotFound(q.name, feature);
      d.events.push({ subject: q.name, event: `domain-feature-delete:${feature}`, kwargs: [['feature', feature]] });
    });
  }

  tagSet(name: string, untrustedTag: string): void {
    if (!isValidTag(untrustedTag)) {
      throw new QubesError('QubesInvalidTagError', 'Invalid tag: use letters, digits, _ and - only');
    }
    const q = this.resolve(name);
    if (q.tags.has(untrustedTag)) return;
    this.#change((d) => {
      draftQube(d, q).tags.add(untrustedTag);
      d.events.push({ subject: q.name, event: `domain-tag-add:${untrustedTag}`, kwargs: [['tag', untrustedTag]] });
    });
  }

  tagRemove(name: string, tag: string): void {
    const q = this.resolve(name);
    if (!q.tags.has(tag)) throw new QubesError('QubesTagNotFoundError', `Tag not set for domain ${q.name}: ${tag}`);
    this.#change((d) => {
      draftQube(d, q).tags.delete(tag);
      d.events.push({ subject: q.name, event: `domain-tag-delete:${tag}`, kwargs: [['tag', tag]] });
    });
  }

  notesSet(name: string, untrustedNotes: string): void {
    if (untrustedNotes.length > MAX_NOTES) throw new QubesError('QubesNotesError', 'Notes too long');
    // Printable text with newlines and tabs; no other control characters.
    // eslint-disable-next-line no-control-regex
    if (/[\x00-\x08\x0b-\x1f\x7f]/.test(untrustedNotes)) {
      throw new QubesError('QubesNotesError', 'Notes may not contain control characters');
    }
    this.#change((d) => {
      const q = draftQube(d, this.resolve(name));
      q.notes = untrustedNotes;
    });
  }

  // ---------- firewall ----------

  /** The qube's rules still in force at `nowSec` (expired ones are gone at once, as in Qubes). */
  firewallRules(name: string, nowSec: number): FirewallRule[] {
    const q = this.resolve(name);
    return parseRules(q.firewall).filter((r) => ruleActive(r, nowSec));
  }

  /** Replaces the whole list (already parsed and checked) and fires `firewall-changed`. */
  firewallSet(name: string, rules: readonly FirewallRule[]): void {
    this.#change((d) => {
      const q = draftQube(d, this.resolve(name));
      if (q.klass === 'AdminVM') throw new QubesError('QubesVMError', 'The AdminVM has no firewall');
      q.firewall = rules.map(formatRule);
      d.events.push({ subject: q.name, event: 'firewall-changed', kwargs: [] });
    });
  }

  /** Removes the rules expired at `nowSec`; true when any was removed. */
  firewallDropExpired(name: string, nowSec: number): boolean {
    const q = this.resolve(name);
    const rules = parseRules(q.firewall);
    const left = rules.filter((r) => ruleActive(r, nowSec));
    if (left.length === rules.length) return false;
    this.firewallSet(q.name, left);
    return true;
  }
}

/** The draft's copy of a qube resolved in the live state (same name: renames happen in drafts). */
function draftQube(d: Draft, live: QubeRecord): QubeRecord {
  const q = d.s.qubes.get(live.name);
  if (!q) throw vmNotFound(live.name);
  return q;
}

function featureNotFound(name: string, feature: string): QubesError {
  return new QubesError('QubesFeatureNotFoundError', `Feature not set for domain ${name}: ${feature}`);
}

function nextQid(s: RegistryState): number {
  const used = new Set([...s.qubes.values()].map((q) => q.qid));
  for (let qid = 1; qid <= MAX_QID; qid++) if (!used.has(qid)) return qid;
  throw new QubesError('QubesException', 'No unused qube ID left');
}

/**
 * Checks the whole state: references resolve to qubes of the right kind, the netvm graph has
 * no loops. Called on every draft before it is committed and on every loaded store.
 */
export function validateIntegrity(s: RegistryState): void {
  const dom0 = s.qubes.get('dom0');
  if (dom0?.klass !== 'AdminVM') throw new QubesError('QubesException', 'The registry has no AdminVM dom0');
  const qids = new Set<number>();
  for (const q of s.qubes.values()) {
    if (qids.has(q.qid)) throw new QubesError('QubesException', `Duplicate qid ${q.qid}`);
    qids.add(q.qid);
    const dvm = refValue(s, q, 'default_dispvm');
    if (dvm !== null && !(q.klass === 'DispVM' && q.props.get('default_dispvm') === undefined)) {
      const target = s.qubes.get(dvm);
      if (!target || !boolValue(s, target, 'template_for_dispvms')) {
        throw propertyValueError(`default_dispvm of '${q.name}' would be '${dvm}', which is not a disposable template`);
      }
    }
    if (q.klass === 'AdminVM') {
      if (q.name !== 'dom0') throw new QubesError('QubesException', 'Only dom0 may be an AdminVM');
      continue;
    }
    if (q.klass === 'AppVM' || q.klass === 'DispVM') {
      const t = q.props.get('template');
      if (typeof t !== 'string' || !s.qubes.has(t)) throw new QubesError('QubesNoTemplateError', `Qube '${q.name}' has no template`);
      const tq = s.qubes.get(t);
      if (q.klass === 'DispVM' && tq && !boolValue(s, tq, 'template_for_dispvms')) {
        // A disposable template stays one while disposables are based on it.
        throw propertyValueError(`'${t}' has disposables based on it (${q.name}); template_for_dispvms must stay True`);
      }
    }
    // Every explicit value passes its property's own check (ranges, choices, references): a
    // value that came from the store file gets the same scrutiny as one set through the API.
    for (const [prop, value] of q.props) {
      const def = propDefFor(q.klass, prop);
      if (!def) throw new QubesError('QubesException', `Unknown property '${prop}' of '${q.name}'`);
      def.check?.(q, s, value);
    }
    const netvm = refValue(s, q, 'netvm');
    if (netvm !== null) {
      const target = s.qubes.get(netvm);
      if (!target || target.klass === 'AdminVM' || !boolValue(s, target, 'provides_network')) {
        throw propertyValueError(`netvm of '${q.name}' would be '${netvm}', which does not provide network`);
      }
    }
  }
  checkNoNetvmLoops(s);
  for (const [prop, value] of s.globals) {
    const def = GLOBAL_PROPS.get(prop);
    if (!def) throw new QubesError('QubesException', `Unknown global property '${prop}'`);
    if (def.type === 'vm' && typeof value === 'string' && !s.qubes.has(value)) {
      throw propertyValueError(`Global property ${prop} refers to a missing qube '${value}'`);
    }
    def.check?.(null, s, value);
  }
}

function checkNoNetvmLoops(s: RegistryState): void {
  for (const start of s.qubes.values()) {
    if (start.klass === 'AdminVM') continue;
    const seen = new Set<string>([start.name]);
    let cur: string | null = refValue(s, start, 'netvm');
    while (cur !== null) {
      if (seen.has(cur)) {
        throw propertyValueError(`Loops in network are unsupported: ${[...seen, cur].join(' -> ')}`);
      }
      seen.add(cur);
      const q = s.qubes.get(cur);
      cur = q ? refValue(s, q, 'netvm') : null;
    }
  }
}
