// The Admin API server: one request per connection, Qubes framing. Reads at most 64 KiB, waits
// for the client's half-close, checks the request against the method's declaration, runs it,
// writes one reply and closes. Protocol errors and permission denials close the connection
// without a reply (as qubesd does); unexpected failures too, after logging them.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { PermissionDenied, ProtocolError, QubesError } from '../core/errors.js';
import type { Registry } from '../core/registry.js';
import {
  FramingError,
  RequestAccumulator,
  encodeEvent,
  encodeException,
  encodeOk,
  parseAdminRequest,
  type AdminRequest,
} from '../protocol/admin-wire.js';
import type { QubeRecord } from '../core/model.js';
import type { Lifecycle } from './lifecycle.js';
import { METHODS, type CallContext, type FirewallControl, type MethodDecl, type QrexecAdmin } from './methods.js';
import { clearSocketPath, listenWithUmask } from '../hal/unix-listen.js';

/** A client must finish sending its request (half-close) within this time. */
const REQUEST_TIMEOUT_MS = 30_000;
/** Node closes connections accepted beyond this many open ones. */
const MAX_CONNECTIONS = 1024;
/** An event stream client that lets this much pile up unread is disconnected. */
const MAX_PENDING_EVENT_BYTES = 4 * 1024 * 1024;

export interface ServerDeps {
  readonly registry: Registry;
  readonly lifecycle: Lifecycle;
  readonly log: Logger;
  /** qrexec's admin-side services (asks, policy); absent in tests that need none. */
  readonly qrexec?: QrexecAdmin;
  /** The network orchestrator; absent when the daemon runs without networking (unit tests). */
  readonly network?: FirewallControl | undefined;
}

export class AdminServer {
  readonly #deps: ServerDeps;
  readonly #dispatcher: AdminDispatcher;
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  #path: string | undefined;
  /** Inode of the socket file we created: on close we remove it only if it is still ours. */
  #inode: number | undefined;

  constructor(deps: ServerDeps) {
    this.#deps = deps;
    this.#dispatcher = new AdminDispatcher(deps);
    this.#server = net.createServer({ allowHalfOpen: true }, (socket) => {
      this.#handle(socket);
    });
    this.#server.maxConnections = MAX_CONNECTIONS;
  }

  /** Listens on `socketPath` (root-owned, mode 0660), refusing to steal a live daemon's socket. */
  async listen(socketPath: string): Promise<void> {
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
    const existing = fs.lstatSync(socketPath, { throwIfNoEntry: false });
    if (existing?.isSocket() === true && (await socketIsLive(socketPath))) {
      throw new Error(`another daemon is listening on ${socketPath}`);
    }
    clearSocketPath(socketPath);
    // The socket is created 0660 from the start (umask), never briefly more open.
    await listenWithUmask(this.#server, socketPath, 0o117);
    this.#path = socketPath;
    fs.chmodSync(socketPath, 0o660);
    if (process.getuid?.() === 0) fs.chownSync(socketPath, 0, 0);
    this.#inode = fs.statSync(socketPath).ino;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => { resolve(); }));
    for (const s of this.#sockets) s.destroy();
    await closed;
    if (this.#path !== undefined) {
      try {
        if (fs.statSync(this.#path).ino === this.#inode) fs.rmSync(this.#path, { force: true });
      } catch {
        // already gone
      }
    }
  }

  #handle(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    const acc = new RequestAccumulator();
    // A deadline, not an idle timer: trickling bytes does not keep a connection alive.
    const deadline = setTimeout(() => {
      this.#deps.log.warn('request not completed in time; connection aborted');
      socket.destroy();
    }, REQUEST_TIMEOUT_MS);
    socket.on('close', () => { clearTimeout(deadline); });
    socket.on('data', (untrustedChunk: Buffer) => {
      if (!acc.push(untrustedChunk)) {
        this.#deps.log.warn('request over 64 KiB; connection aborted');
        socket.destroy();
      }
    });
    socket.on('end', () => {
      clearTimeout(deadline);
      if (acc.overflowed) return;
      let req: AdminRequest;
      try {
        req = parseAdminRequest(acc.take());
      } catch (err) {
        this.#deps.log.warn({ err: (err as FramingError).message }, 'malformed request; connection aborted');
        socket.destroy();
        return;
      }
      void this.#dispatch(socket, req);
    });
  }

  #dispatch(socket: net.Socket, req: AdminRequest): Promise<void> {
    return this.#dispatcher.dispatch(req, socketOutput(socket));
  }
}

/** Where a call's reply goes: the Admin API socket, or a qube's qrexec connection. */
export interface CallOutput {
  /** The one reply of a plain call (an encoded OK or exception), then the end. */
  end(reply: Buffer): void;
  /** Drops the call without a reply (protocol error, permission denied). */
  abort(): void;
  /** An encoded event of a stream. */
  write(bytes: Buffer): void;
  /** Bytes written but not yet taken by the consumer. */
  pendingBytes(): number;
  onClose(fn: () => void): void;
  readonly closed: boolean;
}

function socketOutput(socket: net.Socket): CallOutput {
  return {
    end: (reply) => { socket.end(reply); },
    abort: () => { socket.destroy(); },
    write: (bytes) => { socket.write(bytes); },
    pendingBytes: () => socket.writableLength,
    onClose: (fn) => { socket.on('close', fn); },
    get closed() { return socket.destroyed; },
  };
}

/** A call made by a qube through qrexec (admin.* service), allowed by policy. */
export interface QubeCaller {
  readonly qube: QubeRecord;
  /** Which qubes this caller may see in admin.vm.List and admin.Events (policy, as in Qubes). */
  readonly visible: (q: QubeRecord) => boolean;
}

/** Checks a request against its method's declaration and runs it; shared by the socket and qrexec. */
export class AdminDispatcher {
  readonly #deps: ServerDeps;

  constructor(deps: ServerDeps) {
    this.#deps = deps;
  }

  async dispatch(req: AdminRequest, out: CallOutput, caller?: QubeCaller): Promise<void> {
    const { log } = this.#deps;
    const started = process.hrtime.bigint();
    try {
      const { ctx, decl } = this.#context(req, caller);
      if (decl.stream) {
        this.#stream(out, decl.stream, ctx);
        return;
      }
      const result = await decl.handler?.(ctx);
      out.end(encodeOk(result));
      log.debug({ method: req.method, dest: req.dest, source: ctx.source.name, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'call');
    } catch (err) {
      if (err instanceof QubesError) {
        log.info({ method: req.method, dest: req.dest, type: err.type, reason: err.message }, 'call failed');
        out.end(encodeException(err.type, err.message));
      } else if (err instanceof ProtocolError || err instanceof PermissionDenied) {
        log.warn({ method: req.method, arg: req.arg, dest: req.dest, reason: err.message }, `${err.name}; connection aborted`);
        out.abort();
      } else {
        log.error({ method: req.method, err }, 'internal error; connection aborted');
        out.abort();
      }
    }
  }

  /** Resolves source and destination and checks the request shape against the declaration. */
  #context(req: AdminRequest, caller: QubeCaller | undefined): { ctx: CallContext; decl: MethodDecl } {
    const { registry, lifecycle, qrexec, network } = this.#deps;
    const decl = METHODS.get(req.method);
    if (!decl) throw new ProtocolError(`no such method: '${req.method}'`);
    let source;
    if (caller === undefined) {
      source = registry.resolve(req.source);
      // The local socket is root-only and speaks for the admin domain. Qubes' calls arrive
      // through qrexec and policy, with the caller set by the router.
      if (source.klass !== 'AdminVM') throw new PermissionDenied('only dom0 may use the local Admin API socket');
    } else {
      source = caller.qube;
      // Bulkhead's own methods (host paths, ask answers, policy internals) are for the admin
      // domain only, whatever a policy says.
      if (!decl.name.startsWith('admin.')) throw new PermissionDenied(`${decl.name} is not available to qubes`);
    }
    let dest;
    if (req.destType === 'keyword') {
      if (req.dest !== 'adminvm') throw new ProtocolError(`unknown destination keyword '${req.dest}'`);
      dest = registry.resolve('dom0');
    } else {
      dest = registry.resolve(req.dest);
    }
    if (decl.dest === 'adminvm' && dest.klass !== 'AdminVM') throw new ProtocolError('expected destination to be AdminVM');
    if (decl.dest === 'vm' && dest.klass === 'AdminVM') {
      throw new QubesError('QubesVMError', `The AdminVM '${dest.name}' cannot be the destination of ${req.method}`);
    }
    if (decl.arg === 'none' && req.arg !== '') throw new ProtocolError('unexpected argument');
    if (decl.arg === 'required' && req.arg === '') throw new ProtocolError('expected an argument');
    if (decl.payload === 'none' && req.payload.length > 0) throw new ProtocolError('unexpected payload');
    if (decl.payload === 'required' && req.payload.length === 0) throw new ProtocolError('expected payload');
    return {
      ctx: { registry, lifecycle, qrexec, network, source, dest, arg: req.arg, untrustedPayload: req.payload, visible: caller?.visible },
      decl,
    };
  }

  #stream(out: CallOutput, stream: NonNullable<MethodDecl['stream']>, ctx: CallContext): void {
    let unsubscribe: (() => void) | undefined;
    const stop = (): void => {
      unsubscribe?.();
      unsubscribe = undefined;
    };
    out.onClose(stop);
    // The client ends the stream by closing; a half-closed socket here already sent its FIN.
    unsubscribe = stream(ctx, (e) => {
      if (out.closed) return;
      if (out.pendingBytes() > MAX_PENDING_EVENT_BYTES) {
        this.#deps.log.warn('event client too slow; disconnected');
        out.abort();
        return;
      }
      out.write(encodeEvent(e.subject, e.event, e.kwargs));
    });
    if (out.closed) stop();
  }
}

function socketIsLive(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => { resolve(false); });
  });
}
