// The words of a policy line: whitespace (Python's isspace set, not JavaScript's \s), service and
// argument names, and the qube tokens with the columns each may appear in (facts §1, §2).

/**
 * Python's str.isspace() set, which is what splits and strips policy lines. It differs from
 * JavaScript's \s: U+001C–001F and U+0085 are spaces here, U+FEFF is not. (Scanned by hand: an
 * end-anchored regex would be quadratic on long runs of spaces.)
 */
function isSpace(c: number): boolean {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c === 0x85 || c === 0xa0 || c === 0x1680
    || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000;
}

/** str.strip() with Python's whitespace set. */
export function stripSpace(s: string): string {
  let start = 0;
  let end = s.length;
  while (start < end && isSpace(s.charCodeAt(start))) start++;
  while (end > start && isSpace(s.charCodeAt(end - 1))) end--;
  return s.slice(start, end);
}

/** str.split() with no separator: runs of Python whitespace, no empty fields. */
export function splitFields(s: string): string[] {
  const fields: string[] = [];
  let start = -1;
  for (let i = 0; i < s.length; i++) {
    if (isSpace(s.charCodeAt(i))) {
      if (start >= 0) fields.push(s.slice(start, i));
      start = -1;
    } else if (start < 0) {
      start = i;
    }
  }
  if (start >= 0) fields.push(s.slice(start));
  return fields;
}

/** A problem in one line; the loader adds the file and line. */
export class PolicySyntaxError extends Error {
  override readonly name = 'PolicySyntaxError';
}

const SERVICE_CHARS = /^[A-Za-z0-9._-]+$/;
const ARGUMENT_CHARS = /^[A-Za-z0-9._+-]*$/;

/** Service and argument columns (also the parameters of !include-service). null stands for `*`. */
export function parseServiceArgument(service: string, argument: string): { service: string | null; argument: string | null } {
  if (service !== '*' && !SERVICE_CHARS.test(service)) {
    throw new PolicySyntaxError(`service '${service}' contains invalid characters`);
  }
  if (argument !== '*') {
    if (!ARGUMENT_CHARS.test(argument)) throw new PolicySyntaxError(`argument '${argument}' contains invalid characters`);
    if (!argument.startsWith('+')) throw new PolicySyntaxError(`argument '${argument}' does not start with +`);
  }
  if (service === '*' && argument !== '*') throw new PolicySyntaxError('only * argument allowed for * service');
  return { service: service === '*' ? null : service, argument: argument === '*' ? null : argument };
}

/** The places a qube token can stand (facts §2). `request` is the target a caller asks for. */
export type Column = 'source' | 'target' | 'redirect' | 'default_target';

export type Token =
  | { readonly kind: 'literal'; readonly raw: string }
  | { readonly kind: 'any'; readonly raw: '*' }
  | { readonly kind: 'anyvm'; readonly raw: '@anyvm' }
  | { readonly kind: 'adminvm'; readonly raw: '@adminvm' }
  | { readonly kind: 'default'; readonly raw: '@default' }
  | { readonly kind: 'dispvm'; readonly raw: '@dispvm' }
  | { readonly kind: 'dispvm-name'; readonly raw: string; readonly name: string }
  | { readonly kind: 'dispvm-tag'; readonly raw: string; readonly tag: string }
  | { readonly kind: 'tag'; readonly raw: string; readonly tag: string }
  | { readonly kind: 'type'; readonly raw: string; readonly type: string };

type Kind = Token['kind'];

/** Facts §2, first table: which token may appear in which column. */
const ALLOWED: Record<Kind, ReadonlySet<Column>> = {
  literal: new Set(['source', 'target', 'redirect', 'default_target']),
  any: new Set(['source', 'target']),
  anyvm: new Set(['source', 'target']),
  adminvm: new Set(['source', 'target', 'redirect', 'default_target']),
  default: new Set(['target']),
  dispvm: new Set(['target', 'redirect', 'default_target']),
  'dispvm-name': new Set(['source', 'target', 'redirect', 'default_target']),
  'dispvm-tag': new Set(['source', 'target']),
  tag: new Set(['source', 'target']),
  type: new Set(['source', 'target']),
};

const KEYWORDS: ReadonlyMap<string, Token> = new Map<string, Token>([
  ['*', { kind: 'any', raw: '*' }],
  ['@anyvm', { kind: 'anyvm', raw: '@anyvm' }],
  ['@adminvm', { kind: 'adminvm', raw: '@adminvm' }],
  ['@default', { kind: 'default', raw: '@default' }],
  ['@dispvm', { kind: 'dispvm', raw: '@dispvm' }],
]);

const COLUMN_WORD: Record<Column, string> = { source: 'source', target: 'target', redirect: 'redirect', default_target: 'default_target' };

/** The value after a prefix: not empty, and not another @ word. */
function prefixValue(raw: string, prefix: string, column: Column): string {
  const value = raw.slice(prefix.length);
  if (value === '') throw new PolicySyntaxError(`invalid empty ${prefix} token`);
  if (value.startsWith('@')) throw new PolicySyntaxError(`invalid ${COLUMN_WORD[column]} token '${raw}'`);
  return value;
}

function classify(raw: string, column: Column): Token {
  const keyword = KEYWORDS.get(raw);
  if (keyword) return keyword;
  if (!raw.startsWith('@')) return { kind: 'literal', raw };
  if (raw.startsWith('@dispvm:@tag:')) return { kind: 'dispvm-tag', raw, tag: prefixValue(raw, '@dispvm:@tag:', column) };
  if (raw.startsWith('@dispvm:')) return { kind: 'dispvm-name', raw, name: prefixValue(raw, '@dispvm:', column) };
  if (raw.startsWith('@tag:')) return { kind: 'tag', raw, tag: prefixValue(raw, '@tag:', column) };
  if (raw.startsWith('@type:')) return { kind: 'type', raw, type: prefixValue(raw, '@type:', column) };
  throw new PolicySyntaxError(`invalid ${COLUMN_WORD[column]} token '${raw}'`);
}

/** A token checked for its column. */
export function parseToken(raw: string, column: Column): Token {
  if (raw === '') throw new PolicySyntaxError(`invalid empty ${COLUMN_WORD[column]} token`);
  const token = classify(raw, column);
  if (!ALLOWED[token.kind].has(column)) throw new PolicySyntaxError(`invalid ${COLUMN_WORD[column]} token '${raw}'`);
  return token;
}

/** dom0, @adminvm and uuid:0…0 all name the admin domain and match each other. */
export const DOM0_UUID = '00000000-0000-0000-0000-000000000000';
const DOM0_FAMILY: ReadonlySet<string> = new Set(['dom0', '@adminvm', `uuid:${DOM0_UUID}`]);

export function isDom0Family(s: string): boolean {
  return DOM0_FAMILY.has(s);
}
