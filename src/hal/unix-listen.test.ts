// listenWithUmask: the socket file gets the tight mask; files other code creates meanwhile do not.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { listenWithUmask } from './unix-listen.js';

test('the socket is created under the given umask, and the process umask is back before any other code runs', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bh-listen-'));
  const server = net.createServer();
  t.after(() => {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const currentUmask = (): number => {
    const mask = process.umask(0o022);
    process.umask(mask);
    return mask;
  };
  const before = currentUmask();
  const sock = path.join(dir, 's.sock');
  const listening = listenWithUmask(server, sock, 0o177);
  // Code that runs while the listen is still settling (another start, say) creates a folder.
  const other = path.join(dir, 'other');
  await Promise.resolve().then(() => { fs.mkdirSync(other, { mode: 0o755 }); });
  await listening;
  assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
  assert.equal(fs.statSync(other).mode & 0o777, 0o755 & ~before);
  assert.equal(currentUmask(), before);
});
