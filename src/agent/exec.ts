// One EXEC_CMDLINE / JUST_EXEC from the admin domain, on its own data connection: a plain command
// (`USER:COMMAND`, run with /bin/sh -c) or a service call (`USER:QUBESRPC SERVICE+ARG SOURCE …`,
// see services.ts). DATA_STDIN comes in; DATA_STDOUT, DATA_STDERR (each ended by an empty frame)
// and DATA_EXIT_CODE go out.
//
// Service calls from another qube (SOURCE ≠ dom0) do not send the service's stderr to the caller,
// as in Qubes: it goes to the agent's own stderr (the qube's console log), each line prefixed
// with the service name, at most STDERR_LOG_CAP bytes per call. Only an empty DATA_STDERR (EOF)
// reaches the caller.
import { spawn } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import { StringDecoder } from 'node:string_decoder';
import type { Readable } from 'node:stream';
import {
  encodeDataConnect,
  encodeExitCode,
  encodeFinish,
  encodeFrame,
  EXIT_QREXEC_INTERNAL,
  EXIT_SERVICE_NOT_FOUND,
  StreamingFrameParser,
  MSG_DATA_STDERR,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  parseServiceCommand,
  splitServiceAndArg,
  type ServiceCall,
  STREAM_HIGH_WATER_MARK,
  writeChunked,
} from '../protocol/qrexec.js';
import { asUser, baseEnv, lookupUser, workDir, type Account } from './accounts.js';
import {
  findService,
  readRpcConfig,
  readShellService,
  serviceDescriptor,
  serviceEnv,
  RPC_CONFIG_DIR,
  SERVICE_DIRS,
} from './services.js';

/** How much of one call's stderr a service called by another qube may write to the console log. */
export const STDERR_LOG_CAP = 64 * 1024;
/** A partial stderr line longer than this is logged as it is. */
const STDERR_LINE_MAX = 4096;

export interface ExecContext {
  /** The channel socket (data connections are opened to it). */
  readonly channel: string;
  readonly log: (message: string) => void;
  /** Tests only: where services and their options are looked up. */
  readonly serviceDirs?: readonly string[];
  readonly rpcConfigDir?: string;
  /** Tests only: the passwd file users are looked up in. */
  readonly passwdFile?: string;
  /** Where the stderr of services called by other qubes goes (default: the agent's stderr). */
  readonly serviceStderr?: (text: string) => void;
}

/** A process's exit status as a shell reports it: its code, or 128 + the signal that ended it. */
export function exitStatus(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  return 128 + (signal === null ? 0 : os.constants.signals[signal]);
}

/**
 * Writes a service's stderr into the agent's log: line by line, each prefixed, at most `cap`
 * bytes in all (one notice when the rest is dropped).
 */
export class CappedStderrLog {
  readonly #prefix: string;
  readonly #write: (text: string) => void;
  #left: number;
  #partial = '';
  #dropped = false;
  /** Keeps a character split across chunks whole. */
  readonly #decoder = new StringDecoder('utf8');

  constructor(prefix: string, write: (text: string) => void, cap = STDERR_LOG_CAP) {
    this.#prefix = prefix;
    this.#write = write;
    this.#left = cap;
  }

  push(chunk: Buffer): void {
    if (this.#left <= 0) {
      this.#drop();
      return;
    }
    const kept = chunk.subarray(0, this.#left);
    this.#left -= kept.length;
    const text = this.#partial + this.#decoder.write(kept);
    const lines = text.split('\n');
    this.#partial = lines.pop() ?? '';
    for (const line of lines) this.#write(`${this.#prefix}${line}\n`);
    if (this.#partial.length > STDERR_LINE_MAX) {
      this.#write(`${this.#prefix}${this.#partial}\n`);
      this.#partial = '';
    }
    if (kept.length < chunk.length) this.#drop();
  }

  end(): void {
    if (this.#partial !== '') this.#write(`${this.#prefix}${this.#partial}\n`);
    this.#partial = '';
  }

  #drop(): void {
    if (this.#dropped) return;
    this.#dropped = true;
    this.end();
    this.#write(`${this.#prefix}(more stderr of this call dropped)\n`);
  }
}

/** Where a call's errors and stderr go: back to the caller, or into the agent's log. */
interface StderrRoute {
  readonly toCaller: boolean;
  /** Logs a line about this call (used when the caller does not get stderr). */
  readonly note: (message: string) => void;
  readonly prefix: string;
}

function finish(sock: net.Socket, route: StderrRoute, message: string, code: number): void {
  if (route.toCaller) {
    sock.end(encodeFinish(`${message}\n`, code));
  } else {
    route.note(message);
    sock.end(encodeFinish('', code));
  }
}

/** Runs one EXEC_CMDLINE (justExec false) or JUST_EXEC on a new data connection for `port`. */
export function runExec(ctx: ExecContext, port: number, cmdline: string, justExec: boolean): void {
  const sock = net.connect({ path: ctx.channel, allowHalfOpen: true, highWaterMark: STREAM_HIGH_WATER_MARK } as net.NetConnectOpts);
  sock.on('error', (err) => { ctx.log(`data connection ${port}: ${err.message}`); });
  sock.write(encodeDataConnect(port));
  const dom0Route: StderrRoute = { toCaller: true, note: ctx.log, prefix: '' };
  const colon = cmdline.indexOf(':');
  if (colon <= 0) {
    finish(sock, dom0Route, 'bulkhead-agent: malformed command (expected USER:COMMAND)', EXIT_QREXEC_INTERNAL);
    return;
  }
  const userName = cmdline.slice(0, colon);
  const command = cmdline.slice(colon + 1);
  let call: Omit<ServiceCall, 'user'> | undefined;
  try {
    // Whatever starts with QUBESRPC is a service call (a malformed one fails), never a command.
    if (command.startsWith('QUBESRPC') && !command.startsWith('QUBESRPC ')) throw new Error('malformed');
    call = parseServiceCommand(command);
  } catch {
    finish(sock, dom0Route, 'bulkhead-agent: malformed service call (expected QUBESRPC SERVICE+ARG SOURCE [name|keyword TARGET])', EXIT_QREXEC_INTERNAL);
    return;
  }
  const route: StderrRoute = call === undefined || call.source === 'dom0'
    ? dom0Route
    : { toCaller: false, note: (m) => { ctx.log(`${call.serviceAndArg} (from ${call.source}): ${m}`); }, prefix: `${call.serviceAndArg} (from ${call.source}): ` };
  const account = lookupUser(userName, ctx.passwdFile);
  if (account === undefined) {
    finish(sock, route, `bulkhead-agent: no such user in this qube: ${userName}`, EXIT_QREXEC_INTERNAL);
    return;
  }
  if (call === undefined) {
    const env = { ...baseEnv(account), QREXEC_REMOTE_DOMAIN: 'dom0' };
    runProcess(ctx, sock, port, account, ['/bin/sh', '-c', command], env, justExec, route);
    return;
  }
  runService(ctx, sock, port, account, call, justExec, route);
}

function runService(ctx: ExecContext, sock: net.Socket, port: number, account: Account, call: Omit<ServiceCall, 'user'>, justExec: boolean, route: StderrRoute): void {
  const found = findService(call.serviceAndArg, ctx.serviceDirs ?? SERVICE_DIRS);
  if (found.kind === 'not-found') {
    finish(sock, route, `bulkhead-agent: service not found in this qube: ${call.serviceAndArg}`, EXIT_SERVICE_NOT_FOUND);
    return;
  }
  if (found.kind === 'unusable') {
    finish(sock, route, `bulkhead-agent: cannot run service ${call.serviceAndArg}: ${found.path}: ${found.reason}`, EXIT_QREXEC_INTERNAL);
    return;
  }
  // wait-for-session is accepted and needs no waiting: Bulkhead qubes have no GUI session yet.
  const config = readRpcConfig(call.serviceAndArg, ctx.log, ctx.rpcConfigDir ?? RPC_CONFIG_DIR);
  if (found.kind === 'socket') {
    runSocketService(sock, found.path, config.skipServiceDescriptor ? undefined : serviceDescriptor(call), justExec, route);
    return;
  }
  const { arg } = splitServiceAndArg(call.serviceAndArg);
  const extra = arg === '' ? [] : [arg];
  let argv: [string, ...string[]];
  if (found.kind === 'executable') {
    argv = [found.path, ...extra];
  } else {
    let content: string;
    try {
      content = readShellService(found.path);
    } catch (err) {
      finish(sock, route, `bulkhead-agent: cannot run service ${call.serviceAndArg}: ${found.path}: ${(err as Error).message}`, EXIT_QREXEC_INTERNAL);
      return;
    }
    // A non-executable file is a shell command line; $0 is its path and $1 the argument.
    argv = ['/bin/sh', '-c', content, found.path, ...extra];
  }
  const env = { ...baseEnv(account), ...serviceEnv(call) };
  runProcess(ctx, sock, port, account, argv, env, justExec, route);
}

function runProcess(
  ctx: ExecContext,
  sock: net.Socket,
  port: number,
  account: Account,
  argv: [string, ...string[]],
  env: Record<string, string>,
  justExec: boolean,
  route: StderrRoute,
): void {
  const plan = asUser(account, argv);
  const cwd = workDir(account);
  if (justExec) {
    // No I/O: start it on its own and report only whether it started.
    const detached = spawn(plan.file, plan.args, { ...plan.ids, cwd, env, stdio: 'ignore', detached: true });
    detached.once('spawn', () => {
      detached.unref();
      sock.end(encodeFinish('', 0));
    });
    detached.once('error', (err) => { finish(sock, route, `bulkhead-agent: cannot run the command: ${err.message}`, EXIT_SERVICE_NOT_FOUND); });
    return;
  }
  const child = spawn(plan.file, plan.args, { ...plan.ids, cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
  let spawnFailed = false;
  child.on('error', (err) => {
    spawnFailed = true;
    finish(sock, route, `bulkhead-agent: cannot run the command: ${err.message}`, EXIT_SERVICE_NOT_FOUND);
  });
  const pump = (stream: Readable, type: number): void => {
    stream.on('data', (chunk: Buffer) => {
      if (!writeChunked(sock, type, chunk)) {
        stream.pause();
        sock.once('drain', () => { stream.resume(); });
      }
    });
    stream.on('end', () => { sock.write(encodeFrame(type)); });
  };
  pump(child.stdout, MSG_DATA_STDOUT);
  if (route.toCaller) {
    pump(child.stderr, MSG_DATA_STDERR);
  } else {
    const logged = new CappedStderrLog(route.prefix, ctx.serviceStderr ?? ((text) => { process.stderr.write(text); }));
    child.stderr.on('data', (chunk: Buffer) => { logged.push(chunk); });
    child.stderr.on('end', () => {
      logged.end();
      sock.write(encodeFrame(MSG_DATA_STDERR));
    });
  }
  child.stdin.on('error', () => { /* the command stopped reading */ });
  // Stdin passes in pieces, as it arrives: no frame is buffered whole or copied on the way.
  const parser = new StreamingFrameParser();
  sock.on('data', (untrustedChunk: Buffer) => {
    let pieces;
    try {
      pieces = parser.push(untrustedChunk);
    } catch (err) {
      ctx.log(`data connection ${port}: ${(err as Error).message}`);
      sock.destroy();
      child.kill('SIGKILL');
      return;
    }
    for (const f of pieces) {
      if (f.type !== MSG_DATA_STDIN) continue;
      if (f.frameLength === 0) child.stdin.end();
      else {
        child.stdin.write(f.data);
        // Backpressure past STREAM_HIGH_WATER_MARK, not the pipe's 16 KiB: pausing the
        // connection for every 64 KiB chunk costs more than the data.
        if (child.stdin.writableLength >= STREAM_HIGH_WATER_MARK && !sock.isPaused()) {
          sock.pause();
          child.stdin.once('drain', () => { sock.resume(); });
        }
      }
    }
  });
  // A caller that hangs up (FIN without a stdin EOF frame) has sent all it ever will.
  sock.on('end', () => { child.stdin.end(); });
  // A connection gone for good: the command's output has nowhere to go. Closing our ends of its
  // pipes ends a command blocked writing (EPIPE), instead of leaving it stuck for ever.
  sock.on('close', () => {
    child.stdin.destroy();
    child.stdout.destroy();
    if (route.toCaller) child.stderr.destroy();
  });
  child.on('close', (code, signal) => {
    if (spawnFailed) return;
    sock.end(encodeExitCode(exitStatus(code, signal)));
  });
}

/**
 * A socket service: connect (as the agent, root), send the descriptor unless the service's
 * rpc-config skips it, then relay DATA_STDIN into the socket and the socket's bytes out as
 * DATA_STDOUT. When the socket side closes: stdout EOF, stderr EOF, exit code 0. A socket that
 * refuses the connection fails the call with 125 (it exists but cannot be run).
 */
function runSocketService(sock: net.Socket, socketPath: string, descriptor: Buffer | undefined, justExec: boolean, route: StderrRoute): void {
  const service = net.connect({ path: socketPath, allowHalfOpen: true });
  let connected = false;
  let done = false;
  const end = (): void => {
    if (done) return;
    done = true;
    sock.end(encodeFinish('', 0));
  };
  service.on('error', (err) => {
    if (!connected) {
      done = true;
      finish(sock, route, `bulkhead-agent: cannot connect to socket service ${socketPath}: ${err.message}`, EXIT_QREXEC_INTERNAL);
    }
  });
  service.once('connect', () => {
    connected = true;
    if (descriptor !== undefined) service.write(descriptor);
    if (justExec) {
      service.end();
      service.resume();
      end();
      return;
    }
    const parser = new StreamingFrameParser();
    sock.on('data', (untrustedChunk: Buffer) => {
      let pieces;
      try {
        pieces = parser.push(untrustedChunk);
      } catch {
        sock.destroy();
        service.destroy();
        return;
      }
      for (const f of pieces) {
        if (f.type !== MSG_DATA_STDIN) continue;
        if (f.frameLength === 0) service.end();
        else if (!service.write(f.data)) {
          sock.pause();
          service.once('drain', () => { sock.resume(); });
        }
      }
    });
    service.on('data', (chunk: Buffer) => {
      if (!writeChunked(sock, MSG_DATA_STDOUT, chunk)) {
        service.pause();
        sock.once('drain', () => { service.resume(); });
      }
    });
    service.on('end', end);
    service.on('close', end);
  });
  sock.on('end', () => { service.end(); });
  sock.on('close', () => { service.destroy(); });
}
