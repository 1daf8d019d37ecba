// Listening on a Unix socket whose file is created with restricted permissions from the start
// (umask), never briefly more open.
import type net from 'node:net';

export async function listenWithUmask(server: net.Server, socketPath: string, umask: number): Promise<void> {
  const oldMask = process.umask(umask);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(oldMask);
  }
}
