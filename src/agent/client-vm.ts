// qrexec-client-vm: calls a service of another qube (or of the admin domain) from inside a qube.
//
//   qrexec-client-vm [-h] [--buffer-size=N] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]
//
// TARGET: a qube name, `@default` (or an empty string), `@dispvm`, `@dispvm:NAME`, `@adminvm`,
// `dom0`; `$` is accepted for `@` (`$dispvm`). Without LOCAL_PROGRAM the service's stdin/stdout
// are this command's, the remote stderr goes to this command's stderr, and the exit code is the
// service's. With LOCAL_PROGRAM (started only once the call is allowed, with ARGS, no shell) its
// stdout feeds the service's stdin and the service's stdout feeds its stdin; its stderr is this
// command's; the exit code is the local program's (128 + signal if one killed it), as Qubes'
// qrexec-client-vm documents. A refused call prints `Request refused` and exits 126; a call that
// cannot be made (no agent, no answer within BULKHEAD_QREXEC_TIMEOUT seconds, default 300, a
// broken connection) exits 125. Usage errors exit 2.
import { spawn } from 'node:child_process';
import os from 'node:os';
import type { Readable, Writable } from 'node:stream';
import { EXIT_QREXEC_INTERNAL, EXIT_REFUSED, isValidServiceAndArg } from '../protocol/qrexec.js';
import { exitStatus } from './exec.js';
import { connectService, normalizeTarget, QrexecCallError, type ConnectOptions } from './qrexec-call.js';

export const USAGE = 'usage: qrexec-client-vm [-h] [--buffer-size=BUFFER_SIZE] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS...]]';
export const EXIT_USAGE = 2;
/** 128 + SIGPIPE: what a shell reports for a command whose output pipe closed. */
const EXIT_BROKEN_PIPE = 128 + os.constants.signals.SIGPIPE;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export type ClientArgs =
  | { readonly help: true }
  | { readonly help: false; readonly target: string; readonly serviceAndArg: string; readonly program: readonly string[] };

const TARGET_CHARS = /^[A-Za-z0-9_.:@-]{1,63}$/;

/** Parses the command line (options stop at the first operand, or `--`). Throws UsageError. */
export function parseClientArgs(argv: readonly string[]): ClientArgs {
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--') {
      i++;
      break;
    }
    if (a === '-h' || a === '--help') return { help: true };
    if (a === '--buffer-size' || a.startsWith('--buffer-size=')) {
      // vchan's buffer size in Qubes; accepted and checked, without meaning on a Unix socket.
      const value = a === '--buffer-size' ? argv[++i] : a.slice('--buffer-size='.length);
      if (value === undefined || !/^[1-9][0-9]{0,9}$/.test(value)) throw new UsageError('--buffer-size needs a positive number');
      continue;
    }
    if (a.startsWith('-') && a !== '-') throw new UsageError(`unknown option: ${a}`);
    break;
  }
  const [target, serviceAndArg, ...program] = argv.slice(i);
  if (target === undefined || serviceAndArg === undefined) throw new UsageError('TARGET and SERVICE are required');
  const normalized = normalizeTarget(target);
  if (!TARGET_CHARS.test(normalized)) throw new UsageError(`invalid target: ${JSON.stringify(target)}`);
  if (!isValidServiceAndArg(serviceAndArg)) throw new UsageError(`invalid service name: ${JSON.stringify(serviceAndArg)}`);
  if (program[0] === '') throw new UsageError('LOCAL_PROGRAM may not be empty');
  return { help: false, target: normalized, serviceAndArg, program };
}

export interface ClientIo {
  readonly stdin: Readable;
  readonly stdout: Writable;
  readonly stderr: Writable;
}

/** Runs qrexec-client-vm; resolves with its exit code. */
export async function clientMain(argv: readonly string[], io: ClientIo = process, opts: ConnectOptions = {}): Promise<number> {
  let args: ClientArgs;
  try {
    args = parseClientArgs(argv);
  } catch (err) {
    io.stderr.write(`qrexec-client-vm: ${(err as Error).message}\n${USAGE}\n`);
    return EXIT_USAGE;
  }
  if (args.help) {
    io.stdout.write(`${USAGE}\n`);
    return 0;
  }
  try {
    const conn = await connectService(args.target, args.serviceAndArg, opts);
    const [program, ...programArgs] = args.program;
    if (program === undefined) {
      // Whoever reads our stdout went away (`| head`): stop the call, as SIGPIPE would.
      const stdout = { broken: false };
      io.stdout.on('error', () => {
        stdout.broken = true;
        conn.destroy();
      });
      conn.sendStdin(io.stdin);
      try {
        return await conn.receive({ stdout: io.stdout, stderr: io.stderr, endStdout: false });
      } catch (err) {
        if (stdout.broken) return EXIT_BROKEN_PIPE;
        throw err;
      } finally {
        io.stdin.destroy();
      }
    }
    const child = spawn(program, programArgs, { stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<number>((resolve) => {
      child.once('error', (err) => {
        io.stderr.write(`qrexec-client-vm: cannot run ${program}: ${err.message}\n`);
        conn.destroy();
        resolve(EXIT_QREXEC_INTERNAL);
      });
      child.once('close', (code, signal) => { resolve(exitStatus(code, signal)); });
    });
    child.stdin.on('error', () => { /* the program stopped reading */ });
    conn.sendStdin(child.stdout);
    const remote = conn.receive({ stdout: child.stdin, stderr: io.stderr, endStdout: true }).then(
      () => undefined,
      (err: unknown) => {
        io.stderr.write(`qrexec-client-vm: ${(err as Error).message}\n`);
        // The program gets EOF; its own exit code is reported.
        child.stdin.end();
      },
    );
    const [code] = await Promise.all([exited, remote]);
    return code;
  } catch (err) {
    if (err instanceof QrexecCallError) {
      io.stderr.write(err.exitCode === EXIT_REFUSED ? `${err.message}\n` : `qrexec-client-vm: ${err.message}\n`);
      return err.exitCode;
    }
    io.stderr.write(`qrexec-client-vm: ${(err as Error).message}\n`);
    return EXIT_QREXEC_INTERNAL;
  }
}
