// bulkhead policy lint|eval, called in-process with its output captured.
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, afterEach, before, beforeEach, test } from 'node:test';
import { encodeOk, parseAdminRequest } from '../../protocol/admin-wire.js';
import { splitServiceArgument } from './policy.js';

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

// The command writes to process.stdout, which node:test's runner also uses: it runs in a child
// process that captures its output per call (one child for the whole file, answering JSON lines).
const HARNESS = `
import readline from 'node:readline';
const { policy } = await import(process.env.POLICY_CMD);
const realOut = process.stdout.write.bind(process.stdout);
let out = [];
let err = [];
process.stdout.write = (c) => { out.push(String(c)); return true; };
process.stderr.write = (c) => { err.push(String(c)); return true; };
for await (const line of readline.createInterface({ input: process.stdin })) {
  out = [];
  err = [];
  let code;
  try { code = await policy.run(JSON.parse(line), 'bulkhead policy'); } catch (e) { code = -1; err.push(String(e?.stack ?? e)); }
  realOut(JSON.stringify({ code, stdout: out.join(''), stderr: err.join('') }) + '\\n');
}
`;

let child: ChildProcessWithoutNullStreams | null = null;
let replies: AsyncIterator<string> | null = null;

before(() => {
  child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', HARNESS], {
    env: { ...process.env, POLICY_CMD: path.join(import.meta.dirname, 'policy.ts') },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  replies = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
});
after(() => {
  child?.stdin.end();
  child?.kill();
});

async function run(...args: string[]): Promise<Ran> {
  assert.ok(child && replies);
  child.stdin.write(`${JSON.stringify(args)}\n`);
  const next = await replies.next();
  assert.ok(next.done !== true, 'the CLI harness exited');
  return JSON.parse(next.value) as Ran;
}

const SYSTEM_INFO = {
  domains: {
    dom0: { type: 'AdminVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', uuid: '00000000-0000-0000-0000-000000000000', icon: 'adminvm-black', guivm: null },
    work: { type: 'AppVM', tags: ['office'], default_dispvm: 'dvm', template_for_dispvms: false, power_state: 'Running', uuid: '11111111-1111-1111-1111-111111111111', icon: 'appvm-blue', guivm: 'dom0' },
    'uuid:11111111-1111-1111-1111-111111111111': { type: 'AppVM', tags: ['office'], default_dispvm: 'dvm', template_for_dispvms: false, power_state: 'Running', uuid: '11111111-1111-1111-1111-111111111111' },
    vault: { type: 'AppVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', uuid: '22222222-2222-2222-2222-222222222222' },
    dvm: { type: 'AppVM', tags: [], default_dispvm: 'dvm', template_for_dispvms: true, power_state: 'Halted', uuid: '33333333-3333-3333-3333-333333333333', internal: false },
  },
};

const POLICY = [
  '# test policy',
  'qubes.Filecopy * @anyvm vault deny notify=no',
  'qubes.Filecopy * @anyvm @anyvm ask default_target=@dispvm user=user',
  'qubes.GetDate  * @anyvm @anyvm allow target=dom0',
  'qubes.Gpg    +x  work   @default allow target=vault user=gpg notify=yes autostart=no',
  'qubes.Gpg    +x  work   vault    allow',
].join('\n');

let tmp = '';
let dataDir = '';
let policyDir = '';
let sysFile = '';
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-policy-cli-'));
  dataDir = path.join(tmp, 'data');
  policyDir = path.join(dataDir, 'policy.d');
  fs.mkdirSync(policyDir, { recursive: true });
  fs.writeFileSync(path.join(policyDir, '30-user.policy'), `${POLICY}\n`);
  sysFile = path.join(tmp, 'system-info.json');
  fs.writeFileSync(sysFile, JSON.stringify(SYSTEM_INFO));
});
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

const evalArgs = (...args: string[]): string[] => ['eval', '--policy-dir', policyDir, '--system-info', sysFile, ...args];

test('lint: OK with the rule and file counts', async () => {
  fs.writeFileSync(path.join(policyDir, '40-more.policy'), '!include inc\n');
  fs.writeFileSync(path.join(policyDir, 'inc'), 'x * @anyvm @anyvm deny\n');
  assert.deepEqual(await run('lint', policyDir), { code: 0, stdout: 'OK: 6 rules in 3 files\n', stderr: '' });
  assert.deepEqual(await run('lint', '--data-dir', dataDir), { code: 0, stdout: 'OK: 6 rules in 3 files\n', stderr: '' });
});

test('lint: every error as file:line: message on stderr, exit 1', async () => {
  const file = path.join(policyDir, '30-user.policy');
  fs.writeFileSync(file, 'svc * @anyvm @anyvm Allow\n\nsvc * @default @anyvm deny\n');
  assert.deepEqual(await run('lint', policyDir), {
    code: 1,
    stdout: '',
    stderr: `${file}:1: invalid action 'Allow' (allow, deny or ask)\n${file}:3: invalid source token '@default'\n`,
  });
  const missing = path.join(tmp, 'nope');
  assert.deepEqual(await run('lint', missing), { code: 1, stdout: '', stderr: `${missing}: cannot read the policy directory: ENOENT\n` });
});

test('eval: allow, with every field', async () => {
  assert.deepEqual(await run(...evalArgs('work', '', 'qubes.Gpg+x')), {
    code: 0,
    stdout: ['result=allow', 'target=vault', 'autostart=False', 'user=gpg', 'notify=yes', 'requested_target=@default', `rule=${policyDir}/30-user.policy:5`, ''].join('\n'),
    stderr: '',
  });
  assert.deepEqual((await run(...evalArgs('vault', 'nope', 'qubes.GetDate'))).stdout.split('\n'), [
    'result=allow', 'target=dom0', 'autostart=True', 'notify=no', 'requested_target=@default', `rule=${policyDir}/30-user.policy:4`, '',
  ]);
});

test('eval: ask, with the targets in order and the default', async () => {
  // Offered: what @anyvm names (minus vault, denied above; minus the source), @dispvm as work's dvm.
  assert.deepEqual(await run(...evalArgs('work', 'dvm', 'qubes.Filecopy')), {
    code: 0,
    stdout: ['result=ask', 'targets=dvm,@dispvm:dvm', 'default_target=@dispvm:dvm', 'autostart=True', 'user=user', 'notify=no', 'requested_target=dvm', `rule=${policyDir}/30-user.policy:3`, ''].join('\n'),
    stderr: '',
  });
});

test('eval: deny, by a rule or by no rule', async () => {
  assert.deepEqual((await run(...evalArgs('work', 'vault', 'qubes.Filecopy'))).stdout.split('\n'), [
    'result=deny', 'reason=denied by policy', 'notify=no', `rule=${policyDir}/30-user.policy:2`, '',
  ]);
  assert.deepEqual(await run(...evalArgs('work', 'vault', 'qubes.VMShell')), { code: 0, stdout: 'result=deny\nreason=no matching rule found\nnotify=yes\n', stderr: '' });
});

test('eval: SERVICE+ARG splits at the first +', async () => {
  assert.deepEqual(splitServiceArgument('qubes.Gpg+x'), { service: 'qubes.Gpg', argument: '+x' });
  assert.deepEqual(splitServiceArgument('svc+a+b'), { service: 'svc', argument: '+a+b' });
  assert.deepEqual(splitServiceArgument('svc+'), { service: 'svc', argument: '+' });
  assert.deepEqual(splitServiceArgument('svc'), { service: 'svc', argument: '+' });
  // qubes.Gpg+x matches '+x' rules; qubes.Gpg alone has the empty argument and does not.
  assert.match((await run(...evalArgs('work', 'vault', 'qubes.Gpg+x'))).stdout, /^result=allow\n/);
  assert.match((await run(...evalArgs('work', 'vault', 'qubes.Gpg'))).stdout, /^result=deny\nreason=no matching rule found\n/);
  assert.match((await run(...evalArgs('work', 'vault', 'qubes.Gpg+x+y'))).stdout, /^result=deny\n/);
});

test('eval: a policy that does not load prints its errors, result=deny, and exits 1', async () => {
  const file = path.join(policyDir, '30-user.policy');
  fs.writeFileSync(file, 'qubes.GetDate * @anyvm @anyvm allow target=@anyvm\n');
  const error = `${file}:1: invalid redirect token '@anyvm'`;
  assert.deepEqual(await run(...evalArgs('work', '', 'qubes.GetDate')), {
    code: 1,
    stdout: `result=deny\nreason=policy failed to load: ${error}\nnotify=yes\n`,
    stderr: `${error}\n`,
  });
});

test('eval: the system-info file is checked strictly', async () => {
  const bad = async (content: string): Promise<Ran> => {
    fs.writeFileSync(sysFile, content);
    return run(...evalArgs('work', '', 'qubes.GetDate'));
  };
  const withWork = (work: Record<string, unknown>): string => JSON.stringify({ domains: { ...SYSTEM_INFO.domains, work } });
  const { work } = SYSTEM_INFO.domains;
  const cases: [string, RegExp][] = [
    ['{', /invalid JSON/],
    ['[]', /\(top level\): /],
    [JSON.stringify({ domains: {}, extra: 1 }), /Unrecognized key: "extra"/],
    [withWork({ ...work, tags: 'office' }), /domains\.work\.tags: /],
    [withWork({ ...work, power_state: undefined }), /domains\.work\.power_state: /],
    [withWork({ ...work, default_dispvm: 7 }), /domains\.work\.default_dispvm: /],
    [withWork({ ...work, template_for_dispvms: 'yes' }), /domains\.work\.template_for_dispvms: /],
    [withWork({ ...work, colour: 'blue' }), /domains\.work: Unrecognized key: "colour"/],
    ['{"domains": {"__proto__": {}}}', /the key "__proto__" is not allowed/],
    [JSON.stringify({ domains: { 'a b': work } }), /domains\.a b: not a qube name \(a letter, then letters, digits, _ \. -\) or uuid:UUID/],
  ];
  for (const [content, expected] of cases) {
    const r = await bad(content);
    assert.equal(r.code, 1, content);
    assert.equal(r.stdout, '', content);
    assert.match(r.stderr, new RegExp(`^bulkhead policy: error: ${sysFile}: `), content);
    assert.match(r.stderr, expected, content);
  }
  fs.rmSync(sysFile);
  assert.deepEqual(await run(...evalArgs('work', '', 'qubes.GetDate')), { code: 1, stdout: '', stderr: `bulkhead policy: error: cannot read ${sysFile}: ENOENT\n` });
});

test('usage errors exit 2', async () => {
  for (const args of [[], ['nope'], ['eval', 'work', 'vault'], ['eval', 'a', 'b', 'c', 'd'], ['eval', '', 'vault', 'svc'], ['eval', 'work', 'vault', '+x'], ['lint', 'a', 'b'], ['lint', '--system-info', 'x'], ['--bogus']]) {
    const r = await run(...args);
    assert.equal(r.code, 2, JSON.stringify(args));
    assert.match(r.stderr, /^usage: bulkhead policy /, JSON.stringify(args));
  }
  assert.equal((await run('--help')).code, 0);
});

test('eval without --system-info asks the daemon (bulkhead.policy.SystemInfo to dom0)', async () => {
  const socket = path.join(tmp, 'qubesd.sock');
  const seen: string[] = [];
  const server = net.createServer((conn) => {
    const chunks: Buffer[] = [];
    conn.on('data', (c: Buffer) => chunks.push(c));
    conn.on('end', () => {
      const r = parseAdminRequest(Buffer.concat(chunks));
      seen.push(`${r.method} ${r.dest} ${r.arg} ${r.payload.length}`);
      conn.end(encodeOk(JSON.stringify(SYSTEM_INFO)));
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  try {
    const r = await run('eval', '--policy-dir', policyDir, '--socket', socket, 'work', '', 'qubes.GetDate');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^result=allow\ntarget=dom0\n/);
    assert.deepEqual(seen, ['bulkhead.policy.SystemInfo dom0  0']);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
  const gone = await run('eval', '--policy-dir', policyDir, '--socket', socket, 'work', '', 'qubes.GetDate');
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /cannot connect to the Admin API/);
});
