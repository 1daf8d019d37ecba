// The admin domain's exec socket (`qrexec.sock` beside the Admin API socket, root-only): how
// qvm-run reaches a qube. The client sends one CLIENT_EXEC frame naming the target and
// `USER:COMMAND`; the daemon (re)starts the qube if asked, has its agent open a data connection,
// and from then on only copies bytes between the two sockets — DATA_* frames pass through
// unparsed. Failures before that answer with a DATA_STDERR message and an exit code.
import fs from 'node:fs';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { QubesError } from '../core/errors.js';
import { onFirstFrame } from '../protocol/first-frame.js';
import {
  CLIENT_EXEC_AUTOSTART,
  CLIENT_EXEC_SERVICE,
  encodeFinish,
  EXIT_REFUSED,
  formatServiceCommand,
  isValidServiceAndArg,
  MSG_CLIENT_EXEC,
  MSG_JUST_EXEC_FLAG,
  parseExecParams,
} from '../protocol/qrexec.js';
import type { Lifecycle } from './lifecycle.js';
import { clearSocketPath, listenWithUmask } from '../hal/unix-listen.js';

const REQUEST_TIMEOUT_MS = 30_000;

export function execSocketPath(adminSocket: string): string {
  return adminSocket.replace(/[^/]*$/, 'qrexec.sock');
}

export class ExecServer {
  readonly #lifecycle: Lifecycle;
  readonly #log: Logger;
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  #path: string | undefined;

  constructor(lifecycle: Lifecycle, log: Logger) {
    this.#lifecycle = lifecycle;
    this.#log = log;
    this.#server = net.createServer({ allowHalfOpen: true }, (s) => { this.#handle(s); });
  }

  async listen(socketPath: string): Promise<void> {
    clearSocketPath(socketPath);
    await listenWithUmask(this.#server, socketPath, 0o177);
    this.#path = socketPath;
  }

  #handle(client: net.Socket): void {
    this.#sockets.add(client);
    client.once('close', () => this.#sockets.delete(client));
    client.on('error', () => { /* reported through close */ });
    const timer = setTimeout(() => { client.destroy(); }, REQUEST_TIMEOUT_MS);
    client.once('close', () => { clearTimeout(timer); });
    onFirstFrame(client, (first, rest) => {
      clearTimeout(timer);
      if (first.type !== MSG_CLIENT_EXEC) {
        client.destroy();
        return;
      }
      void this.#run(client, first.payload, rest);
    });
  }

  async #run(client: net.Socket, untrustedPayload: Buffer, rest: Buffer): Promise<void> {
    let remote: Duplex;
    try {
      const params = parseExecParams(untrustedPayload);
      const space = params.cmdline.indexOf(' ');
      const colon = params.cmdline.indexOf(':', space + 1);
      if (space <= 0 || colon < 0) throw new QubesError('QubesException', 'malformed exec request');
      const target = params.cmdline.slice(0, space);
      const user = params.cmdline.slice(space + 1, colon);
      let command = params.cmdline.slice(colon + 1);
      const flags = params.connectDomain;
      if ((flags & CLIENT_EXEC_SERVICE) !== 0) {
        // qvm-run --service: the admin domain calls a service; no policy (dom0 is trusted).
        if (!isValidServiceAndArg(command)) throw new QubesError('QubesValueError', `invalid service name: '${command}'`);
        command = formatServiceCommand({ serviceAndArg: command, source: 'dom0', requestedTarget: { type: 'name', value: target } });
      }
      remote = await this.#lifecycle.exec(target, user === '' ? null : user, command, (flags & CLIENT_EXEC_AUTOSTART) !== 0, (flags & MSG_JUST_EXEC_FLAG) !== 0);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.#log.info({ reason: message }, 'exec refused');
      client.end(encodeFinish(`${message}\n`, EXIT_REFUSED));
      return;
    }
    if (client.destroyed) {
      remote.destroy();
      return;
    }
    // From here on: a plain byte copy in both directions, half-closes passed through.
    remote.on('error', () => { client.destroy(); });
    client.on('close', () => { remote.destroy(); });
    remote.on('close', () => { client.end(); });
    if (rest.length > 0) remote.write(rest);
    client.pipe(remote);
    remote.pipe(client);
    client.resume();
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve(); }); });
    if (this.#path !== undefined) fs.rmSync(this.#path, { force: true });
  }
}
