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
/**
 * CLIENT_EXEC flag bit 2: call a service (`qvm-run --service`): the command line is
 * `TARGET USER:SERVICE+ARG`, and the daemon sends the qube `USER:QUBESRPC SERVICE+ARG dom0 …`.
 */
export const CLIENT_EXEC_SERVICE = 4;

/** Exit codes of qrexec itself (Qubes' values). */
export const EXIT_QREXEC_INTERNAL = 125;
export const EXIT_REFUSED = 126;
export const EXIT_SERVICE_NOT_FOUND = 127;

/**
 * Inside a qube: the agent's local socket for service calls (qrexec-client-vm). A client sends
 * TRIGGER_SERVICE3; the agent answers SERVICE_REFUSED and closes, or SERVICE_CONNECT and from then
 * on relays the call's data connection byte for byte (DATA_STDIN out, DATA_STDOUT/EXIT_CODE in).
 */
export const AGENT_TRIGGER_SOCKET = '/run/qubes/qrexec-agent';

export const QREXEC_PROTOCOL_VERSION = 3;
/** Size of the {type, len} header preceding every payload. */
export const FRAME_HEADER_SIZE = 8;
/** Largest payload of a DATA_* frame (stdin/stdout/stderr/exit code). */
export const MAX_DATA_CHUNK = 65536;
/** Largest payload of any other frame. */
export const MAX_CONTROL_PAYLOAD = 65536;
/**
 * Buffering of a connection that relays a call's data, before backpressure applies. Node's default
 * (16 KiB) is below one 64 KiB chunk: every chunk would pause and resume the reading side.
 */
export const STREAM_HIGH_WATER_MARK = 1 << 20;

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
const EMPTY_BUFFER = Buffer.alloc(0);
/** One strict decoder for untrusted text (stateless between whole-buffer decodes); a BOM is kept, not eaten. */
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

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
export function encodeFrame(type: number, payload: Buffer | Uint8Array = EMPTY_BUFFER): Buffer {
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

/** What writeChunked needs of a stream (a net.Socket has it). */
export interface CorkableWritable {
  cork(): void;
  uncork(): void;
  write(chunk: Buffer): boolean;
}

/**
 * Writes `data` as frames of `type` with at most MAX_DATA_CHUNK bytes each, header and payload
 * as separate buffers in one corked batch (one writev, no copy of the payload). Returns what the
 * last write returned (false: wait for 'drain'). Nothing is written for empty data.
 */
export function writeChunked(out: CorkableWritable, type: number, data: Buffer): boolean {
  if (!isDataType(type)) throw new RangeError(`writeChunked is for DATA_* frames, not 0x${type.toString(16)}`);
  let ok = true;
  out.cork();
  try {
    for (let off = 0; off < data.length; off += MAX_DATA_CHUNK) {
      const payload = data.subarray(off, off + MAX_DATA_CHUNK);
      const header = Buffer.allocUnsafe(FRAME_HEADER_SIZE);
      header.writeUInt32LE(type, 0);
      header.writeUInt32LE(payload.length, 4);
      out.write(header);
      ok = out.write(payload);
    }
  } finally {
    out.uncork();
  }
  return ok;
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
    cmdline = STRICT_UTF8.decode(untrustedCmdlineBytes);
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

// --- service calls (TRIGGER_SERVICE3, SERVICE_CONNECT, SERVICE_REFUSED) ---------------------------

/** TRIGGER_SERVICE3: target_domain[64] and request_id[32], both NUL-padded, then the service name + NUL. */
const TRIGGER_TARGET_FIELD = 64;
const REQUEST_ID_FIELD = 32;
const TRIGGER_FIXED = TRIGGER_TARGET_FIELD + REQUEST_ID_FIELD;
/** Longest `SERVICE+ARG` Bulkhead accepts (a Bulkhead limit; Qubes' own is of the same order). */
export const MAX_SERVICE_AND_ARG = 1024;

/**
 * A service name: letters, digits, `.`, `_`, `-` (no `+`), not starting with `.` (never `.` or
 * `..`: the name becomes a file name in the qube), at most 255 characters.
 */
export const SERVICE_NAME_RE = /^(?!\.)[A-Za-z0-9._-]{1,255}$/;
/** An argument after its `+`: letters, digits, `.`, `_`, `-`, `+`; may be empty. */
export const SERVICE_ARG_RE = /^[A-Za-z0-9._+-]*$/;
/** A call's target as a qube writes it: a name, `uuid:…`, `@default`, `@dispvm`, `@dispvm:NAME`, `@adminvm`, `dom0`. */
const TARGET_RE = /^[A-Za-z0-9_.:@-]{0,63}$/;
/** A request id: chosen by the calling side, echoed back unchanged. */
const REQUEST_ID_RE = /^[A-Za-z0-9_.-]{1,31}$/;

export interface ServiceTrigger {
  /** Requested target (empty = @default); `$` already turned into `@` by the caller. */
  readonly target: string;
  readonly requestId: string;
  /** `SERVICE+ARG` or `SERVICE`. */
  readonly serviceAndArg: string;
}

/** Splits `SERVICE+ARG` at its first `+`; the argument is '' for `SERVICE` and `SERVICE+`. */
export function splitServiceAndArg(serviceAndArg: string): { service: string; arg: string } {
  const plus = serviceAndArg.indexOf('+');
  if (plus < 0) return { service: serviceAndArg, arg: '' };
  return { service: serviceAndArg.slice(0, plus), arg: serviceAndArg.slice(plus + 1) };
}

/** True for a well-formed `SERVICE[+ARG]` within MAX_SERVICE_AND_ARG. */
export function isValidServiceAndArg(serviceAndArg: string): boolean {
  if (serviceAndArg.length === 0 || serviceAndArg.length > MAX_SERVICE_AND_ARG) return false;
  const { service, arg } = splitServiceAndArg(serviceAndArg);
  return SERVICE_NAME_RE.test(service) && SERVICE_ARG_RE.test(arg);
}

function fixedField(text: string, size: number, what: string): Buffer {
  const bytes = Buffer.from(text, 'latin1');
  if (bytes.length >= size) throw new RangeError(`${what} must be shorter than ${size} bytes`);
  const out = Buffer.alloc(size);
  bytes.copy(out);
  return out;
}

function readFixedField(untrusted: Buffer, what: string): string {
  const nul = untrusted.indexOf(0);
  if (nul < 0) throw new QrexecProtocolError(`${what} is not NUL-terminated`);
  for (let i = nul; i < untrusted.length; i++) {
    // Bytes after the terminator must be padding: nothing hides behind the NUL.
    if (untrusted[i] !== 0) throw new QrexecProtocolError(`${what} has bytes after its terminator`);
  }
  return untrusted.subarray(0, nul).toString('latin1');
}

/** The payload of TRIGGER_SERVICE3. Throws RangeError for values the format cannot carry. */
export function encodeTrigger(t: ServiceTrigger): Buffer {
  if (!TARGET_RE.test(t.target)) throw new RangeError(`invalid target: ${JSON.stringify(t.target)}`);
  if (!REQUEST_ID_RE.test(t.requestId)) throw new RangeError(`invalid request id: ${JSON.stringify(t.requestId)}`);
  if (!isValidServiceAndArg(t.serviceAndArg)) throw new RangeError(`invalid service name: ${JSON.stringify(t.serviceAndArg)}`);
  return Buffer.concat([
    fixedField(t.target, TRIGGER_TARGET_FIELD, 'target'),
    fixedField(t.requestId, REQUEST_ID_FIELD, 'request id'),
    Buffer.from(`${t.serviceAndArg}\0`, 'latin1'),
  ]);
}

/**
 * Parses a TRIGGER_SERVICE3 payload. Structure and character sets are checked here: the result
 * holds only characters policy can name. Meaning (does the target exist, may it be called) is
 * the router's business. Throws QrexecProtocolError.
 */
export function parseTrigger(untrustedPayload: Buffer): ServiceTrigger {
  if (untrustedPayload.length < TRIGGER_FIXED + 2) throw new QrexecProtocolError('trigger too short');
  if (untrustedPayload.length > TRIGGER_FIXED + MAX_SERVICE_AND_ARG + 1) throw new QrexecProtocolError('trigger too long');
  const target = readFixedField(untrustedPayload.subarray(0, TRIGGER_TARGET_FIELD), 'target');
  const requestId = readFixedField(untrustedPayload.subarray(TRIGGER_TARGET_FIELD, TRIGGER_FIXED), 'request id');
  const untrustedName = untrustedPayload.subarray(TRIGGER_FIXED);
  if (untrustedName[untrustedName.length - 1] !== 0) throw new QrexecProtocolError('service name is not NUL-terminated');
  const serviceAndArg = untrustedName.subarray(0, untrustedName.length - 1).toString('latin1');
  if (!TARGET_RE.test(target)) throw new QrexecProtocolError('target holds characters no qube name has');
  if (!REQUEST_ID_RE.test(requestId)) throw new QrexecProtocolError('malformed request id');
  if (!isValidServiceAndArg(serviceAndArg)) throw new QrexecProtocolError('malformed service name');
  return { target, requestId, serviceAndArg };
}

/** The payload of SERVICE_REFUSED: the request id, NUL-padded to 32 bytes. */
export function encodeServiceRefused(requestId: string): Buffer {
  if (!REQUEST_ID_RE.test(requestId)) throw new RangeError(`invalid request id: ${JSON.stringify(requestId)}`);
  return fixedField(requestId, REQUEST_ID_FIELD, 'request id');
}

export function parseServiceRefused(untrustedPayload: Buffer): string {
  if (untrustedPayload.length !== REQUEST_ID_FIELD) throw new QrexecProtocolError('SERVICE_REFUSED payload must be 32 bytes');
  const id = readFixedField(untrustedPayload, 'request id');
  if (!REQUEST_ID_RE.test(id)) throw new QrexecProtocolError('malformed request id');
  return id;
}

/**
 * The command line the admin domain sends a qube for a service call:
 * `USER:QUBESRPC SERVICE+ARG SOURCE name TARGET` or `... SOURCE keyword KEYWORD` (the target as
 * the caller asked for it: `@dispvm` → keyword dispvm, `@default` → keyword default).
 */
export interface ServiceCall {
  readonly user: string;
  readonly serviceAndArg: string;
  readonly source: string;
  readonly requestedTarget: { readonly type: 'name' | 'keyword'; readonly value: string };
}

const QUBESRPC_WORD_RE = /^[A-Za-z0-9_.:@+-]+$/;
/** The keywords a requested target may be given as. */
const TARGET_KEYWORDS: ReadonlySet<string> = new Set(['default', 'dispvm', 'adminvm']);

function checkRequestedTarget(t: { readonly type: string; readonly value: string }): boolean {
  return t.type === 'name' ? QUBESRPC_WORD_RE.test(t.value) : t.type === 'keyword' && TARGET_KEYWORDS.has(t.value);
}

export function formatServiceCall(c: ServiceCall): string {
  return `${c.user}:${formatServiceCommand(c)}`;
}

/** The command part (after `USER:`) of a service call: `QUBESRPC SERVICE+ARG SOURCE TYPE VALUE`. */
export function formatServiceCommand(c: Omit<ServiceCall, 'user'>): string {
  if (!QUBESRPC_WORD_RE.test(c.source)) throw new RangeError(`invalid source in a service call: ${JSON.stringify(c.source)}`);
  if (!checkRequestedTarget(c.requestedTarget)) throw new RangeError(`invalid requested target: ${JSON.stringify(c.requestedTarget)}`);
  if (!isValidServiceAndArg(c.serviceAndArg)) throw new RangeError(`invalid service name: ${JSON.stringify(c.serviceAndArg)}`);
  return `QUBESRPC ${c.serviceAndArg} ${c.source} ${c.requestedTarget.type} ${c.requestedTarget.value}`;
}

/** The part after `USER:` of a service call (`QUBESRPC …`), or undefined for a plain command. Throws QrexecProtocolError for a malformed QUBESRPC line. */
export function parseServiceCommand(command: string): Omit<ServiceCall, 'user'> | undefined {
  if (!command.startsWith('QUBESRPC ')) return undefined;
  const words = command.slice('QUBESRPC '.length).split(' ');
  const [serviceAndArg, source, type, value] = words;
  if (words.length === 2 && serviceAndArg !== undefined && source !== undefined) {
    // The short Qubes form `QUBESRPC SERVICE+ARG SOURCE`.
    if (!isValidServiceAndArg(serviceAndArg) || !QUBESRPC_WORD_RE.test(source)) throw new QrexecProtocolError('malformed QUBESRPC command');
    return { serviceAndArg, source, requestedTarget: { type: 'keyword', value: 'default' } };
  }
  if (words.length !== 4 || serviceAndArg === undefined || source === undefined || value === undefined) {
    throw new QrexecProtocolError('malformed QUBESRPC command');
  }
  if (!isValidServiceAndArg(serviceAndArg) || !QUBESRPC_WORD_RE.test(source) || (type !== 'name' && type !== 'keyword')
    || !checkRequestedTarget({ type, value })) {
    throw new QrexecProtocolError('malformed QUBESRPC command');
  }
  return { serviceAndArg, source, requestedTarget: { type, value } };
}

/** A frame header's check, before any of its payload is taken: a known type, a length within the cap for it. */
function checkHeader(untrustedType: number, untrustedLen: number, allowUnknownTypes: boolean): PendingHeader {
  if (!allowUnknownTypes && !KNOWN_TYPES.has(untrustedType)) {
    throw new QrexecProtocolError(`unknown frame type 0x${untrustedType.toString(16)}`);
  }
  const cap = maxPayloadFor(untrustedType);
  if (untrustedLen > cap) {
    throw new QrexecProtocolError(`frame type 0x${untrustedType.toString(16)} announces ${untrustedLen} bytes, cap is ${cap}`);
  }
  return { type: untrustedType, len: untrustedLen };
}

/** A piece of a frame from StreamingFrameParser. */
export interface FramePiece {
  readonly type: number;
  /** Payload bytes of this piece (for DATA_STDIN/STDOUT/STDERR possibly a part of the payload). */
  readonly data: Buffer;
  /** The payload length the frame's header announced (0: an EOF frame). */
  readonly frameLength: number;
  /** This piece ends its frame. */
  readonly last: boolean;
}

/**
 * Like FrameParser, but the payload of DATA_STDIN/STDOUT/STDERR frames is handed out in pieces as
 * it arrives, as views of the pushed chunks: never buffered whole, never copied. Used where bulk
 * data passes through (an agent feeding a service's stdin). Other frames come whole, as one last
 * piece. Each header is checked (known type, length within the cap for its type) before any of
 * its payload is taken; any violation throws QrexecProtocolError and poisons the parser.
 */
export class StreamingFrameParser {
  readonly #header = Buffer.alloc(FRAME_HEADER_SIZE);
  #headerFill = 0;
  /** The frame whose payload is coming in. */
  #cur: { type: number; len: number; remaining: number; parts: Buffer[] | undefined } | undefined;
  #poisoned = false;

  push(untrustedChunk: Buffer): FramePiece[] {
    if (this.#poisoned) throw new QrexecProtocolError('parser unusable after an earlier protocol error');
    const pieces: FramePiece[] = [];
    let off = 0;
    try {
      while (off < untrustedChunk.length) {
        const cur = this.#cur;
        if (cur === undefined) {
          const n = Math.min(FRAME_HEADER_SIZE - this.#headerFill, untrustedChunk.length - off);
          untrustedChunk.copy(this.#header, this.#headerFill, off, off + n);
          this.#headerFill += n;
          off += n;
          if (this.#headerFill < FRAME_HEADER_SIZE) break;
          this.#headerFill = 0;
          const { type, len } = checkHeader(this.#header.readUInt32LE(0), this.#header.readUInt32LE(4), false);
          if (len === 0) {
            pieces.push({ type, data: EMPTY_BUFFER, frameLength: 0, last: true });
          } else {
            const streamed = type === MSG_DATA_STDIN || type === MSG_DATA_STDOUT || type === MSG_DATA_STDERR;
            this.#cur = { type, len, remaining: len, parts: streamed ? undefined : [] };
          }
          continue;
        }
        const n = Math.min(cur.remaining, untrustedChunk.length - off);
        const piece = untrustedChunk.subarray(off, off + n);
        off += n;
        cur.remaining -= n;
        const last = cur.remaining === 0;
        if (cur.parts === undefined) {
          pieces.push({ type: cur.type, data: piece, frameLength: cur.len, last });
        } else {
          cur.parts.push(piece);
          if (last) pieces.push({ type: cur.type, data: Buffer.concat(cur.parts), frameLength: cur.len, last });
        }
        if (last) this.#cur = undefined;
      }
    } catch (err) {
      this.#poisoned = true;
      this.#cur = undefined;
      throw err;
    }
    return pieces;
  }

  /** Bytes of a frame begun but not finished (0 exactly at a frame boundary). */
  get pending(): number {
    return this.#headerFill + (this.#cur === undefined ? 0 : FRAME_HEADER_SIZE + this.#cur.len - this.#cur.remaining);
  }
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
    const frames: Frame[] = [];
    for (let f = this.nextFrame(untrustedChunk); f !== undefined; f = this.nextFrame(EMPTY_BUFFER)) frames.push(f);
    return frames;
  }

  /**
   * Feeds bytes and returns at most one frame (the first complete one); the bytes after it stay
   * buffered, unparsed, for takeBuffered(). Used to read the first frame of a connection that
   * may then switch to a plain relay.
   */
  nextFrame(untrustedChunk: Buffer): Frame | undefined {
    if (this.#poisoned) throw new QrexecProtocolError('parser unusable after an earlier protocol error');
    if (untrustedChunk.length > 0) {
      this.#chunks.push(untrustedChunk);
      this.#size += untrustedChunk.length;
    }
    try {
      if (this.#header === undefined) {
        if (this.#size < FRAME_HEADER_SIZE) return undefined;
        this.#header = this.#checkHeader(this.#take(FRAME_HEADER_SIZE));
      }
      if (this.#size < this.#header.len) return undefined;
      const frame = { type: this.#header.type, payload: this.#take(this.#header.len) };
      this.#header = undefined;
      return frame;
    } catch (err) {
      this.#poison();
      throw err;
    }
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
    return checkHeader(untrustedHeader.readUInt32LE(0), untrustedHeader.readUInt32LE(4), this.#allowUnknownTypes);
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
