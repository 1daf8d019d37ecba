// qrexec frame codec (Qubes qrexec protocol v3) for a qube's channel, a Unix socket stream.
//
// Frame:   u32 type, u32 len (both little-endian), then `len` payload bytes.
// Payloads: HELLO = u32 version; EXEC_CMDLINE/JUST_EXEC/SERVICE_CONNECT = u32 connect_domain,
//           u32 connect_port, cmdline + NUL; DATA_EXIT_CODE = int32 code.
// Bulkhead additions: DATA_CONNECT = u32 port (the first frame of a new data connection, naming
//           the EXEC_CMDLINE it serves); SHUTDOWN = empty (the agent powers the qube off).
//
// Everything a qube sends is untrusted: the parser checks each header's type and length before
// buffering any payload, and the payload parsers validate every byte before anything sees it.

export const MSG_DATA_STDIN = 0x190;
export const MSG_DATA_STDOUT = 0x191;
export const MSG_DATA_STDERR = 0x192;
export const MSG_DATA_EXIT_CODE = 0x193;
export const MSG_EXEC_CMDLINE = 0x200;
export const MSG_JUST_EXEC = 0x201;
export const MSG_SERVICE_CONNECT = 0x202;
export const MSG_SERVICE_REFUSED = 0x203;
export const MSG_TRIGGER_SERVICE = 0x210;
export const MSG_CONNECTION_TERMINATED = 0x211;
export const MSG_TRIGGER_SERVICE3 = 0x212;
export const MSG_HELLO = 0x300;
/** Bulkhead-specific: u32 port; the first frame an agent sends on a new data connection. */
export const MSG_DATA_CONNECT = 0x1000;
/** Bulkhead-specific: empty payload; the daemon asks the agent to power the qube off. */
export const MSG_SHUTDOWN = 0x1001;
/**
 * Admin domain client → daemon (qvm-run): the first frame on the daemon's dom0 exec socket.
 * Payload: exec params with connectDomain = flags (bit 0: autostart, bit 1: no I/O), connectPort = 0, and
 * cmdline `TARGET USER:COMMAND` (USER empty = the qube's default user).
 */
export const MSG_CLIENT_EXEC = 0x1002;
export const CLIENT_EXEC_AUTOSTART = 1;
/** CLIENT_EXEC flag bit 1: run without passing I/O (qrexec JUST_EXEC); only the start is reported. */
export const MSG_JUST_EXEC_FLAG = 2;

export const QREXEC_PROTOCOL_VERSION = 3;
/** Size of the {type, len} header preceding every payload. */
export const FRAME_HEADER_SIZE = 8;
/** Largest payload of a DATA_* frame (stdin/stdout/stderr/exit code). */
export const MAX_DATA_CHUNK = 65536;
/** Largest payload of any other frame. */
export const MAX_CONTROL_PAYLOAD = 65536;

const KNOWN_TYPES: ReadonlySet<number> = new Set([
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  MSG_DATA_STDERR,
  MSG_DATA_EXIT_CODE,
  MSG_EXEC_CMDLINE,
  MSG_JUST_EXEC,
  MSG_SERVICE_CONNECT,
  MSG_SERVICE_REFUSED,
  MSG_TRIGGER_SERVICE,
  MSG_CONNECTION_TERMINATED,
  MSG_TRIGGER_SERVICE3,
  MSG_HELLO,
  MSG_DATA_CONNECT,
  MSG_SHUTDOWN,
  MSG_CLIENT_EXEC,
]);

const EXEC_PARAMS_HEADER = 8;
const UINT32_MAX = 0xffffffff;
const EMPTY = new Uint8Array(0);

/** Raised for any violation by the peer; the connection must be dropped. */
export class QrexecProtocolError extends Error {
  override readonly name = 'QrexecProtocolError';
}

export interface Frame {
  readonly type: number;
  readonly payload: Buffer;
}

export interface FrameParserOptions {
  /** Accept types this module does not know (payload capped at MAX_CONTROL_PAYLOAD). */
  readonly allowUnknownTypes?: boolean;
}

/**
 * True for the qrexec MSG_DATA_* types (stdin, stdout, stderr, exit code: 0x190–0x193), whose
 * payload cap is MAX_DATA_CHUNK. The Bulkhead MSG_DATA_CONNECT is a control frame, not one of them.
 */
export function isDataType(type: number): boolean {
  return type >= MSG_DATA_STDIN && type <= MSG_DATA_EXIT_CODE;
}

export function isKnownType(type: number): boolean {
  return KNOWN_TYPES.has(type);
}

/** The payload cap for a frame type. */
export function maxPayloadFor(type: number): number {
  return isDataType(type) ? MAX_DATA_CHUNK : MAX_CONTROL_PAYLOAD;
}

function isUint32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= UINT32_MAX;
}

function requireUint32(value: number, what: string): void {
  if (!isUint32(value)) throw new RangeError(`${what} must be a u32, got ${value}`);
}

/** Builds one frame. Throws RangeError for a bad type or a payload over the cap for that type. */
export function encodeFrame(type: number, payload: Buffer | Uint8Array = EMPTY): Buffer {
  requireUint32(type, 'frame type');
  const cap = maxPayloadFor(type);
  if (payload.length > cap) {
    throw new RangeError(`payload of ${payload.length} bytes exceeds the ${cap}-byte cap for type 0x${type.toString(16)}`);
  }
  const frame = Buffer.allocUnsafe(FRAME_HEADER_SIZE + payload.length);
  frame.writeUInt32LE(type, 0);
  frame.writeUInt32LE(payload.length, 4);
  frame.set(payload, FRAME_HEADER_SIZE);
  return frame;
}

function u32Payload(value: number): Buffer {
  const payload = Buffer.allocUnsafe(4);
  payload.writeUInt32LE(value, 0);
  return payload;
}

/** The whole HELLO frame. */
export function encodeHello(version: number = QREXEC_PROTOCOL_VERSION): Buffer {
  requireUint32(version, 'protocol version');
  return encodeFrame(MSG_HELLO, u32Payload(version));
}

/** HELLO payload → the peer's protocol version (the caller decides whether it is acceptable). */
export function parseHello(untrustedPayload: Buffer): number {
  if (untrustedPayload.length !== 4) throw new QrexecProtocolError('HELLO payload must be 4 bytes');
  return untrustedPayload.readUInt32LE(0);
}

export interface ExecParams {
  readonly connectDomain: number;
  readonly connectPort: number;
  readonly cmdline: string;
}

// A UTF-16 surrogate not part of a pair cannot be encoded as UTF-8 (it would become U+FFFD).
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * The payload (not a frame) of EXEC_CMDLINE, JUST_EXEC and SERVICE_CONNECT. Throws RangeError if
 * the command line holds NUL or a lone surrogate, or the payload would exceed MAX_CONTROL_PAYLOAD.
 */
export function encodeExecParams(connectDomain: number, connectPort: number, cmdline: string): Buffer {
  requireUint32(connectDomain, 'connect domain');
  requireUint32(connectPort, 'connect port');
  if (cmdline.includes('\0')) throw new RangeError('cmdline may not contain NUL');
  if (LONE_SURROGATE.test(cmdline)) throw new RangeError('cmdline is not well-formed UTF-16');
  const cmdlineBytes = Buffer.from(cmdline, 'utf8');
  const size = EXEC_PARAMS_HEADER + cmdlineBytes.length + 1;
  if (size > MAX_CONTROL_PAYLOAD) throw new RangeError(`exec params of ${size} bytes exceed ${MAX_CONTROL_PAYLOAD}`);
  const payload = Buffer.allocUnsafe(size);
  payload.writeUInt32LE(connectDomain, 0);
  payload.writeUInt32LE(connectPort, 4);
  cmdlineBytes.copy(payload, EXEC_PARAMS_HEADER);
  payload[size - 1] = 0;
  return payload;
}

/** Parses an EXEC_CMDLINE/JUST_EXEC/SERVICE_CONNECT payload. Throws QrexecProtocolError. */
export function parseExecParams(untrustedPayload: Buffer): ExecParams {
  if (untrustedPayload.length < EXEC_PARAMS_HEADER + 1) throw new QrexecProtocolError('exec params too short');
  if (untrustedPayload.length > MAX_CONTROL_PAYLOAD) throw new QrexecProtocolError('exec params too long');
  const end = untrustedPayload.length - 1;
  if (untrustedPayload[end] !== 0) throw new QrexecProtocolError('cmdline is not NUL-terminated');
  const untrustedCmdlineBytes = untrustedPayload.subarray(EXEC_PARAMS_HEADER, end);
  if (untrustedCmdlineBytes.includes(0)) throw new QrexecProtocolError('NUL inside cmdline');
  let cmdline: string;
  try {
    cmdline = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(untrustedCmdlineBytes);
  } catch {
    throw new QrexecProtocolError('cmdline is not valid UTF-8');
  }
  return {
    connectDomain: untrustedPayload.readUInt32LE(0),
    connectPort: untrustedPayload.readUInt32LE(4),
    cmdline,
  };
}

/** The whole DATA_EXIT_CODE frame. `code` is an int32 (Qubes treats it as a C int). */
/**
 * The end of a command that produced no output of its own: stdout EOF, `stderrText` (if any)
 * and stderr EOF, then the exit code. How both the agent and the daemon report a command that
 * could not run.
 */
export function encodeFinish(stderrText: string, code: number): Buffer {
  const text = Buffer.from(stderrText);
  return Buffer.concat([
    encodeFrame(MSG_DATA_STDOUT),
    ...(text.length > 0 ? [encodeFrame(MSG_DATA_STDERR, text.subarray(0, MAX_DATA_CHUNK))] : []),
    encodeFrame(MSG_DATA_STDERR),
    encodeExitCode(code),
  ]);
}

export function encodeExitCode(code: number): Buffer {
  if (!Number.isInteger(code) || code < -0x80000000 || code > 0x7fffffff) {
    throw new RangeError(`exit code must be an int32, got ${code}`);
  }
  const payload = Buffer.allocUnsafe(4);
  payload.writeInt32LE(code, 0);
  return encodeFrame(MSG_DATA_EXIT_CODE, payload);
}

/** DATA_EXIT_CODE payload → signed exit code. */
export function parseExitCode(untrustedPayload: Buffer): number {
  if (untrustedPayload.length !== 4) throw new QrexecProtocolError('exit code payload must be 4 bytes');
  return untrustedPayload.readInt32LE(0);
}

/** The whole DATA_CONNECT frame naming the EXEC_CMDLINE port a data connection serves. */
export function encodeDataConnect(port: number): Buffer {
  requireUint32(port, 'port');
  return encodeFrame(MSG_DATA_CONNECT, u32Payload(port));
}

/** DATA_CONNECT payload → port. */
export function parseDataConnect(untrustedPayload: Buffer): number {
  if (untrustedPayload.length !== 4) throw new QrexecProtocolError('DATA_CONNECT payload must be 4 bytes');
  return untrustedPayload.readUInt32LE(0);
}

interface PendingHeader {
  readonly type: number;
  readonly len: number;
}

/**
 * Incremental parser for the untrusted byte stream of a channel. Each header is validated (known
 * type, length within the cap for that type) as soon as its 8 bytes are in, before any of its
 * payload is kept. Any violation throws QrexecProtocolError and poisons the parser: every later
 * push throws too. Chunks are kept in a list and only the bytes of one frame are ever joined.
 * Returned payloads may share memory with the pushed chunks.
 */
export class FrameParser {
  readonly #allowUnknownTypes: boolean;
  #chunks: Buffer[] = [];
  /** Bytes held in #chunks. */
  #size = 0;
  #header: PendingHeader | undefined;
  #poisoned = false;

  constructor(options: FrameParserOptions = {}) {
    this.#allowUnknownTypes = options.allowUnknownTypes ?? false;
  }

  /**
   * Bytes received that belong to no returned frame yet (a decoded header counts as 8). Zero
   * exactly at a frame boundary, so a non-zero value at end of stream means a truncated frame.
   */
  get pending(): number {
    return this.#size + (this.#header === undefined ? 0 : FRAME_HEADER_SIZE);
  }

  get poisoned(): boolean {
    return this.#poisoned;
  }

  /** Feeds bytes; returns the frames they complete, in order. */
  push(untrustedChunk: Buffer): Frame[] {
    if (this.#poisoned) throw new QrexecProtocolError('parser unusable after an earlier protocol error');
    if (untrustedChunk.length > 0) {
      this.#chunks.push(untrustedChunk);
      this.#size += untrustedChunk.length;
    }
    const frames: Frame[] = [];
    try {
      for (;;) {
        if (this.#header === undefined) {
          if (this.#size < FRAME_HEADER_SIZE) break;
          this.#header = this.#checkHeader(this.#take(FRAME_HEADER_SIZE));
        }
        if (this.#size < this.#header.len) break;
        frames.push({ type: this.#header.type, payload: this.#take(this.#header.len) });
        this.#header = undefined;
      }
    } catch (err) {
      this.#poison();
      throw err;
    }
    return frames;
  }

  /**
   * Hands back every byte not yet returned as a frame (a decoded header re-encoded in front) and
   * empties the parser: used when a connection switches from frame parsing to a plain relay.
   */
  takeBuffered(): Buffer {
    const parts: Buffer[] = [];
    if (this.#header !== undefined) {
      const h = Buffer.alloc(FRAME_HEADER_SIZE);
      h.writeUInt32LE(this.#header.type, 0);
      h.writeUInt32LE(this.#header.len, 4);
      parts.push(h);
    }
    parts.push(...this.#chunks);
    this.#chunks = [];
    this.#size = 0;
    this.#header = undefined;
    return Buffer.concat(parts);
  }

  #checkHeader(untrustedHeader: Buffer): PendingHeader {
    const type = untrustedHeader.readUInt32LE(0);
    const len = untrustedHeader.readUInt32LE(4);
    if (!this.#allowUnknownTypes && !KNOWN_TYPES.has(type)) {
      throw new QrexecProtocolError(`unknown frame type 0x${type.toString(16)}`);
    }
    const cap = maxPayloadFor(type);
    if (len > cap) {
      throw new QrexecProtocolError(`frame type 0x${type.toString(16)} announces ${len} bytes, cap is ${cap}`);
    }
    return { type, len };
  }

  #poison(): void {
    this.#poisoned = true;
    this.#chunks = [];
    this.#size = 0;
    this.#header = undefined;
  }

  /** Removes and returns the first n buffered bytes (n ≤ #size); copies only when they span chunks. */
  #take(n: number): Buffer {
    const first = this.#chunks[0];
    if (n === 0 || first === undefined) return Buffer.alloc(0);
    this.#size -= n;
    if (first.length >= n) {
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let used = 0;
    while (filled < n) {
      const chunk = this.#chunks[used];
      if (chunk === undefined) throw new Error('FrameParser: buffered size out of sync');
      const count = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, count);
      filled += count;
      if (count === chunk.length) used += 1;
      else this.#chunks[used] = chunk.subarray(count);
    }
    this.#chunks.splice(0, used);
    return out;
  }
}
