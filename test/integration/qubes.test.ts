// Real qubes with the container backend: templates, lifecycle, volumes semantics, limits,
// qvm-run, daemon restart. Runs as root (crun, user namespaces).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { reapContainers } from './helpers.js';
import { suiteQubes } from './qube-helpers.js';

describe('container qubes: lifecycle', () => {
  const host = suiteQubes(['work', 'other']);

  test('qvm-start makes a qube Running only once its agent said hello; qvm-run -p runs in it', async () => {
    const h = host();
    await h.ok('qvm-start', ['work']);
    assert.equal(await h.state('work'), 'Running');
    const ls = await h.ok('qvm-ls', ['--raw-data', '--fields', 'name,state']);
    assert.match(ls, /^work\|Running$/m);
    const r = await h.exec('work', 'id -un; hostname; echo "$HOME"');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'user\nwork\n/home/user\n');
  });

  test('qvm-run passes stdin, stderr and the exit code through', async () => {
    const h = host();
    const r = await h.exec('work', 'tr a-z A-Z; echo oops >&2; exit 7', { input: 'hello\n' });
    assert.equal(r.code, 7);
    assert.equal(r.stdout, 'HELLO\n');
    assert.equal(r.stderr, 'oops\n');
    const big = 'x'.repeat(300_000);
    const r2 = await h.exec('work', 'wc -c', { input: big });
    assert.equal(r2.stdout.trim(), '300000');
  });

  test('qvm-run -u root runs as the qube\'s root; an unknown user fails cleanly', async () => {
    const h = host();
    const r = await h.root('work', 'id -u');
    assert.equal(r.stdout, '0\n');
    const bad = await h.exec('work', 'true', { user: 'nosuchuser' });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /no such user/);
  });

  test('qvm-run --no-autostart on a halted qube fails and leaves it halted; default autostarts', async () => {
    const h = host();
    const r = await h.run('qvm-run', ['-p', '-n', 'other', 'true']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not running/);
    assert.equal(await h.state('other'), 'Halted');
    const r2 = await h.exec('other', 'echo started');
    assert.equal(r2.stdout, 'started\n');
    assert.equal(await h.state('other'), 'Running');
    await h.ok('qvm-shutdown', ['--wait', 'other']);
  });

  test('pause freezes the qube and unpause thaws it', async () => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    await h.ok('qvm-pause', ['work']);
    assert.equal(await h.state('work'), 'Paused');
    const r = await h.exec('work', 'true');
    assert.notEqual(r.code, 0);
    await h.ok('qvm-unpause', ['work']);
    assert.equal(await h.state('work'), 'Running');
    assert.equal((await h.exec('work', 'echo thawed')).stdout, 'thawed\n');
  });

  test('changes to / vanish at restart, /home and /rw persist (AppVM semantics)', async () => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    const w = await h.root('work', 'echo root-change > /etc/bulkhead-test && echo keep > /home/user/kept && echo rw > /rw/kept-rw && cat /etc/bulkhead-test');
    assert.equal(w.code, 0, w.stderr);
    assert.equal(w.stdout, 'root-change\n');
    await h.ok('qvm-shutdown', ['--wait', 'work']);
    assert.equal(await h.state('work'), 'Halted');
    await h.ok('qvm-start', ['work']);
    const r = await h.root('work', 'cat /etc/bulkhead-test 2>/dev/null || echo gone; cat /home/user/kept /rw/kept-rw');
    assert.equal(r.stdout, 'gone\nkeep\nrw\n');
  });

  test('a TemplateVM\'s root is persistent and its AppVMs see changes after their next start', async () => {
    const h = host();
    await h.ok('qvm-shutdown', ['--wait', '--all']);
    await h.ok('qvm-start', ['tpl']);
    const w = await h.root('tpl', 'echo from-template > /etc/tpl-marker');
    assert.equal(w.code, 0, w.stderr);
    await h.ok('qvm-shutdown', ['--wait', 'tpl']);
    await h.ok('qvm-start', ['tpl']);
    assert.equal((await h.root('tpl', 'cat /etc/tpl-marker')).stdout, 'from-template\n');
    await h.ok('qvm-shutdown', ['--wait', 'tpl']);
    assert.equal((await h.exec('work', 'cat /etc/tpl-marker')).stdout, 'from-template\n');
  });

  test('a qube that dies on its own is noticed: Halted, with a domain-shutdown event', async () => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    const events: string[] = [];
    const ac = new AbortController();
    const stream = h.daemon.client().events('work', (e) => { events.push(e.event); }, ac.signal);
    // The agent is PID 2 under tini; killing it ends the qube.
    await h.root('work', 'kill -9 2');
    await h.waitState('work', 'Halted', 5000);
    ac.abort();
    await stream;
    assert.ok(events.includes('domain-shutdown'), events.join(','));
    assert.deepEqual(await reapContainers(h.daemon.dataDir), []);
  });

  test('memory limit: exceeding maxmem kills inside the qube only', async () => {
    const h = host();
    await h.ok('qvm-shutdown', ['--wait', '--all']);
    await h.ok('qvm-prefs', ['work', 'maxmem', '64']);
    await h.ok('qvm-start', ['work']);
    const r = await h.root('work', 'head -c 400000000 /dev/zero | tail >/dev/null; echo "status $?"');
    assert.match(r.stdout, /status 137/);
    assert.equal(await h.state('work'), 'Running');
    assert.equal((await h.exec('work', 'echo alive')).stdout, 'alive\n');
    await h.ok('qvm-shutdown', ['--wait', 'work']);
    await h.ok('qvm-prefs', ['--default', 'work', 'maxmem']);
  });

  test('qvm-kill stops at once; qvm-shutdown --wait is graceful and leaves no container', async () => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    await h.ok('qvm-kill', ['work']);
    assert.equal(await h.state('work'), 'Halted');
    await h.ok('qvm-start', ['work']);
    await h.ok('qvm-shutdown', ['--wait', 'work']);
    assert.equal(await h.state('work'), 'Halted');
    assert.deepEqual(await reapContainers(h.daemon.dataDir), []);
    const uuid = await h.uuid('work');
    assert.equal(fs.existsSync(path.join(h.daemon.dataDir, 'vm', uuid, 'volatile')), false);
  });
});
