// qrexec end to end, with real qubes (crun, host template): a qube calls a service in another
// qube through qrexec-client-vm, the daemon's router asks the policy (edited live in
// <data-dir>/policy.d), starts the target if allowed, and copies the bytes. Denials answer 126
// and leave the caller's qube alone; asks are answered with `bulkhead ask`; dom0 serves
// qubes.GetDate and the Admin API. Every case tries what a hostile or broken caller would.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { waitFor, type RunResult } from './helpers.js';
import { suiteQubes, type QubeHost } from './qube-helpers.js';

/** Services installed into the template, so every qube (and disposable) has them. */
const SERVICES: Record<string, string> = {
  'test.Echo': '#!/bin/sh\necho "arg=$1 from=$QREXEC_REMOTE_DOMAIN user=$(id -un) target=$QREXEC_REQUESTED_TARGET$QREXEC_REQUESTED_TARGET_KEYWORD"\ncat\n',
  'test.Exit': '#!/bin/sh\nexit 3\n',
  'test.Sum': '#!/bin/sh\nsha256sum | cut -d" " -f1\n',
  'test.Sleep': '#!/bin/sh\nsleep 30\n',
  'test.Name': '#!/bin/sh\nhostname\n',
  'test.Drain': '#!/bin/sh\ncat >/dev/null\n',
};

/** Files a test adds to the policy folder, removed even when it fails. */
const extraPolicyFiles: string[] = [];
function removeAfterSuite(file: string): void {
  extraPolicyFiles.push(file);
}

function policyFile(host: QubeHost): string {
  return path.join(host.daemon.dataDir, 'policy.d', '30-test.policy');
}

/**
 * Replaces the test policy, atomically (the daemon sees changes before its next decision). The
 * file must be valid: `bulkhead policy lint` checks the whole directory.
 */
async function setPolicy(host: QubeHost, text: string): Promise<void> {
  const file = policyFile(host);
  fs.writeFileSync(`${file}.tmp`, text);
  fs.renameSync(`${file}.tmp`, file);
  await host.ok('bulkhead', ['policy', 'lint', path.dirname(file)]);
}

/** `qrexec-client-vm ARGS` run inside `vm` (as its default user), stdin from `input`. */
function call(host: QubeHost, vm: string, args: string, input = '', timeoutMs = 30_000): Promise<RunResult> {
  return host.exec(vm, `qrexec-client-vm ${args}`, { input, timeoutMs });
}

void describe('qrexec between qubes', { timeout: 300_000 }, () => {
  const host = suiteQubes(['qa', 'qb', 'qdvm'], { daemon: { args: ['--ask-timeout', '3'] } });

  before(async () => {
    const h = host();
    // Services go into the template's /etc/qubes-rpc: every qube based on it has them.
    await h.ok('qvm-start', ['tpl']);
    for (const [name, body] of Object.entries(SERVICES)) {
      const r = await h.root('tpl', `mkdir -p /etc/qubes-rpc && cat > /etc/qubes-rpc/${name} && chmod 755 /etc/qubes-rpc/${name}`, { input: body });
      assert.equal(r.code, 0, r.stderr);
    }
    await h.ok('qvm-shutdown', ['--wait', 'tpl']);
    await h.ok('qvm-prefs', ['qdvm', 'template_for_dispvms', 'True']);
    await h.ok('qvm-prefs', ['qa', 'default_dispvm', 'qdvm']);
    await h.ok('qvm-start', ['qa']);
  });

  after(() => {
    for (const f of [policyFile(host()), ...extraPolicyFiles]) fs.rmSync(f, { force: true });
  });

  void test('without a rule the call is refused with 126 and a notification event; the caller stays running and the target is not started', async (t) => {
    const h = host();
    await setPolicy(h, '');
    const events = await h.events(t, 'dom0');
    const r = await call(h, 'qa', 'qb test.Echo');
    assert.equal(r.code, 126, r.stderr);
    assert.match(r.stderr, /Request refused/);
    // No rule matched: deny with notify=yes, as in Qubes.
    await waitFor(() => events.names.includes('bulkhead-qrexec-notify'), 5000, 'the notification event');
    assert.equal(await h.state('qa'), 'Running');
    assert.equal(await h.state('qb'), 'Halted');
  });

  void test('a rule added live allows the call: the target is started, data flows both ways, the exit code comes back; removing it refuses again', async () => {
    const h = host();
    await setPolicy(h, 'test.Echo * qa qb allow\ntest.Exit * qa qb allow\n');
    const r = await call(h, 'qa', 'qb test.Echo', 'hello from qa\n');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'arg= from=qa user=user target=qb\nhello from qa\n');
    assert.equal(await h.state('qb'), 'Running');
    const exit = await call(h, 'qa', 'qb test.Exit');
    assert.equal(exit.code, 3, exit.stderr);
    // `bulkhead policy eval` asks the daemon for the system's state and reads the same files.
    const evaluated = await h.ok('bulkhead', ['policy', 'eval', 'qa', 'qb', 'test.Echo']);
    assert.match(evaluated, /^result=allow\ntarget=qb\nautostart=True\n/);
    await setPolicy(h, '');
    assert.equal((await call(h, 'qa', 'qb test.Echo')).code, 126);
  });

  void test('a policy file with a syntax error denies every call until fixed; lint and the daemon log name file and line', async () => {
    const h = host();
    await setPolicy(h, 'test.Echo * qa qb allow\n');
    assert.equal((await call(h, 'qa', 'qb test.Echo')).code, 0);
    const broken = path.join(path.dirname(policyFile(h)), '40-broken.policy');
    removeAfterSuite(broken);
    fs.writeFileSync(broken, '# fine\ntest.Other * qa qb allow notify\n');
    assert.equal((await call(h, 'qa', 'qb test.Echo')).code, 126, 'an error in any file denies everything');
    const lint = await h.run('bulkhead', ['policy', 'lint', path.dirname(broken)]);
    assert.equal(lint.code, 1);
    assert.match(lint.stderr, /40-broken\.policy:2: /);
    assert.match(h.daemon.stderr(), /40-broken\.policy:2: /);
    fs.rmSync(broken);
    assert.equal((await call(h, 'qa', 'qb test.Echo')).code, 0, 'fixed: allowed again');
  });

  void test('with LOCAL_PROGRAM, the program\'s stdout feeds the service and the service\'s output feeds the program; its exit code is returned', async () => {
    const h = host();
    await setPolicy(h, 'test.Echo * qa qb allow\n');
    const prog = 'echo ping; read first; read second; echo "$first|$second" > /tmp/got; exit 4';
    const r = await h.exec('qa', `qrexec-client-vm qb test.Echo /bin/sh -c '${prog}'; echo rc=$?; cat /tmp/got`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'rc=4\narg= from=qa user=user target=qb|ping\n');
  });

  void test('the argument reaches the service as argv[1]; a rule for one argument does not allow another', async () => {
    const h = host();
    await setPolicy(h, 'test.Echo +good qa qb allow\n');
    const ok = await call(h, 'qa', 'qb test.Echo+good');
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^arg=good from=qa /);
    assert.equal((await call(h, 'qa', 'qb test.Echo+bad')).code, 126);
    assert.equal((await call(h, 'qa', 'qb test.Echo')).code, 126);
  });

  void test('an allowed service the target does not have ends with 127', async () => {
    const h = host();
    await setPolicy(h, 'test.Missing * qa qb allow\n');
    const r = await call(h, 'qa', 'qb test.Missing');
    assert.equal(r.code, 127, r.stderr);
  });

  void test('a target that does not exist counts as @default: refused unless a rule redirects it', async () => {
    const h = host();
    await setPolicy(h, 'test.Echo * qa qb allow\n');
    assert.equal((await call(h, 'qa', 'nosuchqube test.Echo')).code, 126);
    await setPolicy(h, 'test.Echo * qa @default allow target=qb\n');
    const r = await call(h, 'qa', 'nosuchqube test.Echo');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /from=qa .*target=default/);
  });

  void test('user= runs the service as that user; the loopback call is refused', async () => {
    const h = host();
    await setPolicy(h, 'test.Echo * qa qb allow user=root\ntest.Echo * qa qa allow\n');
    const r = await call(h, 'qa', 'qb test.Echo');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /user=root/);
    assert.equal((await call(h, 'qa', 'qa test.Echo')).code, 126);
  });

  void test('autostart=no refuses a halted target and leaves it halted', async () => {
    const h = host();
    await h.ok('qvm-shutdown', ['--wait', 'qb']);
    await setPolicy(h, 'test.Echo * qa qb allow autostart=no\n');
    assert.equal((await call(h, 'qa', 'qb test.Echo')).code, 126);
    assert.equal(await h.state('qb'), 'Halted');
  });

  void test('ask: the pending call is listed and answered from the CLI (allow to an offered target, deny), an invalid answer is rejected, an unanswered ask is denied after the timeout', async () => {
    const h = host();
    await setPolicy(h, 'test.Echo * qa @anyvm ask default_target=qb\n');
    const pendingCall = async (): Promise<{ result: Promise<RunResult>; id: string; row: string }> => {
      const before = new Set((await h.ok('bulkhead', ['ask', 'list'])).split('\n').slice(1).map((l) => l.split(/\s+/)[0]));
      const result = call(h, 'qa', 'qb test.Echo', 'asked\n');
      let row = '';
      await waitFor(async () => {
        const rows = (await h.ok('bulkhead', ['ask', 'list'])).split('\n').slice(1).filter((l) => l !== '' && !before.has(l.split(/\s+/)[0]));
        row = rows[0] ?? '';
        return row !== '';
      }, 20_000, 'the ask to be listed');
      return { result, id: row.split(/\s+/)[0] ?? '', row };
    };

    const first = await pendingCall();
    const cols = first.row.split(/\s+/);
    assert.equal(cols[1], 'qa');
    assert.equal(cols[2], 'test.Echo');
    const targets = (cols[3] ?? '').split(',');
    assert.ok(targets.includes('qb') && targets.includes('qdvm'), first.row);
    assert.ok(!targets.includes('qa'), `the caller itself is never offered: ${first.row}`);
    assert.equal(cols[4], 'qb');
    const bad = await h.run('bulkhead', ['ask', 'answer', first.id, 'allow', 'qa']);
    assert.equal(bad.code, 1, bad.stderr);
    assert.match(bad.stderr, /not one of the offered targets/);
    await h.ok('bulkhead', ['ask', 'answer', first.id, 'allow', 'qb']);
    const allowed = await first.result;
    assert.equal(allowed.code, 0, allowed.stderr);
    assert.equal(allowed.stdout, 'arg= from=qa user=user target=qb\nasked\n');

    const second = await pendingCall();
    await h.ok('bulkhead', ['ask', 'answer', second.id, 'deny']);
    assert.equal((await second.result).code, 126);
    const stale = await h.run('bulkhead', ['ask', 'answer', second.id, 'deny']);
    assert.equal(stale.code, 1);
    assert.match(stale.stderr, /No pending ask/);

    const third = await pendingCall();
    const expired = await third.result;
    assert.equal(expired.code, 126, 'an unanswered ask is denied after --ask-timeout');
  });

  void test('dom0 serves qubes.GetDate under the default policy', async () => {
    const h = host();
    await setPolicy(h, '');
    const r = await call(h, 'qa', 'dom0 qubes.GetDate');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n$/);
    const skew = Math.abs(Date.parse(r.stdout.trim()) - Date.now());
    assert.ok(skew < 60_000, `date off by ${skew} ms`);
  });

  void test('the Admin API over qrexec: refused by default; allowed by policy it answers in the wire format, lists only the qubes policy lets the caller see, and never serves bulkhead.* methods', async () => {
    const h = host();
    await setPolicy(h, '');
    assert.equal((await call(h, 'qa', 'dom0 admin.vm.List')).code, 126);
    await setPolicy(h, [
      'admin.vm.List * qa @adminvm allow target=dom0',
      'admin.vm.List * qa qb allow target=dom0',
      'admin.vm.property.Get * qa qb allow target=dom0',
      'bulkhead.ask.List * qa @adminvm allow target=dom0',
      'bulkhead.policy.SystemInfo * qa @adminvm allow target=dom0',
      '',
    ].join('\n'));
    const list = await call(h, 'qa', 'dom0 admin.vm.List');
    assert.equal(list.code, 0, list.stderr);
    assert.ok(list.stdout.startsWith('0\0'), JSON.stringify(list.stdout));
    const names = list.stdout.slice(2).split('\n').filter((l) => l !== '').map((l) => l.split(' ')[0]).sort();
    assert.deepEqual(names, ['dom0', 'qb']);
    const label = await call(h, 'qa', 'qb admin.vm.property.Get+label');
    assert.equal(label.code, 0, label.stderr);
    assert.equal(label.stdout, '0\0default=False type=label red');
    // The rule only covers qb: the same call about qdvm is refused by policy.
    assert.equal((await call(h, 'qa', 'qdvm admin.vm.property.Get+label')).code, 126);
    for (const method of ['bulkhead.ask.List', 'bulkhead.policy.SystemInfo']) {
      const r = await call(h, 'qa', `dom0 ${method}`);
      assert.notEqual(r.code, 0, `${method} must never be served to a qube`);
      assert.ok(!r.stdout.startsWith('0\0'), r.stdout);
    }
  });

  void test('@dispvm: a new disposable from the caller\'s default_dispvm runs the service and is removed afterwards', async () => {
    const h = host();
    await setPolicy(h, 'test.Name * qa @dispvm allow\n');
    const r = await call(h, 'qa', '@dispvm test.Name', '', 60_000);
    assert.equal(r.code, 0, r.stderr);
    const disp = r.stdout.trim();
    assert.match(disp, /^disp\d+$/);
    await waitFor(async () => !(await h.ok('qvm-ls', ['--raw-list'])).split('\n').includes(disp), 20_000, `${disp} to be removed`);
    // `$dispvm` is accepted for `@dispvm`, as in Qubes.
    const again = await call(h, 'qa', '\\$dispvm test.Name', '', 60_000);
    assert.equal(again.code, 0, again.stderr);
  });

  void test('@dispvm: a caller killed mid-call does not leave its disposable behind', async () => {
    const h = host();
    await setPolicy(h, 'test.Drain * qa @dispvm allow\n');
    const before = new Set((await h.ok('qvm-ls', ['--raw-list'])).split('\n'));
    // The service reads stdin for ever; the caller is killed while the disposable serves it.
    // stdin: a fifo held open for reading and writing, so it never ends.
    const r = await h.exec('qa', 'rm -f /tmp/never && mkfifo /tmp/never && exec 3<>/tmp/never && timeout -s KILL 5 qrexec-client-vm @dispvm test.Drain <&3; echo rc=$?', { timeoutMs: 60_000 });
    assert.match(r.stdout, /rc=137/);
    await waitFor(async () => (await h.ok('qvm-ls', ['--raw-list'])).split('\n').every((n) => before.has(n)), 20_000, 'the disposable to be removed');
  });

  void test('a large stream passes unchanged, with backpressure', async () => {
    const h = host();
    await setPolicy(h, 'test.Sum * qa qb allow\n');
    // 64 MiB generated inside qa, piped through the call, hashed in qb, compared with qa's own hash.
    const r = await h.exec('qa', 'head -c 67108864 /dev/zero | tr "\\0" "x" > /tmp/big && sha256sum < /tmp/big | cut -d" " -f1 && qrexec-client-vm qb test.Sum < /tmp/big', { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    const [local, remote] = r.stdout.trim().split('\n');
    assert.equal(remote, local);
    assert.equal(local, crypto.createHash('sha256').update(Buffer.alloc(64 * 1024 * 1024, 'x')).digest('hex'));
  });

  void test('a caller that hangs up mid-call harms nobody: the daemon and both qubes keep working', async () => {
    const h = host();
    await setPolicy(h, 'test.Sleep * qa qb allow\ntest.Echo * qa qb allow\n');
    const r = await h.exec('qa', 'timeout -s KILL 1 qrexec-client-vm qb test.Sleep; echo rc=$?');
    assert.match(r.stdout, /rc=137/);
    const after1 = await call(h, 'qa', 'qb test.Echo', 'still\n');
    assert.equal(after1.code, 0, after1.stderr);
    assert.equal(await h.state('qb'), 'Running');
  });

  void test('garbage and oversized frames on the channel, and a flood of calls, do not block the daemon or other qubes', async () => {
    const h = host();
    await setPolicy(h, 'test.Echo * qa @anyvm ask\ntest.Echo * qb qa allow\n');
    // As qa's root: junk, an unknown frame type, and a header announcing 1 GiB on fresh channel connections.
    const junk = [
      'Buffer.alloc(64, 0xff)',
      'Buffer.from([0x12,0x02,0,0, 0,0,0,0x40])',
      'Buffer.from([0x00,0x10,0,0, 4,0,0,0, 9,9,9,9])',
    ];
    const script = (sock: string): string => `const net=require('net');let n=0;for(const b of [${junk.join(',')}]){const s=net.connect('${sock}');s.on('error',()=>{});s.on('close',()=>{if(++n===3)console.log('closed')});s.write(b)}`;
    const garbage = await h.root('qa', `/run/bulkhead/node -e "${script('/run/bulkhead/qrexec.sock')}"`, { timeoutMs: 20_000 });
    assert.equal(garbage.code, 0, garbage.stderr);
    assert.equal(garbage.stdout.trim(), 'closed', 'the daemon drops each bad connection');
    // The same from an unprivileged user on the call socket; the agent's socket is closed to it.
    const userGarbage = await h.exec('qa', `/run/bulkhead/node -e "${script('/run/bulkhead/qrexec-call.sock')}"`, { timeoutMs: 20_000 });
    assert.equal(userGarbage.stdout.trim(), 'closed', userGarbage.stderr);
    const agentSocket = await h.exec('qa', `/run/bulkhead/node -e "require('net').connect('/run/bulkhead/qrexec.sock').on('error',(e)=>console.log(e.code))"`);
    assert.equal(agentSocket.stdout.trim(), 'EACCES');
    // 40 calls at once, all asks: a few wait for an answer, the rest are refused at once.
    const flood = await h.exec('qa', 'for i in $(seq 40); do qrexec-client-vm qb test.Echo </dev/null >/dev/null 2>&1 & done; wait; echo done', { timeoutMs: 60_000 });
    assert.equal(flood.code, 0, flood.stderr);
    // Meanwhile the daemon answers and another qube's calls go through.
    await h.ok('qvm-ls');
    const other = await call(h, 'qb', 'qa test.Echo', 'fine\n');
    assert.equal(other.code, 0, other.stderr);
    assert.match(other.stdout, /from=qb/);
    assert.equal(await h.state('qa'), 'Running');
  });
});

void describe('qvm-run flags', { timeout: 120_000 }, () => {
  const host = suiteQubes(['ra', 'rb'], { start: true });

  void test('--service calls a service from dom0 (no policy), the remote exit code passes through', async () => {
    const h = host();
    await h.ok('qvm-start', ['tpl']);
    const install = await h.root('tpl', 'mkdir -p /etc/qubes-rpc && cat > /etc/qubes-rpc/test.Echo && chmod 755 /etc/qubes-rpc/test.Echo', { input: SERVICES['test.Echo'] });
    assert.equal(install.code, 0, install.stderr);
    const r = await h.run('qvm-run', ['-p', '--service', 'tpl', 'test.Echo+x'], { input: 'in\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'arg=x from=dom0 user=user target=tpl\nin\n');
    assert.equal((await h.run('qvm-run', ['-p', '--service', 'tpl', 'test.Nope'])).code, 127);
    assert.equal((await h.run('qvm-run', ['-p', 'ra', 'exit 7'])).code, 7);
    const bad = await h.run('qvm-run', ['--service', 'ra', 'bad name!']);
    assert.equal(bad.code, 2);
    await h.ok('qvm-shutdown', ['--wait', 'tpl']);
  });

  void test('--all runs in every running qube except the excluded; --no-gui is accepted', async () => {
    const h = host();
    await h.ok('qvm-run', ['--all', '--exclude', 'rb', '--no-gui', 'touch /tmp/marked']);
    await waitFor(async () => (await h.exec('ra', 'test -e /tmp/marked')).code === 0, 10_000, 'the mark in ra');
    assert.equal((await h.exec('rb', 'test -e /tmp/marked')).code, 1);
    const r = await h.run('qvm-run', ['--all', '-p', 'true']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--pass-io cannot be used with --all/);
    const ex = await h.run('qvm-run', ['--exclude', 'ra', 'rb', 'true']);
    assert.equal(ex.code, 2);
  });
});
