// One daemon per data dir. The lock is an abstract Unix socket named after the data dir's real
// path: binding it is atomic, and the kernel frees it when the holder dies (even by kill -9), so
// there are no stale locks to take over and no race in taking one over. `daemon.lock` in the
// data dir only records the holder's pid for error messages.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { listenOn } from '../hal/unix-listen.js';

export class DataDirLockError extends Error {
  override readonly name = 'DataDirLockError';
}

export class DataDirLock {
  readonly #server: net.Server;
  readonly #pidFile: string;

  private constructor(server: net.Server, pidFile: string) {
    this.#server = server;
    this.#pidFile = pidFile;
  }

  static async acquire(dataDir: string): Promise<DataDirLock> {
    const real = fs.realpathSync(dataDir);
    const name = `\0bulkhead-datadir-${createHash('sha256').update(real).digest('hex').slice(0, 40)}`;
    const pidFile = path.join(dataDir, 'daemon.lock');
    const server = net.createServer((s) => s.destroy());
    try {
      await listenOn(server, name);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      let owner: string;
      try {
        owner = `another Bulkhead daemon (pid ${Number.parseInt(fs.readFileSync(pidFile, 'utf8'), 10)})`;
      } catch {
        // Starting right now, or a process that is not a Bulkhead daemon took the lock's name.
        owner = 'another process (a daemon still starting, or not a Bulkhead daemon: no daemon.lock)';
      }
      throw new DataDirLockError(`${owner} is using ${dataDir}`);
    }
    server.unref();
    fs.writeFileSync(pidFile, `${process.pid}\n`, { mode: 0o600 });
    return new DataDirLock(server, pidFile);
  }

  async release(): Promise<void> {
    fs.rmSync(this.#pidFile, { force: true });
    await new Promise<void>((resolve) => this.#server.close(() => { resolve(); }));
  }
}
