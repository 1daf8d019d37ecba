// qrexec-client-vm's command line: `$` for `@`, the empty target, options, and what is refused.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { clientMain, parseClientArgs, UsageError } from './client-vm.js';
import { normalizeTarget, answerTimeoutFromEnv, DEFAULT_ANSWER_TIMEOUT_MS } from './qrexec-call.js';

describe('qrexec-client-vm arguments', () => {
  test('targets: `$` stands for `@`, empty is @default', () => {
    const target = (t: string): string => {
      const a = parseClientArgs([t, 'my.Svc']);
      assert.equal(a.help, false);
      return a.target;
    };
    assert.equal(target('$dispvm'), '@dispvm');
    assert.equal(target('$dispvm:fedora-dvm'), '@dispvm:fedora-dvm');
    assert.equal(target('$default'), '@default');
    assert.equal(target(''), '@default');
    assert.equal(target('@adminvm'), '@adminvm');
    assert.equal(target('work'), 'work');
    assert.equal(target('dom0'), 'dom0');
  });

  test('service, local program and options', () => {
    assert.deepEqual(parseClientArgs(['work', 'qubes.Filecopy+x', '/usr/lib/prog', '-a', '--b']), {
      help: false, target: 'work', serviceAndArg: 'qubes.Filecopy+x', program: ['/usr/lib/prog', '-a', '--b'],
    });
    assert.deepEqual(parseClientArgs(['--buffer-size=1024', 'work', 'a.B']), { help: false, target: 'work', serviceAndArg: 'a.B', program: [] });
    assert.deepEqual(parseClientArgs(['--buffer-size', '1024', '--', '-odd-but-valid', 'a.B']), { help: false, target: '-odd-but-valid', serviceAndArg: 'a.B', program: [] });
    assert.deepEqual(parseClientArgs(['-h']), { help: true });
    assert.deepEqual(parseClientArgs(['--help', 'x']), { help: true });
  });

  test('usage errors', () => {
    for (const bad of [[], ['work'], ['-x', 'work', 'a.B'], ['--buffer-size=0', 'work', 'a.B'], ['work', 'a+b+c/d'], ['work', '+x'], ['wo rk', 'a.B'], ['work', 'a.B', ''], ['$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$', 'a.B']]) {
      assert.throws(() => parseClientArgs(bad), UsageError, JSON.stringify(bad));
    }
  });

  test('fuzzed: parses or throws UsageError; a parsed target never holds `$`', () => {
    fc.assert(fc.property(fc.array(fc.string({ maxLength: 12 }), { maxLength: 5 }), (argv) => {
      try {
        const a = parseClientArgs(argv);
        if (!a.help) assert.ok(!a.target.includes('$') && a.target !== '');
      } catch (err) {
        assert.ok(err instanceof UsageError, String(err));
      }
    }), { numRuns: 2000 });
    assert.equal(normalizeTarget('$dispvm:$x'), '@dispvm:@x');
  });

  test('main: usage error exits 2 with the usage line; -h prints it and exits 0', async () => {
    const run = async (argv: string[]): Promise<{ code: number; out: string; err: string }> => {
      const stdout = new PassThrough();
      const stderr = new PassThrough();
      let out = '';
      let err = '';
      stdout.on('data', (c: Buffer) => { out += c.toString(); });
      stderr.on('data', (c: Buffer) => { err += c.toString(); });
      const code = await clientMain(argv, { stdin: new PassThrough(), stdout, stderr });
      return { code, out, err };
    };
    const bad = await run(['work']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /^qrexec-client-vm: TARGET and SERVICE are required\nusage: qrexec-client-vm /);
    const help = await run(['-h']);
    assert.equal(help.code, 0);
    assert.match(help.out, /^usage: qrexec-client-vm /);
  });

  test('answer timeout from BULKHEAD_QREXEC_TIMEOUT (seconds)', () => {
    assert.equal(answerTimeoutFromEnv({}), DEFAULT_ANSWER_TIMEOUT_MS);
    assert.equal(answerTimeoutFromEnv({ BULKHEAD_QREXEC_TIMEOUT: '2.5' }), 2500);
    assert.equal(answerTimeoutFromEnv({ BULKHEAD_QREXEC_TIMEOUT: '0' }), DEFAULT_ANSWER_TIMEOUT_MS);
    assert.equal(answerTimeoutFromEnv({ BULKHEAD_QREXEC_TIMEOUT: 'soon' }), DEFAULT_ANSWER_TIMEOUT_MS);
  });
});
