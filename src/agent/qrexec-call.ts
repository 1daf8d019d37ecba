// Calling a service of another qube from inside a qube, through the agent's local socket
// (AGENT_TRIGGER_SOCKET; see trigger.ts). Used by qrexec-client-vm, and importable by any
// long-lived program in a qube from /run/bulkhead/agent/agent/qrexec-call.js:
//
//   import { callService } from '/run/bulkhead/agent/agent/qrexec-call.js';
//   const { code, stdout } = await callService('@default', 'my.Service+arg', { stdin: 'input' });
//
// Everything the agent relays back is parsed as untrusted (FrameParser: types and lengths are
// checked before anything is buffered).
import fs from 'node:fs';
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import {
  AGENT_TRIGGER_SOCKET,
  encodeFrame,
  encodeTrigger,
  EXIT_QREXEC_INTERNAL,
  EXIT_REFUSED,
  FrameParser,
  MSG_DATA_EXIT_CODE,
  MSG_DATA_STDERR,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  MSG_SERVICE_CONNECT,
  MSG_SERVICE_REFUSED,
  MSG_TRIGGER_SERVICE3,
  parseExecParams,
  parseExitCode,
  parseServiceRefused,
  type Frame,
  STREAM_HIGH_WATER_MARK,
  writeChunked,
} from '../protocol/qrexec.js';

/** How long to wait for the admin domain's answer (policy may ask the user): 5 minutes. */
export const DEFAULT_ANSWER_TIMEOUT_MS = 5 * 60 * 1000;

/**
 * The answer timeout: BULKHEAD_QREXEC_TIMEOUT (seconds, > 0) when set and valid, else the
 * default.
 */
export function answerTimeoutFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.BULKHEAD_QREXEC_TIMEOUT;
  if (raw === undefined || raw === '') return DEFAULT_ANSWER_TIMEOUT_MS;
  const seconds = Number(raw);
  if (!Number.isFinite(seconds) || seconds <= 0) return DEFAULT_ANSWER_TIMEOUT_MS;
  return Math.min(Math.round(seconds * 1000), 0x7fffffff);
}

/** A call that did not reach a service's exit code; `exitCode` is what qrexec-client-vm exits with. */
export class QrexecCallError extends Error {
  override readonly name = 'QrexecCallError';
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

/** The call was refused (policy, or the agent's limit of waiting calls). */
export class QrexecRefusedError extends QrexecCallError {
  constructor() {
    super('Request refused', EXIT_REFUSED);
  }
}

/** Qubes' spelling of targets: `$` stands for `@` (`$dispvm`), and an empty target is `@default`. */
export function normalizeTarget(target: string): string {
  if (target === '') return '@default';
  return target.replaceAll('$', '@');
}

/**
 * The call-only socket of a container qube's channel: every user may open it, and a call made
 * there goes straight to the admin domain (one relay less than through the agent).
 */
const CALL_SOCKET = '/run/bulkhead/qrexec-call.sock';

/** The call socket when this process may open it, else the agent's trigger socket. */
export function defaultCallSocket(): string {
  try {
    fs.accessSync(CALL_SOCKET, fs.constants.R_OK | fs.constants.W_OK);
    return CALL_SOCKET;
  } catch {
    return AGENT_TRIGGER_SOCKET;
  }
}

export interface ConnectOptions {
  /** Where to send the call (default: defaultCallSocket()). */
  readonly socketPath?: string;
  /** How long to wait for the answer (default: answerTimeoutFromEnv()). */
  readonly timeoutMs?: number;
}

let callCounter = 0;

/**
 * Asks for a call of `serviceAndArg` on `target` (`$` accepted for `@`). Resolves with the open
 * connection once the admin domain allowed it; rejects with QrexecRefusedError, or
 * QrexecCallError (125) when the agent cannot be reached, does not answer in time, or answers
 * nonsense. Throws RangeError at once for a target or service name the protocol cannot carry.
 */
export function connectService(target: string, serviceAndArg: string, opts: ConnectOptions = {}): Promise<ServiceConnection> {
  const requestId = `c${process.pid}-${++callCounter}`;
  const trigger = encodeFrame(MSG_TRIGGER_SERVICE3, encodeTrigger({ target: normalizeTarget(target), requestId, serviceAndArg }));
  const socketPath = opts.socketPath ?? defaultCallSocket();
  const timeoutMs = opts.timeoutMs ?? answerTimeoutFromEnv();
  return new Promise<ServiceConnection>((resolve, reject) => {
    const sock = net.connect({ path: socketPath, allowHalfOpen: true, highWaterMark: STREAM_HIGH_WATER_MARK } as net.NetConnectOpts);
    const parser = new FrameParser();
    let settled = false;
    const fail = (err: QrexecCallError): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      reject(err);
    };
    const timer = setTimeout(() => {
      fail(new QrexecCallError(`no answer to the service call within ${Math.round(timeoutMs / 1000)} s`, EXIT_QREXEC_INTERNAL));
    }, timeoutMs);
    sock.once('connect', () => { sock.write(trigger); });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      const unreachable = err.code === 'ENOENT' || err.code === 'ECONNREFUSED';
      fail(new QrexecCallError(
        unreachable ? `cannot reach the qrexec agent at ${socketPath} (${err.code ?? err.message}): is this a Bulkhead qube?` : `qrexec agent: ${err.message}`,
        EXIT_QREXEC_INTERNAL,
      ));
    });
    const closed = (): void => { fail(new QrexecCallError('the qrexec agent closed the connection without an answer', EXIT_QREXEC_INTERNAL)); };
    sock.once('end', closed);
    sock.once('close', closed);
    const onData = (untrustedChunk: Buffer): void => {
      let frames: Frame[];
      try {
        frames = parser.push(untrustedChunk);
      } catch (err) {
        fail(new QrexecCallError(`qrexec agent: ${(err as Error).message}`, EXIT_QREXEC_INTERNAL));
        return;
      }
      const [first, ...more] = frames;
      if (first === undefined || settled) return;
      try {
        if (first.type === MSG_SERVICE_REFUSED) {
          if (parseServiceRefused(first.payload) !== requestId) throw new Error('answer for another request');
          fail(new QrexecRefusedError());
          return;
        }
        if (first.type !== MSG_SERVICE_CONNECT) throw new Error(`unexpected frame 0x${first.type.toString(16)}`);
        if (parseExecParams(first.payload).cmdline !== requestId) throw new Error('answer for another request');
      } catch (err) {
        fail(new QrexecCallError(`qrexec agent: ${(err as Error).message}`, EXIT_QREXEC_INTERNAL));
        return;
      }
      settled = true;
      clearTimeout(timer);
      sock.off('data', onData);
      sock.pause();
      resolve(new ServiceConnection(sock, parser, more));
    };
    sock.on('data', onData);
  });
}

/** Where a call's output goes: a stream (with backpressure) or a function. */
export type Sink = Writable | ((chunk: Buffer) => void);

export interface ReceiveOptions {
  readonly stdout: Sink;
  readonly stderr: Sink;
  /** End the stdout stream when the remote stdout ends (default true for streams other than process.stdout). */
  readonly endStdout?: boolean;
}

/**
 * An allowed call: DATA_STDIN goes out (sendStdin), DATA_STDOUT / DATA_STDERR / DATA_EXIT_CODE
 * come in (receive).
 */
export class ServiceConnection {
  readonly #sock: net.Socket;
  readonly #parser: FrameParser;
  readonly #queued: Frame[];
  #stdinDone = false;

  /** @internal built by connectService */
  constructor(sock: net.Socket, parser: FrameParser, queued: Frame[]) {
    this.#sock = sock;
    this.#parser = parser;
    this.#queued = queued;
  }

  /** Sends `input` as the service's stdin, then EOF. A stream is read with backpressure. */
  sendStdin(input: Readable | Buffer | string | undefined): void {
    if (this.#stdinDone) throw new Error('stdin already sent');
    this.#stdinDone = true;
    const sock = this.#sock;
    const sendEof = (): void => {
      if (!sock.destroyed) sock.write(encodeFrame(MSG_DATA_STDIN));
    };
    if (input === undefined || typeof input === 'string' || Buffer.isBuffer(input)) {
      const data = typeof input === 'string' ? Buffer.from(input) : input ?? Buffer.alloc(0);
      writeChunked(sock, MSG_DATA_STDIN, data);
      sendEof();
      return;
    }
    let finished = false;
    const done = (): void => {
      if (finished) return;
      finished = true;
      sendEof();
    };
    input.on('data', (chunk: Buffer | string) => {
      if (sock.destroyed) return;
      const data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (!writeChunked(sock, MSG_DATA_STDIN, data)) {
        input.pause();
        sock.once('drain', () => { input.resume(); });
      }
    });
    input.once('end', done);
    input.once('error', done);
    input.resume();
  }

  /**
   * Delivers the remote service's output and resolves with its exit code (the last frame).
   * Rejects with QrexecCallError (125) if the connection ends first or carries nonsense.
   */
  receive(opts: ReceiveOptions): Promise<number> {
    const sock = this.#sock;
    const parser = this.#parser;
    const queued = this.#queued.splice(0);
    return new Promise<number>((resolve, reject) => {
      let settled = false;
      const settle = (err: Error | undefined, code = 0): void => {
        if (settled) return;
        settled = true;
        sock.off('data', onData);
        sock.destroy();
        if (err === undefined) resolve(code);
        else reject(err);
      };
      const deliver = (sink: Sink, chunk: Buffer): void => {
        if (typeof sink === 'function') {
          sink(chunk);
          return;
        }
        // A reader that went away (a program that exited, a closed pipe) gets nothing more; the
        // call goes on to its exit code.
        if (sink.destroyed || sink.writableEnded) return;
        if (!sink.write(chunk)) {
          sock.pause();
          const go = (): void => {
            sink.off('drain', go);
            sink.off('close', go);
            sock.resume();
          };
          sink.on('drain', go);
          sink.on('close', go);
        }
      };
      const endSink = (sink: Sink, wanted: boolean): void => {
        if (typeof sink !== 'function' && wanted && !sink.destroyed) sink.end();
      };
      const endStdout = opts.endStdout ?? (typeof opts.stdout !== 'function' && opts.stdout !== process.stdout);
      /** Delivers frames; true once the call is over (exit code or error). */
      const handle = (frames: Frame[]): boolean => {
        for (const f of frames) {
          if (settled) return true;
          if (f.type === MSG_DATA_STDOUT) {
            if (f.payload.length === 0) endSink(opts.stdout, endStdout);
            else deliver(opts.stdout, f.payload);
          } else if (f.type === MSG_DATA_STDERR) {
            if (f.payload.length > 0) deliver(opts.stderr, f.payload);
          } else if (f.type === MSG_DATA_EXIT_CODE) {
            let code: number;
            try {
              code = parseExitCode(f.payload);
            } catch (err) {
              settle(new QrexecCallError(`remote: ${(err as Error).message}`, EXIT_QREXEC_INTERNAL));
              return true;
            }
            settle(undefined, code);
            return true;
          }
          // Anything else (DATA_STDIN echoed, control frames) has no meaning here: ignored.
        }
        return settled;
      };
      const onData = (untrustedChunk: Buffer): void => {
        let frames: Frame[];
        try {
          frames = parser.push(untrustedChunk);
        } catch (err) {
          settle(new QrexecCallError(`remote: ${(err as Error).message}`, EXIT_QREXEC_INTERNAL));
          return;
        }
        handle(frames);
      };
      sock.on('error', () => { /* reported through close */ });
      const ended = (): void => { settle(new QrexecCallError('the connection ended before the service\'s exit code', EXIT_QREXEC_INTERNAL)); };
      sock.once('end', ended);
      sock.once('close', ended);
      if (handle(queued)) return;
      sock.on('data', onData);
      sock.resume();
    });
  }

  /** Drops the call. */
  destroy(): void {
    this.#sock.destroy();
  }
}

export interface CallOptions extends ConnectOptions {
  /** The service's stdin (default: none, EOF at once). */
  readonly stdin?: Readable | Buffer | string;
  /** Where the remote stderr goes (default: collected into the result). */
  readonly stderr?: Sink;
}

export interface CallResult {
  /** The remote service's exit code. */
  readonly code: number;
  readonly stdout: Buffer;
  /** Empty when `stderr` was given, or when the service's qube does not pass stderr back. */
  readonly stderr: Buffer;
}

/**
 * One whole call: asks for it, sends `stdin`, collects stdout (and stderr), resolves with the
 * remote exit code. Rejects as connectService does, or with QrexecCallError (125) if the
 * connection ends before the exit code.
 */
export async function callService(target: string, serviceAndArg: string, opts: CallOptions = {}): Promise<CallResult> {
  const conn = await connectService(target, serviceAndArg, opts);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  conn.sendStdin(opts.stdin);
  const code = await conn.receive({ stdout: (c) => out.push(c), stderr: opts.stderr ?? ((c) => err.push(c)) });
  return { code, stdout: Buffer.concat(out), stderr: Buffer.concat(err) };
}
