import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { QubesError } from './errors.js';
import { emptyState, type QubeRecord } from './model.js';
import { Registry } from './registry.js';
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

test('network properties: Qubes addressing from the qid, read-only, empty without network', () => {
  const r = new Registry(emptyState(), () => undefined);
  r.create({ klass: 'TemplateVM', name: 'tpl', label: 'black', source: 'dom0' });
  r.create({ klass: 'AppVM', name: 'net', label: 'red', template: 'tpl', source: 'dom0' });
  r.setProp('net', 'provides_network', 'True');
  r.setProp('net', 'netvm', '');
  r.setGlobal('default_netvm', 'net');
  r.create({ klass: 'AppVM', name: 'app', label: 'red', template: 'tpl', source: 'dom0' });
  r.setProp('app', 'template_for_dispvms', 'True');
  r.create({ klass: 'DispVM', name: 'disp7', label: 'red', template: 'app', source: 'dom0' });
  r.create({ klass: 'AppVM', name: 'vault', label: 'black', template: 'tpl', source: 'dom0' });
  r.setProp('vault', 'netvm', '');
  const get = (q: string, p: string): string | undefined => {
    const v = r.getProp(q, p).value;
    return v === undefined || v === null ? undefined : String(v);
  };
  const qid = (q: string): number => r.resolve(q).qid;
  assert.equal(get('app', 'ip'), `10.137.0.${qid('app')}`);
  assert.equal(get('disp7', 'ip'), `10.138.0.${qid('disp7')}`);
  assert.equal(get('net', 'ip'), `10.137.0.${qid('net')}`, 'a netvm without a netvm has its own address');
  assert.equal(get('net', 'gateway'), get('net', 'ip'));
  assert.equal(get('app', 'gateway'), undefined, 'only a netvm is a gateway');
  assert.equal(get('app', 'visible_gateway'), get('net', 'ip'));
  assert.equal(get('app', 'dns'), '10.139.1.1 10.139.1.2');
  assert.equal(get('app', 'visible_netmask'), '255.255.255.255');
  for (const p of ['ip', 'visible_ip', 'gateway', 'visible_gateway', 'dns', 'visible_netmask']) assert.equal(get('vault', p), undefined, p);
  assert.equal(get('vault', 'mac'), '00:16:3e:5e:6c:00');
  for (const p of ['ip', 'visible_ip', 'gateway', 'dns', 'mac']) {
    assert.throws(() => { r.setProp('app', p, '10.1.2.3'); }, (e: unknown) => e instanceof QubesError && /read-only/.test(e.message), p);
  }
});
