import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { emptyState } from './model.js';
import { Registry } from './registry.js';
import { BACKUP_FILE, STORE_FILE, Store, StoreError, deserialize, serialize } from './store.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-store-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function sample(): Registry {
  const r = new Registry(emptyState(), () => undefined);
  r.create({ klass: 'TemplateVM', name: 'debian', label: 'black', source: 'dom0' });
  r.create({ klass: 'AppVM', name: 'work', label: 'blue', template: 'debian', source: 'dom0' });
  r.setProp('work', 'memory', '800');
  r.featureSet('work', 'service.cups', '1');
  r.tagSet('work', 'banking');
  r.notesSet('work', 'my notes\n');
  r.setGlobal('default_template', 'debian');
  return r;
}

describe('store', () => {
  test('round trip keeps qubes, properties, features, tags, notes and globals', () => {
    const r = sample();
    const text = serialize(r.state);
    const back = deserialize(text, 'test');
    assert.equal(serialize(back), text);
    const work = back.qubes.get('work');
    assert.ok(work);
    assert.equal(work.props.get('memory'), 800);
    assert.equal(work.features.get('service.cups'), '1');
    assert.equal(work.notes, 'my notes\n');
    assert.equal(back.globals.get('default_template'), 'debian');
  });

  test('save replaces the file atomically and keeps the previous one as the last good copy', () => {
    const store = new Store(dir);
    assert.equal(store.load(), undefined, 'an empty data dir has no store');
    const r = sample();
    store.save(r.state);
    const first = fs.readFileSync(path.join(dir, STORE_FILE), 'utf8');
    r.setProp('work', 'vcpus', '3');
    store.save(r.state);
    assert.equal(fs.readFileSync(path.join(dir, BACKUP_FILE), 'utf8'), first);
    assert.equal(store.load()?.qubes.get('work')?.props.get('vcpus'), 3);
    assert.deepEqual(fs.readdirSync(dir).sort(), [STORE_FILE, BACKUP_FILE].sort(), 'no temp files left');
    assert.equal(fs.statSync(path.join(dir, STORE_FILE)).mode & 0o777, 0o600);
  });

  test('a corrupt store is refused with a clear message and nothing is touched', () => {
    const store = new Store(dir);
    const r = sample();
    store.save(r.state);
    store.save(r.state);
    const bak = fs.readFileSync(path.join(dir, BACKUP_FILE));
    const cases = [
      '{"format": "bulkhead-registry", "version": 1, "globals": [], "qub',
      JSON.stringify({ format: 'bulkhead-registry', version: 2, globals: [], qubes: [] }),
      serialize(r.state).replace('"label"', '"bogus_property"'),
      serialize(r.state).replace('"klass": "AdminVM"', '"klass": "AppVM"'),
      serialize(r.state).replace(/("memory",\s*)800/, '$1"lots"'),
      serialize(r.state).replace('"blue"', '"pink"'),
      // Right type, wrong value: the property's own check runs on load too.
      serialize(r.state).replace(/("memory",\s*)800/, '$11'),
    ];
    for (const garbage of cases) {
      fs.writeFileSync(path.join(dir, STORE_FILE), garbage);
      assert.throws(() => store.load(), (err: unknown) => {
        assert.ok(err instanceof StoreError);
        assert.match(err.message, new RegExp(`${STORE_FILE}.*left untouched`, 's'));
        return true;
      });
      assert.equal(fs.readFileSync(path.join(dir, STORE_FILE), 'utf8'), garbage);
      assert.deepEqual(fs.readFileSync(path.join(dir, BACKUP_FILE)), bak);
    }
  });

  test('a missing store next to a last good copy is not silently replaced by an empty one', () => {
    const store = new Store(dir);
    store.save(sample().state);
    store.save(sample().state);
    fs.rmSync(path.join(dir, STORE_FILE));
    assert.throws(() => store.load(), /is missing but .*Restore it with/);
  });
});
