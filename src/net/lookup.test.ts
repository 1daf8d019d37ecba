// parseLookup: a netvm's `getent ahosts` output, one `@ NAME` block per asked name. The output
// is untrusted: only plain addresses of asked names come out, a bounded number of each.
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { parseLookup } from './orchestrator.js';

/** The cap per hostname and family (orchestrator's MAX_ADDRS_PER_HOST). */
const CAP = 32;

function lookup(text: string, hosts: readonly string[]): Record<string, { v4: string[]; v6: string[] }> {
  return Object.fromEntries(parseLookup(Buffer.from(text, 'latin1'), hosts));
}

describe('parseLookup', () => {
  test('getent ahosts output: each address once, by family', () => {
    const text = [
      '@ example.com',
      '93.184.216.34   STREAM example.com',
      '93.184.216.34   DGRAM  ',
      '93.184.216.34   RAW    ',
      '2606:2800:220:1:248:1893:25c8:1946 STREAM ',
      '2606:2800:220:1:248:1893:25c8:1946 DGRAM  ',
      '@ two.example',
      '1.1.1.1         STREAM two.example',
      '1.0.0.1         STREAM ',
      '',
    ].join('\n');
    assert.deepEqual(lookup(text, ['example.com', 'two.example']), {
      'example.com': { v4: ['93.184.216.34'], v6: ['2606:2800:220:1:248:1893:25c8:1946'] },
      'two.example': { v4: ['1.1.1.1', '1.0.0.1'], v6: [] },
    });
  });

  test('a name that resolved to nothing has an empty entry; a name without a block has none', () => {
    assert.deepEqual(lookup('@ a\n@ b\n9.9.9.9 STREAM b\n', ['a', 'b', 'c']), { a: { v4: [], v6: [] }, b: { v4: ['9.9.9.9'], v6: [] } });
    assert.deepEqual(lookup('', ['a']), {});
  });

  test('names not asked for are ignored, and so are their addresses', () => {
    const text = '@ evil.example\n6.6.6.6 STREAM\n@ a\n1.2.3.4 STREAM\n@ other\n5.5.5.5\n';
    assert.deepEqual(lookup(text, ['a']), { a: { v4: ['1.2.3.4'], v6: [] } });
    assert.deepEqual(lookup('@ __proto__\n1.2.3.4\n@ constructor\n1.2.3.5\n', ['a']), {});
  });

  test('lines before any header are ignored', () => {
    assert.deepEqual(lookup('1.2.3.4 STREAM a\n::1\n@ a\n5.6.7.8\n', ['a']), { a: { v4: ['5.6.7.8'], v6: [] } });
  });

  test('only an exact `@ NAME` line is a header', () => {
    // Not headers: they stay (garbage) lines of the current block, or are ignored before one.
    const text = '@ a\n1.1.1.1\n@  b\n@ b extra\n@b\n @ b\n2.2.2.2\n';
    assert.deepEqual(lookup(text, ['a', 'b']), { a: { v4: ['1.1.1.1', '2.2.2.2'], v6: [] } });
    // A later block of the same name adds to it.
    assert.deepEqual(lookup('@ a\n1.1.1.1\n@ b\n@ a\n2.2.2.2\n1.1.1.1\n', ['a']), { a: { v4: ['1.1.1.1', '2.2.2.2'], v6: [] } });
  });

  test('garbage lines and non-plain addresses are skipped', () => {
    const text = [
      '@ a',
      'garbage',
      '1.2.3',
      '1.2.3.256',
      '01.2.3.4',
      '1.2.3.4/32',
      '1.2.3.4;drop',
      '"1.2.3.4"',
      '  1.2.3.4',
      'fe80::1%eth0 STREAM',
      'fe80::1%25eth0',
      '::1]',
      '[::1]',
      'ff02::1%lo',
      '1::2::3',
      `${'1:'.repeat(40)}1`,
      '\u00e9\u00ff\u0000',
      '5.6.7.8\tSTREAM',
      'fe80::2 DGRAM',
      '',
    ].join('\n');
    assert.deepEqual(lookup(text, ['a']), { a: { v4: ['5.6.7.8'], v6: ['fe80::2'] } });
  });

  test('CRLF line ends do not leak into addresses', () => {
    assert.deepEqual(lookup('@ a\n1.2.3.4\r\n::1\r\n', ['a']), { a: { v4: ['1.2.3.4'], v6: ['::1'] } });
  });

  test('at most 32 addresses per name and family, repeats not counted', () => {
    const v4 = Array.from({ length: 50 }, (_, i) => `10.0.0.${i}`);
    const v6 = Array.from({ length: 50 }, (_, i) => `2001:db8::${(i + 1).toString(16)}`);
    const lines = ['@ a', ...v4, ...v4, ...v6, '@ b', '1.1.1.1', ...v4.map((a) => `${a} STREAM`)];
    const r = lookup(`${lines.join('\n')}\n`, ['a', 'b']);
    assert.deepEqual(r.a, { v4: v4.slice(0, CAP), v6: v6.slice(0, CAP) });
    assert.deepEqual(r.b, { v4: ['1.1.1.1', ...v4.slice(0, CAP - 1)], v6: [] });
    assert.deepEqual(lookup('@ a\n1.1.1.1\n'.repeat(100), ['a']), { a: { v4: ['1.1.1.1'], v6: [] } });
  });

  test('bytes that are not UTF-8 are read one to one (latin1), never refused', () => {
    const buf = Buffer.concat([Buffer.from('@ a\n'), Buffer.from([0xff, 0xfe, 0x0a, 0xc3, 0x28, 0x0a]), Buffer.from('1.2.3.4\n')]);
    assert.deepEqual(Object.fromEntries(parseLookup(buf, ['a'])), { a: { v4: ['1.2.3.4'], v6: [] } });
  });
});

// ---- Property: untrusted output never throws and yields only plain addresses of asked names ----

const NAMES = ['a', 'b.example', 'c-d', 'x_y', 'unasked', 'other.example'];

/** Output shaped like getent's, with headers of asked and unasked names and hostile lines. */
const structuredArb = fc
  .array(
    fc.oneof(
      fc.constantFrom(...NAMES).map((n) => `@ ${n}`),
      fc.ipV4().map((a) => `${a}  STREAM x`),
      fc.ipV6().map((a) => `${a} DGRAM`),
      fc.ipV6().map((a) => a.toUpperCase()),
      fc.tuple(fc.ipV6(), fc.string({ maxLength: 6 })).map(([a, z]) => `${a}%${z}`),
      fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF:.%/ \t@'.split('')), maxLength: 50 }),
      fc.string({ unit: 'binary', maxLength: 30 }),
    ),
    { maxLength: 120 },
  )
  .map((lines) => Buffer.from(lines.join('\n'), 'utf8'));

const bufferArb = fc.oneof(
  fc.uint8Array({ maxLength: 2000 }).map((u) => Buffer.from(u)),
  structuredArb,
  fc.array(fc.constantFrom(...'@ ab.\n1234:f%'.split('')), { maxLength: 300 }).map((cs) => Buffer.from(cs.join(''), 'latin1')),
);

test('property: arbitrary buffers never throw; only asked names, only plain unique addresses, capped', () => {
  fc.assert(
    fc.property(bufferArb, fc.subarray(NAMES.slice(0, 4)), (buf, hosts) => {
      const out = parseLookup(buf, hosts);
      for (const [name, { v4, v6 }] of out) {
        assert.ok(hosts.includes(name), `unasked ${name}`);
        assert.ok(v4.length <= CAP && v6.length <= CAP);
        assert.equal(new Set(v4).size, v4.length);
        assert.equal(new Set(v6).size, v6.length);
        for (const a of v4) {
          assert.equal(net.isIP(a), 4, a);
          assert.match(a, /^[0-9A-Fa-f:.]+$/);
        }
        for (const a of v6) {
          assert.equal(net.isIP(a), 6, a);
          assert.match(a, /^[0-9A-Fa-f:.]+$/);
        }
      }
    }),
    { numRuns: 3000 },
  );
});
