// Reading the first frame of a connection on a Unix socket: the frame that says what the
// connection is for (HELLO, DATA_CONNECT, TRIGGER_SERVICE3, CLIENT_EXEC). Shared by the daemon's
// channel and exec sockets and the in-qube agent's trigger socket.
import type net from 'node:net';
import { FrameParser, type Frame } from './qrexec.js';

/**
 * Reads the first frame of a connection (untrusted, length-checked before buffering), then stops
 * reading and hands it over with every byte that came after it, unparsed, the socket paused: the
 * receiver may switch to a plain byte relay. A framing error, or a peer that hangs up first,
 * destroys the socket.
 */
export function onFirstFrame(sock: net.Socket, handle: (first: Frame, rest: Buffer) => void): void {
  const parser = new FrameParser();
  const onData = (untrustedChunk: Buffer): void => {
    let first;
    try {
      first = parser.nextFrame(untrustedChunk);
    } catch {
      sock.destroy();
      return;
    }
    if (first === undefined) return;
    sock.off('data', onData);
    sock.off('end', onEnd);
    sock.pause();
    handle(first, parser.takeBuffered());
  };
  const onEnd = (): void => { sock.destroy(); };
  sock.on('data', onData);
  sock.once('end', onEnd);
}

/** How many connections of one listening socket wait for their first frame, and how many may. */
export interface FirstFrameSlots {
  waiting: number;
  readonly max: number;
}

/**
 * onFirstFrame for an untrusted peer: while `slots.max` connections already wait for their first
 * frame a new one is closed at once, and one that does not send it within `timeoutMs` is closed.
 * Returns false when the connection was refused (and destroyed).
 */
export function onFirstFrameWithin(
  sock: net.Socket,
  slots: FirstFrameSlots,
  timeoutMs: number,
  handle: (first: Frame, rest: Buffer) => void,
): boolean {
  if (slots.waiting >= slots.max) {
    sock.destroy();
    return false;
  }
  slots.waiting++;
  let identified = false;
  const timer = setTimeout(() => { sock.destroy(); }, timeoutMs);
  const identify = (): void => {
    if (identified) return;
    identified = true;
    slots.waiting--;
    clearTimeout(timer);
  };
  sock.on('error', () => { /* reported through close */ });
  sock.once('close', identify);
  onFirstFrame(sock, (first, rest) => {
    identify();
    handle(first, rest);
  });
  return true;
}
