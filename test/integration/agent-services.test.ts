// Qubes RPC services inside real qubes (host template), called through the existing admin-domain
// path: `qvm-run -p QUBE 'QUBESRPC SERVICE+ARG SOURCE …'` reaches the agent as a service call.
// Also the shipped services (qubes.VMShell, qubes.VMExec, qubes.WaitForSession) and
// qrexec-client-vm inside a qube. Runs as root (crun, user namespaces).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { waitFor } from './helpers.js';
import { suiteQubes, type QubeHost, type QubeRunOptions } from './qube-helpers.js';

const VM = 'svc-work';
const OTHER = 'svc-other';

/** A service call from "dom0" through qvm-run (SOURCE and the requested target as given). */
function rpc(h: QubeHost, service: string, opts: QubeRunOptions & { source?: string; target?: string } = {}) {
  const tail = opts.target === undefined ? '' : ` ${opts.target}`;
  return h.exec(VM, `QUBESRPC ${service} ${opts.source ?? 'dom0'}${tail}`, opts);
}

/** Writes a file into the qube as its root (mode as given). */
async function put(h: QubeHost, file: string, content: string, mode: string): Promise<void> {
  const r = await h.root(VM, `mkdir -p "$(dirname ${file})" && cat > ${file} && chmod ${mode} ${file} && echo written`, { input: content });
  assert.equal(r.stdout, 'written\n', r.stderr);
}

/** Qubes' qubes.VMExec encoding, written here from the format's description. */
function encodeVmExec(argv: readonly string[]): string {
  return argv.map((a) => [...Buffer.from(a)].map((b) => {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9_.]/.test(c)) return c;
    if (c === '-') return '--';
    return `-${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }).join('')).join('+');
}

const ENV_SERVICE = `#!/bin/sh
echo "argv:$#:$1"
echo "who:$(id -un):$HOME:$([ "$(pwd -P)" = "$(cd "$HOME" && pwd -P)" ] && echo in-home)"
env | grep -E '^QREXEC_' | sort
`;

describe('qrexec services in a qube', () => {
  const host = suiteQubes([VM, OTHER], { start: true });

  test('shipped: the services, the rpc-config folder, qrexec-client-vm on the PATH', async () => {
    const h = host();
    const r = await h.exec(VM, 'stat -c "%a %n" /etc/qubes-rpc/qubes.VMShell /etc/qubes-rpc/qubes.VMExec /etc/qubes-rpc/qubes.WaitForSession /etc/qubes/rpc-config; command -v qrexec-client-vm');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, [
      '644 /etc/qubes-rpc/qubes.VMShell',
      '755 /etc/qubes-rpc/qubes.VMExec',
      '755 /etc/qubes-rpc/qubes.WaitForSession',
      '755 /etc/qubes/rpc-config',
      '/run/bulkhead/agent/bin/qrexec-client-vm',
      '',
    ].join('\n'));
  });

  test('an executable service: argv[1], the QREXEC_* environment, the default user in their home', async () => {
    const h = host();
    await put(h, '/etc/qubes-rpc/test.Env', ENV_SERVICE, '755');
    const r = await rpc(h, 'test.Env+some.arg');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, [
      'argv:1:some.arg',
      'who:user:/home/user:in-home',
      'QREXEC_REMOTE_DOMAIN=dom0',
      'QREXEC_REQUESTED_TARGET_KEYWORD=default',
      'QREXEC_REQUESTED_TARGET_TYPE=keyword',
      'QREXEC_SERVICE_ARGUMENT=some.arg',
      'QREXEC_SERVICE_FULL_NAME=test.Env+some.arg',
      '',
    ].join('\n'));
    const named = await rpc(h, 'test.Env', { source: 'svc-other', target: `name ${VM}` });
    assert.equal(named.stdout, [
      'argv:0:',
      'who:user:/home/user:in-home',
      'QREXEC_REMOTE_DOMAIN=svc-other',
      `QREXEC_REQUESTED_TARGET=${VM}`,
      'QREXEC_REQUESTED_TARGET_TYPE=name',
      'QREXEC_SERVICE_FULL_NAME=test.Env',
      '',
    ].join('\n'));
  });

  test('qvm-run -u root: the service runs as root', async () => {
    const h = host();
    await put(h, '/etc/qubes-rpc/test.Env', ENV_SERVICE, '755');
    const r = await rpc(h, 'test.Env', { user: 'root' });
    assert.match(r.stdout, /^who:root:\/root:in-home$/m);
  });

  test('SERVICE+ARG is preferred over SERVICE', async () => {
    const h = host();
    await put(h, '/etc/qubes-rpc/test.Pick', '#!/bin/sh\necho "general $1"\n', '755');
    await put(h, '/etc/qubes-rpc/test.Pick+special', '#!/bin/sh\necho "specific $1"\n', '755');
    assert.equal((await rpc(h, 'test.Pick+special')).stdout, 'specific special\n');
    assert.equal((await rpc(h, 'test.Pick+other')).stdout, 'general other\n');
    assert.equal((await rpc(h, 'test.Pick')).stdout, 'general \n');
  });

  test('/usr/local/etc/qubes-rpc is searched before /etc/qubes-rpc', { skip: 'a host template\'s /usr (with /usr/local) is the host\'s, read-only: covered by src/agent/exec.test.ts on a temporary tree' }, () => {
    // Needs a template with its own /usr (Debian).
  });

  test('an unknown service: exit 127 and a message', async () => {
    const h = host();
    const r = await rpc(h, 'test.NoSuchService+x');
    assert.equal(r.code, 127);
    assert.match(r.stderr, /service not found in this qube: test\.NoSuchService\+x/);
    assert.equal(r.stdout, '');
  });

  test('a non-executable service file is run as a shell command line', async () => {
    const h = host();
    await put(h, '/etc/qubes-rpc/test.Line', 'echo "line $1 from $QREXEC_REMOTE_DOMAIN"; tr a-z A-Z\n', '644');
    const r = await rpc(h, 'test.Line+arg', { input: 'shout\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'line arg from dom0\nSHOUT\n');
  });

  test('stderr of a call from another qube goes to the qube\'s console log, not to the caller', async () => {
    const h = host();
    await put(h, '/etc/qubes-rpc/test.Err', '#!/bin/sh\necho out\necho "problem-$1" >&2\nexit 3\n', '755');
    const fromDom0 = await rpc(h, 'test.Err+a');
    assert.deepEqual([fromDom0.code, fromDom0.stdout, fromDom0.stderr], [3, 'out\n', 'problem-a\n']);
    const fromQube = await rpc(h, 'test.Err+b', { source: OTHER, target: `name ${VM}` });
    assert.deepEqual([fromQube.code, fromQube.stdout, fromQube.stderr], [3, 'out\n', '']);
    const consoleLog = path.join(h.daemon.dataDir, 'vm', await h.uuid(VM), 'run', 'console.log');
    await waitFor(() => fs.readFileSync(consoleLog, 'utf8').includes(`test.Err+b (from ${OTHER}): problem-b`), 5000, 'the stderr line in the console log');
  });

  test('a socket service gets the descriptor first (not with skip-service-descriptor=true)', async () => {
    const h = host();
    // A socket service written for the test: answers with what it received, as JSON.
    await put(h, '/root/sock-server.mjs', `
import net from 'node:net';
net.createServer({ allowHalfOpen: true }, (c) => {
  const parts = [];
  c.on('data', (d) => parts.push(d));
  c.on('end', () => c.end(JSON.stringify(Buffer.concat(parts).toString('latin1'))));
}).listen(process.argv[2], () => { console.log('listening'); });
`, '644');
    const started = await h.root(VM, 'rm -f /etc/qubes-rpc/test.Sock; /run/bulkhead/node /root/sock-server.mjs /etc/qubes-rpc/test.Sock > /root/sock-server.log 2>&1 < /dev/null & echo started');
    assert.equal(started.stdout, 'started\n', started.stderr);
    await waitFor(async () => (await h.root(VM, 'test -S /etc/qubes-rpc/test.Sock && echo yes')).stdout === 'yes\n', 10_000, 'the socket service to listen');
    const r = await rpc(h, 'test.Sock+arg', { input: 'hello' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout), 'test.Sock+arg dom0\0hello');
    await put(h, '/etc/qubes/rpc-config/test.Sock', '# the service speaks plain bytes\nskip-service-descriptor=true\n', '644');
    const raw = await rpc(h, 'test.Sock+arg', { input: 'hello' });
    assert.equal(JSON.parse(raw.stdout), 'hello');
  });

  test('qubes.VMExec runs an encoded argv without a shell; a bad encoding fails', async () => {
    const h = host();
    const argv = ['printf', '[%s]', 'a b', "it's", '-n', '$HOME;', 'x+y', 'ünï'];
    assert.equal(encodeVmExec(['ls', '-la']), 'ls+--la');
    const r = await rpc(h, `qubes.VMExec+${encodeVmExec(argv)}`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "[a b][it's][-n][$HOME;][x+y][ünï]");
    const stdin = await rpc(h, `qubes.VMExec+${encodeVmExec(['tr', 'a-z', 'A-Z'])}`, { input: 'through\n' });
    assert.equal(stdin.stdout, 'THROUGH\n');
    const bad = await rpc(h, 'qubes.VMExec+printf+-zz');
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /cannot decode/);
    const none = await rpc(h, 'qubes.VMExec');
    assert.equal(none.code, 1);
  });

  test('qubes.VMShell runs its stdin as a shell script; qubes.WaitForSession returns at once', async () => {
    const h = host();
    const r = await rpc(h, 'qubes.VMShell', { input: 'echo $((6 * 7)); id -un; exit 4\n' });
    assert.deepEqual([r.code, r.stdout], [4, '42\nuser\n']);
    const w = await rpc(h, 'qubes.WaitForSession', { input: 'user\n' });
    assert.equal(w.code, 0, w.stderr);
  });

  test('plain commands still work as before', async () => {
    const h = host();
    const r = await h.exec(VM, 'echo "$QREXEC_REMOTE_DOMAIN"; exit 5');
    assert.deepEqual([r.code, r.stdout], [5, 'dom0\n']);
  });

  test('qrexec-client-vm: usage errors exit 2; a call the admin domain does not allow fails cleanly (no hang)', async () => {
    const h = host();
    const usage = await h.exec(VM, 'qrexec-client-vm only-a-target');
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /usage: qrexec-client-vm/);
    const t0 = Date.now();
    const r = await h.exec(VM, 'BULKHEAD_QREXEC_TIMEOUT=3 qrexec-client-vm \'$default\' test.Nothing+x', { timeoutMs: 20_000 });
    // No router: no answer within the timeout (125). With a router and no policy: refused (126).
    assert.ok(r.code === 125 || r.code === 126, `${r.code}: ${r.stderr}`);
    assert.match(r.stderr, /no answer to the service call|Request refused/);
    assert.ok(Date.now() - t0 < 15_000);
    // Any user may reach the agent's socket.
    const perms = await h.exec(VM, 'stat -c %a /run/qubes/qrexec-agent /run/qubes');
    assert.equal(perms.stdout, '666\n755\n');
  });
});
