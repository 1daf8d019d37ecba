// Service calls from this qube: the agent's local socket (AGENT_TRIGGER_SOCKET, mode 0666: any
// user of the qube may call, as in Qubes). A client (qrexec-client-vm, qrexec-call.ts) connects
// and sends one TRIGGER_SERVICE3 frame. The agent checks it, gives the call its own request id
// and forwards the trigger to the admin domain on the control connection, then waits for the
// answer there:
//   SERVICE_REFUSED(id)            → the client gets SERVICE_REFUSED(its id); closed.
//   SERVICE_CONNECT(0, port, id)   → the agent opens a data connection (DATA_CONNECT(port) first),
//                                    the client gets SERVICE_CONNECT(0, 0, its id), and from then
//                                    on bytes are copied both ways unparsed: DATA_STDIN from the
//                                    client, DATA_STDOUT/STDERR/EXIT_CODE from the remote service.
// Bytes a client sends after its trigger are kept and forwarded once connected. An EOF from the
// client before the answer cancels the call (clients send nothing before SERVICE_CONNECT but
// may pipeline data; a half-close while waiting cannot be told from a client that died).
// Answers with ids the agent does not know are ignored; when the control connection closes,
// every waiting call fails (its client is disconnected).
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import {
  encodeDataConnect,
  encodeExecParams,
  encodeFrame,
  encodeServiceRefused,
  encodeTrigger,
  MSG_SERVICE_CONNECT,
  MSG_SERVICE_REFUSED,
  MSG_TRIGGER_SERVICE3,
  parseExecParams,
  parseServiceRefused,
  parseTrigger,
  type ServiceTrigger,
  STREAM_HIGH_WATER_MARK,
} from '../protocol/qrexec.js';
import { onFirstFrameWithin, type FirstFrameSlots } from '../protocol/first-frame.js';

/** Calls waiting for the admin domain's answer, at most (more are refused at once). */
export const MAX_PENDING_CALLS = 64;
/** Connections that have not sent their trigger yet, at most. */
const MAX_UNIDENTIFIED = 16;
/** A client must send its trigger within this time. */
const TRIGGER_TIMEOUT_MS = 10_000;
/** Bytes kept from a client while its call waits; past this, reading pauses. */
const MAX_EARLY_BYTES = 1024 * 1024;
/** Ids of cancelled calls remembered (their late SERVICE_CONNECT is answered with a closed data connection). */
const MAX_CANCELLED = 256;

export interface TriggerServerOptions {
  /** Where to listen (its directory is created, 0755). */
  readonly socketPath: string;
  /** The channel socket: where data connections go. */
  readonly channel: string;
  /** Sends a frame on the control connection; false if it is gone. */
  readonly sendControl: (frame: Buffer) => boolean;
  readonly log: (message: string) => void;
  readonly maxPending?: number;
}

interface PendingCall {
  readonly client: net.Socket;
  readonly clientId: string;
  readonly early: Buffer[];
  readonly stopBuffering: () => void;
}

export class TriggerServer {
  readonly #opts: TriggerServerOptions;
  readonly #server: net.Server;
  readonly #pending = new Map<string, PendingCall>();
  readonly #cancelled = new Set<string>();
  readonly #clients = new Set<net.Socket>();
  readonly #unidentified: FirstFrameSlots = { waiting: 0, max: MAX_UNIDENTIFIED };
  #nextId = 1;
  #closed = false;

  constructor(opts: TriggerServerOptions) {
    this.#opts = opts;
    this.#server = net.createServer({ allowHalfOpen: true }, (s) => { this.#accept(s); });
  }

  get pendingCount(): number {
    return this.#pending.size;
  }

  /** Listens on the socket path (a stale socket there is replaced), mode 0666. */
  async listen(): Promise<void> {
    const dir = path.dirname(this.#opts.socketPath);
    // 0755 whatever the umask, but only a folder made here (never re-mode an existing one).
    if (fs.mkdirSync(dir, { recursive: true }) !== undefined) fs.chmodSync(dir, 0o755);
    try {
      if (fs.lstatSync(this.#opts.socketPath).isSocket()) fs.rmSync(this.#opts.socketPath);
    } catch {
      // nothing there
    }
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#opts.socketPath, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(this.#opts.socketPath, 0o666);
  }

  #accept(client: net.Socket): void {
    if (this.#closed) {
      client.destroy();
      return;
    }
    const accepted = onFirstFrameWithin(client, this.#unidentified, TRIGGER_TIMEOUT_MS, (first, rest) => {
      if (first.type !== MSG_TRIGGER_SERVICE3) {
        client.destroy();
        return;
      }
      let trigger: ServiceTrigger;
      try {
        trigger = parseTrigger(first.payload);
      } catch (err) {
        this.#opts.log(`service call refused: ${(err as Error).message}`);
        client.destroy();
        return;
      }
      this.#trigger(client, trigger, rest);
    });
    if (!accepted) return;
    this.#clients.add(client);
    client.once('close', () => this.#clients.delete(client));
  }

  #trigger(client: net.Socket, trigger: ServiceTrigger, rest: Buffer): void {
    const refuse = (): void => { client.end(encodeFrame(MSG_SERVICE_REFUSED, encodeServiceRefused(trigger.requestId))); };
    if (this.#pending.size >= (this.#opts.maxPending ?? MAX_PENDING_CALLS)) {
      this.#opts.log(`service call ${trigger.serviceAndArg} refused: ${this.#pending.size} calls already wait for an answer`);
      refuse();
      return;
    }
    const id = `a${this.#nextId++}`;
    const early: Buffer[] = rest.length > 0 ? [rest] : [];
    let earlyBytes = rest.length;
    const onEarly = (chunk: Buffer): void => {
      early.push(chunk);
      earlyBytes += chunk.length;
      if (earlyBytes > MAX_EARLY_BYTES) client.pause();
    };
    const cancel = (): void => {
      if (this.#pending.get(id)?.client !== client) return;
      this.#pending.delete(id);
      this.#rememberCancelled(id);
      client.destroy();
    };
    client.on('data', onEarly);
    client.once('end', cancel);
    client.once('close', cancel);
    // The first-frame reader left the socket paused: read on (early bytes, a hang-up).
    client.resume();
    const stopBuffering = (): void => {
      client.off('data', onEarly);
      client.off('end', cancel);
      client.off('close', cancel);
    };
    this.#pending.set(id, { client, clientId: trigger.requestId, early, stopBuffering });
    const sent = this.#opts.sendControl(encodeFrame(MSG_TRIGGER_SERVICE3, encodeTrigger({ ...trigger, requestId: id })));
    if (!sent) {
      this.#pending.delete(id);
      stopBuffering();
      client.destroy();
    }
  }

  #rememberCancelled(id: string): void {
    this.#cancelled.add(id);
    if (this.#cancelled.size > MAX_CANCELLED) {
      const oldest = this.#cancelled.values().next().value;
      if (oldest !== undefined) this.#cancelled.delete(oldest);
    }
  }

  /** SERVICE_CONNECT from the admin domain (payload: exec params, cmdline = our request id). */
  handleServiceConnect(untrustedPayload: Buffer): void {
    let port: number;
    let id: string;
    try {
      const params = parseExecParams(untrustedPayload);
      port = params.connectPort;
      id = params.cmdline;
    } catch (err) {
      this.#opts.log(`SERVICE_CONNECT ignored: ${(err as Error).message}`);
      return;
    }
    const call = this.#pending.get(id);
    if (call === undefined) {
      if (this.#cancelled.delete(id)) {
        // The caller gave up: take the connection and close it, so the other end learns at once.
        const data = net.connect({ path: this.#opts.channel });
        data.on('error', () => { /* nothing to tell anyone */ });
        data.end(encodeDataConnect(port));
      }
      return;
    }
    this.#pending.delete(id);
    call.stopBuffering();
    const { client } = call;
    const data = net.connect({ path: this.#opts.channel, allowHalfOpen: true, highWaterMark: STREAM_HIGH_WATER_MARK } as net.NetConnectOpts);
    data.write(encodeDataConnect(port));
    for (const chunk of call.early) data.write(chunk);
    client.write(encodeFrame(MSG_SERVICE_CONNECT, encodeExecParams(0, 0, call.clientId)));
    relay(client, data);
  }

  /** SERVICE_REFUSED from the admin domain (payload: our request id). */
  handleServiceRefused(untrustedPayload: Buffer): void {
    let id: string;
    try {
      id = parseServiceRefused(untrustedPayload);
    } catch (err) {
      this.#opts.log(`SERVICE_REFUSED ignored: ${(err as Error).message}`);
      return;
    }
    this.#cancelled.delete(id);
    const call = this.#pending.get(id);
    if (call === undefined) return;
    this.#pending.delete(id);
    call.stopBuffering();
    call.client.end(encodeFrame(MSG_SERVICE_REFUSED, encodeServiceRefused(call.clientId)));
  }

  /** The control connection is gone: every waiting call fails. */
  failAll(): void {
    for (const call of this.#pending.values()) {
      call.stopBuffering();
      call.client.destroy();
    }
    this.#pending.clear();
    this.#cancelled.clear();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.failAll();
    for (const c of this.#clients) c.destroy();
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve(); }); });
  }
}

/**
 * Copies bytes both ways between two sockets, unparsed. An end on one side ends the other
 * (after what was written is flushed); a side that closes without ending, or fails, destroys
 * the other.
 */
export function relay(a: net.Socket, b: net.Socket): void {
  const link = (from: net.Socket, to: net.Socket): void => {
    let ended = false;
    from.once('end', () => { ended = true; });
    from.on('error', () => { /* reported through close */ });
    from.once('close', (hadError) => {
      if (hadError || !ended) to.destroy();
    });
    from.pipe(to);
  };
  link(a, b);
  link(b, a);
  a.resume();
  b.resume();
}
