// qrexec frame codec against the Qubes qrexec v3 wire format (u32 LE type, u32 LE len, payload)
// plus the Bulkhead DATA_CONNECT/SHUTDOWN frames. Expected bytes are written out by hand from
// the format, never produced by the code under test.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  FrameParser,
  MAX_CONTROL_PAYLOAD,
  MAX_DATA_CHUNK,
  MSG_CONNECTION_TERMINATED,
  MSG_DATA_CONNECT,
  MSG_DATA_EXIT_CODE,
  MSG_DATA_STDERR,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  MSG_EXEC_CMDLINE,
  MSG_HELLO,
  MSG_JUST_EXEC,
  MSG_SERVICE_CONNECT,
  MSG_SERVICE_REFUSED,
  MSG_SHUTDOWN,
  MSG_TRIGGER_SERVICE,
  MSG_TRIGGER_SERVICE3,
  QREXEC_PROTOCOL_VERSION,
  QrexecProtocolError,
  encodeDataConnect,
  encodeExecParams,
  encodeExitCode,
  encodeFrame,
  encodeHello,
  isDataType,
  parseDataConnect,
  parseExecParams,
  parseExitCode,
  parseHello,
  type Frame,
} from './qrexec.js';

function hex(text: string): Buffer {
  return Buffer.from(text.replaceAll(' ', ''), 'hex');
}

function isProtocolError(err: unknown): boolean {
  return err instanceof QrexecProtocolError;
}

function isRangeError(err: unknown): boolean {
  return err instanceof RangeError;
}

/** A header written by hand: u32 LE type, u32 LE len. */
function header(type: number, len: number): Buffer {
  const out = Buffer.alloc(8);
  out.writeUInt32LE(type, 0);
  out.writeUInt32LE(len, 4);
  return out;
}

// Restated from the format, not imported from the code.
const ALL_TYPES = [
  0x190, 0x191, 0x192, 0x193, 0x200, 0x201, 0x202, 0x203, 0x210, 0x211, 0x212, 0x300, 0x1000, 0x1001,
] as const;
const DATA_TYPES: readonly number[] = [0x190, 0x191, 0x192, 0x193];
const CAP = 65536;

// --- constants ----------------------------------------------------------------------------

void describe('constants', () => {
  void test('message types have the qrexec v3 values', () => {
    assert.deepEqual(
      [
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
      ],
      [...ALL_TYPES],
    );
  });

  void test('protocol version and caps', () => {
    assert.equal(QREXEC_PROTOCOL_VERSION, 3);
    assert.equal(MAX_DATA_CHUNK, 65536);
    assert.equal(MAX_CONTROL_PAYLOAD, 65536);
  });

  void test('isDataType covers exactly the MSG_DATA_* stream types', () => {
    for (const type of ALL_TYPES) assert.equal(isDataType(type), DATA_TYPES.includes(type), `type 0x${type.toString(16)}`);
    assert.equal(isDataType(0x18f), false);
    assert.equal(isDataType(0x194), false);
  });
});

// --- encoders: golden bytes ---------------------------------------------------------------

void describe('encodeFrame', () => {
  void test('header is type then len, little-endian, then the payload', () => {
    assert.deepEqual(encodeFrame(MSG_DATA_STDOUT, Buffer.from('hi', 'ascii')), hex('91010000 02000000 6869'));
    assert.deepEqual(encodeFrame(MSG_TRIGGER_SERVICE3, Buffer.from([0, 0xff])), hex('12020000 02000000 00ff'));
  });

  void test('an empty payload is a bare header (SHUTDOWN, CONNECTION_TERMINATED)', () => {
    assert.deepEqual(encodeFrame(MSG_SHUTDOWN), hex('01100000 00000000'));
    assert.deepEqual(encodeFrame(MSG_DATA_STDIN, Buffer.alloc(0)), hex('90010000 00000000'));
  });

  void test('accepts a Uint8Array payload', () => {
    assert.deepEqual(encodeFrame(MSG_DATA_STDERR, new Uint8Array([1, 2, 3])), hex('92010000 03000000 010203'));
  });

  void test('exactly the cap is accepted, one more byte is a RangeError', () => {
    assert.equal(encodeFrame(MSG_DATA_STDOUT, Buffer.alloc(CAP)).length, 8 + CAP);
    assert.equal(encodeFrame(MSG_EXEC_CMDLINE, Buffer.alloc(CAP)).length, 8 + CAP);
    assert.throws(() => encodeFrame(MSG_DATA_STDOUT, Buffer.alloc(CAP + 1)), isRangeError);
    assert.throws(() => encodeFrame(MSG_EXEC_CMDLINE, Buffer.alloc(CAP + 1)), isRangeError);
  });

  void test('a type that is not a u32 is a RangeError', () => {
    for (const type of [-1, 2 ** 32, 1.5, Number.NaN]) assert.throws(() => encodeFrame(type), isRangeError);
  });
});

void describe('encodeHello / parseHello', () => {
  void test('golden bytes', () => {
    assert.deepEqual(encodeHello(), Buffer.from('000300000400000003000000', 'hex'));
    assert.deepEqual(encodeHello(2), hex('00030000 04000000 02000000'));
  });

  void test('parseHello reads a u32 LE and requires exactly 4 bytes', () => {
    assert.equal(parseHello(hex('03000000')), 3);
    assert.equal(parseHello(hex('ffffffff')), 0xffffffff);
    for (const bad of ['', '03', '030000', '0300000000']) assert.throws(() => parseHello(hex(bad)), isProtocolError);
  });
});

void describe('encodeExecParams / parseExecParams', () => {
  void test('golden bytes: domain, port, cmdline, NUL', () => {
    assert.deepEqual(
      encodeExecParams(2, 513, 'user:QUBESRPC qubes.Test+ dom0'),
      Buffer.concat([hex('02000000 01020000'), Buffer.from('user:QUBESRPC qubes.Test+ dom0', 'ascii'), hex('00')]),
    );
    assert.deepEqual(encodeExecParams(0, 0, ''), hex('00000000 00000000 00'));
    assert.deepEqual(encodeExecParams(0xffffffff, 1, 'é'), hex('ffffffff 01000000 c3a9 00'));
  });

  void test('parses a valid payload', () => {
    assert.deepEqual(parseExecParams(Buffer.concat([hex('05000000 10000000'), Buffer.from('root:true', 'ascii'), hex('00')])), {
      connectDomain: 5,
      connectPort: 16,
      cmdline: 'root:true',
    });
    assert.deepEqual(parseExecParams(hex('00000000 00000000 00')), { connectDomain: 0, connectPort: 0, cmdline: '' });
    assert.equal(parseExecParams(hex('00000000 00000000 f09f9880 00')).cmdline, '\u{1F600}');
  });

  void test('encoder refuses NUL, lone surrogates, non-u32 numbers and oversize payloads', () => {
    assert.throws(() => encodeExecParams(0, 0, 'a\0b'), isRangeError);
    assert.throws(() => encodeExecParams(0, 0, 'a\uD800'), isRangeError);
    assert.throws(() => encodeExecParams(0, 0, '\uDC00a'), isRangeError);
    assert.throws(() => encodeExecParams(-1, 0, 'a'), isRangeError);
    assert.throws(() => encodeExecParams(0, 2 ** 32, 'a'), isRangeError);
    assert.equal(encodeExecParams(0, 0, 'a'.repeat(CAP - 9)).length, CAP);
    assert.throws(() => encodeExecParams(0, 0, 'a'.repeat(CAP - 8)), isRangeError);
  });

  const bad: readonly (readonly [string, string])[] = [
    ['empty', ''],
    ['header only', '00000000 00000000'],
    ['8 bytes short of a header plus NUL', '00000000 000000 00'],
    ['no terminating NUL', '00000000 00000000 61'],
    ['NUL inside the cmdline', '00000000 00000000 6100 62 00'],
    ['two NULs at the end', '00000000 00000000 61 0000'],
    ['truncated UTF-8 sequence', '00000000 00000000 c3 00'],
    ['lone continuation byte', '00000000 00000000 80 00'],
    ['overlong NUL (C0 80)', '00000000 00000000 c080 00'],
    ['encoded surrogate (ED A0 80)', '00000000 00000000 eda080 00'],
    ['0xFF byte', '00000000 00000000 ff 00'],
  ];
  for (const [name, bytes] of bad) {
    void test(`parse rejects: ${name}`, () => {
      assert.throws(() => parseExecParams(hex(bytes)), isProtocolError);
    });
  }
});

void describe('encodeExitCode / parseExitCode', () => {
  void test('golden bytes: the whole DATA_EXIT_CODE frame, int32 LE', () => {
    assert.deepEqual(encodeExitCode(0), hex('93010000 04000000 00000000'));
    assert.deepEqual(encodeExitCode(127), hex('93010000 04000000 7f000000'));
    assert.deepEqual(encodeExitCode(-1), hex('93010000 04000000 ffffffff'));
    assert.deepEqual(encodeExitCode(-2147483648), hex('93010000 04000000 00000080'));
  });

  void test('parse returns a signed int32', () => {
    assert.equal(parseExitCode(hex('01000000')), 1);
    assert.equal(parseExitCode(hex('ffffffff')), -1);
    assert.equal(parseExitCode(hex('00000080')), -2147483648);
    assert.equal(parseExitCode(hex('ffffff7f')), 2147483647);
  });

  void test('parse requires exactly 4 bytes; encode requires an int32', () => {
    for (const bad of ['', '01', '010000', '0100000000']) assert.throws(() => parseExitCode(hex(bad)), isProtocolError);
    for (const bad of [2 ** 31, -(2 ** 31) - 1, 0.5, Number.NaN]) assert.throws(() => encodeExitCode(bad), isRangeError);
  });
});

void describe('encodeDataConnect / parseDataConnect', () => {
  void test('golden bytes: the whole DATA_CONNECT frame with a u32 LE port', () => {
    assert.deepEqual(encodeDataConnect(513), hex('00100000 04000000 01020000'));
    assert.deepEqual(encodeDataConnect(0xffffffff), hex('00100000 04000000 ffffffff'));
  });

  void test('parse requires exactly 4 bytes', () => {
    assert.equal(parseDataConnect(hex('01020000')), 513);
    for (const bad of ['', '01', '010200', '0102000000']) assert.throws(() => parseDataConnect(hex(bad)), isProtocolError);
    assert.throws(() => encodeDataConnect(-1), isRangeError);
  });
});

// --- frame parser ------------------------------------------------------------------------

void describe('FrameParser', () => {
  void test('one frame in one chunk', () => {
    const parser = new FrameParser();
    assert.deepEqual(parser.push(hex('00030000 04000000 03000000')), [{ type: MSG_HELLO, payload: hex('03000000') }]);
    assert.equal(parser.pending, 0);
  });

  void test('several frames in one chunk, including empty payloads', () => {
    const parser = new FrameParser();
    const frames = parser.push(hex('91010000 02000000 6869 11020000 00000000 01100000 00000000 90010000 01000000'));
    assert.deepEqual(frames, [
      { type: MSG_DATA_STDOUT, payload: hex('6869') },
      { type: MSG_CONNECTION_TERMINATED, payload: Buffer.alloc(0) },
      { type: MSG_SHUTDOWN, payload: Buffer.alloc(0) },
    ]);
    // The last header (DATA_STDIN, len 1) is decoded; its payload is still missing.
    assert.equal(parser.pending, 8);
    assert.deepEqual(parser.push(hex('7a')), [{ type: MSG_DATA_STDIN, payload: hex('7a') }]);
    assert.equal(parser.pending, 0);
  });

  void test('byte at a time', () => {
    const parser = new FrameParser();
    const input = hex('92010000 03000000 616263');
    for (let i = 0; i < input.length - 1; i++) {
      assert.deepEqual(parser.push(input.subarray(i, i + 1)), []);
      assert.equal(parser.pending, i + 1);
    }
    assert.deepEqual(parser.push(input.subarray(input.length - 1)), [{ type: MSG_DATA_STDERR, payload: hex('616263') }]);
  });

  void test('empty pushes are harmless', () => {
    const parser = new FrameParser();
    assert.deepEqual(parser.push(Buffer.alloc(0)), []);
    assert.deepEqual(parser.push(hex('0010')), []);
    assert.deepEqual(parser.push(Buffer.alloc(0)), []);
    assert.deepEqual(parser.push(hex('0000 04000000 01000000')), [{ type: MSG_DATA_CONNECT, payload: hex('01000000') }]);
  });

  void test('a frame of exactly the cap is accepted', () => {
    const parser = new FrameParser();
    assert.deepEqual(parser.push(header(MSG_DATA_STDOUT, CAP)), []);
    assert.equal(parser.pending, 8);
    assert.deepEqual(parser.push(Buffer.alloc(CAP - 1, 0x61)), []);
    const frames = parser.push(Buffer.from([0x62]));
    assert.equal(frames.length, 1);
    assert.equal(frames[0]!.payload.length, CAP);
    assert.equal(frames[0]!.payload[CAP - 1], 0x62);
  });

  void test('oversize len is rejected from the 8 header bytes alone', () => {
    for (const type of ALL_TYPES) {
      assert.throws(() => new FrameParser().push(header(type, CAP + 1)), isProtocolError, `type 0x${type.toString(16)}`);
      assert.throws(() => new FrameParser().push(header(type, 0xffffffff)), isProtocolError);
    }
  });

  void test('an oversize header split across pushes is rejected when its last byte arrives', () => {
    const parser = new FrameParser();
    const head = header(MSG_DATA_STDOUT, CAP + 1);
    assert.deepEqual(parser.push(head.subarray(0, 7)), []);
    assert.throws(() => parser.push(head.subarray(7)), isProtocolError);
  });

  void test('unknown types are rejected by default', () => {
    for (const type of [0, 0x18f, 0x194, 0x204, 0x301, 0x1003, 0xffffffff]) {
      assert.throws(() => new FrameParser().push(header(type, 0)), isProtocolError);
    }
  });

  void test('allowUnknownTypes accepts them, still capped at MAX_CONTROL_PAYLOAD', () => {
    const parser = new FrameParser({ allowUnknownTypes: true });
    assert.deepEqual(parser.push(hex('04030000 01000000 2a')), [{ type: 0x304, payload: hex('2a') }]);
    assert.throws(() => new FrameParser({ allowUnknownTypes: true }).push(header(0x304, CAP + 1)), isProtocolError);
  });

  void test('after an error the parser is poisoned', () => {
    const parser = new FrameParser();
    assert.throws(() => parser.push(header(0x999, 0)), isProtocolError);
    assert.equal(parser.poisoned, true);
    assert.equal(parser.pending, 0);
    assert.throws(() => parser.push(encodeHello()), isProtocolError);
    assert.throws(() => parser.push(Buffer.alloc(0)), isProtocolError);
  });

  void test('frames before a bad header in the same chunk are not returned (the stream is dead)', () => {
    const parser = new FrameParser();
    assert.throws(() => parser.push(Buffer.concat([encodeHello(), header(MSG_HELLO, CAP + 1)])), isProtocolError);
    assert.equal(parser.poisoned, true);
  });

  void test('many tiny chunks of a maximal frame parse in linear time', () => {
    const parser = new FrameParser();
    const input = Buffer.concat([header(MSG_DATA_STDIN, CAP), Buffer.alloc(CAP, 7)]);
    let frames: Frame[] = [];
    for (let i = 0; i < input.length; i += 3) frames = frames.concat(parser.push(input.subarray(i, i + 3)));
    assert.equal(frames.length, 1);
    assert.deepEqual(frames[0]!.payload, Buffer.alloc(CAP, 7));
  });
});

// --- properties --------------------------------------------------------------------------

const knownTypeArb = fc.constantFrom(...ALL_TYPES);
const frameArb: fc.Arbitrary<Frame> = fc
  .tuple(knownTypeArb, fc.uint8Array({ maxLength: 300 }))
  .map(([type, payload]) => ({ type, payload: Buffer.from(payload) }));

/** Splits `input` at the given (arbitrary) points. */
function split(input: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (input.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const point of points) {
    chunks.push(input.subarray(start, point));
    start = point;
  }
  chunks.push(input.subarray(start));
  return chunks;
}

function pushAll(parser: FrameParser, chunks: readonly Buffer[]): Frame[] {
  const frames: Frame[] = [];
  for (const chunk of chunks) frames.push(...parser.push(chunk));
  return frames;
}

const plain = (frames: readonly Frame[]): { type: number; payload: Buffer }[] =>
  frames.map((f) => ({ type: f.type, payload: Buffer.from(f.payload) }));

/** Hostile stream pieces: random bytes, headers with any len, headers with plausible lens, filler. */
const hostilePieceArb: fc.Arbitrary<Buffer> = fc.oneof(
  fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
  fc.tuple(fc.oneof(knownTypeArb, fc.nat()), fc.oneof(fc.nat(), fc.integer({ min: 0, max: 0xffffffff }))).map(([t, l]) => header(t, l)),
  fc.tuple(knownTypeArb, fc.integer({ min: CAP - 64, max: CAP + 64 })).map(([t, l]) => header(t, l)),
  fc.tuple(knownTypeArb, fc.nat({ max: 64 })).map(([t, l]) => header(t, l)),
  fc.tuple(fc.integer({ min: 1, max: 70000 }), fc.nat({ max: 255 })).map(([n, b]) => Buffer.alloc(n, b)),
);

void describe('properties', () => {
  void test('(a) valid frames split at arbitrary points parse back to the same frames', () => {
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 30 }), (frames, cuts) => {
        const stream = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.payload)));
        const parser = new FrameParser();
        assert.deepEqual(plain(pushAll(parser, split(stream, cuts))), plain(frames));
        assert.equal(parser.pending, 0);
      }),
      { numRuns: 300 },
    );
  });

  void test('(a) the same with unknown types allowed', () => {
    const anyFrameArb = fc
      .tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.uint8Array({ maxLength: 100 }))
      .map(([type, payload]) => ({ type, payload: Buffer.from(payload) }));
    fc.assert(
      fc.property(fc.array(anyFrameArb, { maxLength: 8 }), fc.array(fc.nat(), { maxLength: 20 }), (frames, cuts) => {
        const stream = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.payload)));
        assert.deepEqual(plain(pushAll(new FrameParser({ allowUnknownTypes: true }), split(stream, cuts))), plain(frames));
      }),
      { numRuns: 200 },
    );
  });

  void test('(b) hostile bytes: only QrexecProtocolError, bounded buffering, valid frames, then poisoned', () => {
    fc.assert(
      fc.property(fc.array(hostilePieceArb, { maxLength: 10 }), fc.array(fc.nat(), { maxLength: 10 }), fc.boolean(), (pieces, cuts, allowUnknown) => {
        const parser = new FrameParser({ allowUnknownTypes: allowUnknown });
        for (const chunk of split(Buffer.concat(pieces), cuts)) {
          let frames: Frame[];
          try {
            frames = parser.push(chunk);
          } catch (err) {
            assert.ok(err instanceof QrexecProtocolError, `unexpected error: ${String(err)}`);
            assert.equal(parser.poisoned, true);
            assert.throws(() => parser.push(Buffer.alloc(0)), isProtocolError);
            assert.throws(() => parser.push(encodeHello()), isProtocolError);
            return;
          }
          assert.ok(parser.pending < 8 + CAP, `pending ${parser.pending}`);
          for (const frame of frames) {
            if (!allowUnknown) assert.ok((ALL_TYPES as readonly number[]).includes(frame.type));
            assert.ok(frame.payload.length <= CAP);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  void test('(b) pure random bytes never throw anything but QrexecProtocolError', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }), fc.boolean(), (chunks, allowUnknown) => {
        const parser = new FrameParser({ allowUnknownTypes: allowUnknown });
        try {
          for (const chunk of chunks) {
            parser.push(Buffer.from(chunk));
            assert.ok(parser.pending < 8 + CAP);
          }
        } catch (err) {
          assert.ok(err instanceof QrexecProtocolError, `unexpected error: ${String(err)}`);
        }
      }),
      { numRuns: 300 },
    );
  });

  /** Runs `parse`; it must return or throw QrexecProtocolError. Returns the result or undefined. */
  function tryParse<T>(parse: () => T): T | undefined {
    try {
      return parse();
    } catch (err) {
      assert.ok(err instanceof QrexecProtocolError, `unexpected error: ${String(err)}`);
      return undefined;
    }
  }

  void test('(c) payload parsers on arbitrary bytes return or throw QrexecProtocolError; accepted input re-encodes exactly', () => {
    // Half the cases get an 8-byte prefix and a trailing NUL so the UTF-8 and NUL checks are reached.
    const inputArb = fc.oneof(
      fc.uint8Array({ maxLength: 24 }).map((a) => Buffer.from(a)),
      fc
        .tuple(fc.uint8Array({ minLength: 8, maxLength: 8 }), fc.uint8Array({ maxLength: 24 }))
        .map(([head, body]) => Buffer.concat([head, body, Buffer.from([0])])),
    );
    fc.assert(
      fc.property(inputArb, (input) => {
        const exec = tryParse(() => parseExecParams(input));
        if (exec !== undefined) assert.deepEqual(encodeExecParams(exec.connectDomain, exec.connectPort, exec.cmdline), input);
        const code = tryParse(() => parseExitCode(input));
        if (code !== undefined) assert.deepEqual(encodeExitCode(code).subarray(8), input);
        const version = tryParse(() => parseHello(input));
        if (version !== undefined) assert.deepEqual(encodeHello(version).subarray(8), input);
        const port = tryParse(() => parseDataConnect(input));
        if (port !== undefined) assert.deepEqual(encodeDataConnect(port).subarray(8), input);
      }),
      { numRuns: 1000 },
    );
  });

  void test('encodeExecParams round-trips any string without NUL', () => {
    const u32 = fc.integer({ min: 0, max: 0xffffffff });
    const cmdlineArb = fc.oneof(fc.string({ unit: 'binary', maxLength: 60 }), fc.string({ unit: 'grapheme', maxLength: 20 })).filter((s) => !s.includes('\0'));
    fc.assert(
      fc.property(u32, u32, cmdlineArb, (connectDomain, connectPort, cmdline) => {
        const payload = encodeExecParams(connectDomain, connectPort, cmdline);
        assert.deepEqual(parseExecParams(payload), { connectDomain, connectPort, cmdline });
        // And through a frame and the parser.
        const frames = new FrameParser().push(encodeFrame(MSG_EXEC_CMDLINE, payload));
        assert.equal(frames.length, 1);
        assert.deepEqual(parseExecParams(frames[0]!.payload).cmdline, cmdline);
      }),
      { numRuns: 500 },
    );
  });

  void test('exit codes round-trip over the whole int32 range', () => {
    fc.assert(
      fc.property(fc.integer({ min: -0x80000000, max: 0x7fffffff }), (code) => {
        assert.equal(parseExitCode(encodeExitCode(code).subarray(8)), code);
      }),
    );
  });
});

void describe('FrameParser.takeBuffered', () => {
  void test('hands back exactly the bytes not yet returned, a decoded header included', () => {
    const parser = new FrameParser();
    const a = encodeFrame(MSG_DATA_STDOUT, Buffer.from('abc'));
    const b = encodeFrame(MSG_DATA_STDERR, Buffer.from('defgh'));
    const frames = parser.push(Buffer.concat([a, b.subarray(0, 10)]));
    assert.equal(frames.length, 1);
    assert.deepEqual(parser.takeBuffered(), b.subarray(0, 10));
    assert.equal(parser.pending, 0);
    assert.deepEqual(parser.push(b), [{ type: MSG_DATA_STDERR, payload: Buffer.from('defgh') }]);
  });

  void test('any split: frames returned + takeBuffered = the input', () => {
    fc.assert(fc.property(fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 6 }), fc.nat(), (payloads, cut) => {
      const whole = Buffer.concat(payloads.map((p) => encodeFrame(MSG_DATA_STDOUT, p)));
      const at = whole.length === 0 ? 0 : cut % whole.length;
      const parser = new FrameParser();
      const frames = parser.push(whole.subarray(0, at));
      const rebuilt = Buffer.concat([...frames.map((f) => encodeFrame(f.type, f.payload)), parser.takeBuffered()]);
      assert.deepEqual(rebuilt, whole.subarray(0, at));
    }));
  });
});
