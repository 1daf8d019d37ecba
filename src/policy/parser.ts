// Policy text → rules and directives (facts §1, §4, §7). Takes strings, so tests feed policies
// inline; the loader resolves the directives. A bad line is recorded and parsing goes on, so one
// run reports every error of a file; any error makes the whole policy invalid (fail closed).
import {
  PolicySyntaxError,
  parseServiceArgument,
  parseToken,
  splitFields,
  stripSpace,
  type Token,
} from './tokens.js';

export type Action = 'allow' | 'deny' | 'ask';

export interface Rule {
  /** null stands for `*`. */
  readonly service: string | null;
  readonly argument: string | null;
  readonly source: Token;
  readonly target: Token;
  readonly action: Action;
  /** `target=` */
  readonly redirect: Token | null;
  /** `default_target=` */
  readonly defaultTarget: Token | null;
  /** `user=`; empty counts as unset. */
  readonly user: string | null;
  readonly notify: boolean;
  readonly autostart: boolean;
  /** `file:line` */
  readonly where: string;
}

export type Entry =
  | { readonly kind: 'rule'; readonly rule: Rule }
  | { readonly kind: 'include'; readonly line: number; readonly path: string }
  | { readonly kind: 'include-dir'; readonly line: number; readonly path: string }
  | { readonly kind: 'include-service'; readonly line: number; readonly service: string | null; readonly argument: string | null; readonly path: string }
  /** `!include` inside an old-syntax file: another old-syntax file for the same service. */
  | { readonly kind: 'include-old'; readonly line: number; readonly path: string };

/** One problem; `line` is null for problems of a whole file (name, size, encoding). */
export interface PolicyError {
  readonly file: string;
  readonly line: number | null;
  readonly message: string;
}

export function formatError(e: PolicyError): string {
  return e.line === null ? `${e.file}: ${e.message}` : `${e.file}:${e.line}: ${e.message}`;
}

export interface ParsedText {
  readonly entries: Entry[];
  readonly errors: PolicyError[];
}

const ACTIONS: ReadonlySet<string> = new Set(['allow', 'deny', 'ask']);
const KEYS: Record<Action, ReadonlySet<string>> = {
  deny: new Set(['notify']),
  allow: new Set(['target', 'user', 'notify', 'autostart']),
  ask: new Set(['target', 'default_target', 'user', 'notify', 'autostart']),
};

function yesNo(key: string, value: string | undefined, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (value === 'yes') return true;
  if (value === 'no') return false;
  throw new PolicySyntaxError(`${key}= can be only 'yes' or 'no', not '${value}'`);
}

function parseParams(action: Action, words: readonly string[]): Map<string, string> {
  const params = new Map<string, string>();
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq < 0) throw new PolicySyntaxError(`invalid action parameter syntax '${word}' (expected KEY=VALUE)`);
    const key = word.slice(0, eq);
    if (params.has(key)) throw new PolicySyntaxError(`parameter '${key}' given twice`);
    params.set(key, word.slice(eq + 1));
  }
  for (const key of params.keys()) {
    if (!KEYS[action].has(key)) throw new PolicySyntaxError(`invalid parameters for action ${action}: '${key}'`);
  }
  return params;
}

/** SOURCE TARGET ACTION [KEY=VALUE ...] of a rule whose service and argument are known. */
function parseRuleTail(service: string | null, argument: string | null, fields: readonly string[], where: string): Rule {
  const [sourceRaw = '', targetRaw = '', actionRaw = '', ...paramWords] = fields;
  const source = parseToken(sourceRaw, 'source');
  const target = parseToken(targetRaw, 'target');
  if (!ACTIONS.has(actionRaw)) throw new PolicySyntaxError(`invalid action '${actionRaw}' (allow, deny or ask)`);
  const action = actionRaw as Action;
  const params = parseParams(action, paramWords);
  const redirectRaw = params.get('target');
  const defaultRaw = params.get('default_target');
  const redirect = redirectRaw === undefined ? null : parseToken(redirectRaw, 'redirect');
  const defaultTarget = defaultRaw === undefined ? null : parseToken(defaultRaw, 'default_target');
  const notify = yesNo('notify', params.get('notify'), action === 'deny');
  const autostart = yesNo('autostart', params.get('autostart'), true);
  if (action === 'allow' && target.kind === 'default' && redirect === null) {
    throw new PolicySyntaxError('allow action for @default rule must specify target= option');
  }
  const user = params.get('user');
  return { service, argument, source, target, action, redirect, defaultTarget, user: user === undefined || user === '' ? null : user, notify, autostart, where };
}

function parseRuleLine(fields: readonly string[], where: string): Rule {
  if (fields.length < 5) throw new PolicySyntaxError(`wrong number of fields (${fields.length}; expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAMS])`);
  const { service, argument } = parseServiceArgument(fields[0] ?? '', fields[1] ?? '');
  return parseRuleTail(service, argument, fields.slice(2), where);
}

function oneParam(name: string, params: readonly string[], expected: number): void {
  if (params.length !== expected) throw new PolicySyntaxError(`invalid number of params for ${name} (${params.length}; expected ${expected})`);
}

function parseDirective(fields: readonly string[], line: number): Entry {
  const [name = '', ...params] = fields;
  switch (name) {
    case '!include':
      oneParam(name, params, 1);
      return { kind: 'include', line, path: params[0] ?? '' };
    case '!include-dir':
      oneParam(name, params, 1);
      return { kind: 'include-dir', line, path: params[0] ?? '' };
    case '!include-service': {
      oneParam(name, params, 3);
      const { service, argument } = parseServiceArgument(params[0] ?? '', params[1] ?? '');
      return { kind: 'include-service', line, service, argument, path: params[2] ?? '' };
    }
    case '!compat-4.0':
      throw new PolicySyntaxError('!compat-4.0 is not supported by Bulkhead (convert the old per-service files to rules, or use !include-service)');
    default:
      throw new PolicySyntaxError(`invalid directive '${name}'`);
  }
}

/** Parsing stops after this many errors (a garbage file must not cost memory per line). */
export const DEFAULT_MAX_ERRORS = 1000;

/**
 * Runs `fn` on each non-blank, non-comment line (already stripped), recording its errors; stops
 * once `maxErrors` are recorded.
 */
function eachLine(text: string, file: string, errors: PolicyError[], maxErrors: number, fn: (line: string, lineNo: number) => void): void {
  // Universal newlines: \n, \r\n and a lone \r each end a line. Scanned in place rather than
  // split up front, so a huge file with few valid lines costs no array of every line.
  let lineNo = 0;
  for (let pos = 0; pos <= text.length && errors.length < maxErrors; ) {
    let end = pos;
    for (let c = text.charCodeAt(end); end < text.length && c !== 0x0a && c !== 0x0d; c = text.charCodeAt(++end));
    const line = stripSpace(text.slice(pos, end));
    lineNo++;
    pos = text.charCodeAt(end) === 0x0d && text.charCodeAt(end + 1) === 0x0a ? end + 2 : end + 1;
    if (line === '' || line.startsWith('#')) continue;
    try {
      fn(line, lineNo);
    } catch (err) {
      if (!(err instanceof PolicySyntaxError)) throw err;
      errors.push({ file, line: lineNo, message: err.message });
    }
  }
}

/** A policy file in the R4.1+ format. Never throws: errors are in the result. */
export function parsePolicyText(text: string, file: string, maxErrors = DEFAULT_MAX_ERRORS): ParsedText {
  const entries: Entry[] = [];
  const errors: PolicyError[] = [];
  eachLine(text, file, errors, maxErrors, (line, lineNo) => {
    const fields = splitFields(line);
    if (line.startsWith('!')) entries.push(parseDirective(fields, lineNo));
    else entries.push({ kind: 'rule', rule: parseRuleLine(fields, `${file}:${lineNo}`) });
  });
  return { entries, errors };
}

/**
 * A file named by `!include-service`: the old per-service syntax, `SOURCE TARGET ACTION[,PARAMS]`
 * with `$` for `@`, read for one fixed service and argument (facts §7).
 */
export function parseOldSyntaxText(
  text: string,
  file: string,
  service: string | null,
  argument: string | null,
  maxErrors = DEFAULT_MAX_ERRORS,
): ParsedText {
  const entries: Entry[] = [];
  const errors: PolicyError[] = [];
  eachLine(text, file, errors, maxErrors, (stripped, lineNo) => {
    const line = stripped.replaceAll('$include:', '!include ').replaceAll('$', '@').replaceAll(',', ' ');
    const fields = splitFields(line);
    if (line.startsWith('!')) {
      if (fields[0] !== '!include') throw new PolicySyntaxError(`invalid directive '${fields[0] ?? ''}' (an old-syntax file allows only !include)`);
      oneParam('!include', fields.slice(1), 1);
      entries.push({ kind: 'include-old', line: lineNo, path: fields[1] ?? '' });
      return;
    }
    if (fields.length < 3) throw new PolicySyntaxError(`wrong number of fields (${fields.length}; expected SOURCE TARGET ACTION[,PARAMS] in an old-syntax file)`);
    entries.push({ kind: 'rule', rule: parseRuleTail(service, argument, fields, `${file}:${lineNo}`) });
  });
  return { entries, errors };
}
