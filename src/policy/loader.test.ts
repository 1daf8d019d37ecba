// Loader: file names, order, includes, include-service, loops, caps, encodings (facts §1, §7),
// in memory and on a real directory.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import type { Resolution } from './engine.js';
import { MemoryPolicyFs, nodePolicyFs } from './fs.js';
import { loadPolicyDir, MAX_INCLUDE_DEPTH, MAX_POLICY_BYTES, type LoadResult } from './loader.js';
import type { SystemInfo } from './system.js';

const SYS: SystemInfo = {
  domains: {
    dom0: { type: 'AdminVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', uuid: '00000000-0000-0000-0000-000000000000' },
    a: { type: 'AppVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', uuid: 'a' },
    b: { type: 'AppVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', uuid: 'b' },
    c: { type: 'AppVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', uuid: 'c' },
  },
};

async function load(files: Record<string, string | Uint8Array>, dirs: string[] = []): Promise<LoadResult> {
  const mem = new MemoryPolicyFs(files);
  mem.mkdir('/pol');
  for (const d of dirs) mem.mkdir(d);
  return loadPolicyDir('/pol', mem);
}

function ok(r: LoadResult): Extract<LoadResult, { ok: true }> {
  assert.ok(r.ok, r.ok ? '' : r.errors.join('\n'));
  return r;
}

function errors(r: LoadResult): string[] {
  assert.ok(!r.ok, 'expected the load to fail');
  return r.errors;
}

function decide(r: LoadResult, service = 'svc', source = 'a', target = ''): Resolution {
  return ok(r).policy.evaluate({ source, target, service, argument: '+' }, SYS);
}

function rule(r: LoadResult, service = 'svc'): string {
  const d = decide(r, service);
  return d.result === 'deny' ? `deny ${d.rule ?? d.reason}` : `${d.result} ${d.rule}`;
}

test('an empty directory is a valid policy that denies everything', async () => {
  const r = ok(await load({}));
  assert.equal(r.policy.ruleCount, 0);
  assert.deepEqual(r.files, []);
  assert.equal(decide(r).result, 'deny');
});

test('a missing directory fails the load', async () => {
  const r = await loadPolicyDir('/nowhere', new MemoryPolicyFs());
  assert.deepEqual(errors(r), ['/nowhere: cannot read the policy directory: ENOENT: no such directory, scandir \'/nowhere\'']);
});

test('files load in code-point order of their full names; the first match wins', async () => {
  const r = ok(await load({
    '/pol/50-a.policy': 'svc * @anyvm @anyvm allow target=a',
    '/pol/50-a-b.policy': 'svc * @anyvm @anyvm allow target=b',
    '/pol/10-z.policy': '',
    '/pol/9.policy': 'svc * @anyvm @anyvm allow target=c',
  }));
  // '-' (0x2D) sorts before '.' (0x2E), and '1' before '5' before '9'.
  assert.deepEqual(r.files, ['/pol/10-z.policy', '/pol/50-a-b.policy', '/pol/50-a.policy', '/pol/9.policy']);
  assert.equal(rule(r), 'allow /pol/50-a-b.policy:1');
});

test('only regular files named *.policy, not starting with a dot, are read', async () => {
  const r = ok(await load({
    '/pol/README': 'garbage',
    '/pol/x.POLICY': 'garbage',
    '/pol/.hidden.policy': 'garbage',
    '/pol/a.policy~': 'garbage',
    '/pol/a.policy.swp': 'garbage',
    '/pol/dir.policy/inner.policy': 'garbage',
    '/pol/30-user.policy': 'svc * @anyvm @anyvm deny',
  }));
  assert.deepEqual(r.files, ['/pol/30-user.policy']);
});

test('a policy file name outside [0-9a-z_.-] fails the whole policy', async () => {
  for (const name of ['Upper.policy', 'a b.policy', 'a+b.policy', 'é.policy']) {
    const e = errors(await load({ [`/pol/${name}`]: '', '/pol/ok.policy': 'svc * @anyvm @anyvm allow' }));
    assert.deepEqual(e, [`/pol/${name}: invalid policy file name '${name}' (allowed characters: 0-9 a-z _ . -)`]);
  }
});

test('errors of every file are reported as file:line: message', async () => {
  const e = errors(await load({
    '/pol/10-a.policy': 'svc * @anyvm @anyvm allow\nbad line\n',
    '/pol/20-b.policy': '\n\nsvc * @anyvm @anyvm Allow',
  }));
  assert.deepEqual(e, [
    '/pol/10-a.policy:2: wrong number of fields (2; expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAMS])',
    "/pol/20-b.policy:3: invalid action 'Allow' (allow, deny or ask)",
  ]);
});

test('!include: rules inserted in place; relative paths against the top directory, even when nested', async () => {
  const r = ok(await load({
    '/pol/50-main.policy': ['other * @anyvm @anyvm deny', '!include include/first', 'svc * @anyvm @anyvm allow target=c'].join('\n'),
    '/pol/include/first': '!include include/second',
    '/pol/include/second': `!include /abs/third\nsvc +x @anyvm @anyvm deny`,
    '/abs/third': 'svc * @anyvm @anyvm allow target=a',
  }));
  assert.equal(r.policy.ruleCount, 4);
  assert.deepEqual(r.files, ['/pol/50-main.policy', '/pol/include/first', '/pol/include/second', '/abs/third']);
  assert.equal(rule(r), 'allow /abs/third:1');
});

test('!include of something that is not a file fails', async () => {
  assert.deepEqual(errors(await load({ '/pol/a.policy': '\n!include missing' })), ['/pol/a.policy:2: !include missing: not a file']);
  assert.deepEqual(errors(await load({ '/pol/a.policy': '!include include', '/pol/include/x': '' })), ['/pol/a.policy:1: !include include: not a file']);
});

test('an error inside an included file names that file', async () => {
  const e = errors(await load({ '/pol/a.policy': '!include inc', '/pol/inc': '\nsvc * @anyvm @anyvm allow target=@anyvm' }));
  assert.deepEqual(e, ["/pol/inc:2: invalid redirect token '@anyvm'"]);
});

test('!include-dir: sorted, filtered, not recursive; a bad name fails; not a directory fails; empty is fine', async () => {
  const r = ok(await load({
    '/pol/50-main.policy': '!include-dir include\nsvc * @anyvm @anyvm deny',
    '/pol/include/20-b.policy': 'svc * @anyvm @anyvm allow target=b',
    '/pol/include/10-a.policy': 'other * @anyvm @anyvm allow target=a',
    '/pol/include/README': 'garbage',
    '/pol/include/.x.policy': 'garbage',
    '/pol/include/sub/30-c.policy': 'garbage',
  }));
  assert.deepEqual(r.files, ['/pol/50-main.policy', '/pol/include/10-a.policy', '/pol/include/20-b.policy']);
  assert.equal(rule(r), 'allow /pol/include/20-b.policy:1');
  ok(await load({ '/pol/a.policy': '!include-dir /empty' }, ['/empty']));
  assert.deepEqual(errors(await load({ '/pol/a.policy': '!include-dir nope' })), ['/pol/a.policy:1: !include-dir nope: not a directory']);
  assert.deepEqual(errors(await load({ '/pol/a.policy': '!include-dir f', '/pol/f': '' })), ['/pol/a.policy:1: !include-dir f: not a directory']);
  assert.deepEqual(errors(await load({ '/pol/a.policy': '!include-dir d', '/pol/d/Bad.policy': '' })), [
    "/pol/d/Bad.policy: invalid policy file name 'Bad.policy' (allowed characters: 0-9 a-z _ . -)",
  ]);
});

test('!include-service: old syntax for one service and argument, with nested $include:', async () => {
  const r = ok(await load({
    '/pol/50-main.policy': '!include-service qubes.Old +arg old/qubes.Old\n!include-service qubes.Any * old/any',
    '/pol/old/qubes.Old': '# old style\n$include:old/shared\n$anyvm $anyvm deny',
    '/pol/old/shared': 'a $anyvm allow,target=b,user=root',
    '/pol/old/any': '$anyvm $anyvm ask,default_target=c',
  }));
  const p = r.policy;
  const at = (service: string, argument: string, source: string): Resolution => p.evaluate({ source, target: '', service, argument }, SYS);
  assert.deepEqual(at('qubes.Old', '+arg', 'a'), {
    result: 'allow', target: 'b', autostart: true, user: 'root', notify: false, requestedTarget: '@default', rule: '/pol/old/shared:1',
  });
  assert.deepEqual(at('qubes.Old', '+arg', 'b'), { result: 'deny', reason: 'denied by policy', notify: true, rule: '/pol/old/qubes.Old:3' });
  assert.equal(at('qubes.Old', '+other', 'a').result, 'deny');
  assert.equal(at('qubes.Old', '+other', 'a').rule, undefined);
  assert.deepEqual(at('qubes.Any', '+whatever', 'a'), {
    result: 'ask', targets: ['b', 'c'], defaultTarget: 'c', autostart: true, user: null, notify: false, requestedTarget: '@default', rule: '/pol/old/any:1',
  });
});

test('!include-service errors: a new-syntax or !include-dir line, missing file', async () => {
  assert.match(errors(await load({ '/pol/a.policy': '!include-service svc + old', '/pol/old': 'svc * @anyvm @anyvm allow' }))[0] ?? '', /^\/pol\/old:1: /);
  assert.deepEqual(errors(await load({ '/pol/a.policy': '!include-service svc + old', '/pol/old': '!include-dir x' })), [
    "/pol/old:1: invalid directive '!include-dir' (an old-syntax file allows only !include)",
  ]);
  assert.deepEqual(errors(await load({ '/pol/a.policy': '!include-service svc + old' })), ['/pol/a.policy:1: !include-service old: not a file']);
});

test('include loops are errors, not stack overflows', async () => {
  assert.deepEqual(errors(await load({ '/pol/a.policy': '!include a.policy' })), ['/pol/a.policy:1: include loop: /pol/a.policy -> /pol/a.policy']);
  assert.deepEqual(errors(await load({ '/pol/a.policy': '!include x', '/pol/x': '\n!include y', '/pol/y': '!include-dir .' })).slice(0, 1), [
    '/pol/y:1: include loop: /pol/a.policy -> /pol/x -> /pol/y -> /pol/a.policy',
  ]);
  assert.match(errors(await load({ '/pol/a.policy': '!include-service svc + o', '/pol/o': '$include:o' }))[0] ?? '', /include loop/);
  // A diamond (the same file twice, no loop) is fine.
  ok(await load({ '/pol/a.policy': '!include x\n!include x', '/pol/x': 'svc * @anyvm @anyvm deny' }));
});

test('includes nested deeper than the limit are an error', async () => {
  const files: Record<string, string> = { '/pol/a.policy': '!include f0' };
  for (let i = 0; i < MAX_INCLUDE_DEPTH + 5; i++) files[`/pol/f${i}`] = `!include f${i + 1}`;
  files[`/pol/f${MAX_INCLUDE_DEPTH + 5}`] = '';
  const e = errors(await load(files));
  assert.equal(e.length, 1);
  assert.match(e[0] ?? '', new RegExp(`includes nested more than ${MAX_INCLUDE_DEPTH} deep`));
});

test('bytes that are not UTF-8 fail the load, naming the line', async () => {
  const bytes = Buffer.concat([Buffer.from('svc * @anyvm @anyvm deny\r\n# ok \u00e9\r'), Buffer.from([0x23, 0xff, 0x0a])]);
  assert.deepEqual(errors(await load({ '/pol/a.policy': bytes })), ['/pol/a.policy:3: invalid UTF-8']);
  assert.deepEqual(errors(await load({ '/pol/a.policy': Buffer.from([0xed, 0xa0, 0x80]) })), ['/pol/a.policy:1: invalid UTF-8']); // a surrogate
});

test('a BOM is kept, so a file starting with one fails', async () => {
  const e = errors(await load({ '/pol/a.policy': '\ufeffsvc * @anyvm @anyvm deny' }));
  assert.match(e[0] ?? '', /^\/pol\/a\.policy:1: service '\ufeffsvc' contains invalid characters/);
});

test('policy files larger than the total cap fail the load', async () => {
  const big = new Uint8Array(MAX_POLICY_BYTES + 1).fill(0x23);
  assert.deepEqual(errors(await load({ '/pol/a.policy': big })), [`/pol/a.policy: cannot read: policy files larger than ${MAX_POLICY_BYTES} bytes in total`]);
  // The cap is a total: each half fits alone, not both together.
  const half = new Uint8Array(MAX_POLICY_BYTES / 2 + 1).fill(0x23);
  assert.equal(errors(await load({ '/pol/a.policy': half, '/pol/b.policy': half })).length, 1);
});

test('errors stop at 1000, with a last line saying so', async () => {
  const e = errors(await load({ '/pol/a.policy': 'bad\n'.repeat(5000), '/pol/b.policy': 'bad' }));
  assert.equal(e.length, 1001);
  assert.equal(e[999], '/pol/a.policy:1000: wrong number of fields (1; expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAMS])');
  assert.equal(e[1000], '/pol: too many errors; stopped after 1000');
});

test('property: any file content loads or fails with file:line errors, never throws', async () => {
  await fc.assert(
    fc.asyncProperty(fc.oneof(fc.uint8Array({ maxLength: 200 }), fc.string({ unit: 'binary', maxLength: 200 })), async (content) => {
      const r = await load({ '/pol/a.policy': content, '/pol/inc': content });
      if (!r.ok) for (const e of r.errors) assert.match(e, /^\/pol\/(a\.policy|inc)(:\d+)?: /);
    }),
    { numRuns: 500 },
  );
});

test('property: a valid policy with one invalid line inserted anywhere fails to load', async () => {
  const valid = ['svc * @anyvm @anyvm allow target=a', '# c', '', '* * @anyvm @anyvm deny', 'svc +x @tag:t @dispvm ask'];
  const invalid = ['svc * @anyvm', 'svc * @anyvm @anyvm Allow', '!compat-4.0', '!include nope', 'svc * @anyvm @anyvm allow target=*', 'svc * @default * deny', '\ufeff# x'];
  await fc.assert(
    fc.asyncProperty(fc.array(fc.constantFrom(...valid), { maxLength: 10 }), fc.constantFrom(...invalid), fc.nat(), async (lines, bad, at) => {
      const all = [...lines];
      all.splice(at % (lines.length + 1), 0, bad);
      const r = await load({ '/pol/a.policy': all.join('\n') });
      assert.equal(r.ok, false);
    }),
    { numRuns: 300 },
  );
});

test('watched paths: the directory, each file and each include target, with stamps', async () => {
  const mem = new MemoryPolicyFs({ '/pol/a.policy': '!include inc\n!include-dir d\n!include missing', '/pol/inc': '', '/pol/d/x.policy': '' });
  const r = await loadPolicyDir('/pol', mem);
  const paths = r.watched.map((w) => w.path).sort();
  assert.deepEqual(paths, ['/pol', '/pol/a.policy', '/pol/d', '/pol/d/x.policy', '/pol/inc', '/pol/missing']);
  assert.equal(r.watched.find((w) => w.path === '/pol/missing')?.stamp, 'missing');
});

test('node fs: symlinks followed, directories and FIFOs ignored, stamps change on edit', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-policy-loader-'));
  try {
    const pol = path.join(dir, 'policy.d');
    fs.mkdirSync(pol);
    fs.mkdirSync(path.join(pol, 'sub.policy'));
    fs.writeFileSync(path.join(dir, 'real'), 'svc * @anyvm @anyvm allow target=b\n');
    fs.symlinkSync(path.join(dir, 'real'), path.join(pol, '20-link.policy'));
    fs.symlinkSync(path.join(dir, 'nowhere'), path.join(pol, '30-dangling.policy'));
    fs.writeFileSync(path.join(pol, '10-a.policy'), '!include ../real\n');
    execFileSync('mkfifo', [path.join(pol, '40-fifo.policy')]);
    const first = ok(await loadPolicyDir(pol));
    assert.deepEqual(first.files, [path.join(pol, '10-a.policy'), path.join(dir, 'real'), path.join(pol, '20-link.policy')]);
    assert.equal(first.policy.ruleCount, 2);
    const stamp = (r: LoadResult, p: string): string | undefined => r.watched.find((w) => w.path === p)?.stamp;
    fs.writeFileSync(path.join(pol, '10-a.policy'), '!include ../real\nsvc * @anyvm @anyvm deny\n');
    const second = ok(await loadPolicyDir(pol));
    assert.notEqual(stamp(first, path.join(pol, '10-a.policy')), stamp(second, path.join(pol, '10-a.policy')));
    assert.equal(stamp(first, path.join(dir, 'real')), stamp(second, path.join(dir, 'real')));
    // Reading is capped even when the file is bigger than the caller allows.
    await assert.rejects(nodePolicyFs.readFile(path.join(dir, 'real'), 5), /larger than 5 bytes/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an include tree that fans out (each file including the next one twice, 2^30 paths) stops at the file budget, fast', async () => {
  const files: Record<string, string> = { '/pol/10.policy': '!include a0\n!include a0\n' };
  for (let i = 0; i < 30; i++) files[`/pol/a${i}`] = `!include a${i + 1}\n!include a${i + 1}\nsvc * * * deny\n`;
  files['/pol/a30'] = 'svc * * * deny\n';
  const started = performance.now();
  const errs = errors(await load(files));
  assert.ok(performance.now() - started < 10_000, 'bounded work');
  assert.ok(errs.some((e) => e.includes('more than 10000 policy files read')), errs.join('\n'));
});

test('a million include lines, or include-dir lines, stop at the file budget instead of reading on', async () => {
  const many = { '/pol/10.policy': '!include e\n'.repeat(200_000), '/pol/e': '' };
  const errs = errors(await load(many));
  assert.ok(errs.length <= 1001);
  assert.match(errs[0] ?? '', /more than 10000 policy files read/);
  const dirFiles: Record<string, string> = { '/pol/10.policy': '!include-dir d\n'.repeat(50_000) };
  for (let i = 0; i < 100; i++) dirFiles[`/pol/d/f${i}.policy`] = '';
  assert.match(errors(await load(dirFiles, ['/pol/d']))[0] ?? '', /more than 10000 policy files read/);
});

test('an include path follows links before `..`, as Qubes resolves it (real filesystem)', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'bh-pol-link-'));
  t.after(() => { fs.rmSync(root, { recursive: true, force: true }); });
  const pol = path.join(root, 'pol');
  fs.mkdirSync(path.join(root, 'q', 'sub'), { recursive: true });
  fs.mkdirSync(pol);
  fs.writeFileSync(path.join(root, 'q', 'x'), 'svc * a @anyvm deny notify=no\n');
  fs.writeFileSync(path.join(pol, 'x'), 'svc * a @anyvm allow target=b\n');
  fs.symlinkSync(path.join(root, 'q', 'sub'), path.join(pol, 'link'));
  fs.writeFileSync(path.join(pol, '10.policy'), '!include link/../x\n');
  const r = ok(await loadPolicyDir(pol, nodePolicyFs));
  const d = r.policy.evaluate({ source: 'a', target: 'b', service: 'svc', argument: '+' }, SYS);
  assert.equal(d.result, 'deny', 'the file next to the link\'s target was included, not the one next to the link');
});
