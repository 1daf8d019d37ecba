// Evaluation (facts §3, §5, §6): normalise the caller's target, take the first matching rule,
// turn its action into a resolution. Anything the Qubes engine would crash on is a deny (§9);
// evaluate() never throws.
import type { Rule } from './parser.js';
import { SystemView, type SystemInfo } from './system.js';
import { isDom0Family, type Token } from './tokens.js';

export interface PolicyRequest {
  readonly source: string;
  /** As the caller asked; '' means @default. */
  readonly target: string;
  readonly service: string;
  /** '+' or '+ARG' (a request without argument has '+'). */
  readonly argument: string;
}

export type Resolution =
  | {
      result: 'allow';
      /** A qube name, 'dom0', or '@dispvm:NAME' (always names: a `uuid:` form is turned into the name). */
      target: string;
      autostart: boolean;
      user: string | null;
      notify: boolean;
      /** The caller's target after normalisation (facts §3). */
      requestedTarget: string;
      /** `file:line` of the deciding rule. */
      rule: string;
    }
  | {
      result: 'ask';
      /** What the user may pick: qube names in code-point order, then '@dispvm:NAME' entries, then 'dom0'. */
      targets: string[];
      defaultTarget: string | null;
      autostart: boolean;
      user: string | null;
      notify: boolean;
      requestedTarget: string;
      rule: string;
    }
  | { result: 'deny'; reason: string; notify: boolean; rule?: string };

export type AskResolution = Extract<Resolution, { result: 'ask' }>;

/** A case the Qubes engine crashes on (facts §9); ends the evaluation as a deny. */
class EvalCrash extends Error {
  override readonly name = 'EvalCrash';
}

function deny(reason: string, notify: boolean, rule?: string): Resolution {
  return rule === undefined ? { result: 'deny', reason, notify } : { result: 'deny', reason, notify, rule };
}

const DISPVM_PREFIX = '@dispvm:';

/** The source's default disposable template, or null when it has none (or is unknown). */
function defaultDispvm(view: SystemView, source: string): string | null {
  const dd = view.get(source)?.info.default_dispvm;
  return typeof dd === 'string' && dd !== '' ? dd : null;
}

/** A literal against a value (source, or normalised target), facts §2. */
function matchLiteral(literal: string, value: string, view: SystemView): boolean {
  if (isDom0Family(literal)) return isDom0Family(value);
  if (literal === value) return true;
  // Exactly one side in `uuid:` form: it matches the qube of that uuid.
  if (literal.startsWith('uuid:') === value.startsWith('uuid:')) return false;
  const a = view.get(literal);
  const b = view.get(value);
  return a !== undefined && b !== undefined && a.name === b.name;
}

function matchSource(token: Token, source: string, view: SystemView): boolean {
  switch (token.kind) {
    case 'literal':
      return matchLiteral(token.raw, source, view);
    case 'any':
      return true;
    case 'anyvm':
      return !isDom0Family(source);
    case 'adminvm':
      return isDom0Family(source);
    case 'tag':
      return view.get(source)?.info.tags.includes(token.tag) ?? false;
    case 'type':
      return view.get(source)?.info.type === token.type;
    case 'default':
    case 'dispvm':
    case 'dispvm-name':
    case 'dispvm-tag':
      return false;
  }
}

function matchTarget(token: Token, requested: string, source: string, view: SystemView): boolean {
  switch (token.kind) {
    case 'literal':
      return matchLiteral(token.raw, requested, view);
    case 'any':
      return true;
    case 'anyvm':
      return !isDom0Family(requested);
    case 'adminvm':
      return isDom0Family(requested);
    case 'default':
      return requested === '@default';
    case 'tag':
      return view.get(requested)?.info.tags.includes(token.tag) ?? false;
    case 'type':
      return view.get(requested)?.info.type === token.type;
    case 'dispvm':
      return requested === '@dispvm';
    case 'dispvm-name': {
      if (requested.startsWith(DISPVM_PREFIX)) {
        const asked = requested.slice(DISPVM_PREFIX.length);
        if (asked === token.name) return true;
        const a = view.get(token.name);
        const b = view.get(asked);
        return a !== undefined && b !== undefined && a.name === b.name;
      }
      if (requested !== '@dispvm') return false;
      const dd = defaultDispvm(view, source);
      if (dd === null) throw new EvalCrash(`rule token ${token.raw} needs the default_dispvm of '${source}', which has none`);
      return `${DISPVM_PREFIX}${dd}` === token.raw;
    }
    case 'dispvm-tag': {
      let name: string;
      if (requested.startsWith(DISPVM_PREFIX)) {
        name = requested.slice(DISPVM_PREFIX.length);
      } else if (requested === '@dispvm') {
        if (!view.has(source)) throw new EvalCrash(`unknown source '${source}'`);
        const dd = defaultDispvm(view, source);
        if (dd === null) return false;
        name = dd;
      } else {
        return false;
      }
      const template = view.get(name);
      if (template === undefined) throw new EvalCrash(`default_dispvm '${name}' of '${source}' does not exist`);
      return template.info.template_for_dispvms && template.info.tags.includes(token.tag);
    }
  }
}

type Normalised = { ok: true; target: string } | { ok: false; reason: string };

/** Facts §3: the caller's target (and an allow's target=) before matching. */
function normaliseTarget(target: string, view: SystemView): Normalised {
  if (target === '') return { ok: true, target: '@default' };
  if (target === '@default' || target === '@adminvm' || target === '@dispvm') return { ok: true, target };
  if (target.startsWith(DISPVM_PREFIX)) {
    const name = target.slice(DISPVM_PREFIX.length);
    if (name === '' || name.startsWith('@')) return { ok: false, reason: `invalid target '${target}'` };
    if (view.get(name)?.info.template_for_dispvms !== true) return { ok: false, reason: `'${name}' is not a template for dispvm` };
    return { ok: true, target };
  }
  if (target.startsWith('@') || target === '*') return { ok: false, reason: `invalid target '${target}'` };
  return { ok: true, target: view.has(target) ? target : '@default' };
}

/** The autostart=no test (facts §5 step 4): dom0, or a plain qube already running. */
function runningOrDom0(target: string, view: SystemView): boolean {
  if (isDom0Family(target)) return true;
  if (target.startsWith('@dispvm')) return false;
  const entry = view.get(target);
  if (entry === undefined) throw new EvalCrash(`target '${target}' does not exist`);
  return entry.info.power_state === 'Running';
}

/**
 * The name form of a target that can be used: 'dom0', a qube name, '@dispvm:NAME' (NAME a
 * disposable template that exists), or null when no call can go there.
 */
function usableTarget(target: string, view: SystemView): string | null {
  if (isDom0Family(target)) return 'dom0';
  if (target.startsWith(DISPVM_PREFIX)) {
    const template = view.get(target.slice(DISPVM_PREFIX.length));
    return template === undefined ? null : `${DISPVM_PREFIX}${template.name}`;
  }
  if (target.startsWith('@')) return null;
  return view.get(target)?.name ?? null;
}

/** Facts §2 second table: what a token offers in ask-target collection (names, never uuids). */
function expand(token: Token, view: SystemView): string[] {
  const dispvmTemplates = (): string[] =>
    view.names().filter((n) => view.get(n)?.info.template_for_dispvms === true).map((n) => `${DISPVM_PREFIX}${n}`);
  switch (token.kind) {
    case 'literal': {
      const entry = view.get(token.raw);
      return entry === undefined ? [] : [entry.name];
    }
    case 'any':
      return [...view.names(), ...dispvmTemplates(), '@dispvm'];
    case 'anyvm':
      return [...view.names().filter((n) => n !== 'dom0'), ...dispvmTemplates(), '@dispvm'];
    case 'adminvm':
      return ['@adminvm'];
    case 'default':
      return [];
    case 'tag':
      return view.names().filter((n) => view.get(n)?.info.tags.includes(token.tag) === true);
    case 'type':
      return view.names().filter((n) => view.get(n)?.info.type === token.type);
    case 'dispvm':
      return ['@dispvm'];
    case 'dispvm-name': {
      const template = view.get(token.name);
      if (template === undefined) throw new EvalCrash(`${token.raw}: '${token.name}' does not exist`);
      return template.info.template_for_dispvms ? [`${DISPVM_PREFIX}${template.name}`] : [];
    }
    case 'dispvm-tag':
      return view
        .names()
        .filter((n) => {
          const info = view.get(n)?.info;
          return info?.template_for_dispvms === true && info.tags.includes(token.tag);
        })
        .map((n) => `${DISPVM_PREFIX}${n}`);
  }
}

/** The documented order of ask targets: qubes, then disposables, then dom0, each in code-point order. */
function askOrder(a: string, b: string): number {
  const rank = (s: string): number => (s === 'dom0' ? 2 : s.startsWith(DISPVM_PREFIX) ? 1 : 0);
  const d = rank(a) - rank(b);
  if (d !== 0) return d;
  return a < b ? -1 : a > b ? 1 : 0;
}

const NO_RULES: readonly number[] = [];

/**
 * One SystemView per system-info object: many evaluations against one snapshot (admin.vm.List
 * checks every qube) share its indexes. A caller with a new state passes a new object.
 */
const views = new WeakMap<SystemInfo, SystemView>();
function viewOf(sys: SystemInfo): SystemView {
  let view = views.get(sys);
  if (view === undefined) {
    view = new SystemView(sys);
    views.set(sys, view);
  }
  return view;
}

export class Policy {
  readonly #rules: readonly Rule[];
  /** Rule indexes per service name (ascending), and of the `*` service rules. */
  readonly #byService = new Map<string, number[]>();
  readonly #wildcard: number[] = [];

  constructor(rules: readonly Rule[]) {
    this.#rules = rules;
    rules.forEach((rule, i) => {
      if (rule.service === null) {
        this.#wildcard.push(i);
        return;
      }
      let list = this.#byService.get(rule.service);
      if (list === undefined) this.#byService.set(rule.service, (list = []));
      list.push(i);
    });
  }

  get ruleCount(): number {
    return this.#rules.length;
  }

  /** Never throws: a case the Qubes engine would crash on, or a bug, is a deny. */
  evaluate(req: PolicyRequest, sys: SystemInfo): Resolution {
    try {
      return this.#evaluate(req, viewOf(sys));
    } catch (err) {
      return deny(`policy evaluation failed: ${err instanceof EvalCrash ? err.message : 'internal error'}`, true);
    }
  }

  /**
   * Calls `fn` on the rules of `service` and of the `*` service in policy order (or reversed)
   * until it returns true.
   */
  #walk(service: string, reverse: boolean, fn: (rule: Rule) => boolean): void {
    const own = this.#byService.get(service) ?? NO_RULES;
    const wild = this.#wildcard;
    const rules = this.#rules;
    if (!reverse) {
      let i = 0;
      let j = 0;
      while (i < own.length || j < wild.length) {
        const a = own[i] ?? Infinity;
        const b = wild[j] ?? Infinity;
        const idx = a < b ? (i++, a) : (j++, b);
        if (fn(rules[idx] as Rule)) return;
      }
    } else {
      let i = own.length - 1;
      let j = wild.length - 1;
      while (i >= 0 || j >= 0) {
        const a = own[i] ?? -1;
        const b = wild[j] ?? -1;
        const idx = a > b ? (i--, a) : (j--, b);
        if (fn(rules[idx] as Rule)) return;
      }
    }
  }

  #evaluate(req: PolicyRequest, view: SystemView): Resolution {
    const argument = req.argument === '' ? '+' : req.argument;
    const normalised = normaliseTarget(req.target, view);
    if (!normalised.ok) return deny(normalised.reason, true);
    const requested = normalised.target;
    let found: Rule | undefined;
    this.#walk(req.service, false, (rule) => {
      if (rule.argument !== null && rule.argument !== argument) return false;
      if (!matchSource(rule.source, req.source, view) || !matchTarget(rule.target, requested, req.source, view)) return false;
      found = rule;
      return true;
    });
    if (found === undefined) return deny('no matching rule found', true);
    switch (found.action) {
      case 'deny':
        return deny('denied by policy', found.notify, found.where);
      case 'allow':
        return this.#allow(found, requested, req.source, view);
      case 'ask':
        return this.#ask(found, requested, { ...req, argument }, view);
    }
  }

  #allow(rule: Rule, requested: string, source: string, view: SystemView): Resolution {
    let target = requested;
    if (rule.redirect !== null) {
      const redirected = normaliseTarget(rule.redirect.raw, view);
      if (!redirected.ok) return deny(redirected.reason, true, rule.where);
      target = redirected.target;
    }
    if (target === '@default') return deny('no target is specified by caller or policy', true, rule.where);
    if (target === '@dispvm') {
      const dd = defaultDispvm(view, source);
      if (dd === null) return deny(`no DispVM base is set for '${source}'`, true, rule.where);
      target = `${DISPVM_PREFIX}${dd}`;
    }
    if (!rule.autostart && !runningOrDom0(target, view)) {
      return deny(`target '${target}' is not running and the rule says autostart=no`, rule.notify, rule.where);
    }
    const usable = usableTarget(target, view);
    if (usable === null) throw new EvalCrash(`target '${target}' does not exist`);
    return { result: 'allow', target: usable, autostart: rule.autostart, user: rule.user, notify: rule.notify, requestedTarget: requested, rule: rule.where };
  }

  #ask(rule: Rule, requested: string, req: PolicyRequest, view: SystemView): Resolution {
    let offered: string[];
    if (rule.redirect !== null) {
      const raw = rule.redirect.raw;
      offered = [isDom0Family(raw) ? 'dom0' : raw];
    } else {
      offered = this.#collect(req, view);
    }
    if (!rule.autostart) offered = offered.filter((t) => runningOrDom0(t, view));
    if (offered.length === 0) return deny('no target is available to choose from', true, rule.where);

    let defaultTarget = rule.defaultTarget?.raw ?? null;
    if (defaultTarget === '@dispvm') {
      const dd = defaultDispvm(view, req.source);
      defaultTarget = dd === null ? null : `${DISPVM_PREFIX}${dd}`;
    } else if (defaultTarget !== null && isDom0Family(defaultTarget)) {
      defaultTarget = 'dom0';
    }
    // The default must be string-equal to an entry as written (uuid forms included).
    if (defaultTarget !== null && !offered.includes(defaultTarget)) defaultTarget = null;

    // Qubes offers a target= entry as written and crashes once it is picked if no call can go
    // there (@dispvm, a missing qube): every answer would end in a deny, so deny without asking.
    // Collected entries always exist (checked above), so this concerns only target=.
    const targets: string[] = [];
    for (const entry of offered) {
      const usable = usableTarget(entry, view);
      if (usable === null) return deny(`ask target '${entry}' names no qube that exists`, true, rule.where);
      targets.push(usable);
    }
    const shownDefault = defaultTarget === null ? null : usableTarget(defaultTarget, view);
    return {
      result: 'ask',
      targets: [...new Set(targets)].sort(askOrder),
      defaultTarget: shownDefault,
      autostart: rule.autostart,
      user: rule.user,
      notify: rule.notify,
      requestedTarget: requested,
      rule: rule.where,
    };
  }

  /** Facts §6 step 1 without target=: every relevant rule, last to first; allow/ask add, deny removes. */
  #collect(req: PolicyRequest, view: SystemView): string[] {
    const source = view.get(req.source);
    if (source === undefined) throw new EvalCrash(`unknown source '${req.source}'`);
    // Walking last to first, adding and removing, leaves each string as the topmost relevant
    // rule naming it says. The same walked first to last, deciding each string once, gives the
    // same set; and a token met before (same text) can only name strings already decided, so it
    // is not expanded again: 10,000 rules with one token cost one expansion.
    const decided = new Map<string, boolean>();
    const expanded = new Set<string>();
    this.#walk(req.service, false, (rule) => {
      if (rule.argument !== null && rule.argument !== req.argument) return false;
      if (!matchSource(rule.source, req.source, view)) return false;
      const token = rule.redirect ?? rule.target;
      if (expanded.has(token.raw)) return false;
      expanded.add(token.raw);
      for (const n of expand(token, view)) if (!decided.has(n)) decided.set(n, rule.action !== 'deny');
      return false;
    });
    const set = new Set([...decided].filter(([, offered]) => offered).map(([n]) => n));
    if (set.delete('@dispvm')) {
      const dd = defaultDispvm(view, req.source);
      if (dd !== null) {
        if (!view.has(dd)) throw new EvalCrash(`default_dispvm '${dd}' of '${req.source}' does not exist`);
        set.add(`${DISPVM_PREFIX}${dd}`);
      }
    }
    if (set.delete('@adminvm')) set.add('dom0');
    set.delete(source.name);
    set.delete(`uuid:${source.info.uuid}`);
    for (const entry of set) {
      const name = entry.startsWith(DISPVM_PREFIX) ? entry.slice(DISPVM_PREFIX.length) : entry;
      const info = view.get(name)?.info;
      if (info === undefined) throw new EvalCrash(`ask target '${entry}' does not exist`);
      if (info.internal === true) set.delete(entry);
    }
    return [...set];
  }
}

/** Facts §6 step 5: the user's answer to an ask. */
export function answerAsk(ask: AskResolution, answer: { allow: true; target: string } | { allow: false }): Resolution {
  if (!answer.allow) return deny('denied by the user', ask.notify, ask.rule);
  if (!ask.targets.includes(answer.target)) return deny(`'${answer.target}' is not a valid choice`, true, ask.rule);
  return {
    result: 'allow',
    target: answer.target,
    autostart: ask.autostart,
    user: ask.user,
    notify: ask.notify,
    requestedTarget: ask.requestedTarget,
    rule: ask.rule,
  };
}
