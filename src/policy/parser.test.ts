// Parser: lines, whitespace, tokens per column, parameters, directives, every error kind of the
// facts' table (docs: /work/shared/design/qrexec-policy-facts.md §1, §2, §4, §7), and fuzzing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { parseOldSyntaxText, parsePolicyText, type Entry, type Rule } from './parser.js';
import { splitFields, stripSpace } from './tokens.js';

function errorsOf(text: string): string[] {
  return parsePolicyText(text, 'f').errors.map((e) => `${e.line ?? '-'}: ${e.message}`);
}

function oneRule(text: string): Rule {
  const { entries, errors } = parsePolicyText(text, 'f');
  assert.deepEqual(errors, []);
  assert.equal(entries.length, 1);
  const e = entries[0]!;
  assert.equal(e.kind, 'rule');
  return e.rule;
}

function assertError(text: string, expected: RegExp): void {
  const errors = errorsOf(text);
  assert.equal(errors.length, 1, `${JSON.stringify(text)} gave ${JSON.stringify(errors)}`);
  assert.match(errors[0]!, expected, JSON.stringify(text));
}

test('whitespace is Python isspace: U+001C-001F and U+0085 split and strip, U+FEFF does not', () => {
  for (const sp of ['\t', '\n', '\v', '\f', '\r', '\x1c', '\x1d', '\x1e', '\x1f', ' ', '\x85', '\xa0', '\u1680', '\u2000', '\u200a', '\u2028', '\u2029', '\u202f', '\u205f', '\u3000']) {
    assert.deepEqual(splitFields(`a${sp}b${sp}${sp}c`), ['a', 'b', 'c'], `U+${sp.codePointAt(0)!.toString(16)}`);
    assert.equal(stripSpace(`${sp}x${sp}`), 'x');
  }
  for (const notSpace of ['\ufeff', '\u200b', '\u180e', '\x00']) {
    assert.deepEqual(splitFields(`a${notSpace}b`), [`a${notSpace}b`], `U+${notSpace.codePointAt(0)!.toString(16)}`);
  }
  // A rule split by U+001F and U+0085 is valid; one "split" by U+FEFF is not.
  assert.deepEqual(errorsOf('svc\x1f*\x85@anyvm @anyvm deny'), []);
  assert.equal(errorsOf('svc\ufeff* @anyvm @anyvm deny x').length, 1);
});

test('universal newlines: \\n, \\r\\n and a lone \\r each end a line; line numbers start at 1', () => {
  const text = 'svc * @anyvm @anyvm deny\r\nbad1\rsvc * @anyvm @anyvm deny\nbad2\r\n\r\nbad3';
  assert.deepEqual(errorsOf(text).map((e) => e.split(':')[0]), ['2', '4', '6']);
});

test('blank lines and comments are skipped; # only at the start of a line; no inline comments', () => {
  assert.deepEqual(parsePolicyText('\n   \n# comment\n  \t# indented comment\n', 'f'), { entries: [], errors: [] });
  assertError('svc * @anyvm @anyvm deny # comment', /invalid action parameter syntax '#'/);
  assertError('svc * @anyvm @anyvm allow #', /invalid action parameter syntax/);
});

test('a leading BOM is not stripped: it becomes part of the first token', () => {
  assertError('\ufeffsvc * @anyvm @anyvm deny', /service '\ufeffsvc' contains invalid characters/);
  assertError('\ufeff# comment', /wrong number of fields/);
});

test('rules: the fields and the defaults of each action', () => {
  const r = oneRule('qubes.Filecopy +a+b work @anyvm ask');
  assert.equal(r.service, 'qubes.Filecopy');
  assert.equal(r.argument, '+a+b');
  assert.deepEqual(r.source, { kind: 'literal', raw: 'work' });
  assert.deepEqual(r.target, { kind: 'anyvm', raw: '@anyvm' });
  assert.equal(r.where, 'f:1');
  assert.deepEqual([r.action, r.notify, r.autostart, r.user, r.redirect, r.defaultTarget], ['ask', false, true, null, null, null]);
  const d = oneRule('* * @anyvm @anyvm deny');
  assert.deepEqual([d.service, d.argument, d.action, d.notify], [null, null, 'deny', true]);
  const a = oneRule('svc + @anyvm @anyvm allow');
  assert.deepEqual([a.argument, a.action, a.notify, a.autostart, a.user], ['+', 'allow', false, true, null]);
});

test('parameters: value after the first =, empty user unset, yes/no flags', () => {
  const r = oneRule('svc * @anyvm @anyvm allow user=a=b notify=yes autostart=no target=dom0');
  assert.deepEqual([r.user, r.notify, r.autostart, r.redirect?.raw], ['a=b', true, false, 'dom0']);
  assert.equal(oneRule('svc * @anyvm @anyvm allow user=').user, null);
  assert.equal(oneRule('svc * @anyvm @anyvm deny notify=no').notify, false);
  const ask = oneRule('svc * @anyvm @anyvm ask target=@dispvm default_target=@adminvm user=root');
  assert.deepEqual([ask.redirect?.raw, ask.defaultTarget?.raw, ask.user], ['@dispvm', '@adminvm', 'root']);
});

test('service and argument names (facts §1)', () => {
  for (const ok of ['svc.A-b_9 * @anyvm @anyvm deny', 'svc + @anyvm @anyvm deny', 'svc +a+b @anyvm @anyvm deny', 'svc +A.b_-9 @anyvm @anyvm deny', '* * @anyvm @anyvm deny']) {
    assert.deepEqual(errorsOf(ok), [], ok);
  }
  assertError('qubes.* * @anyvm @anyvm deny', /service 'qubes\.\*' contains invalid characters/);
  assertError('a+b * @anyvm @anyvm deny', /service 'a\+b' contains invalid characters/);
  assertError('$svc * @anyvm @anyvm deny', /service '\$svc' contains invalid characters/);
  assertError('svc +a*b @anyvm @anyvm deny', /argument '\+a\*b' contains invalid characters/);
  assertError('svc a @anyvm @anyvm deny', /argument 'a' does not start with \+/);
  assertError('svc a*b @anyvm @anyvm deny', /argument 'a\*b' contains invalid characters/);
  assertError('* +x @anyvm @anyvm deny', /only \* argument allowed for \* service/);
  assertError('* + @anyvm @anyvm deny', /only \* argument allowed for \* service/);
});

test('every error kind of the facts table', () => {
  const table: [string, RegExp][] = [
    ['svc * @anyvm @anyvm', /wrong number of fields/],
    ['qubes.* * @anyvm @anyvm deny', /service .* contains invalid characters/],
    ['svc +a*b @anyvm @anyvm deny', /argument .* contains invalid characters/],
    ['svc a @anyvm @anyvm deny', /does not start with \+/],
    ['* +x @anyvm @anyvm deny', /only \* argument allowed for \* service/],
    ['svc * @anyvm @anyvm allow target=', /invalid empty redirect token/],
    ['svc * @anyvm @anyvm ask default_target=', /invalid empty default_target token/],
    ['svc * @default @anyvm deny', /invalid source token '@default'/],
    ['svc * @anyvm @foo deny', /invalid target token '@foo'/],
    ['svc * @anyvm @ANYVM deny', /invalid target token '@ANYVM'/],
    ['svc * @anyvm @anyvm allow target=@anyvm', /invalid redirect token '@anyvm'/],
    ['svc * @tag: @anyvm deny', /invalid empty @tag: token/],
    ['svc * @anyvm @type: deny', /invalid empty @type: token/],
    ['svc * @anyvm @dispvm: deny', /invalid empty @dispvm: token/],
    ['svc * @anyvm @dispvm:@tag: deny', /invalid empty @dispvm:@tag: token/],
    ['svc * @tag:@x @anyvm deny', /invalid source token '@tag:@x'/],
    ['svc * @anyvm @dispvm:@x deny', /invalid target token '@dispvm:@x'/],
    ['svc * @anyvm @dispvm:@tag:@x deny', /invalid target token '@dispvm:@tag:@x'/],
    ['svc * @anyvm @anyvm Allow', /invalid action 'Allow'/],
    ['svc * @anyvm @anyvm allow,target=x', /invalid action 'allow,target=x'/],
    ['svc * @anyvm @anyvm allow notify', /invalid action parameter syntax 'notify'/],
    ['svc * @anyvm @anyvm deny notify=yes notify=no', /parameter 'notify' given twice/],
    ['svc * @anyvm @anyvm deny notify=Yes', /notify= can be only 'yes' or 'no'/],
    ['svc * @anyvm @anyvm allow autostart=true', /autostart= can be only 'yes' or 'no'/],
    ['svc * @anyvm @anyvm deny target=x', /invalid parameters for action deny: 'target'/],
    ['svc * @anyvm @anyvm allow default_target=x', /invalid parameters for action allow: 'default_target'/],
    ['svc * @anyvm @anyvm allow rule=x', /invalid parameters for action allow: 'rule'/],
    ['svc * @anyvm @anyvm ask self=x', /invalid parameters for action ask: 'self'/],
    ['svc + @anyvm @default allow', /allow action for @default rule must specify target= option/],
    ['!foo', /invalid directive '!foo'/],
    ['!includex a', /invalid directive '!includex'/],
    ['!include a b', /invalid number of params for !include/],
    ['!include', /invalid number of params for !include/],
    ['!include-dir', /invalid number of params for !include-dir/],
    ['!include-service svc * ', /invalid number of params for !include-service/],
    ['!include-service * +x file', /only \* argument allowed for \* service/],
    ['!include-service svc x file', /does not start with \+/],
    ['!compat-4.0', /!compat-4\.0 is not supported by Bulkhead/],
    ['!compat-4.0 x', /!compat-4\.0 is not supported by Bulkhead/],
  ];
  for (const [line, expected] of table) assertError(line, expected);
});

test('tokens per column (facts §2): accepted where ticked, an error elsewhere', () => {
  // Columns: source, target, target=, default_target=.
  const table: [string, boolean, boolean, boolean, boolean][] = [
    ['work', true, true, true, true],
    ['uuid:8a1b2c3d-0000-0000-0000-000000000001', true, true, true, true],
    ['dom0', true, true, true, true],
    ['$anyvm', true, true, true, true], // a literal: no character check
    ['a*b', true, true, true, true],
    ['*', true, true, false, false],
    ['@anyvm', true, true, false, false],
    ['@adminvm', true, true, true, true],
    ['@default', false, true, false, false],
    ['@dispvm', false, true, true, true],
    ['@dispvm:dvm', true, true, true, true],
    ['@dispvm:@tag:t', true, true, false, false],
    ['@tag:t', true, true, false, false],
    ['@type:AppVM', true, true, false, false],
    ['@foo', false, false, false, false],
    ['@Anyvm', false, false, false, false],
  ];
  for (const [tok, source, target, redirect, def] of table) {
    const cases: [string, boolean][] = [
      [`svc * ${tok} @anyvm deny`, source],
      [`svc * @anyvm ${tok} deny`, target],
      [`svc * @anyvm @anyvm allow target=${tok}`, redirect],
      [`svc * @anyvm @anyvm ask default_target=${tok}`, def],
    ];
    for (const [line, ok] of cases) {
      const errors = errorsOf(line);
      if (ok) assert.deepEqual(errors, [], line);
      else assert.match(errors[0] ?? '', /invalid (source|target|redirect|default_target) token/, line);
    }
  }
});

test('token kinds carry their values', () => {
  const r = oneRule('svc * @tag:a:b @dispvm:@tag:x ask target=@dispvm:dvm default_target=uuid:u');
  assert.deepEqual(r.source, { kind: 'tag', raw: '@tag:a:b', tag: 'a:b' });
  assert.deepEqual(r.target, { kind: 'dispvm-tag', raw: '@dispvm:@tag:x', tag: 'x' });
  assert.deepEqual(r.redirect, { kind: 'dispvm-name', raw: '@dispvm:dvm', name: 'dvm' });
  assert.deepEqual(r.defaultTarget, { kind: 'literal', raw: 'uuid:u' });
  assert.deepEqual(oneRule('svc * @type:TemplateVM * deny').source, { kind: 'type', raw: '@type:TemplateVM', type: 'TemplateVM' });
});

test('every error of a file is reported, with its line', () => {
  const text = ['svc * @anyvm @anyvm deny', 'bad', '# fine', 'svc * @anyvm @anyvm Deny', '!nope', 'svc * @anyvm @anyvm allow'].join('\n');
  assert.deepEqual(errorsOf(text), [
    '2: wrong number of fields (1; expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAMS])',
    "4: invalid action 'Deny' (allow, deny or ask)",
    "5: invalid directive '!nope'",
  ]);
  // Valid lines are still parsed (the loader decides that any error voids the policy).
  assert.equal(parsePolicyText(text, 'f').entries.length, 2);
});

test('directives are entries in place', () => {
  const { entries, errors } = parsePolicyText('!include a.policy\nsvc * @anyvm @anyvm deny\n!include-dir d\n!include-service svc +x old', 'f');
  assert.deepEqual(errors, []);
  assert.deepEqual(entries.map((e) => e.kind), ['include', 'rule', 'include-dir', 'include-service']);
  assert.deepEqual(entries[0], { kind: 'include', line: 1, path: 'a.policy' });
  assert.deepEqual(entries[3], { kind: 'include-service', line: 4, service: 'svc', argument: '+x', path: 'old' });
  const star = parsePolicyText('!include-service * * old', 'f').entries[0];
  assert.deepEqual(star, { kind: 'include-service', line: 1, service: null, argument: null, path: 'old' });
});

test('old syntax: $ becomes @, commas become spaces, $include: becomes !include', () => {
  const text = [
    '# old comment',
    '$anyvm $anyvm allow,target=dom0',
    '$tag:work $dispvm:dvm ask,default_target=$dispvm:dvm',
    '$include:/etc/old/other',
    '!include /etc/old/more',
    'work vault deny,notify=no',
  ].join('\n');
  const { entries, errors } = parseOldSyntaxText(text, 'old', 'qubes.Svc', '+arg');
  assert.deepEqual(errors, []);
  assert.deepEqual(entries.map((e) => e.kind), ['rule', 'rule', 'include-old', 'include-old', 'rule']);
  const r0 = (entries[0] as Extract<Entry, { kind: 'rule' }>).rule;
  assert.deepEqual([r0.service, r0.argument, r0.source.raw, r0.target.raw, r0.action, r0.redirect?.raw, r0.where], ['qubes.Svc', '+arg', '@anyvm', '@anyvm', 'allow', 'dom0', 'old:2']);
  const r1 = (entries[1] as Extract<Entry, { kind: 'rule' }>).rule;
  assert.deepEqual([r1.source.raw, r1.target.raw, r1.defaultTarget?.raw], ['@tag:work', '@dispvm:dvm', '@dispvm:dvm']);
  assert.deepEqual(entries[2], { kind: 'include-old', line: 4, path: '/etc/old/other' });
  assert.equal((entries[4] as Extract<Entry, { kind: 'rule' }>).rule.notify, false);
});

test('old syntax errors: other directives, bare @include:, new-syntax lines, too few fields', () => {
  const errs = (text: string): string[] => parseOldSyntaxText(text, 'old', 'svc', null).errors.map((e) => e.message);
  assert.match(errs('!include-dir /x')[0] ?? '', /invalid directive '!include-dir'/);
  assert.match(errs('@include:/x')[0] ?? '', /wrong number of fields/);
  assert.match(errs('svc * @anyvm @anyvm allow')[0] ?? '', /invalid source token|invalid action/);
  assert.match(errs('$anyvm $anyvm')[0] ?? '', /wrong number of fields/);
  assert.match(errs('$include:a b')[0] ?? '', /invalid number of params for !include/);
  assert.deepEqual(errs('$anyvm $default allow'), ['allow action for @default rule must specify target= option']);
});

const SOUP = ['svc', '*', '+', '+a', '@anyvm', '@adminvm', '@default', '@dispvm', '@dispvm:x', '@dispvm:@tag:', '@tag:', '@type:t', 'allow', 'deny', 'ask',
  'target=', 'target=@dispvm', 'default_target=x', 'notify=yes', 'autostart=no', 'user=', '=', '!include', '!include-dir', '!include-service', '!compat-4.0',
  '#', '$anyvm', ',', '\ufeff', '\x85', '\x1c', '\t', ' ', '\r', '\n', '\r\n', 'uuid:', 'dom0', 'a'];

test('fuzz: the parser never throws and every error names a line of the text', () => {
  const text = fc.oneof(
    fc.string({ unit: 'binary', maxLength: 300 }),
    fc.array(fc.constantFrom(...SOUP), { maxLength: 60 }).map((words) => words.join(' ')),
    fc.array(fc.constantFrom(...SOUP), { maxLength: 60 }).map((words) => words.join('')),
  );
  fc.assert(
    fc.property(text, (t) => {
      const lineCount = t.split(/\r\n|\r|\n/).length;
      for (const parsed of [parsePolicyText(t, 'f'), parseOldSyntaxText(t, 'f', 'svc', null)]) {
        for (const e of parsed.errors) assert.ok(e.line !== null && e.line >= 1 && e.line <= lineCount);
        for (const entry of parsed.entries) if (entry.kind === 'rule') assert.match(entry.rule.where, /^f:\d+$/);
      }
    }),
    { numRuns: 2000 },
  );
});

test('fuzz: a large garbage text parses in bounded time', () => {
  const rnd = fc.sample(fc.string({ unit: 'binary', minLength: 2000, maxLength: 2000 }), { numRuns: 500, seed: 42 }).join('\n');
  const t0 = performance.now();
  const spaces = ' \u00a0\x85'.repeat(100_000);
  const parsed = parsePolicyText(`${rnd}\n${'svc '.repeat(200_000)}\n${spaces}x\nx${spaces}x${spaces}\n${'\t'.repeat(200_000)}x`, 'f');
  assert.ok(parsed.errors.length > 0);
  assert.ok(performance.now() - t0 < 5000, 'parsing took too long');
});
