// The admin-domain end of a qube's channel: the only door between a qube and the admin domain.
// For a container qube it is a Unix socket bound into the qube at /run/bulkhead/qrexec.sock
// (docs/protocol/qrexec.md). The in-qube agent opens one control connection and says HELLO;
// for each command the admin domain sends (EXEC_CMDLINE with a port number), the agent opens a
// data connection that starts with DATA_CONNECT(port), then carries DATA_* frames both ways.
//
// Everything arriving here is untrusted: frames are length-checked before buffering
// (FrameParser), a connection must identify itself within a deadline, and the number of
// unidentified connections is capped.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import {
  encodeExecParams,
  encodeServiceRefused,
  encodeFrame,
  encodeHello,
  FrameParser,
  MSG_DATA_CONNECT,
  MSG_EXEC_CMDLINE,
  MSG_HELLO,
  MSG_JUST_EXEC,
  MSG_SERVICE_CONNECT,
  MSG_SERVICE_REFUSED,
  MSG_SHUTDOWN,
  MSG_TRIGGER_SERVICE3,
  parseDataConnect,
  parseHello,
  parseTrigger,
  QREXEC_PROTOCOL_VERSION,
  STREAM_HIGH_WATER_MARK,

  type ServiceTrigger,
} from '../protocol/qrexec.js';
import { onFirstFrame } from '../protocol/first-frame.js';
import { clearSocketPath, listenWithUmask } from './unix-listen.js';

/** A connection must send its first frame within this time. */
const IDENTIFY_TIMEOUT_MS = 5000;
/** Connections that have not identified themselves yet, at most. */
const MAX_UNIDENTIFIED = 64;
/** Commands waiting for their data connection, at most. */
const MAX_PENDING_EXEC = 256;
/** How long the agent has to open the data connection of a command. */
const EXEC_CONNECT_TIMEOUT_MS = 10_000;
/** Service calls a qube may have waiting for an answer (policy, ask, target start) at once. */
export const MAX_PENDING_TRIGGERS = 32;

/**
 * The answer to one service call a qube asked for: exactly one of connect() or refuse() counts.
 * connect() sends SERVICE_CONNECT and resolves with the caller's data connection (paused).
 */
export interface TriggerReply {
  connect(): Promise<net.Socket>;
  refuse(): void;
  /** False once the caller is known to be gone. */
  alive(): boolean;
}

export class ChannelError extends Error {
  override readonly name = 'ChannelError';
}

interface PendingExec {
  resolve: (s: net.Socket) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class QubeChannel {
  readonly #server: net.Server;
  readonly #path: string;
  #control: net.Socket | undefined;
  #unidentified = 0;
  /** Numbers of the calls made on their own connections (keys of #openTriggers: `conn:N`). */
  #nextCall = 1;
  readonly #pending = new Map<number, PendingExec>();
  #helloWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  readonly #closeListeners = new Set<() => void>();
  #triggerHandler: ((t: ServiceTrigger, reply: TriggerReply) => void) | undefined;
  /** Request ids of this start's calls that have not been answered yet. */
  readonly #openTriggers = new Set<string>();
  #closed = false;
  /** One control connection per qube start: once it closed, the agent is gone for good. */
  #hadControl = false;
  /** Every connection ever accepted and still open: all closed with the channel. */
  readonly #sockets = new Set<net.Socket>();

  private constructor(server: net.Server, socketPath: string) {
    this.#server = server;
    this.#path = socketPath;
    server.on('connection', (s) => { this.#accept(s); });
  }

  /** Listens on `socketPath`, owned by `uid:gid` (the qube's root) with mode 0600. */
  static async listen(socketPath: string, uid: number, gid: number): Promise<QubeChannel> {
    clearSocketPath(socketPath);
    const server = net.createServer({ allowHalfOpen: true, highWaterMark: STREAM_HIGH_WATER_MARK });
    // 0600 from the start, handed to the qube's root, then opened to every user of the qube (any
    // of them may call services, as in Qubes): the folder it sits in is root-only on the host.
    await listenWithUmask(server, socketPath, 0o177);
    fs.chownSync(socketPath, uid, gid);
    fs.chmodSync(socketPath, 0o666);
    return new QubeChannel(server, socketPath);
  }

  get connected(): boolean {
    return this.#control !== undefined && !this.#control.destroyed;
  }

  #accept(sock: net.Socket): void {
    if (this.#closed || this.#unidentified >= MAX_UNIDENTIFIED) {
      sock.destroy();
      return;
    }
    this.#unidentified++;
    this.#sockets.add(sock);
    sock.once('close', () => this.#sockets.delete(sock));
    let identified = false;
    const timer = setTimeout(() => { sock.destroy(); }, IDENTIFY_TIMEOUT_MS);
    const done = (): void => {
      if (identified) return;
      identified = true;
      this.#unidentified--;
      clearTimeout(timer);
    };
    sock.on('error', () => { /* reported through close */ });
    sock.once('close', done);
    onFirstFrame(sock, (first, rest) => {
      done();
      try {
        if (first.type === MSG_HELLO) {
          parseHello(first.payload);
          this.#onControl(sock, rest);
        } else if (first.type === MSG_DATA_CONNECT) {
          this.#onData(sock, parseDataConnect(first.payload), rest);
        } else if (first.type === MSG_TRIGGER_SERVICE3) {
          this.#onCallConnection(sock, parseTrigger(first.payload), rest);
        } else {
          sock.destroy();
        }
      } catch {
        sock.destroy();
      }
    });
  }

  #onControl(sock: net.Socket, rest: Buffer): void {
    if (this.#control !== undefined || this.#hadControl || rest.length > 0) {
      // One control connection per qube start; nothing may follow HELLO before our reply.
      sock.destroy();
      return;
    }
    this.#control = sock;
    this.#hadControl = true;
    sock.write(encodeHello(QREXEC_PROTOCOL_VERSION));
    // After HELLO the agent sends only service calls (TRIGGER_SERVICE3). Anything else, or a
    // malformed frame, closes the control connection: only this qube's own calls suffer.
    const parser = new FrameParser();
    sock.on('data', (untrustedChunk: Buffer) => {
      try {
        for (const f of parser.push(untrustedChunk)) {
          if (f.type !== MSG_TRIGGER_SERVICE3) throw new ChannelError(`unexpected frame 0x${f.type.toString(16)} on the control connection`);
          this.#onTrigger(sock, parseTrigger(f.payload));
        }
      } catch {
        sock.destroy();
      }
    });
    // The agent never half-closes its control connection: its end means the agent is gone.
    sock.once('end', () => { sock.destroy(); });
    sock.resume();
    sock.once('close', () => {
      this.#control = undefined;
      for (const p of this.#pending.values()) {
        clearTimeout(p.timer);
        p.reject(new ChannelError('the qube\'s agent disconnected'));
      }
      this.#pending.clear();
      this.#openTriggers.clear();
      for (const l of this.#closeListeners) l();
    });
    const waiters = this.#helloWaiters;
    this.#helloWaiters = [];
    for (const w of waiters) w.resolve();
  }

  /** A call forwarded by the agent on its control connection: answered there, data on a new connection. */
  #onTrigger(control: net.Socket, t: ServiceTrigger): void {
    this.#dispatchTrigger(t, t.requestId, {
      refuse: () => {
        if (control === this.#control && !control.destroyed) control.write(encodeFrame(MSG_SERVICE_REFUSED, encodeServiceRefused(t.requestId)));
      },
      connect: () => {
        if (control !== this.#control) return Promise.reject(new ChannelError('the calling qube\'s agent went away'));
        return this.#openData(MSG_SERVICE_CONNECT, 0, t.requestId);
      },
      alive: () => control === this.#control && !control.destroyed,
    });
  }

  /**
   * A call made on a connection of its own (qrexec-client-vm in a container qube): answered on
   * that connection, which then carries the call's data. The caller's bytes wait in the socket.
   */
  #onCallConnection(sock: net.Socket, t: ServiceTrigger, rest: Buffer): void {
    if (!this.connected) {
      sock.destroy();
      return;
    }
    this.#dispatchTrigger(t, `conn:${this.#nextCall++}`, {
      refuse: () => {
        if (!sock.destroyed) sock.end(encodeFrame(MSG_SERVICE_REFUSED, encodeServiceRefused(t.requestId)));
      },
      connect: () => {
        if (sock.destroyed) return Promise.reject(new ChannelError('the caller hung up'));
        sock.write(encodeFrame(MSG_SERVICE_CONNECT, encodeExecParams(0, 0, t.requestId)));
        if (rest.length > 0) sock.unshift(rest);
        return Promise.resolve(sock);
      },
      alive: () => !sock.destroyed && this.connected,
    });
  }

  #dispatchTrigger(t: ServiceTrigger, key: string, transport: TriggerReply): void {
    const handler = this.#triggerHandler;
    if (handler === undefined || this.#openTriggers.has(key) || this.#openTriggers.size >= MAX_PENDING_TRIGGERS) {
      transport.refuse();
      return;
    }
    this.#openTriggers.add(key);
    let answered = false;
    const answer = (): void => {
      if (answered) throw new ChannelError('this service call was already answered');
      answered = true;
      this.#openTriggers.delete(key);
    };
    handler(t, {
      refuse: () => {
        if (answered) return;
        answer();
        transport.refuse();
      },
      connect: () => {
        answer();
        return transport.connect();
      },
      alive: () => transport.alive(),
    });
  }

  /** Receives the service calls this qube asks for; the handler must answer each (connect or refuse). */
  onServiceRequest(handler: (t: ServiceTrigger, reply: TriggerReply) => void): void {
    this.#triggerHandler = handler;
  }

  #onData(sock: net.Socket, untrustedPort: number, leftover: Buffer): void {
    const pending = this.#pending.get(untrustedPort);
    if (pending === undefined) {
      sock.destroy();
      return;
    }
    this.#pending.delete(untrustedPort);
    clearTimeout(pending.timer);
    if (leftover.length > 0) sock.unshift(leftover);
    pending.resolve(sock);
  }

  /** Resolves when the agent has said HELLO; rejects on timeout, abort or close. */
  waitHello(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.connected) return Promise.resolve();
    if (this.#closed) return Promise.reject(new ChannelError('channel closed'));
    if (signal?.aborted === true) return Promise.reject(signal.reason instanceof Error ? signal.reason : new ChannelError('aborted'));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        finish();
        reject(new ChannelError(`the qube's agent did not connect within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      const onAbort = (): void => {
        finish();
        reject(signal?.reason instanceof Error ? signal.reason : new ChannelError('aborted'));
      };
      const waiter = { resolve: () => { finish(); resolve(); }, reject: (e: Error) => { finish(); reject(e); } };
      const finish = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.#helloWaiters = this.#helloWaiters.filter((w) => w !== waiter);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#helloWaiters.push(waiter);
    });
  }

  /**
   * Asks the agent to run `user:command` and resolves with the data connection (DATA_STDIN
   * from us; DATA_STDOUT/STDERR/EXIT_CODE from the qube). The caller owns the socket, which
   * comes paused: pipe() it or resume() it once listening.
   */
  exec(cmdline: string, justExec = false): Promise<net.Socket> {
    return this.#openData(justExec ? MSG_JUST_EXEC : MSG_EXEC_CMDLINE, 0, cmdline);
  }

  /** Sends `type` with exec params naming a fresh port; resolves with the data connection the agent opens for it. */
  #openData(type: number, connectDomain: number, cmdline: string): Promise<net.Socket> {
    const control = this.#control;
    if (control === undefined || control.destroyed) return Promise.reject(new ChannelError('the qube\'s agent is not connected'));
    if (this.#pending.size >= MAX_PENDING_EXEC) return Promise.reject(new ChannelError('too many commands waiting for the qube'));
    // Unguessable: any user of the qube may connect to the channel, and must not be able to
    // take over the data connection of a command the admin domain runs as another user.
    let port: number;
    do port = crypto.randomInt(1, 0x7fffffff); while (this.#pending.has(port));
    let frame: Buffer;
    try {
      frame = encodeFrame(type, encodeExecParams(connectDomain, port, cmdline));
    } catch (err) {
      return Promise.reject(err instanceof Error ? err : new ChannelError(String(err)));
    }
    return new Promise<net.Socket>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(port);
        reject(new ChannelError('the qube\'s agent did not answer the command'));
      }, EXEC_CONNECT_TIMEOUT_MS);
      this.#pending.set(port, { resolve, reject, timer });
      control.write(frame);
    });
  }

  /** Asks the agent to power the qube off. */
  requestShutdown(): boolean {
    const control = this.#control;
    if (control === undefined || control.destroyed) return false;
    control.write(encodeFrame(MSG_SHUTDOWN));
    return true;
  }

  /** Called once when the control connection closes (the agent or its qube went away). */
  onDisconnect(listener: () => void): void {
    this.#closeListeners.add(listener);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#helloWaiters) w.reject(new ChannelError('channel closed'));
    this.#helloWaiters = [];
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve(); }); });
    fs.rmSync(this.#path, { force: true });
  }
}
