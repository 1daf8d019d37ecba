// Runs one command in a running qube for the admin domain's own use (a netvm resolving the
// hostnames of firewall rules) and collects its output. The output is the qube's: untrusted,
// capped, and parsed by the caller.
import {
  encodeFrame,
  FrameParser,
  MSG_DATA_EXIT_CODE,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  parseExitCode,
} from '../protocol/qrexec.js';
import type { Lifecycle } from './lifecycle.js';

export interface CommandResult {
  readonly untrustedStdout: Buffer;
  readonly code: number;
}

/** Runs `user:command` in the (running) qube; rejects on timeout or when output exceeds `maxBytes`. */
export async function runInQube(
  lifecycle: Lifecycle,
  name: string,
  user: string,
  command: string,
  opts: { maxBytes: number; timeoutMs: number; what: string },
): Promise<CommandResult> {
  const sock = await lifecycle.exec(name, user, command, false);
  return new Promise<CommandResult>((resolve, reject) => {
    const parser = new FrameParser();
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const finish = (err: Error | undefined, code = 0): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve({ untrustedStdout: Buffer.concat(chunks), code });
    };
    const timer = setTimeout(() => { finish(new Error(`${opts.what} in '${name}' took longer than ${opts.timeoutMs} ms`)); }, opts.timeoutMs);
    sock.on('data', (chunk: Buffer) => {
      try {
        for (const f of parser.push(chunk)) {
          if (f.type === MSG_DATA_STDOUT) {
            size += f.payload.length;
            if (size > opts.maxBytes) {
              finish(new Error(`the output of ${opts.what} in '${name}' exceeded ${opts.maxBytes} bytes`));
              return;
            }
            chunks.push(f.payload);
          } else if (f.type === MSG_DATA_EXIT_CODE) {
            finish(undefined, parseExitCode(f.payload));
            return;
          }
        }
      } catch (err) {
        finish(err as Error);
      }
    });
    sock.on('error', (err) => { finish(err); });
    sock.on('close', () => { finish(new Error(`${opts.what} in '${name}' ended without an exit code`)); });
    sock.write(encodeFrame(MSG_DATA_STDIN));
    sock.resume();
  });
}

/** A netvm's lookup of firewall hostnames (validated names only reach the shell line). */
export async function lookupHostnames(lifecycle: Lifecycle, netvm: string, hosts: readonly string[]): Promise<Buffer> {
  for (const h of hosts) if (!/^[a-z0-9][a-z0-9._-]{0,252}$/.test(h)) throw new Error(`not a hostname: '${h}'`);
  const script = hosts.map((h) => `echo '@ ${h}'; getent ahosts -- '${h}'`).join('; ');
  const r = await runInQube(lifecycle, netvm, 'root', `${script}; true`, { maxBytes: 256 * 1024, timeoutMs: 15_000, what: 'the hostname lookup' });
  return r.untrustedStdout;
}
