// The admin-domain side of running a command in a qube (qvm-run): one connection to the daemon's
// exec socket, a CLIENT_EXEC frame, then qrexec DATA_* frames both ways (docs/protocol/qrexec.md).
import net from 'node:net';
import {
  CLIENT_EXEC_AUTOSTART,
  CLIENT_EXEC_SERVICE,
  encodeExecParams,
  encodeFrame,
  FrameParser,
  MAX_DATA_CHUNK,
  MSG_CLIENT_EXEC,
  MSG_DATA_EXIT_CODE,
  MSG_DATA_STDERR,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  MSG_JUST_EXEC_FLAG,
  parseExitCode,
} from '../protocol/qrexec.js';
import { DaemonError } from './client.js';

export interface ExecRequest {
  readonly socketPath: string;
  readonly target: string;
  /** null: the qube's default user. */
  readonly user: string | null;
  /** A shell command line, or with `service` a `SERVICE+ARG` to call. */
  readonly command: string;
  readonly service?: boolean;
  readonly autostart: boolean;
  /** Run without passing I/O: the call returns once the command started. */
  readonly detached?: boolean;
  readonly stdin?: NodeJS.ReadableStream;
  /** Output sinks; returning false asks for a pause until `drain` is emitted by `drainSource`. */
  readonly onStdout: (chunk: Buffer) => boolean;
  readonly onStderr: (chunk: Buffer) => boolean;
  readonly drainSource?: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream };
}

/** Resolves with the remote command's exit code. */
export function execInQube(req: ExecRequest): Promise<number> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path: req.socketPath, allowHalfOpen: true });
    const parser = new FrameParser();
    let exitCode: number | undefined;
    let stdinDone = false;
    const flags = (req.autostart ? CLIENT_EXEC_AUTOSTART : 0) | (req.detached === true ? MSG_JUST_EXEC_FLAG : 0)
      | (req.service === true ? CLIENT_EXEC_SERVICE : 0);
    sock.on('connect', () => {
      sock.write(encodeFrame(MSG_CLIENT_EXEC, encodeExecParams(flags, 0, `${req.target} ${req.user ?? ''}:${req.command}`)));
      const input = req.stdin;
      if (input === undefined || req.detached === true) {
        stdinDone = true;
        sock.write(encodeFrame(MSG_DATA_STDIN));
        return;
      }
      input.on('data', (chunk: Buffer | string) => {
        const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
        for (let off = 0; off < buf.length; off += MAX_DATA_CHUNK) {
          if (!sock.write(encodeFrame(MSG_DATA_STDIN, buf.subarray(off, off + MAX_DATA_CHUNK)))) {
            input.pause();
            sock.once('drain', () => input.resume());
          }
        }
      });
      input.on('end', () => {
        stdinDone = true;
        if (!sock.destroyed) sock.write(encodeFrame(MSG_DATA_STDIN));
      });
    });
    sock.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = parser.push(chunk);
      } catch (err) {
        sock.destroy();
        reject(new DaemonError(`malformed reply from the daemon: ${(err as Error).message}`));
        return;
      }
      for (const f of frames) {
        // A slow reader of our output slows the qube down instead of growing our memory.
        if (f.type === MSG_DATA_STDOUT && f.payload.length > 0) {
          if (!req.onStdout(f.payload) && req.drainSource) waitDrain(req.drainSource.stdout);
        } else if (f.type === MSG_DATA_STDERR && f.payload.length > 0) {
          if (!req.onStderr(f.payload) && req.drainSource) waitDrain(req.drainSource.stderr);
        } else if (f.type === MSG_DATA_EXIT_CODE) exitCode = parseExitCode(f.payload);
      }
      if (exitCode !== undefined) {
        sock.destroy();
        if (!stdinDone) req.stdin?.pause();
        resolve(exitCode);
      }
    });
    let waiting = 0;
    const waitDrain = (out: NodeJS.WritableStream): void => {
      if (waiting++ === 0) sock.pause();
      out.once('drain', () => {
        if (--waiting === 0) sock.resume();
      });
    };
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(new DaemonError(`cannot connect to the daemon at ${req.socketPath}: is it running? (${err.code})`));
      } else if (exitCode === undefined) {
        reject(new DaemonError(`connection to the daemon failed: ${err.message}`));
      }
    });
    sock.on('close', () => {
      if (exitCode === undefined) reject(new DaemonError('the connection closed before the command finished'));
    });
  });
}
