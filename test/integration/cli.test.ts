// End-to-end behaviour of the qvm-* commands: the real CLI binaries against a real daemon.
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { BIN_DIR, lines, makeTempDir, parsePrefsList, parseTable, removeTempDir, rowOf, runCli, suiteDaemon, type Daemon } from './helpers.js';

const DEFAULT_QUBES = ['debian-12', 'default-dvm', 'dom0', 'personal', 'sys-firewall', 'sys-net', 'untrusted', 'vault', 'work'];

async function exists(d: Daemon, name: string): Promise<boolean> {
  // Like every Qubes tool, qvm-check treats an unknown qube name as a usage error (exit 2).
  const r = await d.run('qvm-check', ['-q', name]);
  assert.ok(r.code === 0 || r.code === 2, `qvm-check exited ${r.code}: ${r.stderr}`);
  return r.code === 0;
}

async function names(d: Daemon): Promise<string[]> {
  return lines(await d.ok('qvm-ls', ['--raw-list']));
}

async function pref(d: Daemon, vm: string, prop: string): Promise<string> {
  return (await d.ok('qvm-prefs', [vm, prop])).replace(/\n$/, '');
}

void describe('qvm-ls', () => {
  const daemon = suiteDaemon({ defaultQubes: true });
  const ALL = [...DEFAULT_QUBES, 'fw-b', 'net-sa'].sort();

  it('sets up a netvm chain and tags (fixture)', async () => {
    const d = daemon();
    await d.ok('qvm-create', ['-C', 'StandaloneVM', '-l', 'red', '--prop', 'provides_network=True', 'net-sa']);
    await d.ok('qvm-create', ['-l', 'orange', '--prop', 'provides_network=True', '--prop', 'netvm=net-sa', 'fw-b']);
    await d.ok('qvm-prefs', ['work', 'netvm', 'fw-b']);
    await d.ok('qvm-prefs', ['personal', 'netvm', '']);
    await d.ok('qvm-tags', ['work', 'add', 'ls-tag']);
    await d.ok('qvm-tags', ['personal', 'add', 'ls-tag', 'other-tag']);
    assert.deepEqual(await names(d), ALL);
  });

  it('prints the default table: header, aligned columns, one row per qube sorted by name', async () => {
    const r = await daemon().run('qvm-ls', []);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const all = lines(r.stdout);
    assert.match(all[0] ?? '', /^NAME +STATE +CLASS +LABEL +TEMPLATE +NETVM$/);
    const { header, rows } = parseTable(r.stdout);
    assert.deepEqual(header, ['NAME', 'STATE', 'CLASS', 'LABEL', 'TEMPLATE', 'NETVM']);
    assert.deepEqual(rows.map((row) => row[0]), ALL);
    assert.deepEqual(rowOf(rows, 'dom0'), ['dom0', 'Running', 'AdminVM', 'black', '-', '-']);
    assert.deepEqual(rowOf(rows, 'debian-12'), ['debian-12', 'Halted', 'TemplateVM', 'black', '-', '-']);
    assert.deepEqual(rowOf(rows, 'work'), ['work', 'Halted', 'AppVM', 'blue', 'debian-12', 'fw-b']);
    assert.deepEqual(rowOf(rows, 'net-sa'), ['net-sa', 'Halted', 'StandaloneVM', 'red', '-', '-']);
    // Columns are exactly two blanks past the widest cell of the column before.
    const nameWidth = Math.max(...rows.map((row) => (row[0] ?? '').length));
    assert.equal(all[0]?.indexOf('STATE'), nameWidth + 2);
    // No trailing blanks.
    for (const line of all) assert.equal(line, line.trimEnd());
  });

  it('-O picks the fields (case-insensitive), in the given order', async () => {
    const r = await daemon().run('qvm-ls', ['-O', 'name,LABEL,memory,class']);
    assert.equal(r.code, 0, r.stderr);
    const { header, rows } = parseTable(r.stdout);
    assert.deepEqual(header, ['NAME', 'LABEL', 'MEMORY', 'CLASS']);
    assert.deepEqual(rowOf(rows, 'work'), ['work', 'blue', '400', 'AppVM']);
    assert.deepEqual(rowOf(rows, 'dom0'), ['dom0', 'black', '-', 'AdminVM']);
    assert.equal(rows.length, ALL.length);
  });

  it('--raw-data prints |-joined fields without a header', async () => {
    const r = await daemon().run('qvm-ls', ['--raw-data']);
    assert.equal(r.code, 0, r.stderr);
    const all = lines(r.stdout);
    assert.equal(all.length, ALL.length);
    assert.ok(!all.some((l) => l.includes('NAME')), 'no header');
    for (const l of all) assert.equal(l.split('|').length, 6, l);
    assert.ok(all.includes('dom0|Running|AdminVM|black|-|-'), r.stdout);
    assert.ok(all.includes('work|Halted|AppVM|blue|debian-12|fw-b'), r.stdout);
    const fields = await daemon().run('qvm-ls', ['--raw-data', '-O', 'name,class,netvm', 'work', 'dom0']);
    assert.equal(fields.code, 0, fields.stderr);
    assert.equal(fields.stdout, 'work|AppVM|fw-b\ndom0|AdminVM|-\n');
  });

  it('--raw-list prints only the names', async () => {
    const r = await daemon().run('qvm-ls', ['--raw-list']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, ALL.map((n) => `${n}\n`).join(''));
  });

  it('--running and --halted filter by power state', async () => {
    assert.deepEqual(lines(await daemon().ok('qvm-ls', ['--raw-list', '--running'])), ['dom0']);
    assert.deepEqual(
      lines(await daemon().ok('qvm-ls', ['--raw-list', '--halted'])),
      ALL.filter((n) => n !== 'dom0'),
    );
    assert.deepEqual(lines(await daemon().ok('qvm-ls', ['--raw-list', '--paused'])), []);
  });

  it('--class filters by class', async () => {
    assert.deepEqual(lines(await daemon().ok('qvm-ls', ['--raw-list', '--class', 'TemplateVM'])), ['debian-12']);
    assert.deepEqual(lines(await daemon().ok('qvm-ls', ['--raw-list', '--class', 'AdminVM'])), ['dom0']);
    assert.deepEqual(lines(await daemon().ok('qvm-ls', ['--raw-list', '--class', 'StandaloneVM', '--class', 'TemplateVM'])), [
      'debian-12',
      'net-sa',
    ]);
  });

  it('--tags lists the qubes having any of the tags', async () => {
    assert.deepEqual(lines(await daemon().ok('qvm-ls', ['--raw-list', '--tags', 'ls-tag'])), ['personal', 'work']);
    assert.deepEqual(lines(await daemon().ok('qvm-ls', ['--raw-list', '--tags', 'other-tag'])), ['personal']);
    assert.deepEqual(lines(await daemon().ok('qvm-ls', ['--raw-list', '--tags', 'nobody-has-this'])), []);
    const { rows } = parseTable(await daemon().ok('qvm-ls', ['-O', 'name,tags', 'personal', 'dom0']));
    assert.deepEqual(rows, [['personal', 'created-by-dom0,ls-tag,other-tag'], ['dom0', '-']]);
  });

  it('--tree puts each qube under its netvm', async () => {
    const r = await daemon().run('qvm-ls', ['--tree', '-O', 'name,netvm']);
    assert.equal(r.code, 0, r.stderr);
    const all = lines(r.stdout);
    assert.equal(all.length, ALL.length + 1);
    const idx = (re: RegExp): number => all.findIndex((l) => re.test(l));
    const net = idx(/^net-sa +-$/);
    const fw = idx(/^└─fw-b +net-sa$/);
    const work = idx(/^ {2}└─work +fw-b$/);
    assert.ok(net > 0 && fw === net + 1 && work > fw, r.stdout);
    // qubes without a netvm stay at the top level
    assert.ok(idx(/^dom0 +-$/) > 0 && idx(/^personal +-$/) > 0, r.stdout);
    parseTable(r.stdout); // still aligned
  });

  it('selects qubes by name, and an unknown name is a usage error', async () => {
    const { rows } = parseTable(await daemon().ok('qvm-ls', ['work']));
    assert.deepEqual(rows.map((row) => row[0]), ['work']);
    const r = await daemon().run('qvm-ls', ['work', 'no-such-qube']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /no such domain: 'no-such-qube'/);
    assert.equal(r.stdout, '');
  });

  it('takes --socket as well as BULKHEAD_SOCKET, and --socket wins', async () => {
    const d = daemon();
    const r = await runCli('qvm-ls', ['--raw-list', '--socket', d.socketPath], { socketPath: path.join(d.tmpDir, 'nope.sock') });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(lines(r.stdout), ALL);
  });
});

void describe('qvm-create', () => {
  const daemon = suiteDaemon({ defaultQubes: true });

  it('creates with -l, -t and --prop', async () => {
    const d = daemon();
    await d.ok('qubes-prefs', ['default_template', 'none']); // -t must be what sets the template
    await d.ok('qvm-create', ['-l', 'green', '-t', 'debian-12', '--prop', 'memory=800', '--prop', 'vcpus=3', 'c-app']);
    await d.ok('qubes-prefs', ['default_template', 'debian-12']);
    assert.equal(await pref(d, 'c-app', 'label'), 'green');
    assert.equal(await pref(d, 'c-app', 'template'), 'debian-12');
    assert.equal(await pref(d, 'c-app', 'memory'), '800');
    assert.equal(await pref(d, 'c-app', 'vcpus'), '3');
    assert.equal(await pref(d, 'c-app', 'klass'), 'AppVM');
    const list = parsePrefsList(await d.ok('qvm-prefs', ['c-app']));
    assert.deepEqual(list.get('memory'), { flag: '-', value: '800' });
    const { rows } = parseTable(await d.ok('qvm-ls', ['c-app']));
    assert.deepEqual(rows, [['c-app', 'Halted', 'AppVM', 'green', 'debian-12', 'sys-firewall']]);
  });

  it('uses default_template without -t, and creates templates and standalones', async () => {
    const d = daemon();
    await d.ok('qvm-create', ['--label', 'purple', 'c-default']);
    assert.equal(await pref(d, 'c-default', 'template'), 'debian-12');
    await d.ok('qvm-create', ['-C', 'TemplateVM', '-l', 'black', 'c-tpl']);
    await d.ok('qvm-create', ['--standalone', '-l', 'gray', 'c-sa']);
    await d.ok('qvm-create', ['-l', 'yellow', '-t', 'c-tpl', 'c-on-tpl']);
    const { rows } = parseTable(await d.ok('qvm-ls', ['-O', 'name,class,label,template', 'c-tpl', 'c-sa', 'c-on-tpl']));
    assert.deepEqual(rows, [
      ['c-tpl', 'TemplateVM', 'black', '-'],
      ['c-sa', 'StandaloneVM', 'gray', '-'],
      ['c-on-tpl', 'AppVM', 'yellow', 'c-tpl'],
    ]);
  });

  it('refuses a missing label (exit 2)', async () => {
    const r = await daemon().run('qvm-create', ['c-nolabel']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /label/);
    assert.equal(await exists(daemon(), 'c-nolabel'), false);
  });

  it('refuses an unknown label (exit 2)', async () => {
    const r = await daemon().run('qvm-create', ['-l', 'chartreuse', 'c-badlabel']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /chartreuse/);
    assert.equal(await exists(daemon(), 'c-badlabel'), false);
  });

  it('a bad --prop value fails (exit 1) and leaves no qube behind', async () => {
    const d = daemon();
    const before = await names(d);
    const r = await d.run('qvm-create', ['-l', 'red', '--prop', 'vcpus=2', '--prop', 'memory=lots', 'c-badprop']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /memory/);
    assert.match(r.stderr, /lots/);
    assert.equal(await exists(d, 'c-badprop'), false);
    assert.deepEqual(await names(d), before);
    const unknown = await d.run('qvm-create', ['-l', 'red', '--prop', 'no_such_prop=1', 'c-badprop2']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /no_such_prop/);
    assert.equal(await exists(d, 'c-badprop2'), false);
    // The name is free again.
    await d.ok('qvm-create', ['-l', 'red', 'c-badprop']);
  });

  it('refuses a duplicate name (exit 1) and leaves the existing qube alone', async () => {
    const d = daemon();
    const r = await d.run('qvm-create', ['-l', 'red', 'work']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /already exists/i);
    assert.equal(await pref(d, 'work', 'label'), 'blue');
    const dom0 = await d.run('qvm-create', ['-l', 'red', 'dom0']);
    assert.equal(dom0.code, 1);
    assert.deepEqual(rowOf(parseTable(await d.ok('qvm-ls', ['dom0'])).rows, 'dom0'), ['dom0', 'Running', 'AdminVM', 'black', '-', '-']);
  });

  it('refuses invalid names (exit 1)', async () => {
    const d = daemon();
    const before = await names(d);
    for (const bad of ['1starts-with-digit', 'has.slash/x', 'ends-dm', 'none', 'default', 'x'.repeat(32), 'a b', 'é']) {
      const r = await d.run('qvm-create', ['-l', 'red', bad]);
      assert.equal(r.code, 1, `qvm-create '${bad}' exited ${r.code}: ${r.stderr}`);
      assert.notEqual(r.stderr, '', `no message for '${bad}'`);
    }
    assert.deepEqual(await names(d), before);
    await d.ok('qvm-create', ['-l', 'red', 'x'.repeat(31)]); // the longest valid name
  });
});

void describe('qvm-prefs and qubes-prefs', () => {
  const daemon = suiteDaemon({ defaultQubes: true });

  it('lists properties with flags: - explicit, D default', async () => {
    const list = parsePrefsList(await daemon().ok('qvm-prefs', ['work']));
    assert.deepEqual(list.get('label'), { flag: '-', value: 'blue' });
    assert.deepEqual(list.get('template'), { flag: '-', value: 'debian-12' });
    assert.deepEqual(list.get('memory'), { flag: 'D', value: '400' });
    assert.deepEqual(list.get('vcpus'), { flag: 'D', value: '2' });
    assert.deepEqual(list.get('klass'), { flag: 'D', value: 'AppVM' });
    assert.deepEqual(list.get('netvm'), { flag: 'D', value: 'sys-firewall' });
    // Qubes' read-only network properties: computed from the qid and the netvm.
    assert.match(list.get('ip')?.value ?? '', /^10\.137\.0\.\d+$/);
    assert.deepEqual(list.get('dns'), { flag: 'D', value: '10.139.1.1 10.139.1.2' });
    assert.deepEqual(list.get('mac'), { flag: 'D', value: '00:16:3e:5e:6c:00' });
    assert.equal(list.get('visible_gateway')?.value, await pref(daemon(), 'sys-firewall', 'ip'));
    assert.equal(await pref(daemon(), 'vault', 'ip'), '');
    assert.equal(await pref(daemon(), 'sys-firewall', 'gateway'), await pref(daemon(), 'sys-firewall', 'ip'));
    const ro = await daemon().run('qvm-prefs', ['work', 'ip', '10.1.2.3']);
    assert.equal(ro.code, 1);
    assert.match(ro.stderr, /read-only/);
    const names = [...list.keys()];
    assert.deepEqual(names, [...names].sort(), 'sorted by name');
    const hidden = parsePrefsList(await daemon().ok('qvm-prefs', ['--hide-default', 'work']));
    assert.ok(hidden.has('label') && !hidden.has('memory'), [...hidden.keys()].join(' '));
  });

  it('gets, sets and resets (-D) a property', async () => {
    const d = daemon();
    assert.equal(await pref(d, 'personal', 'label'), 'yellow');
    await d.ok('qvm-prefs', ['personal', 'memory', '1000']);
    assert.equal(await pref(d, 'personal', 'memory'), '1000');
    assert.deepEqual(parsePrefsList(await d.ok('qvm-prefs', ['personal'])).get('memory'), { flag: '-', value: '1000' });
    await d.ok('qvm-prefs', ['-D', 'personal', 'memory']);
    assert.equal(await pref(d, 'personal', 'memory'), '400');
    assert.deepEqual(parsePrefsList(await d.ok('qvm-prefs', ['personal'])).get('memory'), { flag: 'D', value: '400' });
    await d.ok('qvm-prefs', ['personal', 'label', 'green']);
    assert.equal(await pref(d, 'personal', 'label'), 'green');
    await d.ok('qvm-prefs', ['personal', 'autostart', 'true']);
    assert.equal(await pref(d, 'personal', 'autostart'), 'True');
  });

  it('an unknown property is exit 2, for get and set', async () => {
    const get = await daemon().run('qvm-prefs', ['work', 'no_such_prop']);
    assert.equal(get.code, 2);
    assert.match(get.stderr, /no such property: 'no_such_prop'/);
    const set = await daemon().run('qvm-prefs', ['work', 'no_such_prop', '1']);
    assert.equal(set.code, 2);
    assert.match(set.stderr, /no_such_prop/);
  });

  it('a value of the wrong type is exit 1 with a message, and nothing changes', async () => {
    const d = daemon();
    const r = await d.run('qvm-prefs', ['work', 'memory', 'lots']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /qvm-prefs: error: .*int.*'lots'/);
    const b = await d.run('qvm-prefs', ['work', 'autostart', 'maybe']);
    assert.equal(b.code, 1);
    assert.match(b.stderr, /maybe/);
    const range = await d.run('qvm-prefs', ['work', 'memory', '1']);
    assert.equal(range.code, 1);
    assert.match(range.stderr, /between/);
    // A negative number is a value, not an option (as with argparse).
    const negative = await d.run('qvm-prefs', ['work', 'memory', '-1']);
    assert.equal(negative.code, 1, negative.stderr);
    assert.match(negative.stderr, /between 32 and .* got -1/);
    const ro = await d.run('qvm-prefs', ['work', 'qid', '77']);
    assert.equal(ro.code, 1);
    assert.match(ro.stderr, /read-only/);
    const label = await d.run('qvm-prefs', ['work', 'label', 'chartreuse']);
    assert.equal(label.code, 1);
    assert.match(label.stderr, /chartreuse/);
    assert.equal(await pref(d, 'work', 'memory'), '400');
    assert.equal(await pref(d, 'work', 'autostart'), 'False');
    assert.equal(await pref(d, 'work', 'label'), 'blue');
  });

  it('netvm: set to a network provider, to none, and back to the default', async () => {
    const d = daemon();
    await d.ok('qvm-create', ['-C', 'StandaloneVM', '-l', 'red', '--prop', 'provides_network=yes', 'p-net']);
    await d.ok('qvm-prefs', ['untrusted', 'netvm', 'p-net']);
    assert.equal(await pref(d, 'untrusted', 'netvm'), 'p-net');
    await d.ok('qvm-prefs', ['untrusted', 'netvm', 'none']);
    assert.equal(await pref(d, 'untrusted', 'netvm'), '');
    assert.deepEqual(parsePrefsList(await d.ok('qvm-prefs', ['untrusted'])).get('netvm'), { flag: '-', value: 'None' });
    assert.equal(parseTable(await d.ok('qvm-ls', ['-O', 'name,netvm', 'untrusted'])).rows[0]?.[1], '-');
    // a qube that provides no network cannot be a netvm
    const bad = await d.run('qvm-prefs', ['untrusted', 'netvm', 'work']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /network/);
    await d.ok('qubes-prefs', ['default_netvm', 'p-net']);
    await d.ok('qvm-prefs', ['-D', 'untrusted', 'netvm']);
    assert.deepEqual(parsePrefsList(await d.ok('qvm-prefs', ['untrusted'])).get('netvm'), { flag: 'D', value: 'p-net' });
    await d.ok('qubes-prefs', ['default_netvm', 'none']);
    assert.equal(await pref(d, 'untrusted', 'netvm'), '');
  });

  it('an unknown qube is exit 2 "no such domain"', async () => {
    const r = await daemon().run('qvm-prefs', ['no-such-qube', 'memory']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /no such domain: 'no-such-qube'/);
    const list = await daemon().run('qvm-prefs', ['no-such-qube']);
    assert.equal(list.code, 2);
    assert.match(list.stderr, /no such domain/);
  });

  it('qubes-prefs gets, sets and resets global properties', async () => {
    const d = daemon();
    const list = parsePrefsList(await d.ok('qubes-prefs', []));
    assert.deepEqual(list.get('default_template'), { flag: '-', value: 'debian-12' });
    assert.deepEqual(list.get('default_dispvm'), { flag: '-', value: 'default-dvm' });
    assert.deepEqual(list.get('default_shutdown_timeout'), { flag: 'D', value: '60' });
    assert.equal((await d.ok('qubes-prefs', ['default_template'])).trim(), 'debian-12');

    await d.ok('qvm-create', ['-C', 'TemplateVM', '-l', 'black', 'g-tpl']);
    await d.ok('qubes-prefs', ['default_template', 'g-tpl']);
    assert.equal((await d.ok('qubes-prefs', ['default_template'])).trim(), 'g-tpl');
    await d.ok('qvm-create', ['-l', 'red', 'g-app']);
    assert.equal(await pref(d, 'g-app', 'template'), 'g-tpl');

    const notTpl = await d.run('qubes-prefs', ['default_template', 'work']);
    assert.equal(notTpl.code, 1);
    assert.match(notTpl.stderr, /work/);
    const missing = await d.run('qubes-prefs', ['default_template', 'no-such-qube']);
    assert.equal(missing.code, 1);
    assert.equal((await d.ok('qubes-prefs', ['default_template'])).trim(), 'g-tpl');

    await d.ok('qubes-prefs', ['default_template', 'none']);
    assert.equal((await d.ok('qubes-prefs', ['default_template'])).trim(), '');
    const noTemplate = await d.run('qvm-create', ['-l', 'red', 'g-app2']);
    assert.equal(noTemplate.code, 1);
    assert.match(noTemplate.stderr, /template/i);
    assert.equal(await exists(d, 'g-app2'), false);
    await d.ok('qubes-prefs', ['default_template', 'debian-12']);

    await d.ok('qubes-prefs', ['default_shutdown_timeout', '30']);
    assert.equal((await d.ok('qubes-prefs', ['default_shutdown_timeout'])).trim(), '30');
    assert.equal(await pref(d, 'work', 'shutdown_timeout'), '30');
    const typo = await d.run('qubes-prefs', ['default_shutdown_timeout', 'soon']);
    assert.equal(typo.code, 1);
    await d.ok('qubes-prefs', ['-D', 'default_shutdown_timeout']);
    assert.deepEqual(parsePrefsList(await d.ok('qubes-prefs', [])).get('default_shutdown_timeout'), { flag: 'D', value: '60' });

    const unknown = await d.run('qubes-prefs', ['no_such_global']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /no such property/);
  });
});

void describe('qvm-features, qvm-service, qvm-tags', () => {
  const daemon = suiteDaemon({ defaultQubes: true });

  it('qvm-features sets, gets, lists and unsets', async () => {
    const d = daemon();
    await d.ok('qvm-features', ['work', 'gui', '1']);
    await d.ok('qvm-features', ['work', 'os-version', '12']);
    assert.equal(await d.ok('qvm-features', ['work', 'gui']), '1\n');
    assert.deepEqual(lines(await d.ok('qvm-features', ['work'])), ['gui         1', 'os-version  12']);
    await d.ok('qvm-features', ['work', 'gui', '0']);
    assert.equal(await d.ok('qvm-features', ['work', 'gui']), '0\n');
    await d.ok('qvm-features', ['--unset', 'work', 'gui']);
    const gone = await d.run('qvm-features', ['work', 'gui']);
    assert.equal(gone.code, 1);
    assert.equal(gone.stdout, '');
    assert.deepEqual(lines(await d.ok('qvm-features', ['work'])), ['os-version  12']);
    // features are per qube
    assert.equal(await d.ok('qvm-features', ['personal']), '');
  });

  it('getting a feature that is not set is exit 1', async () => {
    const r = await daemon().run('qvm-features', ['personal', 'never-set']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    const badName = await daemon().run('qvm-features', ['personal', 'bad name', 'x']);
    assert.equal(badName.code, 2);
    const noVm = await daemon().run('qvm-features', ['no-such-qube', 'gui']);
    assert.equal(noVm.code, 2);
    assert.match(noVm.stderr, /no such domain/);
  });

  it('qvm-service enables, disables, lists and unsets services (service.* features)', async () => {
    const d = daemon();
    await d.ok('qvm-service', ['--enable', 'personal', 'cups']);
    await d.ok('qvm-service', ['--disable', 'personal', 'sshd']);
    await d.ok('qvm-service', ['personal', 'crond', 'on']);
    assert.deepEqual(lines(await d.ok('qvm-service', ['personal'])), ['cups   on', 'sshd   off', 'crond  on']);
    assert.equal(await d.ok('qvm-service', ['personal', 'cups']), 'on\n');
    assert.equal(await d.ok('qvm-service', ['personal', 'sshd']), 'off\n');
    assert.equal(await d.ok('qvm-features', ['personal', 'service.cups']), '1\n');
    assert.equal(await d.ok('qvm-features', ['personal', 'service.sshd']), '\n');
    await d.ok('qvm-service', ['personal', 'cups', 'off']);
    assert.equal(await d.ok('qvm-service', ['personal', 'cups']), 'off\n');
    await d.ok('qvm-service', ['--unset', 'personal', 'crond']);
    const unset = await d.run('qvm-service', ['personal', 'crond']);
    assert.equal(unset.code, 1);
    assert.deepEqual(lines(await d.ok('qvm-service', ['personal'])), ['cups  off', 'sshd  off']);
    const bad = await d.run('qvm-service', ['personal', 'cups', 'perhaps']);
    assert.equal(bad.code, 2);
  });

  it('qvm-tags adds, lists and deletes tags', async () => {
    const d = daemon();
    await d.ok('qvm-tags', ['vault', 'add', 'zeta', 'alpha']);
    assert.deepEqual(lines(await d.ok('qvm-tags', ['vault', 'list'])), ['alpha', 'created-by-dom0', 'zeta']);
    assert.deepEqual(lines(await d.ok('qvm-tags', ['vault'])), ['alpha', 'created-by-dom0', 'zeta']);
    assert.equal(await d.ok('qvm-tags', ['vault', 'list', 'alpha']), 'alpha\n');
    assert.equal((await d.run('qvm-tags', ['vault', 'list', 'beta'])).code, 1);
    await d.ok('qvm-tags', ['vault', 'add', 'alpha']); // idempotent
    await d.ok('qvm-tags', ['vault', 'del', 'zeta']);
    assert.deepEqual(lines(await d.ok('qvm-tags', ['vault', 'list'])), ['alpha', 'created-by-dom0']);
    assert.deepEqual(lines(await d.ok('qvm-ls', ['--raw-list', '--tags', 'alpha'])), ['vault']);
  });

  it('an invalid tag is exit 2 and is not added', async () => {
    const d = daemon();
    for (const bad of ['has space', 'dot.ted', 'semi;colon', '']) {
      const r = await d.run('qvm-tags', ['vault', 'add', bad]);
      assert.equal(r.code, 2, `tag ${JSON.stringify(bad)} exited ${r.code}`);
    }
    assert.deepEqual(lines(await d.ok('qvm-tags', ['vault', 'list'])), ['alpha', 'created-by-dom0']);
  });
});

void describe('qvm-remove and qvm-clone', () => {
  const daemon = suiteDaemon({ defaultQubes: true });

  it('refuses to remove a qube in use (exit 1), naming what uses it', async () => {
    const d = daemon();
    const r = await d.run('qvm-remove', ['-f', 'debian-12']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /in use/i);
    for (const dep of ['work', 'personal', 'default-dvm', 'default_template']) assert.match(r.stderr, new RegExp(dep));
    assert.equal(await exists(d, 'debian-12'), true);

    await d.ok('qvm-create', ['-C', 'StandaloneVM', '-l', 'red', '--prop', 'provides_network=1', 'rm-net']);
    await d.ok('qvm-create', ['-l', 'red', '--prop', 'netvm=rm-net', 'rm-client']);
    const net = await d.run('qvm-remove', ['-f', 'rm-net']);
    assert.equal(net.code, 1);
    assert.match(net.stderr, /netvm of rm-client/);
    assert.equal(await exists(d, 'rm-net'), true);
    await d.ok('qvm-remove', ['-f', 'rm-client']);
    await d.ok('qvm-remove', ['-f', 'rm-net']);
    assert.equal(await exists(d, 'rm-net'), false);
  });

  it('removes an unused qube with -f', async () => {
    const d = daemon();
    await d.ok('qvm-create', ['-l', 'red', 'rm-me']);
    assert.equal(await exists(d, 'rm-me'), true);
    assert.equal(await d.ok('qvm-remove', ['-f', 'rm-me']), '');
    assert.equal(await exists(d, 'rm-me'), false);
    assert.ok(!(await names(d)).includes('rm-me'));
    const again = await d.run('qvm-remove', ['-f', 'rm-me']);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /no such domain/);
  });

  it('without -f asks first: no answer keeps the qube, yes removes it', async () => {
    const d = daemon();
    await d.ok('qvm-create', ['-l', 'red', 'rm-ask']);
    const no = await d.run('qvm-remove', ['rm-ask'], { input: 'n\n' });
    assert.equal(no.code, 1);
    assert.equal(await exists(d, 'rm-ask'), true);
    const eof = await d.run('qvm-remove', ['rm-ask']);
    assert.equal(eof.code, 1);
    assert.equal(await exists(d, 'rm-ask'), true);
    await d.ok('qvm-remove', ['rm-ask'], { input: 'y\n' });
    assert.equal(await exists(d, 'rm-ask'), false);
  });

  it('refuses to remove dom0', async () => {
    const d = daemon();
    const r = await d.run('qvm-remove', ['-f', 'dom0']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /dom0/);
    assert.equal(await exists(d, 'dom0'), true);
    // through the Admin API directly, too
    await assert.rejects(d.client().call({ method: 'admin.vm.Remove', dest: 'dom0' }));
    assert.equal(await exists(d, 'dom0'), true);
  });

  it('qvm-clone copies explicit properties, features, tags and label', async () => {
    const d = daemon();
    await d.ok('qvm-create', ['-l', 'purple', '--prop', 'memory=800', '--prop', 'vcpus=3', '--prop', 'netvm=none', 'cl-src']);
    await d.ok('qvm-features', ['cl-src', 'gui', '1']);
    await d.ok('qvm-features', ['cl-src', 'empty-feature', '']);
    await d.ok('qvm-service', ['--enable', 'cl-src', 'cups']);
    await d.ok('qvm-tags', ['cl-src', 'add', 'team-a', 'secret']);
    await d.client().call({ method: 'admin.vm.notes.Set', dest: 'cl-src', payload: 'some notes\nline two' });

    await d.ok('qvm-clone', ['cl-src', 'cl-dst']);
    const src = parsePrefsList(await d.ok('qvm-prefs', ['cl-src']));
    const dst = parsePrefsList(await d.ok('qvm-prefs', ['cl-dst']));
    assert.deepEqual(dst.get('memory'), { flag: '-', value: '800' });
    assert.deepEqual(dst.get('vcpus'), { flag: '-', value: '3' });
    assert.deepEqual(dst.get('netvm'), { flag: '-', value: 'None' });
    assert.deepEqual(dst.get('label'), { flag: '-', value: 'purple' });
    assert.deepEqual(dst.get('template'), { flag: '-', value: 'debian-12' });
    assert.deepEqual(dst.get('maxmem'), src.get('maxmem'));
    assert.equal(dst.get('autostart')?.flag, 'D', 'defaults stay defaults');
    assert.equal(dst.get('name')?.value, 'cl-dst');
    assert.notEqual(dst.get('uuid')?.value, src.get('uuid')?.value);
    assert.notEqual(dst.get('qid')?.value, src.get('qid')?.value);
    for (const [prop, p] of src) {
      if (['name', 'qid', 'uuid'].includes(prop)) continue;
      assert.deepEqual(dst.get(prop), p, `property ${prop}`);
    }
    assert.equal(await d.ok('qvm-features', ['cl-dst']), await d.ok('qvm-features', ['cl-src']));
    assert.equal(await d.ok('qvm-features', ['cl-dst', 'service.cups']), '1\n');
    assert.deepEqual(lines(await d.ok('qvm-tags', ['cl-dst'])), ['created-by-dom0', 'secret', 'team-a']);
    assert.equal(await d.client().call({ method: 'admin.vm.notes.Get', dest: 'cl-dst' }), 'some notes\nline two');
    // the source is untouched
    assert.deepEqual(lines(await d.ok('qvm-tags', ['cl-src'])), ['created-by-dom0', 'secret', 'team-a']);
    assert.deepEqual(parsePrefsList(await d.ok('qvm-prefs', ['cl-src'])), src);
  });

  it('qvm-clone -l overrides the label; cloning onto an existing name fails', async () => {
    const d = daemon();
    await d.ok('qvm-clone', ['-l', 'orange', 'vault', 'cl-vault']);
    assert.equal(await pref(d, 'cl-vault', 'label'), 'orange');
    assert.equal(await pref(d, 'cl-vault', 'netvm'), '');
    const dup = await d.run('qvm-clone', ['vault', 'work']);
    assert.equal(dup.code, 1);
    assert.match(dup.stderr, /already exists/i);
    assert.equal(await pref(d, 'work', 'label'), 'blue');
    const missing = await d.run('qvm-clone', ['no-such-qube', 'cl-x']);
    assert.equal(missing.code, 2);
    assert.equal(await exists(d, 'cl-x'), false);
  });
});

void describe('power commands on qubes whose template has no root volume yet', () => {
  const daemon = suiteDaemon({ defaultQubes: true });

  it('qvm-start fails with exit 1 and a clear message; the qube stays Halted', async () => {
    const d = daemon();
    const r = await d.run('qvm-start', ['work']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /work/);
    assert.match(r.stderr, /'debian-12' has no root volume/);
    assert.match(r.stderr, /bulkhead template build/);
    assert.deepEqual(parseTable(await d.ok('qvm-ls', ['-O', 'name,state', 'work'])).rows, [['work', 'Halted']]);
    assert.equal((await d.run('qvm-check', ['--running', 'work'])).code, 1);
    const cs = await d.client().call({ method: 'admin.vm.CurrentState', dest: 'work' });
    assert.match(cs, /power_state=Halted/);
    const two = await d.run('qvm-start', ['personal', 'vault']);
    assert.equal(two.code, 1);
    assert.match(two.stderr, /personal/);
    assert.match(two.stderr, /vault/);
    const unknown = await d.run('qvm-start', ['no-such-qube']);
    assert.equal(unknown.code, 2);
  });

  it('qvm-shutdown and qvm-kill of a halted qube succeed (exit 0)', async () => {
    const d = daemon();
    assert.equal(await d.ok('qvm-shutdown', ['work']), '');
    await d.ok('qvm-shutdown', ['--wait', 'work', 'personal']);
    await d.ok('qvm-shutdown', ['--all']);
    await d.ok('qvm-kill', ['work']);
    assert.deepEqual(lines(await d.ok('qvm-ls', ['--raw-list', '--running'])), ['dom0']);
  });

  it('qvm-pause and qvm-unpause of a halted qube fail (exit 1)', async () => {
    const d = daemon();
    const pause = await d.run('qvm-pause', ['work']);
    assert.equal(pause.code, 1);
    assert.match(pause.stderr, /work/);
    const unpause = await d.run('qvm-unpause', ['work']);
    assert.equal(unpause.code, 1);
    assert.deepEqual(parseTable(await d.ok('qvm-ls', ['-O', 'name,state', 'work'])).rows, [['work', 'Halted']]);
  });

  it('qvm-check: exists, --running, -q, and missing qubes', async () => {
    const d = daemon();
    assert.equal(await d.ok('qvm-check', ['work']), 'work: exists\n');
    assert.equal(await d.ok('qvm-check', ['-q', 'work', 'dom0']), '');
    assert.equal(await d.ok('qvm-check', ['--running', 'dom0']), 'dom0: is running\n');
    const notRunning = await d.run('qvm-check', ['--running', 'work']);
    assert.equal(notRunning.code, 1);
    assert.equal(notRunning.stdout, 'work: is not running\n');
    const missing = await d.run('qvm-check', ['no-such-qube']);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /no such domain: 'no-such-qube'/);
    const quiet = await d.run('qvm-check', ['-q', 'no-such-qube']);
    assert.equal(quiet.code, 2);
    assert.equal(quiet.stdout, '');
    const mixed = await d.run('qvm-check', ['work', 'no-such-qube']);
    assert.equal(mixed.code, 2);
    assert.equal(mixed.stdout, '', 'nothing is checked when a name is unknown');
    assert.equal((await d.run('qvm-check', ['--template', 'debian-12'])).code, 0);
    assert.equal((await d.run('qvm-check', ['--template', 'work'])).code, 1);
    assert.equal((await d.run('qvm-check', [])).code, 2);
  });
});

void describe('without a daemon', () => {
  it('every command fails with exit 1 and asks whether the daemon runs', async (t) => {
    const dir = makeTempDir();
    t.after(() => {
      removeTempDir(dir);
    });
    const socketPath = path.join(dir, 'missing', 'qubesd.sock');
    const calls: [string, string[]][] = [
      ['qvm-ls', []],
      ['qvm-prefs', ['work']],
      ['qvm-create', ['-l', 'red', 'x']],
      ['qubes-prefs', ['default_template']],
      ['qvm-start', ['work']],
    ];
    const results = await Promise.all(calls.map(([cmd, args]) => runCli(cmd, args, { socketPath })));
    for (const [i, r] of results.entries()) {
      const cmd = calls[i]?.[0] ?? '?';
      assert.equal(r.code, 1, `${cmd}: ${r.stderr}`);
      assert.match(r.stderr, /is the daemon running/, cmd);
      assert.ok(r.stderr.includes(socketPath), `${cmd} names the socket: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /^\s+at /m, `${cmd} prints no stack trace`);
    }
  });
});

void describe('output into a closed pipe', () => {
  it('a command whose reader went away (qvm-ls | head) ends quietly with exit 0', async () => {
    const { spawn } = await import('node:child_process');
    // Control: the same command with a reader writes its usage to stdout.
    const control = await runCli('bulkhead', ['--help']);
    assert.equal(control.code, 0);
    assert.match(control.stdout, /^usage: bulkhead/);
    assert.equal(control.stderr, '');
    const child = spawn(process.execPath, [path.join(BIN_DIR, 'bulkhead'), '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
    // Close our end before the command writes: its write fails with EPIPE.
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    assert.equal(code, 0, stderr);
    assert.doesNotMatch(stderr, /EPIPE|^\s+at /m);
  });
});
