// PolicyStore: the policy directory set-up, the package default, reloads on change (watcher and
// stamp check), and fail-closed behaviour on a broken policy.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import fc from 'fast-check';
import { pino, type Logger } from 'pino';
import type { DomainInfo, PolicyRequest, SystemInfo } from '../policy/index.js';
import { DEFAULT_POLICY_FILE, PACKAGE_POLICY_DIR, PolicyStore } from './policy-store.js';

function qube(over: Partial<DomainInfo> & { uuid: string }): DomainInfo {
  return { type: 'AppVM', tags: [], default_dispvm: null, template_for_dispvms: false, power_state: 'Running', ...over };
}
const SYS: SystemInfo = {
  domains: {
    dom0: qube({ type: 'AdminVM', uuid: '00000000-0000-0000-0000-000000000000' }),
    work: qube({ uuid: '11111111-1111-1111-1111-111111111111', default_dispvm: 'dvm' }),
    vault: qube({ uuid: '22222222-2222-2222-2222-222222222222' }),
    dvm: qube({ uuid: '33333333-3333-3333-3333-333333333333', template_for_dispvms: true }),
  },
};

const req = (service: string, target = 'vault', source = 'work'): PolicyRequest => ({ source, target, service, argument: '+' });

interface LogLine {
  level: number;
  msg: string;
  errors?: string[];
}

function capture(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => { lines.push(JSON.parse(s) as LogLine); } });
  return { log, lines };
}

async function until(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

let tmp = '';
const stores: PolicyStore[] = [];
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-policy-store-'));
});
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function open(dir: string, log: Logger = capture().log, opts: { watch?: boolean } = {}): Promise<PolicyStore> {
  const s = await PolicyStore.open(dir, log, opts);
  stores.push(s);
  return s;
}

test('open creates the directory (0755), installs the package default policy and loads it', async () => {
  const dir = path.join(tmp, 'data', 'policy.d');
  const store = await open(dir);
  assert.equal(fs.statSync(dir).mode & 0o777, 0o755);
  assert.equal(fs.readFileSync(path.join(dir, DEFAULT_POLICY_FILE), 'utf8'), fs.readFileSync(path.join(PACKAGE_POLICY_DIR, DEFAULT_POLICY_FILE), 'utf8'));
  assert.deepEqual(store.errors(), []);
  const date = store.evaluate(req('qubes.GetDate', ''), SYS);
  assert.equal(date.result === 'allow' ? date.target : date.result, 'dom0');
  const dateFromDom0 = store.evaluate(req('qubes.GetDate', 'dom0'), SYS);
  assert.equal(dateFromDom0.result === 'allow' ? dateFromDom0.target : dateFromDom0.result, 'dom0');
  assert.equal(store.evaluate(req('qubes.VMShell'), SYS).result, 'deny');
  assert.equal(store.evaluate(req('admin.vm.List', 'dom0'), SYS).result, 'deny');
  const inDispvm = store.evaluate(req('qubes.OpenInVM', '@dispvm'), SYS);
  assert.equal(inDispvm.result === 'allow' ? inDispvm.target : inDispvm.result, '@dispvm:dvm');
  assert.equal(store.evaluate(req('qubes.Filecopy', ''), SYS).result, 'ask');
});

test('the package default is replaced when it differs, left alone when identical; other files are kept', async () => {
  const dir = path.join(tmp, 'policy.d');
  fs.mkdirSync(dir);
  const file = path.join(dir, DEFAULT_POLICY_FILE);
  fs.writeFileSync(file, 'edited by hand\n');
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.VMShell * work vault allow\n');
  const first = await open(dir);
  assert.equal(fs.readFileSync(file, 'utf8'), fs.readFileSync(path.join(PACKAGE_POLICY_DIR, DEFAULT_POLICY_FILE), 'utf8'));
  assert.equal(first.evaluate(req('qubes.VMShell'), SYS).result, 'allow'); // 30-user.policy comes first
  first.close();
  const ino = fs.statSync(file).ino;
  await open(dir);
  assert.equal(fs.statSync(file).ino, ino);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['30-user.policy', DEFAULT_POLICY_FILE]);
});

test('a syntax error denies every call, with the first error as the reason, and is logged', async () => {
  const dir = path.join(tmp, 'policy.d');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.VMShell * work vault allow\nbroken line\nalso broken\n');
  const { log, lines } = capture();
  const store = await open(dir, log);
  const first = `${path.join(dir, '30-user.policy')}:2: wrong number of fields (2; expected SERVICE ARGUMENT SOURCE TARGET ACTION [PARAMS])`;
  assert.equal(store.errors().length, 2);
  assert.equal(store.errors()[0], first);
  assert.deepEqual(store.evaluate(req('qubes.VMShell'), SYS), { result: 'deny', reason: `policy failed to load: ${first}`, notify: true });
  assert.equal(store.evaluate(req('qubes.GetDate', ''), SYS).result, 'deny');
  const logged = lines.find((l) => l.level === 50);
  assert.deepEqual(logged?.errors, store.errors());
});

test('property: a broken policy denies every request', async () => {
  const dir = path.join(tmp, 'policy.d');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, '00-allow-all.policy'), '* * @anyvm @anyvm allow target=dom0\n* * @anyvm @anyvm allow target=dom0 notify=maybe\n');
  const store = await open(dir);
  const names = fc.constantFrom('work', 'vault', 'dom0', 'dvm', 'ghost', '', '@dispvm', '@default', '@adminvm');
  fc.assert(
    fc.property(names, names, fc.string(), fc.string(), (source, target, service, arg) => {
      assert.equal(store.evaluate({ source, target, service, argument: `+${arg}` }, SYS).result, 'deny');
    }),
    { numRuns: 300 },
  );
});

test('an edit is picked up by the watcher, without any call to refresh', async () => {
  const dir = path.join(tmp, 'policy.d');
  const store = await open(dir);
  assert.equal(store.evaluate(req('qubes.VMShell'), SYS).result, 'deny');
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.VMShell * work vault allow\n');
  await until('the new file is loaded', () => store.evaluate(req('qubes.VMShell'), SYS).result === 'allow');
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.VMShell * work vault allow notify=bad\n');
  await until('the broken edit denies', () => store.errors().length === 1);
  assert.equal(store.evaluate(req('qubes.VMShell'), SYS).result, 'deny');
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.VMShell * work vault allow notify=yes\n');
  await until('the fix is loaded', () => store.errors().length === 0);
  assert.equal(store.evaluate(req('qubes.VMShell'), SYS).notify, true);
});

test('refresh() reloads at once when a file changed', async () => {
  const dir = path.join(tmp, 'policy.d');
  const store = await open(dir);
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.VMShell * work vault allow\n');
  await store.refresh();
  assert.equal(store.evaluate(req('qubes.VMShell'), SYS).result, 'allow');
  fs.rmSync(path.join(dir, '30-user.policy'));
  await store.refresh();
  assert.equal(store.evaluate(req('qubes.VMShell'), SYS).result, 'deny');
});

test('without a watcher, evaluate\'s stamp check still notices an edit', async () => {
  const dir = path.join(tmp, 'policy.d');
  const store = await open(dir, capture().log, { watch: false });
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.VMShell * work vault allow\n');
  await until('the stamp check reloads', () => store.evaluate(req('qubes.VMShell'), SYS).result === 'allow');
});

test('changes to included files and directories elsewhere are picked up', async () => {
  const dir = path.join(tmp, 'policy.d');
  const elsewhere = path.join(tmp, 'elsewhere');
  fs.mkdirSync(elsewhere);
  fs.writeFileSync(path.join(elsewhere, 'inc'), 'qubes.VMShell * work vault deny\n');
  fs.mkdirSync(path.join(tmp, 'extra'));
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, '30-user.policy'), `!include ${path.join(elsewhere, 'inc')}\n!include-dir ${path.join(tmp, 'extra')}\n`);
  const store = await open(dir);
  assert.equal(store.evaluate(req('qubes.VMShell'), SYS).result, 'deny');
  fs.writeFileSync(path.join(elsewhere, 'inc'), 'qubes.VMShell * work vault allow\n');
  await until('the included file is reloaded', () => store.evaluate(req('qubes.VMShell'), SYS).result === 'allow');
  fs.writeFileSync(path.join(tmp, 'extra', 'Bad.policy'), '');
  await until('a bad name in the included directory fails the policy', () => store.errors().length === 1);
  assert.match(store.errors()[0] ?? '', /invalid policy file name 'Bad\.policy'/);
});

test('close() stops reloading', async () => {
  const dir = path.join(tmp, 'policy.d');
  const store = await open(dir);
  store.close();
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.VMShell * work vault allow\n');
  await store.refresh();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(store.evaluate(req('qubes.VMShell'), SYS).result, 'deny');
});

test('a missing package default is logged and the policy still loads', async () => {
  const { log, lines } = capture();
  const store = await PolicyStore.open(path.join(tmp, 'policy.d'), log, { packageDir: path.join(tmp, 'nowhere') });
  stores.push(store);
  assert.deepEqual(store.errors(), []);
  assert.ok(lines.some((l) => l.level === 50 && /default policy is missing/.test(l.msg)));
  assert.equal(store.evaluate(req('qubes.GetDate', ''), SYS).result, 'deny');
});
