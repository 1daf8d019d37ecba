// Real qubes with the container backend: templates, lifecycle, volumes semantics, limits,
// qvm-run, daemon restart. Runs as root (crun, user namespaces).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { after, describe, test } from 'node:test';
import { Daemon, reapContainers, waitFor } from './helpers.js';
import { QubeHost, suiteQubes } from './qube-helpers.js';

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

  test('commands run with the user\'s supplementary groups and no capabilities', async () => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    const add = await h.root('work', 'echo "extra:x:2000:user" >> /etc/group && echo added');
    assert.equal(add.stdout, 'added\n', add.stderr);
    const r = await h.exec('work', 'id -Gn; grep -E "^(Uid|CapPrm|CapEff):" /proc/self/status');
    assert.match(r.stdout, /^user extra\n/);
    assert.match(r.stdout, /^Uid:\t1000\t1000\t1000\t1000$/m);
    assert.match(r.stdout, /^CapPrm:\t0+$/m);
    assert.match(r.stdout, /^CapEff:\t0+$/m);
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

  test('a qube that dies on its own is noticed: Halted, with a domain-shutdown event', async (t) => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    const { names: events, stop } = await h.events(t, 'work');
    // The agent is PID 2 under tini; killing it ends the qube.
    await h.root('work', 'kill -9 2');
    await h.waitState('work', 'Halted', 5000);
    await stop();
    assert.ok(events.includes('domain-shutdown'), events.join(','));
    assert.deepEqual(await reapContainers(h.daemon.dataDir), []);
  });

  test('a kill during a slow graceful shutdown ends it at once, with one domain-shutdown', async (t) => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    // A process that ignores SIGTERM holds the graceful shutdown up (the agent waits for it).
    await h.ok('qvm-run', ['-u', 'root', 'work', 'trap "" TERM; exec sleep 300']);
    const { names: events, stop } = await h.events(t, 'work');
    await h.ok('qvm-shutdown', ['work']);
    assert.notEqual(await h.state('work'), 'Halted', 'the graceful shutdown is still waiting');
    const t0 = Date.now();
    await h.ok('qvm-kill', ['work']);
    await h.waitState('work', 'Halted', 5000);
    assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);
    await new Promise((r) => setTimeout(r, 300));
    await stop();
    assert.equal(events.filter((e) => e === 'domain-shutdown').length, 1, events.join(','));
    assert.equal(events.filter((e) => e === 'domain-stopped').length, 1, events.join(','));
  });

  test('memory limit: exceeding maxmem kills inside the qube only', async (t) => {
    const h = host();
    await h.ok('qvm-shutdown', ['--wait', '--all']);
    await h.ok('qvm-prefs', ['work', 'maxmem', '64']);
    t.after(async () => {
      await h.run('qvm-shutdown', ['--wait', 'work']);
      await h.run('qvm-prefs', ['--default', 'work', 'maxmem']);
    });
    await h.ok('qvm-start', ['work']);
    const { names: events } = await h.events(t, 'work');
    const r = await h.root('work', 'head -c 400000000 /dev/zero | tail >/dev/null; echo "status $?"');
    assert.match(r.stdout, /status 137/);
    assert.equal(await h.state('work'), 'Running');
    // The daemon reports it (within its 1 s watchdog period).
    await waitFor(() => events.includes('domain-out-of-memory'), 4000, `domain-out-of-memory (got ${events.join(',')})`);
    assert.ok(events.includes('domain-out-of-memory'), events.join(','));
    assert.equal((await h.exec('work', 'echo alive')).stdout, 'alive\n');
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
    assert.equal(fs.existsSync(path.join(h.daemon.dataDir, 'volatile', uuid)), false);
  });
});

describe('container qubes: volumes', () => {
  const host = suiteQubes(['work']);

  test('qvm-volume shows Qubes semantics: AppVM root is a snapshot of its template, private is kept', async () => {
    const h = host();
    const root = await h.ok('qvm-volume', ['info', 'work:root']);
    assert.match(root, /^snap_on_start +True$/m);
    assert.match(root, /^save_on_stop +False$/m);
    assert.match(root, new RegExp(`^source +${await h.uuid('tpl')}/root$`, 'm'));
    const priv = await h.ok('qvm-volume', ['info', 'work:private']);
    assert.match(priv, /^save_on_stop +True$/m);
    assert.equal((await h.ok('qvm-volume', ['info', 'work:private', 'rw'])).trim(), 'True');
    const list = await h.ok('qvm-volume', ['list', 'work']);
    assert.deepEqual(list.trim().split('\n').slice(1).map((l) => l.split(/ +/)[2]), ['private', 'root', 'volatile']);
    const bad = await h.run('qvm-volume', ['info', 'work:nosuch']);
    assert.equal(bad.code, 2);
  });

  test('qvm-clone copies the private volume; qvm-remove deletes the clone\'s volumes', async () => {
    const h = host();
    await h.exec('work', 'echo precious > /home/user/data.txt');
    await h.ok('qvm-shutdown', ['--wait', 'work']);
    await h.ok('qvm-clone', ['work', 'work-copy']);
    assert.equal((await h.exec('work-copy', 'cat /home/user/data.txt')).stdout, 'precious\n');
    assert.equal((await h.exec('work-copy', 'echo changed > /home/user/data.txt; cat /home/user/data.txt')).stdout, 'changed\n');
    assert.equal((await h.exec('work', 'cat /home/user/data.txt')).stdout, 'precious\n');
    const uuid = await h.uuid('work-copy');
    const dir = path.join(h.daemon.dataDir, 'vm', uuid);
    assert.ok(fs.existsSync(path.join(dir, 'private')));
    await h.ok('qvm-shutdown', ['--wait', 'work-copy']);
    await h.ok('qvm-remove', ['-f', 'work-copy']);
    assert.equal(fs.existsSync(dir), false);
  });

  test('a StandaloneVM made from a template has its own persistent root', async () => {
    const h = host();
    await h.ok('qvm-create', ['--standalone', '-t', 'tpl', '-l', 'green', 'alone']);
    const w = await h.root('alone', 'echo mine > /etc/standalone-marker && cat /etc/standalone-marker');
    assert.equal(w.stdout, 'mine\n', w.stderr);
    await h.ok('qvm-shutdown', ['--wait', 'alone']);
    assert.equal((await h.root('alone', 'cat /etc/standalone-marker')).stdout, 'mine\n');
    assert.match((await h.exec('work', 'cat /etc/standalone-marker 2>&1 || true')).stdout, /No such file/);
    const root = await h.ok('qvm-volume', ['info', 'alone:root']);
    assert.match(root, /^save_on_stop +True$/m);
    await h.ok('qvm-shutdown', ['--wait', 'alone']);
    await h.ok('qvm-remove', ['-f', 'alone']);
  });

  test('a DispVM loses everything at shutdown, its private volume included', async () => {
    const h = host();
    await h.ok('qvm-create', ['-t', 'tpl', '-l', 'red', '--prop', 'template_for_dispvms=True', 'dvm']);
    await h.ok('qvm-create', ['-C', 'DispVM', '-t', 'dvm', '-l', 'red', 'disp1']);
    await h.exec('disp1', 'echo temp > /home/user/t.txt');
    assert.equal((await h.exec('disp1', 'cat /home/user/t.txt')).stdout, 'temp\n');
    assert.match(await h.ok('qvm-volume', ['info', 'disp1:private']), /^save_on_stop +False$/m);
    await h.ok('qvm-shutdown', ['--wait', 'disp1']);
    assert.match((await h.exec('disp1', 'cat /home/user/t.txt 2>&1 || true')).stdout, /No such file/);
    await h.ok('qvm-shutdown', ['--wait', 'disp1']);
  });
});

describe('container qubes: bad input and failures', () => {
  const host = suiteQubes(['work']);

  test('a template without a root volume: clear error, qube Halted, nothing left behind', async () => {
    const h = host();
    await h.ok('qvm-create', ['-C', 'TemplateVM', '-l', 'black', 'empty-tpl']);
    await h.ok('qvm-create', ['-t', 'empty-tpl', '-l', 'red', 'orphan']);
    const r = await h.run('qvm-start', ['orphan']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /'empty-tpl' has no root volume: build one with 'bulkhead template build/);
    assert.equal(await h.state('orphan'), 'Halted');
    assert.deepEqual(await reapContainers(h.daemon.dataDir), []);
    assert.equal(fs.existsSync(path.join(h.daemon.dataDir, 'volatile', await h.uuid('orphan'))), false);
  });

  test('a damaged private volume: the start fails, the qube stays Halted, its data untouched', async () => {
    const h = host();
    await h.ok('qvm-create', ['-t', 'tpl', '-l', 'red', 'damaged']);
    const dir = path.join(h.daemon.dataDir, 'vm', await h.uuid('damaged'));
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(dir, 'private'), 'not a directory, but precious\n');
    const r = await h.run('qvm-start', ['damaged']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Start failed: the private volume is damaged/);
    assert.equal(await h.state('damaged'), 'Halted');
    assert.equal(fs.readFileSync(path.join(dir, 'private'), 'utf8'), 'not a directory, but precious\n');
    assert.deepEqual(await reapContainers(h.daemon.dataDir), []);
    assert.equal(fs.existsSync(path.join(h.daemon.dataDir, 'volatile', await h.uuid('damaged'))), false);
  });

  test('links a qube plants in its private volume are never followed by the admin domain', async () => {
    const h = host();
    const hostTarget = path.join(h.daemon.tmpDir, 'attack-target');
    const privateDir = path.join(h.daemon.dataDir, 'vm', await h.uuid('work'), 'private');
    // As the qube's root: /rw/home becomes a link to host paths (one missing, one existing).
    const plant = await h.root('work', `rm -rf /rw/home && ln -s ${hostTarget} /rw/home && ln -s ${h.daemon.dataDir} /rw/data && echo planted`);
    assert.equal(plant.stdout, 'planted\n', plant.stderr);
    await h.ok('qvm-shutdown', ['--wait', 'work']);
    await h.ok('qvm-start', ['work']);
    assert.equal(fs.existsSync(hostTarget), false, 'the daemon created a directory through the planted link');
    assert.equal(fs.readlinkSync(path.join(privateDir, 'home')), hostTarget, 'the qube\'s data was changed');
    const look = await h.root('work', `ls ${h.daemon.dataDir} /rw/data/ 2>&1; ls /home/ 2>&1; echo end`);
    assert.doesNotMatch(look.stdout, /qubes\.json/);
    assert.match(look.stdout, /end\n$/);
    // Repair, as the qube's owner would.
    await h.root('work', 'rm -f /rw/home /rw/data && mkdir -p /rw/home/user && chown 1000:1000 /rw/home/user');
    await h.ok('qvm-shutdown', ['--wait', 'work']);
  });

  test('volumes are never copied or replaced while a qube using them runs', async () => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    const clone = await h.run('qvm-clone', ['work', 'work-live-copy']);
    assert.equal(clone.code, 1);
    assert.match(clone.stderr, /not powered off: 'work'; shut it down first/);
    assert.equal((await h.run('qvm-check', ['work-live-copy'])).code, 2, 'a failed clone leaves no qube');
    const rebuild = await h.run('bulkhead', ['template', 'build', 'host', 'tpl']);
    assert.equal(rebuild.code, 1);
    assert.match(rebuild.stderr, /based on 'tpl' are running: work/);
    assert.equal((await h.exec('work', 'echo still-fine')).stdout, 'still-fine\n');
    await h.ok('qvm-shutdown', ['--wait', 'work']);
  });

  test('a starting qube is never reported Halted once its start began', async () => {
    const h = host();
    const client = h.daemon.client();
    const samples: string[] = [];
    const state = { done: false };
    const poll = (async () => {
      while (!state.done) {
        const cs = await client.call({ method: 'admin.vm.CurrentState', dest: 'work' });
        samples.push(/power_state=(\S+)/.exec(cs)?.[1] ?? '');
      }
    })();
    try {
      await h.ok('qvm-start', ['work']);
    } finally {
      state.done = true;
      await poll;
    }
    const first = samples.findIndex((x) => x !== 'Halted');
    assert.ok(first >= 0, samples.join(','));
    assert.deepEqual(samples.slice(first).filter((x) => x === 'Halted'), [], samples.join(','));
    assert.equal(await h.state('work'), 'Running');
    assert.equal((await h.exec('work', 'echo up')).stdout, 'up\n');
    await h.ok('qvm-shutdown', ['--wait', 'work']);
  });

  test('a qube flooding its console log cannot fill the host disk through it', async () => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    const log = path.join(h.daemon.dataDir, 'vm', await h.uuid('work'), 'run', 'console.log');
    const r = await h.root('work', 'head -c 3000000 /dev/zero >> /proc/1/fd/2 && echo flooded');
    assert.equal(r.stdout, 'flooded\n', r.stderr);
    let size = fs.statSync(log).size;
    for (let i = 0; i < 40 && size > 1024 * 1024; i++) {
      await new Promise((res) => setTimeout(res, 100));
      size = fs.statSync(log).size;
    }
    assert.ok(size <= 1024 * 1024, `console log still ${size} bytes`);
    assert.ok(fs.statSync(log).blocks * 512 <= 2 * 1024 * 1024);
    await h.ok('qvm-shutdown', ['--wait', 'work']);
  });

  test('invalid memory values are refused before anything starts', async () => {
    const h = host();
    for (const v of ['-5', 'lots', '1.5']) {
      const r = await h.run('qvm-prefs', ['work', 'maxmem', v]);
      assert.notEqual(r.code, 0, v);
    }
    assert.equal(await h.state('work'), 'Halted');
  });

  test('template build refuses a name that is not a TemplateVM, and unknown kinds', async () => {
    const h = host();
    const r = await h.run('bulkhead', ['template', 'build', 'host', 'work']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /not a TemplateVM/);
    assert.equal((await h.run('bulkhead', ['template', 'build', 'alpine'])).code, 2);
  });
});

describe('container qubes: daemon restarts', () => {
  const host = suiteQubes(['work']);

  test('a daemon killed with SIGKILL leaves qubes that the next daemon stops cleanly', async () => {
    const h = host();
    await h.ok('qvm-start', ['work']);
    await h.daemon.kill('SIGKILL');
    await h.daemon.start();
    assert.equal(await h.state('work'), 'Halted');
    assert.deepEqual(await reapContainers(h.daemon.dataDir), []);
    assert.equal(fs.existsSync(path.join(h.daemon.dataDir, 'volatile', await h.uuid('work'))), false);
    assert.equal((await h.exec('work', 'echo again')).stdout, 'again\n');
  });

  test('a daemon stopped with SIGTERM stops its qubes first', async () => {
    const h = host();
    await h.ok('qvm-start', ['--skip-if-running', 'work']);
    await h.daemon.kill('SIGTERM');
    assert.deepEqual(await reapContainers(h.daemon.dataDir), []);
    await h.daemon.start();
    assert.equal(await h.state('work'), 'Halted');
  });
});

describe('container qubes: a full disk', () => {
  let daemon: Daemon | undefined;
  let mounted = false;
  after(async () => {
    try {
      if (daemon?.running === true) await daemon.kill();
      if (daemon) await reapContainers(daemon.tmpDir).catch(() => undefined);
      if (mounted) execFileSync('umount', [daemon?.dataDir ?? '']);
    } finally {
      await daemon?.stop();
    }
  });

  test('a start on a full disk fails cleanly: Halted, nothing half-made, private data intact', async () => {
    daemon = new Daemon();
    fs.mkdirSync(daemon.dataDir, { mode: 0o700 });
    // The test's own small file system as the data dir (removed in after()).
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0711', 'tmpfs', daemon.dataDir]);
    mounted = true;
    await daemon.start();
    const h = new QubeHost(daemon);
    await h.ok('bulkhead', ['template', 'build', 'host', 'tpl']);
    await h.ok('qvm-create', ['-t', 'tpl', '-l', 'red', 'work']);
    assert.equal((await h.exec('work', 'echo keep-me > /home/user/kept && echo kept')).stdout, 'kept\n');
    await h.ok('qvm-shutdown', ['--wait', 'work']);
    await h.ok('qvm-create', ['-t', 'tpl', '-l', 'red', 'fresh']);
    const filler = path.join(daemon.dataDir, 'filler');
    const fd = fs.openSync(filler, 'w');
    try {
      for (const size of [64 * 1024, 4096, 1]) {
        try {
          for (;;) fs.writeSync(fd, Buffer.alloc(size));
        } catch (err) {
          assert.equal((err as NodeJS.ErrnoException).code, 'ENOSPC');
        }
      }
    } finally {
      fs.closeSync(fd);
    }
    // A qube never started before needs new space for its volumes and runtime files.
    const r = await h.run('qvm-start', ['fresh']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /Start failed: .*(ENOSPC|no space left)/i);
    assert.equal(await h.state('fresh'), 'Halted');
    assert.deepEqual(await reapContainers(daemon.dataDir), []);
    assert.equal(fs.existsSync(path.join(daemon.dataDir, 'volatile', await h.uuid('fresh'))), false);
    assert.equal(fs.readFileSync(path.join(daemon.dataDir, 'vm', await h.uuid('work'), 'private', 'home', 'user', 'kept'), 'utf8'), 'keep-me\n');
    fs.rmSync(filler);
    assert.equal((await h.exec('fresh', 'echo ok')).stdout, 'ok\n');
    assert.equal((await h.exec('work', 'cat /home/user/kept')).stdout, 'keep-me\n');
    await h.ok('qvm-shutdown', ['--wait', 'work']);
  });
});
