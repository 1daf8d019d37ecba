// Evaluation against a hand-written system (facts §2, §3, §5, §6, §9). Every expectation below is
// written by hand from the facts, never computed by the code under test.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { answerAsk, type AskResolution, type Policy, type Resolution } from './engine.js';
import { policyFromText } from './loader.js';
import type { DomainInfo, SystemInfo } from './system.js';

const U = {
  dom0: '00000000-0000-0000-0000-000000000000',
  work: '11111111-1111-1111-1111-111111111111',
  personal: '22222222-2222-2222-2222-222222222222',
  vault: '33333333-3333-3333-3333-333333333333',
  dvm1: '44444444-4444-4444-4444-444444444444',
  dvm2: '55555555-5555-5555-5555-555555555555',
};

function qube(over: Partial<DomainInfo> & { uuid: string }): DomainInfo {
  return { type: 'AppVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Halted', ...over };
}

const SYS: SystemInfo = {
  domains: {
    dom0: qube({ type: 'AdminVM', tags: ['shared'], power_state: 'Running', uuid: U.dom0 }),
    work: qube({ tags: ['office', 'net'], default_dispvm: 'dvm1', power_state: 'Running', uuid: U.work }),
    personal: qube({ tags: ['office'], default_dispvm: 'dvm2', uuid: U.personal }),
    vault: qube({ tags: ['shared'], uuid: U.vault }),
    dvm1: qube({ tags: ['dvmtag'], default_dispvm: 'dvm1', template_for_dispvms: true, uuid: U.dvm1 }),
    dvm2: qube({ default_dispvm: 'dvm2', template_for_dispvms: true, power_state: 'Running', uuid: U.dvm2 }),
    'hidden-dvm': qube({ tags: ['dvmtag'], template_for_dispvms: true, internal: true, uuid: '66666666-6666-6666-6666-666666666666' }),
    tpl: qube({ type: 'TemplateVM', uuid: '77777777-7777-7777-7777-777777777777' }),
    broken: qube({ default_dispvm: 'gone', uuid: '88888888-8888-8888-8888-888888888888' }),
  },
};

function policy(text: string): Policy {
  const r = policyFromText(text, 'p');
  if (!r.ok) throw new Error(r.errors.join('\n'));
  return r.policy;
}

function ev(text: string, source: string, target: string, opts: { service?: string; argument?: string; sys?: SystemInfo } = {}): Resolution {
  return policy(text).evaluate({ source, target, service: opts.service ?? 'svc', argument: opts.argument ?? '+' }, opts.sys ?? SYS);
}

function result(r: Resolution): string {
  if (r.result === 'allow') return `allow ${r.target}`;
  if (r.result === 'ask') return `ask ${r.targets.join(',')}`;
  return `deny: ${r.reason}`;
}

const NO_MATCH = 'deny: no matching rule found';
/** A crash case turned into a deny on purpose, never an internal error of the engine. */
const CRASH = /^deny: policy evaluation failed: (?!internal error)/;

test('normalising the caller\'s target (facts §3)', () => {
  const p = 'svc * * * allow target=dom0';
  const requested = (source: string, target: string): string => {
    const r = ev(p, source, target);
    return r.result === 'allow' ? r.requestedTarget : result(r);
  };
  assert.equal(requested('work', ''), '@default');
  assert.equal(requested('work', '@default'), '@default');
  assert.equal(requested('work', '@adminvm'), '@adminvm');
  assert.equal(requested('work', '@dispvm'), '@dispvm');
  assert.equal(requested('vault', '@dispvm'), '@dispvm'); // kept without a default_dispvm
  assert.equal(requested('work', '@dispvm:dvm1'), '@dispvm:dvm1');
  assert.equal(requested('work', `@dispvm:uuid:${U.dvm1}`), `@dispvm:uuid:${U.dvm1}`);
  assert.equal(requested('work', '@dispvm:hidden-dvm'), '@dispvm:hidden-dvm'); // internal templates are accepted
  assert.equal(requested('work', '@dispvm:work'), "deny: 'work' is not a template for dispvm");
  assert.equal(requested('work', '@dispvm:nope'), "deny: 'nope' is not a template for dispvm");
  for (const bad of ['@anyvm', '@tag:x', '@type:AppVM', '@dispvm:@tag:x', '@dispvm:', '*', '@foo']) {
    assert.equal(requested('work', bad), `deny: invalid target '${bad}'`, bad);
  }
  assert.equal(requested('work', 'dom0'), 'dom0');
  assert.equal(requested('work', 'personal'), 'personal');
  assert.equal(requested('work', `uuid:${U.personal}`), `uuid:${U.personal}`);
  assert.equal(requested('work', 'nope'), '@default');
  assert.equal(requested('work', '$default'), '@default');
  assert.equal(requested('work', `uuid:${U.dom0}`), `uuid:${U.dom0}`);
});

test('the caller\'s target is denied before any rule when it is invalid', () => {
  const r = ev('svc * @anyvm * allow target=dom0', 'work', '@dispvm:work');
  assert.deepEqual(r, { result: 'deny', reason: "'work' is not a template for dispvm", notify: true });
});

test('target column matching (facts §2)', () => {
  const matches = (token: string, target: string, source = 'work'): string => result(ev(`svc * * ${token} allow target=dom0`, source, target));
  const yes = 'allow dom0';
  const table: [string, string, string, string?][] = [
    // token, requested target, expected, source
    ['dom0', 'dom0', yes], ['dom0', '@adminvm', yes], ['dom0', `uuid:${U.dom0}`, yes], ['dom0', 'work', NO_MATCH],
    ['@adminvm', 'dom0', yes], ['@adminvm', `uuid:${U.dom0}`, yes], ['@adminvm', '@adminvm', yes], ['@adminvm', '@default', NO_MATCH],
    [`uuid:${U.dom0}`, 'dom0', yes], [`uuid:${U.dom0}`, '@adminvm', yes],
    ['work', 'work', yes], ['work', `uuid:${U.work}`, yes], ['work', 'personal', NO_MATCH], ['work', '@default', NO_MATCH],
    [`uuid:${U.work}`, 'work', yes], [`uuid:${U.work}`, `uuid:${U.work}`, yes], [`uuid:${U.work}`, `uuid:${U.personal}`, NO_MATCH],
    ['nope', 'nope', NO_MATCH], // normalised to @default
    ['*', 'dom0', yes], ['*', '@default', yes], ['*', '@dispvm', yes], ['*', '@dispvm:dvm1', yes], ['*', 'personal', yes],
    ['@anyvm', 'dom0', NO_MATCH], ['@anyvm', '@adminvm', NO_MATCH], ['@anyvm', `uuid:${U.dom0}`, NO_MATCH],
    ['@anyvm', '@default', yes], ['@anyvm', '@dispvm', yes], ['@anyvm', '@dispvm:dvm1', yes], ['@anyvm', 'personal', yes],
    ['@default', '@default', yes], ['@default', '', yes], ['@default', 'personal', NO_MATCH],
    ['@tag:office', 'personal', yes], ['@tag:office', `uuid:${U.personal}`, yes], ['@tag:office', 'vault', NO_MATCH],
    ['@tag:office', '@default', NO_MATCH], ['@tag:shared', 'dom0', yes], ['@tag:shared', '@adminvm', NO_MATCH],
    ['@type:AdminVM', 'dom0', yes], ['@type:AdminVM', '@adminvm', NO_MATCH], ['@type:TemplateVM', 'tpl', yes], ['@type:AppVM', '@dispvm', NO_MATCH],
    ['@dispvm', '@dispvm', yes], ['@dispvm', '@dispvm:dvm1', NO_MATCH],
    ['@dispvm:dvm1', '@dispvm:dvm1', yes], ['@dispvm:dvm1', `@dispvm:uuid:${U.dvm1}`, yes], ['@dispvm:dvm1', '@dispvm:dvm2', NO_MATCH],
    ['@dispvm:dvm1', '@dispvm', yes, 'work'], ['@dispvm:dvm1', '@dispvm', NO_MATCH, 'personal'], ['@dispvm:dvm1', 'dvm1', NO_MATCH],
    [`@dispvm:uuid:${U.dvm1}`, '@dispvm', NO_MATCH, 'work'], [`@dispvm:uuid:${U.dvm1}`, '@dispvm:dvm1', yes],
    ['dvm1', '@dispvm:dvm1', NO_MATCH],
    ['@dispvm:@tag:dvmtag', '@dispvm:dvm1', yes], ['@dispvm:@tag:dvmtag', '@dispvm:dvm2', NO_MATCH], ['@dispvm:@tag:dvmtag', '@dispvm:hidden-dvm', yes],
    ['@dispvm:@tag:dvmtag', '@dispvm', yes, 'work'], ['@dispvm:@tag:dvmtag', '@dispvm', NO_MATCH, 'personal'],
    ['@dispvm:@tag:dvmtag', '@dispvm', NO_MATCH, 'vault'], ['@dispvm:@tag:dvmtag', 'dvm1', NO_MATCH],
  ];
  for (const [token, target, expected, source] of table) {
    assert.equal(matches(token, target, source), expected, `${token} vs ${target || "''"} from ${source ?? 'work'}`);
  }
});

test('source column matching (facts §2)', () => {
  const matches = (token: string, source: string): string => result(ev(`svc * ${token} * allow target=vault`, source, ''));
  const yes = 'allow vault';
  const table: [string, string, string][] = [
    ['work', 'work', yes], ['work', `uuid:${U.work}`, yes], ['work', 'personal', NO_MATCH],
    [`uuid:${U.work}`, 'work', yes],
    ['dom0', 'dom0', yes], ['@adminvm', 'dom0', yes], ['dom0', 'work', NO_MATCH],
    ['@anyvm', 'dom0', NO_MATCH], ['@anyvm', 'work', yes],
    ['*', 'dom0', yes], ['*', 'work', yes],
    ['@tag:office', 'work', yes], ['@tag:office', 'vault', NO_MATCH], ['@tag:shared', 'dom0', yes],
    ['@type:TemplateVM', 'tpl', yes], ['@type:TemplateVM', 'work', NO_MATCH],
    ['@dispvm:dvm1', 'dvm1', NO_MATCH], ['@dispvm:dvm1', '@dispvm:dvm1', NO_MATCH], ['@dispvm:@tag:dvmtag', 'dvm1', NO_MATCH],
  ];
  for (const [token, source, expected] of table) assert.equal(matches(token, source), expected, `${token} vs source ${source}`);
});

test('service and argument matching', () => {
  const p = ['svc +x @anyvm @anyvm allow target=dvm1', 'svc + @anyvm @anyvm allow target=dvm2', 'svc * @anyvm @anyvm allow target=vault', '* * @anyvm @anyvm allow target=tpl'].join('\n');
  const at = (service: string, argument: string): string => result(ev(p, 'work', '', { service, argument }));
  assert.equal(at('svc', '+x'), 'allow dvm1');
  assert.equal(at('svc', '+'), 'allow dvm2');
  assert.equal(at('svc', ''), 'allow dvm2'); // no argument is the empty argument
  assert.equal(at('svc', '+X'), 'allow vault'); // case-sensitive
  assert.equal(at('svc', '+y'), 'allow vault');
  assert.equal(at('Svc', '+x'), 'allow tpl');
  assert.equal(at('other', '+'), 'allow tpl');
});

test('the first matching rule decides, across * and named services in file order', () => {
  const before = ['* * @anyvm @anyvm deny', 'svc * @anyvm @anyvm allow target=vault'].join('\n');
  const after = ['svc * @anyvm @anyvm allow target=vault', '* * @anyvm @anyvm deny'].join('\n');
  assert.deepEqual(ev(before, 'work', 'personal'), { result: 'deny', reason: 'denied by policy', notify: true, rule: 'p:1' });
  assert.equal(result(ev(after, 'work', 'personal')), 'allow vault');
  const interleaved = ['a * @anyvm @anyvm allow target=dvm1', '* * work @anyvm allow target=dvm2', 'svc * @anyvm @anyvm allow target=vault', '* * @anyvm @anyvm deny'].join('\n');
  assert.equal(result(ev(interleaved, 'work', '')), 'allow dvm2');
  assert.equal(result(ev(interleaved, 'personal', '')), 'allow vault');
  assert.equal(result(ev(interleaved, 'personal', '', { service: 'b' })), 'deny: denied by policy');
});

test('no rule: deny with notify, and no rule named', () => {
  assert.deepEqual(ev('other * @anyvm @anyvm allow', 'work', 'personal'), { result: 'deny', reason: 'no matching rule found', notify: true });
  assert.deepEqual(ev('', 'work', 'personal'), { result: 'deny', reason: 'no matching rule found', notify: true });
});

test('deny: the rule\'s notify (default yes)', () => {
  assert.deepEqual(ev('svc * @anyvm @anyvm deny', 'work', 'vault'), { result: 'deny', reason: 'denied by policy', notify: true, rule: 'p:1' });
  assert.deepEqual(ev('svc * @anyvm @anyvm deny notify=no', 'work', 'vault'), { result: 'deny', reason: 'denied by policy', notify: false, rule: 'p:1' });
});

test('allow: the full result', () => {
  assert.deepEqual(ev('svc * @anyvm @anyvm allow', 'work', 'personal'), {
    result: 'allow', target: 'personal', autostart: true, user: null, notify: false, requestedTarget: 'personal', rule: 'p:1',
  });
  assert.deepEqual(ev('\n\nsvc * @anyvm @anyvm allow user=root notify=yes', 'work', `uuid:${U.personal}`), {
    result: 'allow', target: 'personal', autostart: true, user: 'root', notify: true, requestedTarget: `uuid:${U.personal}`, rule: 'p:3',
  });
});

test('allow: the caller\'s target, @adminvm and uuid forms end as names', () => {
  const p = 'svc * @anyvm * allow';
  assert.equal(result(ev(p, 'work', '@adminvm')), 'allow dom0');
  assert.equal(result(ev(p, 'work', `uuid:${U.dom0}`)), 'allow dom0');
  assert.equal(result(ev(p, 'work', 'dom0')), 'allow dom0');
  assert.equal(result(ev(p, 'work', `@dispvm:uuid:${U.dvm1}`)), 'allow @dispvm:dvm1');
  assert.equal(result(ev(p, 'work', 'work')), 'allow work'); // loopback is the caller's check at execution
});

test('allow: no target, @dispvm, redirects (facts §5)', () => {
  const deny = (reason: string, rule = 'p:1'): Resolution => ({ result: 'deny', reason, notify: true, rule });
  assert.deepEqual(ev('svc * @anyvm @anyvm allow', 'work', ''), deny('no target is specified by caller or policy'));
  assert.deepEqual(ev('svc * @anyvm @anyvm allow', 'work', 'nope'), deny('no target is specified by caller or policy'));
  // An @anyvm allow catches @default requests and hides later @default rules: no fall-through.
  assert.deepEqual(ev('svc * @anyvm @anyvm allow\nsvc * @anyvm @default allow target=vault', 'work', ''), deny('no target is specified by caller or policy'));
  assert.equal(result(ev('svc * @anyvm @dispvm allow', 'work', '@dispvm')), 'allow @dispvm:dvm1');
  assert.equal(result(ev('svc * @anyvm @dispvm allow', 'personal', '@dispvm')), 'allow @dispvm:dvm2');
  assert.deepEqual(ev('svc * @anyvm @dispvm allow', 'vault', '@dispvm'), deny("no DispVM base is set for 'vault'"));
  assert.match(result(ev('svc * @anyvm @dispvm allow', 'broken', '@dispvm')), CRASH);
  assert.equal(result(ev('svc * @anyvm @anyvm allow target=@dispvm', 'work', 'vault')), 'allow @dispvm:dvm1');
  assert.equal(result(ev('svc * @anyvm @anyvm allow target=@dispvm:dvm2', 'work', 'vault')), 'allow @dispvm:dvm2');
  assert.equal(result(ev('svc * @anyvm @anyvm allow target=@adminvm', 'work', 'vault')), 'allow dom0');
  assert.equal(result(ev(`svc * @anyvm @anyvm allow target=uuid:${U.vault}`, 'work', '')), 'allow vault');
  assert.deepEqual(ev('svc * @anyvm @anyvm allow target=nope', 'work', 'vault'), deny('no target is specified by caller or policy'));
  assert.deepEqual(ev('svc * @anyvm @anyvm allow target=@dispvm:work', 'work', 'vault'), deny("'work' is not a template for dispvm"));
  // A redirect wins even though another rule would deny its target.
  const redirect = ['svc * @anyvm @default allow target=vault', 'svc * @anyvm vault deny'].join('\n');
  assert.deepEqual(ev(redirect, 'work', ''), {
    result: 'allow', target: 'vault', autostart: true, user: null, notify: false, requestedTarget: '@default', rule: 'p:1',
  });
  assert.equal(result(ev(redirect, 'work', 'vault')), 'deny: denied by policy');
});

test('allow with autostart=no: only dom0 or a running qube, never a disposable', () => {
  const p = 'svc * @anyvm * allow autostart=no';
  assert.deepEqual(ev(p, 'personal', 'work'), {
    result: 'allow', target: 'work', autostart: false, user: null, notify: false, requestedTarget: 'work', rule: 'p:1',
  });
  assert.equal(result(ev(p, 'work', 'dom0')), 'allow dom0');
  assert.equal(result(ev(p, 'work', '@adminvm')), 'allow dom0');
  assert.deepEqual(ev(p, 'work', 'personal'), {
    result: 'deny', reason: "target 'personal' is not running and the rule says autostart=no", notify: false, rule: 'p:1',
  });
  assert.equal(ev('svc * @anyvm * allow autostart=no notify=yes', 'work', 'personal').notify, true);
  // dvm2 itself is running; a new disposable from it is not.
  assert.equal(result(ev(p, 'work', 'dvm2')), 'allow dvm2');
  assert.match(result(ev(p, 'work', '@dispvm:dvm2')), /^deny: target '@dispvm:dvm2' is not running/);
  assert.match(result(ev(p, 'personal', '@dispvm')), /^deny: target '@dispvm:dvm2' is not running/);
});

const ALL_BUT_WORK = ['broken', 'dvm1', 'dvm2', 'personal', 'tpl', 'vault', '@dispvm:dvm1', '@dispvm:dvm2'];

function asked(r: Resolution): AskResolution {
  assert.equal(r.result, 'ask', JSON.stringify(r));
  return r;
}

test('ask: the full result, and the documented order of targets', () => {
  assert.deepEqual(ev('svc * @anyvm @anyvm ask', 'work', ''), {
    result: 'ask', targets: ALL_BUT_WORK, defaultTarget: null, autostart: true, user: null, notify: false, requestedTarget: '@default', rule: 'p:1',
  });
  // @anyvm offers every qube but dom0, disposables of every template, @dispvm (→ dvm1 for work);
  // the source and internal qubes (hidden-dvm) are never offered. dom0 sorts last.
  assert.deepEqual(asked(ev('svc * @anyvm * ask', 'work', '')).targets, [...ALL_BUT_WORK, 'dom0']);
  assert.deepEqual(asked(ev('svc * @anyvm @tag:shared ask', 'work', 'vault')).targets, ['vault', 'dom0']);
});

test('ask collection: the walk from last to first, allow/ask add, deny removes (facts §6)', () => {
  const targets = (text: string, source: string, target: string): string => result(ev(text, source, target));
  // A deny above removes; a deny below is overridden by the ask above it.
  assert.equal(targets('svc * @anyvm vault deny\nsvc * @anyvm @anyvm ask', 'work', ''), `ask ${ALL_BUT_WORK.filter((t) => t !== 'vault').join(',')}`);
  assert.equal(targets('svc * @anyvm @anyvm ask\nsvc * @anyvm vault deny', 'work', ''), `ask ${ALL_BUT_WORK.join(',')}`);
  // deny @dispvm does not remove @dispvm:dvm1.
  assert.equal(targets('svc * @anyvm @dispvm deny\nsvc * @anyvm @anyvm ask', 'work', ''), `ask ${ALL_BUT_WORK.join(',')}`);
  // deny @dispvm:dvm1 removes that string, but @dispvm survives and becomes the source's default.
  assert.equal(targets('svc * @anyvm @dispvm:dvm1 deny\nsvc * @anyvm @anyvm ask', 'work', ''), `ask ${ALL_BUT_WORK.join(',')}`);
  assert.equal(targets('svc * @anyvm @dispvm:dvm1 deny\nsvc * @anyvm @anyvm ask', 'personal', ''), 'ask broken,dvm1,dvm2,tpl,vault,work,@dispvm:dvm2');
  // deny @adminvm does not remove dom0.
  assert.equal(targets('svc * @anyvm @adminvm deny\nsvc * @anyvm dom0 allow\nsvc * @anyvm @default ask', 'work', ''), 'ask dom0');
  // @adminvm offered becomes dom0.
  assert.equal(targets('svc * @anyvm @adminvm allow\nsvc * @anyvm @default ask', 'work', ''), 'ask dom0');
  // deny @default removes nothing; rules below the ask count; the ask adds its own column.
  assert.equal(targets('svc * @anyvm work ask\nsvc * @anyvm personal allow\nsvc * @anyvm @default deny', 'vault', 'work'), 'ask personal,work');
  // A deny naming a uuid removes that qube's name.
  assert.equal(targets(`svc * @anyvm uuid:${U.personal} deny\nsvc * @anyvm @tag:office ask`, 'vault', 'work'), 'ask work');
  // Only rules whose service, argument and source match count; their target column does not matter.
  const scoped = ['svc +x @anyvm tpl allow', 'other * @anyvm dvm1 allow', 'svc * vault personal allow', 'svc * @anyvm @default ask', '* * @anyvm dvm2 ask'].join('\n');
  assert.equal(targets(scoped, 'work', ''), 'ask dvm2');
  assert.equal(targets(scoped, 'vault', ''), 'ask dvm2,personal');
  // target= of allow and ask rules counts instead of their column.
  assert.equal(targets('svc * @anyvm tpl allow target=dvm1\nsvc * @anyvm @default ask', 'work', ''), 'ask dvm1');
  // @dispvm:@tag offers the tagged templates (not the internal one); @tag and @type offer names.
  assert.equal(targets('svc * @anyvm @dispvm:@tag:dvmtag ask', 'personal', '@dispvm:dvm1'), 'ask @dispvm:dvm1');
  assert.equal(targets('svc * @anyvm @type:TemplateVM allow\nsvc * @anyvm @tag:office ask', 'vault', 'work'), 'ask personal,tpl,work');
  // A literal naming a qube that does not exist offers nothing; a disposable of a non-template neither.
  assert.equal(targets('svc * @anyvm nope allow\nsvc * @anyvm @dispvm:work allow\nsvc * @anyvm vault ask', 'work', 'vault'), 'ask vault');
  // The source has no default_dispvm: @dispvm is dropped.
  assert.equal(targets('svc * @anyvm @dispvm ask', 'vault', '@dispvm'), 'deny: no target is available to choose from');
});

test('ask with target=: exactly that target, as written, the source not removed', () => {
  assert.deepEqual(asked(ev('svc * @anyvm @anyvm ask target=vault', 'work', 'personal')).targets, ['vault']);
  assert.deepEqual(asked(ev('svc * @anyvm @anyvm ask target=@adminvm', 'work', 'personal')).targets, ['dom0']);
  assert.deepEqual(asked(ev(`svc * @anyvm @anyvm ask target=uuid:${U.dom0}`, 'work', 'personal')).targets, ['dom0']);
  assert.deepEqual(asked(ev('svc * @anyvm @anyvm ask target=work', 'work', 'personal')).targets, ['work']);
  assert.deepEqual(asked(ev('svc * @anyvm @anyvm ask target=@dispvm:dvm2', 'work', 'personal')).targets, ['@dispvm:dvm2']);
  // Offered by name (Qubes shows the uuid form).
  assert.deepEqual(asked(ev(`svc * @anyvm @anyvm ask target=uuid:${U.vault}`, 'work', 'personal')).targets, ['vault']);
  // Entries Qubes would crash on once picked are denied without asking.
  assert.equal(result(ev('svc * @anyvm @anyvm ask target=@dispvm', 'work', 'personal')), "deny: ask target '@dispvm' names no qube that exists");
  assert.equal(result(ev('svc * @anyvm @anyvm ask target=nope', 'work', 'personal')), "deny: ask target 'nope' names no qube that exists");
  assert.equal(result(ev('svc * @anyvm @anyvm ask target=@dispvm:nope', 'work', 'personal')), "deny: ask target '@dispvm:nope' names no qube that exists");
});

test('ask with autostart=no: only running qubes and dom0 are offered', () => {
  assert.deepEqual(asked(ev('svc * @anyvm @anyvm ask autostart=no', 'personal', '')).targets, ['dvm2', 'work']);
  assert.deepEqual(asked(ev('svc * @anyvm * ask autostart=no', 'work', '')).targets, ['dvm2', 'dom0']);
  assert.equal(asked(ev('svc * @anyvm * ask autostart=no', 'work', '')).autostart, false);
  assert.equal(result(ev('svc * @anyvm vault ask autostart=no', 'work', 'vault')), 'deny: no target is available to choose from');
  assert.equal(result(ev('svc * @anyvm @anyvm ask target=@dispvm:dvm2 autostart=no', 'work', '')), 'deny: no target is available to choose from');
  assert.match(result(ev('svc * @anyvm @anyvm ask target=nope autostart=no', 'work', '')), CRASH);
});

test('ask default_target: resolved, and kept only when string-equal to an entry', () => {
  const def = (text: string, source = 'work'): string | null => asked(ev(text, source, '')).defaultTarget;
  assert.equal(def('svc * @anyvm @anyvm ask default_target=vault'), 'vault');
  assert.equal(def('svc * @anyvm @anyvm ask default_target=nope'), null);
  assert.equal(def('svc * @anyvm @anyvm ask default_target=work'), null); // the source is not offered
  assert.equal(def('svc * @anyvm @anyvm ask default_target=@dispvm'), '@dispvm:dvm1');
  assert.equal(def('svc * @anyvm @anyvm ask default_target=@dispvm', 'personal'), '@dispvm:dvm2');
  assert.equal(def('svc * @anyvm @anyvm ask default_target=@dispvm:dvm2'), '@dispvm:dvm2');
  assert.equal(def(`svc * @anyvm @anyvm ask default_target=uuid:${U.vault}`), null); // entries are names
  assert.equal(def(`svc * @anyvm @anyvm ask target=uuid:${U.vault} default_target=uuid:${U.vault}`), 'vault');
  assert.equal(def(`svc * @anyvm @anyvm ask target=vault default_target=uuid:${U.vault}`), null);
  assert.equal(def('svc * @anyvm @anyvm ask target=dom0 default_target=@adminvm'), 'dom0');
  assert.equal(def('svc * @anyvm * ask default_target=@adminvm'), 'dom0');
  assert.equal(def('svc * @anyvm @anyvm ask autostart=no default_target=vault', 'personal'), null); // vault is not running
});

test('answerAsk: a listed target allows with the ask\'s user and autostart; anything else denies', () => {
  const ask = asked(ev('svc * @anyvm @anyvm ask user=u autostart=no notify=yes target=@adminvm', 'work', 'vault'));
  assert.deepEqual(answerAsk(ask, { allow: true, target: 'dom0' }), {
    result: 'allow', target: 'dom0', autostart: false, user: 'u', notify: true, requestedTarget: 'vault', rule: 'p:1',
  });
  assert.deepEqual(answerAsk(ask, { allow: true, target: 'vault' }), { result: 'deny', reason: "'vault' is not a valid choice", notify: true, rule: 'p:1' });
  assert.deepEqual(answerAsk(ask, { allow: false }), { result: 'deny', reason: 'denied by the user', notify: true, rule: 'p:1' });
  const quiet = asked(ev('svc * @anyvm @anyvm ask', 'work', ''));
  assert.deepEqual(answerAsk(quiet, { allow: false }), { result: 'deny', reason: 'denied by the user', notify: false, rule: 'p:1' });
  assert.deepEqual(answerAsk(quiet, { allow: true, target: '@dispvm:dvm2' }), {
    result: 'allow', target: '@dispvm:dvm2', autostart: true, user: null, notify: false, requestedTarget: '@default', rule: 'p:1',
  });
  assert.equal(answerAsk(quiet, { allow: true, target: '@dispvm' }).result, 'deny');
  assert.equal(answerAsk(quiet, { allow: true, target: 'work' }).result, 'deny');
});

test('crash cases of the Qubes engine deny, and no later rule is consulted (facts §9)', () => {
  const fallback = '\nsvc * * * allow target=dom0';
  // @dispvm:NAME rule reached by a @dispvm request from a source without default_dispvm, or unknown.
  assert.match(result(ev(`svc * @anyvm @dispvm:dvm1 deny${fallback}`, 'vault', '@dispvm')), CRASH);
  assert.match(result(ev(`svc * * @dispvm:dvm1 deny${fallback}`, 'ghost', '@dispvm')), CRASH);
  // @dispvm:@tag rule meeting a default_dispvm that names no qube.
  assert.match(result(ev(`svc * @anyvm @dispvm:@tag:dvmtag deny${fallback}`, 'broken', '@dispvm')), CRASH);
  // ... while a missing default_dispvm is simply no match.
  assert.equal(result(ev(`svc * @anyvm @dispvm:@tag:dvmtag deny${fallback}`, 'vault', '@dispvm')), 'allow dom0');
  // Ask collection meeting @dispvm:X with X missing, or an unknown source.
  assert.match(result(ev('svc * @anyvm @dispvm:nope deny\nsvc * @anyvm @anyvm ask', 'work', '')), CRASH);
  assert.match(result(ev('svc * * @anyvm ask', 'ghost', '')), CRASH);
  // The source's default_dispvm names no qube when @dispvm is offered or allowed.
  assert.match(result(ev('svc * @anyvm @anyvm ask', 'broken', '')), CRASH);
  assert.match(result(ev('svc * @anyvm @dispvm allow', 'broken', '@dispvm')), CRASH);
  // autostart=no with ask target= naming a missing qube.
  assert.match(result(ev('svc * @anyvm @anyvm ask target=nope autostart=no', 'work', '')), CRASH);
  for (const r of [ev('svc * @anyvm @dispvm:dvm1 deny', 'vault', '@dispvm')]) assert.equal(r.notify, true);
});

test('golden: a realistic policy', () => {
  const text = [
    '# user rules',
    'qubes.Filecopy     *        vault     @anyvm          deny',
    'qubes.Filecopy     *        @anyvm    vault           deny notify=no',
    'qubes.Filecopy     *        @tag:office @tag:office   allow',
    'qubes.OpenURL      *        @anyvm    @dispvm         allow',
    'qubes.OpenURL      *        @anyvm    @anyvm          ask default_target=@dispvm',
    'qubes.Gpg          *        work      @default        allow target=vault',
    'qubes.Gpg          *        @anyvm    @anyvm          deny',
    'admin.vm.List      *        work      @adminvm        allow target=dom0',
    'admin.vm.List      *        work      @tag:office     allow target=dom0',
    'qubes.GetDate      *        @anyvm    @anyvm          allow target=dom0',
    'qubes.UpdatesProxy *        @type:TemplateVM @default allow target=work autostart=no',
    '*                  *        @anyvm    @anyvm          deny',
  ].join('\n');
  const p = policy(text);
  const at = (source: string, target: string, service: string, argument = '+'): Resolution => p.evaluate({ source, target, service, argument }, SYS);
  assert.deepEqual(at('vault', 'work', 'qubes.Filecopy'), { result: 'deny', reason: 'denied by policy', notify: true, rule: 'p:2' });
  assert.deepEqual(at('work', 'vault', 'qubes.Filecopy'), { result: 'deny', reason: 'denied by policy', notify: false, rule: 'p:3' });
  assert.deepEqual(at('work', 'personal', 'qubes.Filecopy'), { result: 'allow', target: 'personal', autostart: true, user: null, notify: false, requestedTarget: 'personal', rule: 'p:4' });
  assert.deepEqual(at('work', 'tpl', 'qubes.Filecopy'), { result: 'deny', reason: 'denied by policy', notify: true, rule: 'p:13' });
  assert.deepEqual(at('work', '@dispvm', 'qubes.OpenURL', '+https'), { result: 'allow', target: '@dispvm:dvm1', autostart: true, user: null, notify: false, requestedTarget: '@dispvm', rule: 'p:5' });
  // Offered: everything the ask's @anyvm names, minus nothing (the last * deny names @anyvm too,
  // but it is below the ask, so the ask's add wins).
  assert.deepEqual(at('personal', 'vault', 'qubes.OpenURL'), {
    result: 'ask', targets: ['broken', 'dvm1', 'dvm2', 'tpl', 'vault', 'work', '@dispvm:dvm1', '@dispvm:dvm2'], defaultTarget: '@dispvm:dvm2',
    autostart: true, user: null, notify: false, requestedTarget: 'vault', rule: 'p:6',
  });
  assert.deepEqual(at('work', '', 'qubes.Gpg'), { result: 'allow', target: 'vault', autostart: true, user: null, notify: false, requestedTarget: '@default', rule: 'p:7' });
  assert.deepEqual(at('work', 'personal', 'qubes.Gpg'), { result: 'deny', reason: 'denied by policy', notify: true, rule: 'p:8' });
  assert.deepEqual(at('personal', '', 'qubes.Gpg'), { result: 'deny', reason: 'denied by policy', notify: true, rule: 'p:8' });
  assert.deepEqual(at('work', 'dom0', 'admin.vm.List'), { result: 'allow', target: 'dom0', autostart: true, user: null, notify: false, requestedTarget: 'dom0', rule: 'p:9' });
  assert.deepEqual(at('work', 'personal', 'admin.vm.List'), { result: 'allow', target: 'dom0', autostart: true, user: null, notify: false, requestedTarget: 'personal', rule: 'p:10' });
  assert.deepEqual(at('work', 'vault', 'admin.vm.List'), { result: 'deny', reason: 'denied by policy', notify: true, rule: 'p:13' });
  assert.deepEqual(at('personal', 'dom0', 'admin.vm.List'), { result: 'deny', reason: 'no matching rule found', notify: true });
  assert.deepEqual(at('vault', 'nope', 'qubes.GetDate'), { result: 'allow', target: 'dom0', autostart: true, user: null, notify: false, requestedTarget: '@default', rule: 'p:11' });
  assert.deepEqual(at('tpl', '', 'qubes.UpdatesProxy'), { result: 'allow', target: 'work', autostart: false, user: null, notify: false, requestedTarget: '@default', rule: 'p:12' });
  assert.deepEqual(at('dom0', 'work', 'qubes.VMShell'), { result: 'deny', reason: 'no matching rule found', notify: true });
});

// ---------- properties ----------

const NAMES = ['dom0', 'work', 'personal', 'vault', 'dvm1', 'x', 'nope', 'constructor', '__proto__', 'toString'];
const arbDomain: fc.Arbitrary<DomainInfo> = fc.record({
  type: fc.constantFrom('AppVM', 'TemplateVM', 'AdminVM', 'DispVM', ''),
  tags: fc.array(fc.constantFrom('t', 'office', 'shared', ''), { maxLength: 3 }),
  default_dispvm: fc.option(fc.constantFrom(...NAMES), { nil: null }),
  template_for_dispvms: fc.boolean(),
  power_state: fc.constantFrom('Running', 'Halted', 'Paused'),
  uuid: fc.constantFrom(U.dom0, U.work, U.vault, 'u1', ''),
  internal: fc.option(fc.boolean(), { nil: undefined }),
});
// Each name present or not (mostly present), plus an explicit uuid: key the engine must ignore.
const arbSys: fc.Arbitrary<SystemInfo> = fc
  .tuple(...[...NAMES, `uuid:${U.work}`].map((n) => fc.option(arbDomain, { freq: 4, nil: undefined }).map((d) => [n, d] as const)))
  .map((entries) => {
    const domains: Record<string, DomainInfo> = {};
    for (const [n, d] of entries) if (d !== undefined) Object.defineProperty(domains, n, { value: d, enumerable: true });
    return { domains };
  });
const TARGETS = ['', ...NAMES, '@default', '@adminvm', '@dispvm', '@dispvm:dvm1', '@dispvm:x', '@dispvm:', '@anyvm', '*', `uuid:${U.work}`, `uuid:${U.dom0}`, `@dispvm:uuid:${U.vault}`];
const TOKENS = ['*', '@anyvm', '@adminvm', '@default', '@dispvm', '@dispvm:dvm1', '@dispvm:x', '@dispvm:@tag:t', '@tag:t', '@tag:office', '@type:AppVM', ...NAMES, `uuid:${U.work}`];
const arbRule = (askRedirects: boolean): fc.Arbitrary<string> => fc
  .record({
    svc: fc.constantFrom('svc', '*'),
    source: fc.oneof({ arbitrary: fc.constantFrom('*', '@anyvm'), weight: 2 }, { arbitrary: fc.constantFrom(...TOKENS.filter((t) => t !== '@default' && t !== '@dispvm')), weight: 1 }),
    target: fc.oneof({ arbitrary: fc.constantFrom('*', '@anyvm'), weight: 1 }, { arbitrary: fc.constantFrom(...TOKENS), weight: 2 }),
    action: fc.constantFrom('allow', 'deny', 'ask'),
    redirect: fc.option(fc.constantFrom('work', 'dom0', '@adminvm', '@dispvm', '@dispvm:dvm1', 'nope', `uuid:${U.vault}`), { nil: undefined }),
    def: fc.option(fc.constantFrom('work', '@dispvm', 'dom0', 'vault'), { nil: undefined }),
    autostart: fc.constantFrom('', ' autostart=no'),
  })
  .map((r) => {
    let line = `${r.svc} * ${r.source} ${r.target} ${r.action}`;
    if (r.action !== 'deny' && r.redirect !== undefined && (askRedirects || r.action === 'allow')) line += ` target=${r.redirect}`;
    if (r.action === 'ask' && r.def !== undefined) line += ` default_target=${r.def}`;
    if (r.action !== 'deny') line += r.autostart;
    if (r.action === 'allow' && r.target === '@default' && !line.includes('target=')) line += ' target=dom0';
    return line;
  });
const policies = (askRedirects: boolean): fc.Arbitrary<Policy> =>
  fc.array(arbRule(askRedirects), { maxLength: 12 }).map((lines) => {
    const r = policyFromText(lines.join('\n'), 'p');
    if (!r.ok) throw new Error(r.errors.join('\n')); // the generator makes valid rules only
    return r.policy;
  });
const arbPolicy = policies(true);

test('property: evaluate never throws, on any request and any system info', () => {
  const junk: fc.Arbitrary<SystemInfo> = fc.oneof(fc.anything().map((v) => ({ domains: v }) as SystemInfo), fc.anything().map((v) => v as SystemInfo));
  fc.assert(
    fc.property(arbPolicy, fc.oneof(arbSys, junk), fc.constantFrom(...NAMES, 'ghost'), fc.oneof(fc.constantFrom(...TARGETS), fc.string()), (p, sys, source, target) => {
      const r = p.evaluate({ source, target, service: 'svc', argument: '+' }, sys);
      assert.ok(['allow', 'deny', 'ask'].includes(r.result), JSON.stringify(r));
      if (r.result === 'ask') {
        const again = answerAsk(r, { allow: true, target: r.targets[0] ?? '' });
        assert.equal(again.result, 'allow');
      }
    }),
    { numRuns: 3000 },
  );
});

test('property: ask never offers the source or an internal qube, and offers only names', () => {
  fc.assert(
    fc.property(policies(false), arbSys, fc.constantFrom(...NAMES), fc.constantFrom(...TARGETS), (p, sys, source, target) => {
      const r = p.evaluate({ source, target, service: 'svc', argument: '+' }, sys);
      if (r.result !== 'ask') return;
      assert.ok(r.targets.length > 0);
      for (const t of r.targets) {
        assert.ok(!t.startsWith('uuid:') && t !== '@dispvm' && t !== '@adminvm', t);
        const name = t.startsWith('@dispvm:') ? t.slice(8) : t;
        assert.ok(Object.hasOwn(sys.domains, name), t);
        assert.notEqual(t, source);
        assert.notEqual(sys.domains[name]?.internal, true, t);
      }
      if (r.defaultTarget !== null) assert.ok(r.targets.includes(r.defaultTarget));
    }),
    { numRuns: 3000 },
  );
});

test('property: allow targets are names of existing qubes, dom0, or disposables of existing qubes; no internal errors', () => {
  fc.assert(
    fc.property(arbPolicy, arbSys, fc.constantFrom(...NAMES), fc.constantFrom(...TARGETS), (p, sys, source, target) => {
      const r = p.evaluate({ source, target, service: 'svc', argument: '+' }, sys);
      if (r.result === 'deny') assert.notEqual(r.reason, 'policy evaluation failed: internal error');
      if (r.result !== 'allow') return;
      const name = r.target.startsWith('@dispvm:') ? r.target.slice(8) : r.target;
      assert.ok(r.target === 'dom0' || Object.hasOwn(sys.domains, name), r.target);
      if (!r.autostart) assert.ok(r.target === 'dom0' || sys.domains[name]?.power_state === 'Running');
    }),
    { numRuns: 3000 },
  );
});

test('property: ask targets equal a plain last-to-first walk of every relevant rule (facts §6), however rules repeat', () => {
  const info = (over: Partial<DomainInfo>): DomainInfo => ({ type: 'AppVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', uuid: Math.random().toString(16).slice(2), ...over });
  const sys: SystemInfo = {
    domains: {
      dom0: info({ type: 'AdminVM', uuid: '00000000-0000-0000-0000-000000000000' }),
      a: info({ default_dispvm: 'dvm' }),
      b: info({}),
      c: info({ type: 'StandaloneVM' }),
      d: info({ tags: ['t'] }),
      dvm: info({ template_for_dispvms: true, tags: ['t'] }),
    },
  };
  const names = Object.keys(sys.domains);
  // The reference expansion, written from the facts' table, not taken from the engine.
  const expandRef = (tok: string): string[] => {
    const all = [...names, '@dispvm:dvm', '@dispvm'];
    if (tok === '*') return all;
    if (tok === '@anyvm') return all.filter((n) => n !== 'dom0');
    if (tok === '@adminvm' || tok === '@dispvm' || tok === '@dispvm:dvm') return [tok];
    if (tok === '@tag:t') return names.filter((n) => sys.domains[n]?.tags.includes('t'));
    if (tok === '@type:AppVM') return names.filter((n) => sys.domains[n]?.type === 'AppVM');
    return names.includes(tok) ? [tok] : [];
  };
  const tokenArb = fc.constantFrom('b', 'c', 'd', 'dom0', 'dvm', 'nosuch', '*', '@anyvm', '@adminvm', '@tag:t', '@type:AppVM', '@dispvm', '@dispvm:dvm');
  const lineArb = fc.tuple(tokenArb, fc.constantFrom('allow', 'deny', 'ask'));
  fc.assert(fc.property(fc.array(lineArb, { maxLength: 30 }), fc.array(lineArb, { maxLength: 30 }), (above, below) => {
    // The ask rule decides the call (target b); the rules above it cannot match target b.
    const safeAbove = above.filter(([tok]) => expandRef(tok).length > 0 && !['b', '*', '@anyvm', '@type:AppVM'].includes(tok) && tok !== 'nosuch');
    const lines = [...safeAbove, ['b', 'ask'] as const, ...below];
    const text = lines.map(([tok, action]) => `svc * a ${tok} ${action}`).join('\n');
    const loaded = policyFromText(text, 'p');
    if (!loaded.ok) return; // a token not allowed with that action in that column: not this property's concern
    const res = loaded.policy.evaluate({ source: 'a', target: 'b', service: 'svc', argument: '+' }, sys);
    const set = new Set<string>();
    for (const [tok, action] of [...lines].reverse()) {
      for (const n of expandRef(tok)) {
        if (action === 'deny') set.delete(n);
        else set.add(n);
      }
    }
    if (set.delete('@dispvm')) set.add('@dispvm:dvm');
    if (set.delete('@adminvm')) set.add('dom0');
    set.delete('a');
    if (res.result !== 'ask') {
      // Only when the rule above matched b after all (it cannot here) or nothing is offered.
      assert.equal(set.size, 0, JSON.stringify({ text, res }));
      return;
    }
    assert.deepEqual([...res.targets].sort(), [...set].sort(), text);
  }), { numRuns: 400 });
});
