import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { filterEscapes, shellQuote, splitRunArgs } from './run.js';

test('qvm-run argument split: own options, VMNAME, then the command with its options untouched', () => {
  assert.deepEqual(splitRunArgs(['-p', 'work', 'ls', '-la', '/']), { own: ['-p', 'work'], rest: ['ls', '-la', '/'] });
  assert.deepEqual(splitRunArgs(['-u', 'root', '-p', 'work', 'id']), { own: ['-u', 'root', '-p', 'work'], rest: ['id'] });
  assert.deepEqual(splitRunArgs(['work', '--', '-x']), { own: ['work'], rest: ['-x'] });
  assert.deepEqual(splitRunArgs(['-p', '--', 'work', 'echo', '-n']), { own: ['-p', 'work'], rest: ['echo', '-n'] });
  assert.deepEqual(splitRunArgs(['work']), { own: ['work'], rest: [] });
});

test('shell quoting survives any argument', () => {
  fc.assert(fc.property(fc.string(), (s) => {
    const q = shellQuote(s);
    // Quoted form: either safe characters only, or single-quoted with embedded quotes escaped.
    if (q === s) assert.match(s, /^[A-Za-z0-9_@%+=:,./-]+$/);
    else assert.ok(q.startsWith("'") && q.endsWith("'"));
  }));
  assert.equal(shellQuote("it's"), `'it'"'"'s'`);
  assert.equal(shellQuote(''), "''");
});

test('escape filtering replaces control characters but keeps tab, newline and CR', () => {
  assert.equal(filterEscapes(Buffer.from('a\x1b[31mb\tc\r\n\x7f\x00')).toString(), 'a_[31mb\tc\r\n__');
  fc.assert(fc.property(fc.uint8Array({ maxLength: 256 }), (bytes) => {
    const out = filterEscapes(Buffer.from(bytes));
    assert.equal(out.length, bytes.length);
    for (const b of out) assert.ok(b >= 0x20 ? b !== 0x7f : b === 0x09 || b === 0x0a || b === 0x0d);
  }));
});
