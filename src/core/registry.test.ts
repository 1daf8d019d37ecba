import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { QubesError } from './errors.js';
import { emptyState, type RegistryState } from './model.js';
import { qubeNameProblem } from './names.js';
import { formatReading } from './properties.js';
import { Registry, type RegistryEvent } from './registry.js';

function registry(persist: (s: RegistryState) => void = () => undefined): Registry {
  return new Registry(emptyState(), persist);
}

/** dom0, a template, a network provider chain and two AppVMs. */
function populated(): Registry {
  const r = registry();
  r.create({ klass: 'TemplateVM', name: 'debian', label: 'black', source: 'dom0' });
  r.setGlobal('default_template', 'debian');
  r.create({ klass: 'AppVM', name: 'sys-net', label: 'red', source: 'dom0' });
  r.setProp('sys-net', 'provides_network', 'True');
  r.create({ klass: 'AppVM', name: 'sys-firewall', label: 'green', source: 'dom0' });
  r.setProp('sys-firewall', 'provides_network', 'True');
  r.setProp('sys-firewall', 'netvm', 'sys-net');
  r.setGlobal('default_netvm', 'sys-firewall');
  r.create({ klass: 'AppVM', name: 'work', label: 'blue', source: 'dom0' });
  r.create({ klass: 'AppVM', name: 'vault', label: 'black', template: 'debian', source: 'dom0' });
  r.setProp('vault', 'netvm', '');
  return r;
}

function qubesError(type: string, pattern?: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof QubesError, `expected QubesError, got ${String(err)}`);
    assert.equal(err.type, type);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

describe('qube names', () => {
  test('accepts Qubes-valid names and rejects the rest', () => {
    for (const ok of ['work', 'a', 'sys-net', 'My_Qube.2', 'x'.repeat(31)]) assert.equal(qubeNameProblem(ok), undefined, ok);
    for (const bad of ['', '1abc', '-x', 'a b', 'none', 'default', 'Domain-0', 'foo-dm', 'x'.repeat(32), 'ü', 'a/b']) {
      assert.notEqual(qubeNameProblem(bad), undefined, bad);
    }
  });

  test('property: a name is valid iff it matches the rules', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), (s) => {
        const valid =
          /^[a-zA-Z][a-zA-Z0-9_.-]{0,30}$/.test(s) && !['none', 'default', 'Domain-0'].includes(s) && !s.endsWith('-dm');
        assert.equal(qubeNameProblem(s) === undefined, valid);
      }),
    );
  });
});

describe('create', () => {
  test('AppVM gets the default template, a fresh qid and uuid, and a created-by tag', () => {
    const r = populated();
    const q = r.resolve('work');
    assert.equal(q.klass, 'AppVM');
    assert.equal(q.props.get('template'), 'debian');
    assert.ok(q.qid > 0);
    assert.match(q.uuid, /^[0-9a-f-]{36}$/);
    assert.deepEqual([...q.tags], ['created-by-dom0']);
    assert.equal(r.resolve(`uuid:${q.uuid}`).name, 'work');
  });

  test('rejects duplicates, invalid names, unknown labels and templates of the wrong class', () => {
    const r = populated();
    assert.throws(() => r.create({ klass: 'AppVM', name: 'work', label: 'red', source: 'dom0' }), qubesError('QubesVMAlreadyExistsError'));
    assert.throws(() => r.create({ klass: 'AppVM', name: '0bad', label: 'red', source: 'dom0' }), qubesError('QubesValueError'));
    assert.throws(() => r.create({ klass: 'AppVM', name: 'x', label: 'pink', source: 'dom0' }), qubesError('QubesLabelNotFoundError'));
    assert.throws(() => r.create({ klass: 'AppVM', name: 'x', label: '3', source: 'dom0' }), qubesError('QubesInvalidLabelError'));
    assert.throws(
      () => r.create({ klass: 'AppVM', name: 'x', label: 'red', template: 'work', source: 'dom0' }),
      qubesError('QubesPropertyValueError', /not a TemplateVM/),
    );
    assert.throws(() => r.create({ klass: 'AppVM', name: 'x', label: 'red', template: 'nope', source: 'dom0' }), qubesError('QubesVMNotFoundError'));
    assert.equal(r.state.qubes.has('x'), false);
  });

  test('AppVM without template and without default_template fails', () => {
    const r = registry();
    assert.throws(
      () => r.create({ klass: 'AppVM', name: 'x', label: 'red', source: 'dom0' }),
      qubesError('QubesValueError', /nor default template/),
    );
  });

  test('DispVM needs a disposable template', () => {
    const r = populated();
    assert.throws(() => r.create({ klass: 'DispVM', name: 'disp1', label: 'red', template: 'work', source: 'dom0' }), qubesError('QubesPropertyValueError'));
    r.setProp('work', 'template_for_dispvms', 'yes');
    const d = r.create({ klass: 'DispVM', name: 'disp1', label: 'red', template: 'work', source: 'dom0' });
    assert.equal(d.props.get('template'), 'work');
    // A disposable template stays one while disposables use it.
    assert.throws(() => { r.setProp('work', 'template_for_dispvms', 'False'); }, qubesError('QubesPropertyValueError', /disposables/));
  });
});

describe('properties', () => {
  test('Get reports defaults and where they come from', () => {
    const r = populated();
    assert.equal(formatReading(r.getProp('work', 'memory')), 'default=True type=int 400');
    r.setProp('debian', 'memory', '1000');
    assert.equal(formatReading(r.getProp('work', 'memory')), 'default=True type=int 1000', 'memory comes from the template');
    assert.equal(formatReading(r.getProp('work', 'netvm')), 'default=True type=vm sys-firewall', 'netvm comes from default_netvm');
    assert.equal(formatReading(r.getProp('vault', 'netvm')), 'default=False type=vm ');
    assert.equal(formatReading(r.getProp('debian', 'netvm')), 'default=True type=vm ', 'templates have no network by default');
    assert.equal(formatReading(r.getProp('work', 'label')), 'default=False type=label blue');
    assert.equal(formatReading(r.getProp('work', 'name')), 'default=False type=str work');
    assert.equal(formatReading(r.getProp('work', 'klass')), 'default=True type=str AppVM');
    assert.equal(formatReading(r.getProp('work', 'backend')), 'default=True type=str container');
    assert.equal(formatReading(r.getGlobal('default_template')), 'default=False type=vm debian');
    assert.equal(formatReading(r.getGlobal('clockvm')), 'default=True type=vm ');
  });

  test('dom0 has no template or netvm property', () => {
    const r = populated();
    assert.throws(() => r.getProp('dom0', 'netvm'), qubesError('QubesNoSuchPropertyError', /Invalid property 'netvm' of dom0/));
    assert.throws(() => r.getProp('dom0', 'template'), qubesError('QubesNoSuchPropertyError'));
    assert.equal(formatReading(r.getProp('dom0', 'qid')), 'default=False type=int 0');
  });

  test('typed parsing: int, bool words, labels by name, index and label-N', () => {
    const r = populated();
    assert.throws(() => { r.setProp('work', 'memory', 'lots'); }, qubesError('QubesPropertyValueError', /int/));
    assert.throws(() => { r.setProp('work', 'memory', '1'); }, qubesError('QubesPropertyValueError', /between/));
    assert.throws(() => { r.setProp('work', 'autostart', 'maybe'); }, qubesError('QubesPropertyValueError', /boolean/));
    r.setProp('work', 'autostart', 'ON');
    assert.equal(r.getProp('work', 'autostart').value, true);
    r.setProp('work', 'label', '4');
    assert.equal(r.getProp('work', 'label').value, 'green');
    r.setProp('work', 'label', 'label-7');
    assert.equal(r.getProp('work', 'label').value, 'purple');
    assert.throws(() => { r.setProp('work', 'backend', 'docker'); }, qubesError('QubesPropertyValueError', /container, vm/));
    assert.throws(() => { r.setProp('work', 'klass', 'TemplateVM'); }, qubesError('QubesPropertyValueError', /read-only/));
    assert.throws(() => { r.setProp('work', 'qid', '99'); }, qubesError('QubesPropertyValueError', /read-only/));
    assert.throws(() => { r.setProp('work', 'nonsense', '1'); }, qubesError('QubesNoSuchPropertyError'));
  });

  test('only provides_network qubes can be a netvm; no loops; not itself', () => {
    const r = populated();
    assert.throws(() => { r.setProp('work', 'netvm', 'vault'); }, qubesError('QubesPropertyValueError', /does not provide network/));
    assert.throws(() => { r.setProp('work', 'netvm', 'work'); }, qubesError('QubesPropertyValueError', /own netvm/));
    assert.throws(() => { r.setProp('work', 'netvm', 'ghost'); }, qubesError('QubesPropertyValueError', /non-existing/));
    assert.throws(() => { r.setProp('sys-net', 'netvm', 'sys-firewall'); }, qubesError('QubesPropertyValueError', /Loops/));
    assert.throws(() => { r.setProp('sys-firewall', 'provides_network', 'False'); }, qubesError('QubesPropertyValueError'));
    assert.equal(r.getProp('sys-net', 'netvm').value, null, 'the failed changes left nothing behind');
  });

  test("dom0's default_dispvm must stay a disposable template", () => {
    const r = populated();
    r.setProp('work', 'template_for_dispvms', 'True');
    r.setProp('dom0', 'default_dispvm', 'work');
    assert.throws(() => { r.setProp('work', 'template_for_dispvms', 'False'); }, qubesError('QubesPropertyValueError', /default_dispvm of 'dom0'/));
  });

  test('reset returns a property to its default; label cannot be reset', () => {
    const r = populated();
    r.setProp('work', 'vcpus', '4');
    r.resetProp('work', 'vcpus');
    assert.equal(formatReading(r.getProp('work', 'vcpus')), 'default=True type=int 2');
    assert.throws(() => { r.resetProp('work', 'label'); }, qubesError('QubesPropertyValueError'));
  });

  test('rename updates every reference; refused while running', () => {
    const r = populated();
    r.setProp('sys-firewall', 'name', 'fw');
    assert.equal(r.state.qubes.has('sys-firewall'), false);
    assert.equal(r.getGlobal('default_netvm').value, 'fw');
    assert.equal(r.getProp('work', 'netvm').value, 'fw');
    r.setProp('debian', 'name', 'deb');
    assert.equal(r.getProp('work', 'template').value, 'deb');
    r.setHaltedCheck((n) => n !== 'work');
    assert.throws(() => { r.setProp('work', 'name', 'job'); }, qubesError('QubesVMNotHaltedError', /running/));
    assert.throws(() => { r.setProp('vault', 'name', 'work'); }, qubesError('QubesVMAlreadyExistsError'));
    assert.throws(() => { r.setProp('dom0', 'name', 'admin'); }, qubesError('QubesPropertyValueError'));
  });
});

describe('remove', () => {
  test('refuses dom0, running qubes and qubes others depend on, naming the dependents', () => {
    const r = populated();
    assert.throws(() => { r.remove('dom0'); }, qubesError('QubesVMInUseError', /cannot be removed/));
    assert.throws(
      () => { r.remove('debian'); },
      qubesError('QubesVMInUseError', /template of sys-net.*template of work.*global property default_template/),
    );
    assert.throws(() => { r.remove('sys-firewall'); }, qubesError('QubesVMInUseError', /global property default_netvm/));
    r.setHaltedCheck((n) => n !== 'work');
    assert.throws(() => { r.remove('work'); }, qubesError('QubesVMNotHaltedError'));
    r.remove('vault');
    assert.equal(r.state.qubes.has('vault'), false);
    assert.throws(() => r.resolve('vault'), qubesError('QubesVMNotFoundError', /No such domain: 'vault'/));
  });
});

describe('features, tags, notes', () => {
  test('features keep insertion order; CheckWithTemplate walks the template', () => {
    const r = populated();
    r.featureSet('debian', 'gui', '1');
    r.featureSet('work', 'b', 'x');
    r.featureSet('work', 'a', '');
    assert.deepEqual([...r.resolve('work').features.keys()], ['b', 'a']);
    assert.equal(r.featureCheckWithTemplate('work', 'gui'), '1');
    assert.throws(() => r.featureGet('work', 'gui'), qubesError('QubesFeatureNotFoundError'));
    r.featureRemove('work', 'b');
    assert.throws(() => { r.featureRemove('work', 'b'); }, qubesError('QubesFeatureNotFoundError'));
  });

  test('tags: idempotent set, remove of a missing tag fails, bad tags refused', () => {
    const r = populated();
    r.tagSet('work', 'banking');
    r.tagSet('work', 'banking');
    assert.deepEqual([...r.resolve('work').tags].sort(), ['banking', 'created-by-dom0']);
    r.tagRemove('work', 'banking');
    assert.throws(() => { r.tagRemove('work', 'banking'); }, qubesError('QubesTagNotFoundError'));
    assert.throws(() => { r.tagSet('work', 'a b'); }, qubesError('QubesInvalidTagError'));
  });

  test('notes refuse control characters', () => {
    const r = populated();
    r.notesSet('work', 'line 1\nline\t2 ✓');
    assert.equal(r.resolve('work').notes, 'line 1\nline\t2 ✓');
    assert.throws(() => { r.notesSet('work', 'bell\x07'); }, qubesError('QubesNotesError'));
  });

  test('names like "constructor" are plain data, never prototype members', () => {
    const r = populated();
    r.create({ klass: 'AppVM', name: 'constructor', label: 'red', source: 'dom0' });
    r.featureSet('constructor', '__proto__', 'x');
    r.featureSet('constructor', 'toString', 'y');
    assert.equal(r.featureGet('constructor', '__proto__'), 'x');
    assert.throws(() => r.featureGet('work', 'constructor'), qubesError('QubesFeatureNotFoundError'));
  });
});

describe('atomicity and events', () => {
  test('a failed persist leaves the state unchanged and fires no event', () => {
    let fail = false;
    const r = registry(() => {
      if (fail) throw new Error('disk full');
    });
    r.create({ klass: 'TemplateVM', name: 'debian', label: 'black', source: 'dom0' });
    const events: RegistryEvent[] = [];
    r.subscribe((e) => events.push(e));
    fail = true;
    assert.throws(() => r.create({ klass: 'TemplateVM', name: 't2', label: 'black', source: 'dom0' }), /disk full/);
    assert.throws(() => { r.setProp('debian', 'memory', '800'); }, /disk full/);
    assert.equal(r.state.qubes.has('t2'), false);
    assert.equal(r.getProp('debian', 'memory').isDefault, true);
    assert.deepEqual(events, []);
  });

  test('changes fire Qubes events after they are committed', () => {
    const r = populated();
    const events: RegistryEvent[] = [];
    r.subscribe((e) => events.push(e));
    r.setProp('work', 'memory', '600');
    r.create({ klass: 'AppVM', name: 'new', label: 'red', source: 'dom0' });
    r.remove('new');
    r.tagSet('work', 't');
    assert.deepEqual(events, [
      { subject: 'work', event: 'property-set:memory', kwargs: [['name', 'memory'], ['newvalue', '600'], ['oldvalue', '400']] },
      { subject: '', event: 'domain-add', kwargs: [['vm', 'new']] },
      { subject: '', event: 'domain-delete', kwargs: [['vm', 'new']] },
      { subject: 'work', event: 'domain-tag-add:t', kwargs: [['tag', 't']] },
    ]);
  });

  test('property: any sequence of operations keeps the registry consistent', () => {
    const names = ['a', 'b', 'c', 'debian', 'sys-net'];
    const op = fc.oneof(
      fc.record({ kind: fc.constant('create' as const), name: fc.constantFrom(...names), klass: fc.constantFrom('AppVM' as const, 'TemplateVM' as const) }),
      fc.record({ kind: fc.constant('remove' as const), name: fc.constantFrom(...names) }),
      fc.record({
        kind: fc.constant('set' as const),
        name: fc.constantFrom(...names),
        prop: fc.constantFrom('netvm', 'provides_network', 'template', 'memory', 'name', 'default_dispvm', 'template_for_dispvms'),
        value: fc.constantFrom('', 'a', 'b', 'c', 'debian', 'sys-net', 'True', 'False', '512', 'x'),
      }),
      fc.record({ kind: fc.constant('global' as const), prop: fc.constantFrom('default_netvm', 'default_template'), value: fc.constantFrom('', ...names) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 30 }), (ops) => {
        const r = registry();
        for (const o of ops) {
          try {
            if (o.kind === 'create') r.create({ klass: o.klass, name: o.name, label: 'red', source: 'dom0' });
            else if (o.kind === 'remove') r.remove(o.name);
            else if (o.kind === 'set') r.setProp(o.name, o.prop, o.value);
            else r.setGlobal(o.prop, o.value);
          } catch (err) {
            assert.ok(err instanceof QubesError || (err as Error).name === 'ProtocolError', String(err));
          }
        }
        // The live state must pass the same integrity check as any committed draft.
        assert.doesNotThrow(() => new Registry(r.state, () => undefined));
      }),
      { numRuns: 200 },
    );
  });
});
