// Listening on Unix sockets: one way for the Admin API, the exec socket, the qubes' channels and
// the data-dir lock (an abstract socket).
import fs from 'node:fs';
import type net from 'node:net';

/** `server.listen(address)` as a promise (a socket path or an abstract name). */
export function listenOn(server: net.Server, address: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(address, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * Listens with the socket file created under `umask`: never, even briefly, more open. Node binds
 * a Unix socket synchronously inside listen(), so the process-wide umask is restored at once,
 * before anything else can run: other code creating files meanwhile keeps the normal mask.
 */
export async function listenWithUmask(server: net.Server, socketPath: string, umask: number): Promise<void> {
  const oldMask = process.umask(umask);
  let listening: Promise<void>;
  try {
    listening = listenOn(server, socketPath);
  } finally {
    process.umask(oldMask);
  }
  await listening;
}

/** Removes a stale socket file at `socketPath`; anything else there is refused, never replaced. */
export function clearSocketPath(socketPath: string): void {
  const existing = fs.lstatSync(socketPath, { throwIfNoEntry: false });
  if (existing === undefined) return;
  if (!existing.isSocket()) throw new Error(`${socketPath} exists and is not a socket; refusing to replace it`);
  fs.rmSync(socketPath, { force: true });
}
