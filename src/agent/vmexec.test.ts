// qubes.VMExec argument decoding: hand-written golden cases from the encoding's description, a
// round trip against an encoder written here, strictness on arbitrary input, and the shell words
// the service script runs (checked by a real /bin/sh).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { decodeVmExecArgument, shellQuoteBytes, VmExecDecodeError, vmExecShellWords } from './vmexec.js';

/** The encoder as the format describes it (independent of the code under test). */
function encode(argv: readonly Buffer[]): string {
  return argv.map((arg) => {
    let out = '';
    for (const b of arg) {
      const c = String.fromCharCode(b);
      if (/[A-Za-z0-9_.]/.test(c)) out += c;
      else if (c === '-') out += '--';
      else out += `-${b.toString(16).toUpperCase().padStart(2, '0')}`;
    }
    return out;
  }).join('+');
}

const strings = (argv: Buffer[]): string[] => argv.map((b) => b.toString('utf8'));

describe('qubes.VMExec decoding', () => {
  test('golden cases', () => {
    assert.deepEqual(strings(decodeVmExecArgument('ls+--la+-2Ftmp-2Fa-20b')), ['ls', '-la', '/tmp/a b']);
    assert.deepEqual(strings(decodeVmExecArgument('echo+a-2Bb')), ['echo', 'a+b']);
    assert.deepEqual(strings(decodeVmExecArgument('true')), ['true']);
    assert.deepEqual(strings(decodeVmExecArgument('printf+-25s+')), ['printf', '%s', '']);
    assert.deepEqual(strings(decodeVmExecArgument('x+----')), ['x', '--']);
    assert.deepEqual(decodeVmExecArgument('x+-C3-A9-FF'), [Buffer.from('x'), Buffer.from([0xc3, 0xa9, 0xff])]);
  });

  test('refuses what the encoding never produces', () => {
    for (const bad of ['', '+x', 'a-2f', 'a-', 'a-G1', 'a-2', 'a b', 'a/b', 'a:b', 'é', 'x+-00', 'x+a-+b']) {
      assert.throws(() => decodeVmExecArgument(bad), VmExecDecodeError, bad);
    }
  });

  test('round trip: any argv without NUL bytes', () => {
    const arg = fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a.filter((b) => b !== 0)));
    const argv = fc.tuple(arg.filter((a) => a.length > 0), fc.array(arg, { maxLength: 6 })).map(([p, rest]) => [p, ...rest]);
    fc.assert(fc.property(argv, (v) => {
      assert.deepEqual(decodeVmExecArgument(encode(v)), v);
    }), { numRuns: 500 });
  });

  test('arbitrary input: decoded or refused with VmExecDecodeError, nothing else', () => {
    fc.assert(fc.property(fc.string({ unit: fc.constantFrom('a', 'Z', '0', '.', '_', '-', '+', 'F', '2', ' ', '/', 'é') }), (s) => {
      try {
        const argv = decodeVmExecArgument(s);
        // What decodes is a valid encoding: its canonical form decodes to the same argv.
        assert.deepEqual(decodeVmExecArgument(encode(argv)), argv);
      } catch (err) {
        assert.ok(err instanceof VmExecDecodeError, String(err));
      }
    }), { numRuns: 2000 });
  });

  test('the shell words give /bin/sh exactly the decoded bytes', () => {
    const script = 'W=$(cat); eval "set -- $W"; for a; do printf "%s\\0" "$a"; done';
    const arg = fc.uint8Array({ maxLength: 20 }).map((a) => Buffer.from(a.filter((b) => b !== 0)));
    const argv = fc.tuple(arg.filter((a) => a.length > 0), fc.array(arg, { maxLength: 4 })).map(([p, rest]) => [p, ...rest]);
    fc.assert(fc.property(argv, (v) => {
      const out = execFileSync('/bin/sh', ['-c', script], { input: vmExecShellWords(encode(v)) });
      assert.deepEqual(out, Buffer.concat(v.flatMap((a) => [a, Buffer.from([0])])));
    }), { numRuns: 60 });
    assert.deepEqual(shellQuoteBytes(Buffer.from("it's")), Buffer.from("'it'\\''s'"));
  });
});
