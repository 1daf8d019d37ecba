import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { DataDirLock, DataDirLockError } from './lock.js';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-lock-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

test('one holder at a time; the error names the holder; release frees it', async () => {
  const lock = await DataDirLock.acquire(dir);
  await assert.rejects(DataDirLock.acquire(dir), (err: unknown) => {
    assert.ok(err instanceof DataDirLockError);
    assert.match(err.message, new RegExp(`another Bulkhead daemon \\(pid ${process.pid}\\) is using`));
    return true;
  });
  // The same folder through another path is the same lock.
  fs.symlinkSync(dir, `${dir}-link`);
  try {
    await assert.rejects(DataDirLock.acquire(`${dir}-link`), DataDirLockError);
  } finally {
    fs.rmSync(`${dir}-link`);
  }
  await lock.release();
  assert.equal(fs.existsSync(path.join(dir, 'daemon.lock')), false);
  const again = await DataDirLock.acquire(dir);
  await again.release();
});

test('a lock held by a process that was killed is free again, whatever its pid file says', async () => {
  // A child takes the lock, then is killed -9 without any clean-up.
  const script = `import('${path.resolve(import.meta.dirname, 'lock.ts').replaceAll('\\', '/')}').then(async (m) => { await m.DataDirLock.acquire(${JSON.stringify(dir)}); process.stdout.write('held\\n'); setInterval(() => {}, 1000); });`;
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('held')) resolve(); });
      child.once('exit', () => { reject(new Error('child exited early')); });
    });
    await assert.rejects(DataDirLock.acquire(dir), DataDirLockError);
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
  }
  assert.equal(fs.existsSync(path.join(dir, 'daemon.lock')), true, 'the killed holder left its pid file');
  const lock = await DataDirLock.acquire(dir);
  await lock.release();
});
