// Router pieces that need no qube: the byte splice between a caller and a service, and the
// removal of disposables a stopped or crashed daemon left behind.
import assert from 'node:assert/strict';
import { PassThrough, Duplex } from 'node:stream';
import { describe, test, type TestContext } from 'node:test';
import { emptyState } from '../core/model.js';
import { Registry } from '../core/registry.js';
import { FakeBackend } from '../hal/fake.js';
import { Lifecycle } from './lifecycle.js';
import { silentLogger } from './log.js';
import { removeLeftoverDisposables, splice } from './router.js';

/** Two connected in-memory duplexes (what one writes, the other reads). */
function pair(): [Duplex, Duplex] {
  const ab = new PassThrough();
  const ba = new PassThrough();
  const a = Duplex.from({ readable: ba, writable: ab });
  const b = Duplex.from({ readable: ab, writable: ba });
  // Destroying one end tears down the shared streams: the far end's error is expected here.
  for (const d of [a, b, ab, ba]) d.on('error', () => undefined);
  return [a, b];
}

function collect(d: Duplex): () => string {
  let text = '';
  d.on('data', (c: Buffer) => { text += c.toString(); });
  return () => text;
}

describe('splice', () => {
  test('copies both ways, passes half-closes on, and resolves when both sides are closed', async () => {
    const [callerEnd, caller] = pair();
    const [serviceEnd, service] = pair();
    const done = splice(caller, service);
    const toService = collect(serviceEnd);
    const toCaller = collect(callerEnd);
    callerEnd.write('stdin');
    callerEnd.end();
    serviceEnd.write('stdout');
    await new Promise((r) => setImmediate(r));
    assert.equal(toService(), 'stdin');
    assert.equal(toCaller(), 'stdout');
    serviceEnd.end();
    await new Promise((r) => setImmediate(r));
    caller.destroy();
    service.destroy();
    await done;
  });

  test('a caller that goes away takes the service side down (the service gets no more input, a disposable can be removed)', async () => {
    const [, caller] = pair();
    const [, service] = pair();
    const done = splice(caller, service);
    caller.destroy();
    await done;
    assert.equal(service.destroyed, true);
  });

  test('a service side that fails takes the caller down', async () => {
    const [, caller] = pair();
    const [, service] = pair();
    const done = splice(caller, service);
    service.destroy(new Error('agent gone'));
    await done;
    assert.equal(caller.destroyed, true);
  });
});

function setup(t: TestContext): { registry: Registry; lifecycle: Lifecycle } {
  const registry = new Registry(emptyState(), () => undefined);
  registry.create({ klass: 'TemplateVM', name: 'tpl', label: 'black', source: 'dom0' });
  registry.create({ klass: 'AppVM', name: 'dvm', label: 'red', template: 'tpl', source: 'dom0' });
  registry.setProp('dvm', 'template_for_dispvms', 'True');
  const lifecycle = new Lifecycle(registry, new Map([['container', new FakeBackend()]]), silentLogger());
  t.after(() => lifecycle.close());
  return { registry, lifecycle };
}

describe('removeLeftoverDisposables', () => {
  test('removes halted DispVMs marked auto_cleanup, and nothing else', async (t) => {
    const { registry, lifecycle } = setup(t);
    registry.create({ klass: 'DispVM', name: 'disp1', label: 'red', template: 'dvm', source: 'dom0' });
    registry.setProp('disp1', 'auto_cleanup', 'True');
    registry.create({ klass: 'DispVM', name: 'disp2', label: 'red', template: 'dvm', source: 'dom0' });
    registry.create({ klass: 'DispVM', name: 'disp3', label: 'red', template: 'dvm', source: 'dom0' });
    registry.setProp('disp3', 'auto_cleanup', 'True');
    await lifecycle.start('disp3');
    removeLeftoverDisposables(registry, lifecycle, silentLogger());
    const names = registry.list().map((q) => q.name);
    assert.ok(!names.includes('disp1'), 'the halted auto_cleanup disposable is gone');
    assert.ok(names.includes('disp2'), 'a disposable without auto_cleanup is kept');
    assert.ok(names.includes('disp3'), 'a running one is kept');
    assert.ok(names.includes('dvm') && names.includes('tpl'));
  });
});
