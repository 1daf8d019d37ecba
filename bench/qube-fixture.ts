// A container backend with a host template, driven directly (no daemon, no CLI), for benchmarks.
import path from 'node:path';
import { silentLogger } from '../src/daemon/log.js';
import { ContainerBackend } from '../src/hal/container/backend.js';
import { buildHostRoot } from '../src/hal/container/templates.js';
import { importRoot } from '../src/hal/container/volumes.js';
import type { QubeLaunchSpec } from '../src/hal/types.js';

export const REPO = path.resolve(import.meta.dirname, '..');
const TEMPLATE_UUID = '00000000-0000-4000-8000-000000000001';

export async function hostTemplateBackend(dataDir: string): Promise<ContainerBackend> {
  const backend = await ContainerBackend.create({ dataDir, log: silentLogger(), agentBundle: path.join(REPO, 'dist', 'agent-bundle') });
  const stage = path.join(dataDir, 'stage-root');
  buildHostRoot(stage);
  await importRoot(dataDir, TEMPLATE_UUID, stage, { hostUsr: true, source: 'host' });
  return backend;
}

export function appvmSpec(i: number): QubeLaunchSpec {
  const n = String(i).padStart(3, '0');
  return {
    name: `bench-${n}`, uuid: `00000000-0000-4000-8000-000000001${n}`, qid: 100 + i, klass: 'AppVM',
    rootTemplate: 'bench-template', rootTemplateUuid: TEMPLATE_UUID,
    memoryMiB: 400, maxmemMiB: 4000, vcpus: 2, qrexecTimeoutSec: 30,
  };
}
