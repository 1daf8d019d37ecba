// Admin API client: one connection per call, Qubes framing (the same bytes qubesadmin sends).
import net from 'node:net';
import {
  EventStreamParser,
  encodeAdminRequest,
  parseAdminReply,
  type AdminEvent,
} from '../protocol/admin-wire.js';

export const DEFAULT_SOCKET = '/run/bulkhead/qubesd.sock';

/** The daemon answered with an exception reply. */
export class RemoteError extends Error {
  override readonly name = 'RemoteError';
  constructor(
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

/** No daemon, or it closed the connection without a reply (protocol error, access denied). */
export class DaemonError extends Error {
  override readonly name = 'DaemonError';
}

export interface Call {
  readonly method: string;
  readonly dest: string;
  readonly arg?: string;
  readonly payload?: string | Buffer;
}

export class AdminClient {
  readonly socketPath: string;

  constructor(socketPath: string) {
    this.socketPath = socketPath;
  }

  /** Sends one request and returns the OK content; throws RemoteError or DaemonError. */
  async callRaw(call: Call): Promise<Buffer> {
    const reply = await this.#roundTrip(encodeAdminRequest(call));
    let parsed;
    try {
      parsed = parseAdminReply(reply);
    } catch {
      throw new DaemonError(
        reply.length === 0
          ? `the daemon refused ${call.method} (no reply: protocol error or access denied; see its log)`
          : `invalid reply to ${call.method}`,
      );
    }
    if (parsed.kind === 'exception') throw new RemoteError(parsed.type, parsed.message);
    return parsed.content;
  }

  /** A call whose reply is one item per line (names, tags, labels): the non-empty lines. */
  async callList(call: Call): Promise<string[]> {
    return (await this.call(call)).split('\n').filter((l) => l !== '');
  }

  async call(call: Call): Promise<string> {
    return (await this.callRaw(call)).toString('utf8');
  }

  #connect(): net.Socket {
    return net.connect(this.socketPath);
  }

  #roundTrip(request: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const socket = this.#connect();
      const chunks: Buffer[] = [];
      let failed = false;
      socket.on('connect', () => {
        socket.end(request);
      });
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('error', (err: NodeJS.ErrnoException) => {
        failed = true;
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new DaemonError(`cannot connect to the Admin API at ${this.socketPath}: is the daemon running? (${err.code})`));
        } else if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
          resolve(Buffer.alloc(0));
        } else {
          reject(new DaemonError(`Admin API connection failed: ${err.message}`));
        }
      });
      socket.on('close', () => {
        if (!failed) resolve(Buffer.concat(chunks));
      });
    });
  }

  /** Subscribes to admin.Events; resolves when the stream ends (or the signal aborts). */
  events(dest: string, onEvent: (e: AdminEvent) => void, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = this.#connect();
      const parser = new EventStreamParser();
      const abort = (): void => {
        socket.destroy();
      };
      signal?.addEventListener('abort', abort, { once: true });
      socket.on('connect', () => {
        socket.write(encodeAdminRequest({ method: 'admin.Events', dest }));
        socket.end();
      });
      socket.on('data', (chunk: Buffer) => {
        try {
          for (const e of parser.push(chunk)) onEvent(e);
        } catch (err) {
          socket.destroy();
          reject(err instanceof Error ? err : new Error(String(err)));
        }
      });
      socket.on('error', (err) => {
        reject(new DaemonError(`event stream failed: ${err.message}`));
      });
      socket.on('close', () => {
        signal?.removeEventListener('abort', abort);
        resolve();
      });
    });
  }
}

export function socketFromEnv(explicit: string | undefined): string {
  return explicit ?? process.env.BULKHEAD_SOCKET ?? DEFAULT_SOCKET;
}
