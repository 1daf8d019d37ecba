// Admin API wire format (Qubes qubesd framing). Spec: docs/protocol/admin-api.md.
//
// Request:  `METHOD+ARG SOURCE DESTTYPE DEST\0PAYLOAD`, then the client half-closes.
// Replies:  `0\0CONTENT` | `1\0SUBJECT\0EVENT\0(K\0V\0)*\0` | `2\0TYPE\0TRACEBACK\0MESSAGE\0`.
//
// Everything a client sends is untrusted: this module checks lengths before buffering and
// validates every header field before anything else sees it.

/** The whole request (header + payload) may not exceed this; larger → connection aborted. */
export const MAX_REQUEST_BYTES = 65536;

/** Raised for any framing violation; the server aborts the connection without a reply. */
export class FramingError extends Error {
  override readonly name = 'FramingError';
}

export type DestType = 'name' | 'keyword';

export interface AdminRequest {
  readonly method: string;
  /** Empty when the request carried no argument (`admin.vm.List+`). */
  readonly arg: string;
  readonly source: string;
  readonly destType: DestType;
  readonly dest: string;
  readonly payload: Buffer;
}

const METHOD_RE = /^[A-Za-z][A-Za-z0-9_.]*$/;
// Arguments carry property/feature/tag/volume names, templates, device identifiers.
const ARG_RE = /^[A-Za-z0-9_.:+@-]*$/;
// A qube name, `uuid:<uuid>`, or a keyword.
const TOKEN_RE = /^[A-Za-z0-9_.:-]+$/;
const MAX_FIELD = 255;

/**
 * Accumulates request bytes from a socket, refusing to buffer past the 64 KiB cap.
 * `push` returns false (and keeps nothing more) once the cap would be exceeded.
 */
export class RequestAccumulator {
  readonly #chunks: Buffer[] = [];
  #size = 0;
  #overflowed = false;

  push(untrustedChunk: Buffer): boolean {
    if (this.#overflowed) return false;
    if (this.#size + untrustedChunk.length > MAX_REQUEST_BYTES) {
      this.#overflowed = true;
      this.#chunks.length = 0;
      return false;
    }
    this.#chunks.push(untrustedChunk);
    this.#size += untrustedChunk.length;
    return true;
  }

  get overflowed(): boolean {
    return this.#overflowed;
  }

  take(): Buffer {
    return Buffer.concat(this.#chunks, this.#size);
  }
}

/** Parses one complete request. Throws FramingError on anything malformed. */
export function parseAdminRequest(untrustedBytes: Buffer): AdminRequest {
  if (untrustedBytes.length > MAX_REQUEST_BYTES) throw new FramingError('request too large');
  const nul = untrustedBytes.indexOf(0);
  if (nul < 0) throw new FramingError('no NUL after the header');
  const untrustedHeaderBytes = untrustedBytes.subarray(0, nul);
  for (const byte of untrustedHeaderBytes) {
    if (byte < 0x20 || byte > 0x7e) throw new FramingError('header is not printable ASCII');
  }
  const untrustedHeader = untrustedHeaderBytes.toString('ascii');
  const fields = untrustedHeader.split(' ');
  if (fields.length !== 4) throw new FramingError('header must have 4 fields');
  const [untrustedMethodArg, untrustedSource, untrustedDestType, untrustedDest] = fields as [
    string,
    string,
    string,
    string,
  ];
  const plus = untrustedMethodArg.indexOf('+');
  if (plus < 0) throw new FramingError('method field without "+"');
  const method = untrustedMethodArg.slice(0, plus);
  const arg = untrustedMethodArg.slice(plus + 1);
  if (method.length > MAX_FIELD || !METHOD_RE.test(method)) throw new FramingError('bad method name');
  if (arg.length > MAX_FIELD || !ARG_RE.test(arg)) throw new FramingError('bad argument');
  if (untrustedSource.length > MAX_FIELD || !TOKEN_RE.test(untrustedSource)) {
    throw new FramingError('bad source');
  }
  if (untrustedDestType !== 'name' && untrustedDestType !== 'keyword') {
    throw new FramingError('bad destination type');
  }
  if (untrustedDest.length > MAX_FIELD || !TOKEN_RE.test(untrustedDest)) {
    throw new FramingError('bad destination');
  }
  return {
    method,
    arg,
    source: untrustedSource,
    destType: untrustedDestType,
    dest: untrustedDest,
    payload: untrustedBytes.subarray(nul + 1),
  };
}

/** Builds a request exactly as qubesadmin sends it. */
export function encodeAdminRequest(req: {
  method: string;
  arg?: string;
  source?: string;
  dest: string;
  destType?: DestType;
  payload?: Buffer | string;
}): Buffer {
  const header = `${req.method}+${req.arg ?? ''} ${req.source ?? 'dom0'} ${req.destType ?? 'name'} ${req.dest}`;
  const payload = typeof req.payload === 'string' ? Buffer.from(req.payload, 'utf8') : (req.payload ?? Buffer.alloc(0));
  return Buffer.concat([Buffer.from(header, 'ascii'), Buffer.from([0]), payload]);
}

const OK_HEADER = Buffer.from('0\0', 'ascii');
const EVENT_HEADER = Buffer.from('1\0', 'ascii');
const EXCEPTION_HEADER = Buffer.from('2\0', 'ascii');

export function encodeOk(content?: string | Buffer): Buffer {
  if (content === undefined || content.length === 0) return Buffer.from(OK_HEADER);
  return Buffer.concat([OK_HEADER, typeof content === 'string' ? Buffer.from(content, 'utf8') : content]);
}

/** NUL would break the framing; event fields come from validated state, this is a backstop. */
function eventField(value: string): string {
  return value.includes('\0') ? value.replaceAll('\0', '') : value;
}

export function encodeEvent(subject: string, event: string, kwargs: ReadonlyArray<readonly [string, string]>): Buffer {
  let body = `${eventField(subject)}\0${eventField(event)}\0`;
  // An empty key would read as the end of the event; such a pair is dropped.
  for (const [key, value] of kwargs) {
    const safeKey = eventField(key);
    if (safeKey !== '') body += `${safeKey}\0${eventField(value)}\0`;
  }
  body += '\0';
  return Buffer.concat([EVENT_HEADER, Buffer.from(body, 'utf8')]);
}

/**
 * qubesadmin formats the message with Python's `%` operator even with zero arguments, so a bare
 * `%` would crash it: double it. The traceback field stays empty (we never send tracebacks).
 * NUL is dropped from both fields (as for events): it would shift the client's field split.
 */
export function encodeException(type: string, message: string): Buffer {
  const safeType = type.replaceAll('\0', '');
  const safeMessage = message.replaceAll('\0', '').replaceAll('%', '%%');
  return Buffer.concat([EXCEPTION_HEADER, Buffer.from(`${safeType}\0\0${safeMessage}\0`, 'utf8')]);
}

export type AdminReply =
  | { readonly kind: 'ok'; readonly content: Buffer }
  | { readonly kind: 'exception'; readonly type: string; readonly message: string };

export class ReplyFormatError extends Error {
  override readonly name = 'ReplyFormatError';
}

/** Parses a complete non-event reply (client side). */
export function parseAdminReply(bytes: Buffer): AdminReply {
  if (bytes.length === 0) throw new ReplyFormatError('empty reply (access denied or protocol error)');
  if (bytes.length < 2 || bytes[1] !== 0) throw new ReplyFormatError('invalid reply header');
  if (bytes[0] === 0x30) return { kind: 'ok', content: bytes.subarray(2) };
  if (bytes[0] === 0x32) {
    const parts = bytes.subarray(2).toString('utf8').split('\0');
    if (parts.length < 4) throw new ReplyFormatError('truncated exception reply');
    const [type, , rawMessage] = parts as [string, string, string];
    return { kind: 'exception', type, message: rawMessage.replaceAll('%%', '%') };
  }
  throw new ReplyFormatError('unexpected reply type');
}

export interface AdminEvent {
  readonly subject: string;
  readonly event: string;
  readonly kwargs: ReadonlyArray<readonly [string, string]>;
}

/** Incremental parser for an admin.Events stream (client side). */
export class EventStreamParser {
  #buffer: Buffer = Buffer.alloc(0);

  /** Feeds bytes; returns the events completed by them. */
  push(chunk: Buffer): AdminEvent[] {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    const events: AdminEvent[] = [];
    for (;;) {
      const parsed = this.#next();
      if (parsed === undefined) break;
      events.push(parsed);
    }
    return events;
  }

  #next(): AdminEvent | undefined {
    const buf = this.#buffer;
    if (buf.length < 2) return undefined;
    if (buf[0] !== 0x31 || buf[1] !== 0) throw new ReplyFormatError('event stream: expected "1\\0"');
    const fields: string[] = [];
    let pos = 2;
    for (;;) {
      const nul = buf.indexOf(0, pos);
      if (nul < 0) return undefined;
      const field = buf.subarray(pos, nul).toString('utf8');
      pos = nul + 1;
      // subject and event always present; after them an empty key ends the event.
      if (fields.length >= 2 && (fields.length - 2) % 2 === 0 && field === '') break;
      fields.push(field);
    }
    this.#buffer = buf.subarray(pos);
    const [subject, event, ...rest] = fields as [string, string, ...string[]];
    const kwargs: (readonly [string, string])[] = [];
    for (let i = 0; i + 1 < rest.length; i += 2) kwargs.push([rest[i] ?? '', rest[i + 1] ?? '']);
    return { subject, event, kwargs };
  }
}
