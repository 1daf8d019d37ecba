import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { QubesError } from './errors.js';
import type { QubeRecord } from './model.js';
import { GLOBAL_PROPS, parseValue, propDefFor, propNamesFor, valueFitsType, type PropDef } from './properties.js';

type AnyDef = PropDef<QubeRecord> | PropDef<null>;
const defs: AnyDef[] = [
  ...propNamesFor('AppVM').flatMap((n) => propDefFor('AppVM', n) ?? []),
  ...GLOBAL_PROPS.values(),
];

test('property: parsing any untrusted Set payload yields a value of the declared type or a QubesError', () => {
  fc.assert(
    fc.property(fc.constantFrom(...defs), fc.oneof(fc.string(), fc.stringMatching(/^-?[0-9]{0,20}$/), fc.constantFrom('True', 'no', 'ON', '', 'none', 'red', '3', 'label-8')), (def, untrusted) => {
      try {
        const value = parseValue(def, 'q', untrusted);
        assert.ok(valueFitsType(def.type, value), `${def.name}: ${JSON.stringify(value)}`);
      } catch (err) {
        assert.ok(err instanceof QubesError, String(err));
      }
    }),
    { numRuns: 3000 },
  );
});

test('non-printable or non-ASCII payloads are refused for every type', () => {
  for (const def of defs) {
    for (const bad of ['a\nb', 'tab\there', 'é', '\0', '\x7f']) {
      assert.throws(() => parseValue(def, 'q', bad), QubesError, `${def.name} accepted ${JSON.stringify(bad)}`);
    }
  }
});
