// Lifecycle ordering with the HAL faked: starts waiting on their netvm, kills during starts.
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { emptyState } from '../core/model.js';
import { Registry, type RegistryEvent } from '../core/registry.js';
import { FakeBackend } from '../hal/fake.js';
import { Lifecycle } from './lifecycle.js';
import { silentLogger } from './log.js';

function setup(t: TestContext, slow: string[]): { registry: Registry; lifecycle: Lifecycle; fake: FakeBackend; events: RegistryEvent[] } {
  const registry = new Registry(emptyState(), () => undefined);
  registry.create({ klass: 'TemplateVM', name: 'tpl', label: 'black', source: 'dom0' });
  registry.create({ klass: 'AppVM', name: 'net', label: 'red', template: 'tpl', source: 'dom0' });
  registry.setProp('net', 'provides_network', 'True');
  registry.create({ klass: 'AppVM', name: 'work', label: 'blue', template: 'tpl', source: 'dom0' });
  registry.setProp('work', 'netvm', 'net');
  const fake = new FakeBackend({ slowStart: new Set(slow) });
  const lifecycle = new Lifecycle(registry, new Map([['container', fake]]), silentLogger());
  const events: RegistryEvent[] = [];
  registry.subscribe((e) => { events.push(e); });
  t.after(() => lifecycle.close());
  return { registry, lifecycle, fake, events };
}

describe('lifecycle', () => {
  test('a qube waiting for its netvm is Transient, and a kill aborts both starts', async (t) => {
    const { lifecycle, fake, events } = setup(t, ['net']);
    const start = lifecycle.start('work');
    start.catch(() => undefined);
    await new Promise((r) => setImmediate(r));
    assert.equal(lifecycle.powerState('work'), 'Transient');
    assert.equal(lifecycle.powerState('net'), 'Transient');
    await lifecycle.kill('work');
    await assert.rejects(start, /Start failed/);
    assert.equal(lifecycle.powerState('work'), 'Halted');
    assert.ok(!fake.started.some((s) => s.name === 'work'), 'work never reached the backend');
    assert.ok(events.some((e) => e.subject === 'work' && e.event === 'domain-start-failed'));
    await lifecycle.kill('net');
    assert.equal(lifecycle.powerState('net'), 'Halted');
    await lifecycle.close();
  });

  test('close() aborts starts in progress and waits for them', async (t) => {
    const { lifecycle } = setup(t, ['work']);
    const start = lifecycle.start('work');
    start.catch(() => undefined);
    await new Promise((r) => setImmediate(r));
    assert.equal(lifecycle.powerState('work'), 'Transient');
    await lifecycle.close();
    await assert.rejects(start, /Start failed/);
    assert.equal(lifecycle.powerState('work'), 'Halted');
  });

  test('domain-stopped and domain-shutdown come once per run, whoever stops the qube', async (t) => {
    const { lifecycle, events } = setup(t, []);
    await lifecycle.start('work');
    await Promise.all([lifecycle.kill('work'), lifecycle.kill('work').catch(() => undefined)]);
    const stops = events.filter((e) => e.subject === 'work' && (e.event === 'domain-stopped' || e.event === 'domain-shutdown'));
    assert.deepEqual(stops.map((e) => e.event), ['domain-stopped', 'domain-shutdown']);
    await lifecycle.start('work');
    await lifecycle.shutdown('work', { force: true, wait: true });
    assert.equal(events.filter((e) => e.subject === 'work' && e.event === 'domain-shutdown').length, 2);
    await lifecycle.close();
  });

  test('domain-start is announced when the qube already counts as Running', async (t) => {
    const { registry, lifecycle } = setup(t, []);
    const seen: string[] = [];
    registry.subscribe((e) => { if (e.event === 'domain-start') seen.push(`${e.subject}:${lifecycle.powerState(e.subject)}`); });
    await lifecycle.start('work');
    assert.deepEqual(seen, ['net:Running', 'work:Running']);
  });
});
