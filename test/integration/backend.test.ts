// The container backend driven directly (real crun, no daemon), for what the CLI cannot time:
// an agent that never says HELLO, and a kill while a qube is starting.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/daemon/log.js';
import { ContainerBackend } from '../../src/hal/container/backend.js';
import { detectCgroupMode } from '../../src/hal/container/cgroups.js';
import { Crun } from '../../src/hal/container/crun.js';
import { containerId, qubePaths } from '../../src/hal/container/paths.js';
import { buildHostRoot } from '../../src/hal/container/templates.js';
import { importRoot } from '../../src/hal/container/volumes.js';
import type { QubeLaunchSpec } from '../../src/hal/types.js';
import { makeTempDir, reapContainers, removeTempDir, REPO_ROOT, waitFor } from './helpers.js';

const TEMPLATE = '00000000-0000-4000-8000-0000000000aa';
const spec = (name: string, n: number, timeoutSec = 30): QubeLaunchSpec => ({
  name, uuid: `00000000-0000-4000-8000-0000000001${String(n).padStart(2, '0')}`, qid: 50 + n, klass: 'AppVM',
  rootTemplate: 'tpl', rootTemplateUuid: TEMPLATE, memoryMiB: 400, maxmemMiB: 1000, vcpus: 1,
  qrexecTimeoutSec: timeoutSec,
});

describe('container backend: starts that never finish', () => {
  let dir = '';
  let backend: ContainerBackend | undefined;
  const crun = new Crun(detectCgroupMode());

  before(async () => {
    dir = makeTempDir();
    fs.chmodSync(dir, 0o711);
    // "node" that never starts the agent: the qube runs, but nobody says HELLO.
    const silent = path.join(dir, 'silent-agent');
    fs.writeFileSync(silent, '#!/bin/sh\nexec sleep 600\n', { mode: 0o755 });
    backend = await ContainerBackend.create({
      dataDir: path.join(dir, 'data'), log: silentLogger(), agentBundle: path.join(REPO_ROOT, 'dist', 'agent-bundle'), nodeBinary: silent,
    });
    buildHostRoot(path.join(dir, 'stage'));
    await importRoot(path.join(dir, 'data'), TEMPLATE, path.join(dir, 'stage'), { hostUsr: true, source: 'host' });
  });

  after(async () => {
    await backend?.close();
    await reapContainers(dir).catch(() => undefined);
    removeTempDir(dir);
  });

  async function assertGone(s: QubeLaunchSpec): Promise<void> {
    assert.equal(backend?.state(s.name), 'Halted');
    assert.equal(await crun.state(containerId(s.uuid)), undefined);
    assert.equal(fs.existsSync(qubePaths(path.join(dir, 'data'), s.uuid).volatile), false);
    assert.equal(fs.existsSync(qubePaths(path.join(dir, 'data'), s.uuid).socket), false);
  }

  test('an agent that never says HELLO: the start fails after qrexec_timeout and leaves nothing', async () => {
    const s = spec('silent', 1, 1);
    await assert.rejects(backend!.start(s), /agent did not connect within 1 s/);
    await assertGone(s);
  });

  test('a kill while the qube starts aborts the start and cleans up at once', async () => {
    const s = spec('doomed', 2, 60);
    const starting = backend!.start(s);
    starting.catch(() => undefined);
    // Wait until the container exists (the start is waiting for HELLO).
    await waitFor(async () => (await crun.state(containerId(s.uuid))) !== undefined, 5000, 'the container');
    assert.equal(backend!.state(s.name), 'Transient');
    const t0 = Date.now();
    await backend!.kill(s.name);
    await assert.rejects(starting, /killed while starting/);
    assert.ok(Date.now() - t0 < 5000);
    await assertGone(s);
  });

  test('closing the backend during a start aborts it: nothing keeps running', async (t) => {
    const data = path.join(dir, 'data2');
    const second = await ContainerBackend.create({
      dataDir: data, log: silentLogger(), agentBundle: path.join(REPO_ROOT, 'dist', 'agent-bundle'), nodeBinary: path.join(dir, 'silent-agent'),
    });
    t.after(() => second.close());
    await importRoot(data, TEMPLATE, path.join(dir, 'stage'), { hostUsr: true, source: 'host' });
    const s = spec('closing', 3, 60);
    const starting = second.start(s);
    starting.catch(() => undefined);
    await waitFor(async () => (await crun.state(containerId(s.uuid))) !== undefined, 5000, 'the container');
    await second.close();
    await assert.rejects(starting, /daemon is stopping/);
    assert.equal(await crun.state(containerId(s.uuid)), undefined);
    assert.equal(fs.existsSync(qubePaths(data, s.uuid).volatile), false);
    await assert.rejects(second.start(spec('late', 4)), /shutting down/);
  });
});
