// docs/protocol/admin-api.md carries the method table generated from the declarations in
// methods.ts; this test fails when the two drift. To refresh the doc, run
//   BULKHEAD_WRITE_DOCS=1 node --import tsx --test src/daemon/methods-doc.test.ts
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { METHODS } from './methods.js';

const DOC = path.resolve(import.meta.dirname, '../../docs/protocol/admin-api.md');
const BEGIN = '<!-- methods:begin (generated from src/daemon/methods.ts) -->';
const END = '<!-- methods:end -->';

function methodTable(): string {
  const rows = [...METHODS.values()].map(
    (m) => `| \`${m.name}\` | ${m.dest} | ${m.arg} | ${m.payload} | ${m.scope} | ${m.help.replaceAll('|', '\\|')} |`,
  );
  return ['| method | destination | argument | payload | scope | reply / effect |', '|---|---|---|---|---|---|', ...rows].join('\n');
}

test('the method table in docs/protocol/admin-api.md matches the declarations', () => {
  const doc = fs.readFileSync(DOC, 'utf8');
  const start = doc.indexOf(BEGIN);
  const end = doc.indexOf(END);
  assert.ok(start >= 0 && end > start, `markers missing in ${DOC}`);
  const expected = `${BEGIN}\n${methodTable()}\n${END}`;
  const actual = doc.slice(start, end + END.length);
  if (actual !== expected && process.env.BULKHEAD_WRITE_DOCS === '1') {
    fs.writeFileSync(DOC, doc.slice(0, start) + expected + doc.slice(end + END.length));
    return;
  }
  assert.equal(actual, expected, 'run with BULKHEAD_WRITE_DOCS=1 to regenerate the table');
});
