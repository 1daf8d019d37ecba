// Services the admin domain itself serves to qubes through qrexec (target dom0): qubes.GetDate
// and the Admin API (admin.*), which reaches the same dispatcher as the local socket with the
// calling qube as source. What a qube sends here is untrusted qrexec framing: frames are
// length-checked before buffering and the whole input is capped.
import type { Duplex } from 'node:stream';
import type { QubeRecord } from '../core/model.js';
import { MAX_REQUEST_BYTES } from '../protocol/admin-wire.js';
import {
  EXIT_REFUSED,
  EXIT_SERVICE_NOT_FOUND,
  encodeFinish,
  encodeFrame,
  FrameParser,
  MAX_DATA_CHUNK,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
} from '../protocol/qrexec.js';
import type { AdminDispatcher, CallOutput } from './server.js';

export interface Dom0Call {
  readonly source: QubeRecord;
  readonly service: string;
  readonly arg: string;
  /** The target as the caller named it (a qube name for admin calls on a qube). */
  readonly requestedTarget: string;
  /** The caller's data connection (paused): DATA_STDIN in, DATA_STDOUT/EXIT_CODE out. */
  readonly sock: Duplex;
}

export interface Dom0Deps {
  readonly dispatcher: AdminDispatcher;
  /** Which qubes `source` may see through `service` (admin.vm.List / admin.Events, by policy). */
  readonly visibility: (source: QubeRecord, service: string) => (q: QubeRecord) => boolean;
}

/** Writes `data` as DATA_STDOUT frames of at most 64 KiB. */
function writeStdout(sock: Duplex, data: Buffer): void {
  for (let off = 0; off < data.length; off += MAX_DATA_CHUNK) {
    sock.write(encodeFrame(MSG_DATA_STDOUT, data.subarray(off, off + MAX_DATA_CHUNK)));
  }
}

function finish(sock: Duplex, code: number): void {
  if (!sock.destroyed) sock.end(encodeFinish('', code));
}

/** Reads the caller's stdin up to its EOF frame; rejects past `cap` bytes, on a protocol error, or on a hang-up before EOF. */
export function readStdin(sock: Duplex, cap: number): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const parser = new FrameParser();
    const parts: Buffer[] = [];
    let size = 0;
    const done = (err?: Error): void => {
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.pause();
      if (err) reject(err);
      else resolve(Buffer.concat(parts));
    };
    const onData = (untrustedChunk: Buffer): void => {
      let frames;
      try {
        frames = parser.push(untrustedChunk);
      } catch (err) {
        done(err as Error);
        return;
      }
      for (const f of frames) {
        if (f.type !== MSG_DATA_STDIN) {
          done(new Error(`unexpected frame 0x${f.type.toString(16)} from the caller`));
          return;
        }
        if (f.payload.length === 0) {
          done();
          return;
        }
        size += f.payload.length;
        if (size > cap) {
          done(new Error(`input over ${cap} bytes`));
          return;
        }
        parts.push(Buffer.from(f.payload));
      }
    };
    // A caller that goes away before its EOF frame sent an incomplete request: nothing runs.
    const onEnd = (): void => { done(new Error('the caller hung up before the end of its input')); };
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.resume();
  });
}

/** UTC, seconds, as `date -u -Iseconds` prints it. */
export function formatDate(d: Date): string {
  return `${d.toISOString().slice(0, 19)}+00:00\n`;
}

/** Serves one call to dom0. Resolves when the reply is written (or the stream ends). */
export async function serveDom0(call: Dom0Call, deps: Dom0Deps): Promise<void> {
  const { sock } = call;
  sock.on('error', () => { sock.destroy(); });
  if (call.service === 'qubes.GetDate') {
    writeStdout(sock, Buffer.from(formatDate(new Date())));
    finish(sock, 0);
    return;
  }
  if (!call.service.startsWith('admin.')) {
    finish(sock, EXIT_SERVICE_NOT_FOUND);
    return;
  }
  let untrustedPayload: Buffer;
  try {
    untrustedPayload = await readStdin(sock, MAX_REQUEST_BYTES);
  } catch {
    sock.destroy();
    return;
  }
  const t = call.requestedTarget;
  const dest = t === '' || t.startsWith('@') || t === 'dom0' || t.startsWith('uuid:00000000-0000-0000-0000-000000000000') ? 'dom0' : t;
  const output: CallOutput = {
    end: (reply) => {
      writeStdout(sock, reply);
      finish(sock, 0);
    },
    // A caller that does not read (an event stream backed up) loses its connection at once.
    abort: () => {
      if (sock.writableLength > 0) sock.destroy();
      else finish(sock, EXIT_REFUSED);
    },
    write: (bytes) => { writeStdout(sock, bytes); },
    pendingBytes: () => sock.writableLength,
    onClose: (fn) => { sock.on('close', fn); },
    get closed() { return sock.destroyed || sock.writableEnded; },
  };
  // Anything the caller sends during a stream (admin.Events) is ignored; its hang-up ends it.
  sock.on('data', () => { /* drained */ });
  sock.resume();
  await deps.dispatcher.dispatch(
    { method: call.service, arg: call.arg, source: call.source.name, destType: 'name', dest, payload: untrustedPayload },
    output,
    { qube: call.source, visible: deps.visibility(call.source, call.service) },
  );
}
