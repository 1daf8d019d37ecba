// A container backend with a host template, driven directly (no daemon, no CLI), for benchmarks.
import { spawn } from 'node:child_process';
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

/** A CLI command against the bench daemon; stdin from `input`. Rejects on a non-zero exit. */
export function cli(socket: string, cmd: string, args: readonly string[], input = ''): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(REPO, 'bin', cmd), ...args], {
      env: { ...process.env, BULKHEAD_SOCKET: socket }, stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.stdin.end(input);
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString());
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${Buffer.concat(err).toString()}`));
    });
  });
}
