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
import { onFirstFrameWithin, type FirstFrameSlots } from '../protocol/first-frame.js';
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

/** One listening socket of the channel, with its own count of connections not yet identified. */
interface Listener {
  readonly server: net.Server;
  readonly path: string;
  readonly unidentified: FirstFrameSlots;
}

export class QubeChannel {
  /** The agent's socket (0600, the qube's root): HELLO, DATA_CONNECT, the agent's triggers. */
  readonly #agentSide: Listener;
  /** The call-only socket (0666, every user of the qube): TRIGGER_SERVICE3 first, nothing else. */
  readonly #callSide: Listener;
  #control: net.Socket | undefined;
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

  private constructor(agentSide: Listener, callSide: Listener) {
    this.#agentSide = agentSide;
    this.#callSide = callSide;
    agentSide.server.on('connection', (s) => { this.#accept(s, agentSide); });
    callSide.server.on('connection', (s) => { this.#accept(s, callSide); });
  }

  /**
   * Listens on the agent's socket `socketPath` (mode 0600) and the call-only socket
   * `callSocketPath` (mode 0666: any user of the qube may call services, as in Qubes; the folder
   * they sit in is root-only on the host), both owned by `uid:gid` (the qube's root).
   */
  static async listen(socketPath: string, callSocketPath: string, uid: number, gid: number): Promise<QubeChannel> {
    const sides: Listener[] = [];
    try {
      for (const [p, mode] of [[socketPath, 0o600], [callSocketPath, 0o666]] as const) {
        clearSocketPath(p);
        const server = net.createServer({ allowHalfOpen: true, highWaterMark: STREAM_HIGH_WATER_MARK });
        // 0600 from the start, then handed to the qube's root (and opened up, for the call socket).
        await listenWithUmask(server, p, 0o177);
        sides.push({ server, path: p, unidentified: { waiting: 0, max: MAX_UNIDENTIFIED } });
        fs.chownSync(p, uid, gid);
        fs.chmodSync(p, mode);
      }
    } catch (err) {
      for (const side of sides) {
        side.server.close();
        fs.rmSync(side.path, { force: true });
      }
      throw err;
    }
    const [agentSide, callSide] = sides;
    if (agentSide === undefined || callSide === undefined) throw new ChannelError('channel sockets missing');
    return new QubeChannel(agentSide, callSide);
  }

  get connected(): boolean {
    return this.#control !== undefined && !this.#control.destroyed;
  }

  #accept(sock: net.Socket, side: Listener): void {
    if (this.#closed) {
      sock.destroy();
      return;
    }
    const accepted = onFirstFrameWithin(sock, side.unidentified, IDENTIFY_TIMEOUT_MS, (first, rest) => {
      try {
        if (side === this.#callSide) {
          // The call socket is for calls and nothing else.
          if (first.type === MSG_TRIGGER_SERVICE3) this.#onCallConnection(sock, parseTrigger(first.payload), rest);
          else sock.destroy();
        } else if (first.type === MSG_HELLO) {
          parseHello(first.payload);
          this.#onControl(sock, rest);
        } else if (first.type === MSG_DATA_CONNECT) {
          this.#onData(sock, parseDataConnect(first.payload), rest);
        } else {
          sock.destroy();
        }
      } catch {
        sock.destroy();
      }
    });
    if (!accepted) return;
    this.#sockets.add(sock);
    sock.once('close', () => this.#sockets.delete(sock));
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
    // While the call waits (policy, ask, target start), the caller's early bytes are kept (up to
    // a cap, then reading pauses) and its hang-up is noticed.
    const early: Buffer[] = rest.length > 0 ? [rest] : [];
    let earlyBytes = rest.length;
    let gone = false;
    const onEarly = (chunk: Buffer): void => {
      early.push(chunk);
      earlyBytes += chunk.length;
      if (earlyBytes >= STREAM_HIGH_WATER_MARK) sock.pause();
    };
    const onGone = (): void => { gone = true; };
    const stopWaiting = (): void => {
      sock.off('data', onEarly);
      sock.off('end', onGone);
      sock.off('close', onGone);
    };
    sock.on('data', onEarly);
    sock.once('end', onGone);
    sock.once('close', onGone);
    sock.resume();
    this.#dispatchTrigger(t, `conn:${this.#nextCall++}`, {
      refuse: () => {
        stopWaiting();
        // The refusal is flushed, then the connection is gone: a caller that keeps its end
        // open holds nothing of the daemon's.
        if (!sock.destroyed) sock.end(encodeFrame(MSG_SERVICE_REFUSED, encodeServiceRefused(t.requestId)), () => { sock.destroy(); });
      },
      connect: () => {
        stopWaiting();
        sock.pause();
        if (sock.destroyed || gone) {
          sock.destroy();
          return Promise.reject(new ChannelError('the caller hung up'));
        }
        sock.write(encodeFrame(MSG_SERVICE_CONNECT, encodeExecParams(0, 0, t.requestId)));
        if (early.length > 0) sock.unshift(Buffer.concat(early));
        return Promise.resolve(sock);
      },
      alive: () => !gone && !sock.destroyed && this.connected,
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
    await Promise.all([this.#agentSide, this.#callSide].map((side) => new Promise<void>((resolve) => {
      side.server.close(() => { resolve(); });
      fs.rmSync(side.path, { force: true });
    })));
  }
}
