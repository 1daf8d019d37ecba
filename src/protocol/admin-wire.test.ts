// Admin API framing against the documented wire format (docs/protocol/admin-api.md; the
// qubesd/qubesadmin facts it restates). Expected bytes are written out by hand from the
// format, never produced by the code under test.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  EventStreamParser,
  FramingError,
  MAX_REQUEST_BYTES,
  ReplyFormatError,
  RequestAccumulator,
  encodeAdminRequest,
  encodeEvent,
  encodeException,
  encodeOk,
  parseAdminReply,
  parseAdminRequest,
  type AdminEvent,
  type AdminRequest,
} from './admin-wire.js';

/** Bytes from a string written with JS escapes (`\0` = NUL); latin1 keeps every code unit as one byte. */
function bytes(text: string): Buffer {
  return Buffer.from(text, 'latin1');
}

function isFramingError(err: unknown): boolean {
  return err instanceof FramingError;
}

// The rules a parsed request must satisfy, restated from the format (not imported from the code).
const METHOD_RULE = /^[A-Za-z][A-Za-z0-9_.]*$/;
const ARG_RULE = /^[A-Za-z0-9_.:+@-]*$/;
const TOKEN_RULE = /^[A-Za-z0-9_.:-]+$/;
const MAX_FIELD = 255;

function assertValidRequest(req: AdminRequest, input: Buffer): void {
  assert.match(req.method, METHOD_RULE);
  assert.ok(req.method.length <= MAX_FIELD);
  assert.match(req.arg, ARG_RULE);
  assert.ok(req.arg.length <= MAX_FIELD);
  assert.match(req.source, TOKEN_RULE);
  assert.ok(req.source.length <= MAX_FIELD);
  assert.ok(['name', 'keyword'].includes(req.destType));
  assert.match(req.dest, TOKEN_RULE);
  assert.ok(req.dest.length <= MAX_FIELD);
  assert.ok(input.length <= MAX_REQUEST_BYTES);
  // Nothing was dropped or reinterpreted: the fields re-frame to exactly the input.
  const header = `${req.method}+${req.arg} ${req.source} ${req.destType} ${req.dest}`;
  assert.deepEqual(Buffer.concat([bytes(header), Buffer.from([0]), req.payload]), input);
}

/** parseAdminRequest either accepts valid fields or throws FramingError; nothing else escapes. */
function checkParse(input: Buffer): void {
  let req: AdminRequest;
  try {
    req = parseAdminRequest(input);
  } catch (err) {
    assert.ok(err instanceof FramingError, `non-FramingError thrown: ${String(err)}`);
    return;
  }
  assertValidRequest(req, input);
}

// --- generators ---------------------------------------------------------------------------

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const charOf = (chars: string): fc.Arbitrary<string> => fc.constantFrom(...chars.split(''));
const methodArb = fc
  .tuple(charOf('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'), fc.string({ unit: charOf(`${ALNUM}_.`), maxLength: 40 }))
  .map(([first, rest]) => first + rest);
const argArb = fc.string({ unit: charOf(`${ALNUM}_.:+@-`), maxLength: 40 });
const tokenArb = fc.string({ unit: charOf(`${ALNUM}_.:-`), minLength: 1, maxLength: 40 });
const destTypeArb = fc.constantFrom<'name' | 'keyword'>('name', 'keyword');
const payloadArb = fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a));
const requestArb = fc.record({
  method: methodArb,
  arg: argArb,
  source: tokenArb,
  destType: destTypeArb,
  dest: tokenArb,
  payload: payloadArb,
}).map((r) => ({ ...r })); // plain objects (fc.record may build null-prototype ones)

/** Text fields with no NUL (the framing separator), any Unicode otherwise. */
const textArb = fc.string({ unit: 'grapheme', maxLength: 12 }).filter((s) => !s.includes('\0'));
const eventArb: fc.Arbitrary<AdminEvent> = fc.record({
  subject: textArb,
  event: textArb,
  kwargs: fc.array(fc.tuple(textArb.filter((k) => k !== ''), textArb), { maxLength: 4 }),
}).map((e) => ({ ...e }));

type Mutation =
  | { readonly op: 'flip'; readonly at: number; readonly value: number }
  | { readonly op: 'insert'; readonly at: number; readonly value: number }
  | { readonly op: 'delete'; readonly at: number }
  | { readonly op: 'truncate'; readonly at: number };

const interestingByte = fc.oneof(
  fc.integer({ min: 0, max: 255 }),
  fc.constantFrom(0x00, 0x20, 0x2b, 0x7f, 0x0a, 0x09, 0xff, 0x80, 0x25),
);
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), value: interestingByte }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), value: interestingByte }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
);

function mutate(input: Buffer, mutations: readonly Mutation[]): Buffer {
  let out = Buffer.from(input);
  for (const m of mutations) {
    const at = out.length === 0 ? 0 : m.at % (out.length + 1);
    switch (m.op) {
      case 'flip':
        if (at < out.length) out[at] = m.value;
        break;
      case 'insert':
        out = Buffer.concat([out.subarray(0, at), Buffer.from([m.value]), out.subarray(at)]);
        break;
      case 'delete':
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + 1)]);
        break;
      case 'truncate':
        out = out.subarray(0, at);
        break;
    }
  }
  return out;
}

// --- encoders: golden bytes ---------------------------------------------------------------

void describe('encodeAdminRequest', () => {
  void test('a call without argument keeps the "+" and an empty payload', () => {
    assert.deepEqual(encodeAdminRequest({ method: 'admin.vm.List', dest: 'dom0' }), bytes('admin.vm.List+ dom0 name dom0\0'));
  });

  void test('argument, explicit source and destination type, string payload', () => {
    assert.deepEqual(
      encodeAdminRequest({ method: 'admin.vm.property.Set', arg: 'netvm', source: 'dom0', destType: 'name', dest: 'work', payload: 'sys-firewall' }),
      bytes('admin.vm.property.Set+netvm dom0 name work\0sys-firewall'),
    );
  });

  void test('keyword destination and a binary payload with NULs are kept byte for byte', () => {
    assert.deepEqual(
      encodeAdminRequest({ method: 'admin.vm.List', dest: 'adminvm', destType: 'keyword', payload: Buffer.from([0, 1, 0, 0xff]) }),
      Buffer.concat([bytes('admin.vm.List+ dom0 keyword adminvm\0'), Buffer.from([0, 1, 0, 0xff])]),
    );
  });

  void test('a string payload is sent as UTF-8', () => {
    assert.deepEqual(
      encodeAdminRequest({ method: 'admin.vm.feature.Set', arg: 'f', dest: 'work', payload: 'é' }),
      Buffer.concat([bytes('admin.vm.feature.Set+f dom0 name work\0'), Buffer.from([0xc3, 0xa9])]),
    );
  });
});

void describe('encodeOk', () => {
  void test('no content is exactly 30 00', () => {
    assert.deepEqual(encodeOk(), Buffer.from([0x30, 0x00]));
    assert.deepEqual(encodeOk(''), Buffer.from([0x30, 0x00]));
    assert.deepEqual(encodeOk(Buffer.alloc(0)), Buffer.from([0x30, 0x00]));
  });

  void test('content follows the header as UTF-8, unterminated', () => {
    assert.deepEqual(encodeOk('dom0 class=AdminVM state=Running\n'), bytes('0\0dom0 class=AdminVM state=Running\n'));
    assert.deepEqual(encodeOk('ü'), Buffer.from([0x30, 0x00, 0xc3, 0xbc]));
    assert.deepEqual(encodeOk(Buffer.from([0, 1, 2])), Buffer.from([0x30, 0x00, 0, 1, 2]));
  });

  void test('returns a fresh buffer each time (callers may not corrupt the shared header)', () => {
    const first = encodeOk();
    first[0] = 0x58;
    assert.deepEqual(encodeOk(), Buffer.from([0x30, 0x00]));
  });
});

void describe('encodeException', () => {
  void test('type, empty traceback, message, and the mandatory trailing NUL', () => {
    assert.deepEqual(
      encodeException('QubesNoSuchPropertyError', "Invalid property 'foo' of vm1"),
      bytes("2\0QubesNoSuchPropertyError\0\0Invalid property 'foo' of vm1\0"),
    );
  });

  void test('an empty message still has all four NULs', () => {
    assert.deepEqual(encodeException('QubesException', ''), bytes('2\0QubesException\0\0\0'));
  });

  void test('"%" is doubled so the client\'s `message % ()` cannot fail', () => {
    assert.deepEqual(encodeException('QubesValueError', '100% full, %s'), bytes('2\0QubesValueError\0\x00100%% full, %%s\0'));
  });

  void test('NUL in the message or type cannot break the framing', () => {
    assert.deepEqual(encodeException('QubesValueError', 'a\0b'), bytes('2\0QubesValueError\0\0ab\0'));
    assert.deepEqual(encodeException('Qubes\0Error', 'm'), bytes('2\0QubesError\0\0m\0'));
  });

  void test('the message is UTF-8', () => {
    assert.deepEqual(encodeException('E', 'ä'), Buffer.concat([bytes('2\0E\0\0'), Buffer.from([0xc3, 0xa4, 0])]));
  });
});

void describe('encodeEvent', () => {
  void test('subject, event, key/value pairs, then an empty key', () => {
    assert.deepEqual(
      encodeEvent('work', 'property-set:netvm', [['name', 'netvm'], ['newvalue', 'sys-net'], ['oldvalue', '']]),
      bytes('1\0work\0property-set:netvm\0name\0netvm\0newvalue\0sys-net\0oldvalue\0\0\0'),
    );
    assert.deepEqual(encodeEvent('subject', 'event', [['k', 'v']]), bytes('1\0subject\0event\0k\0v\0\0'));
  });

  void test('app events have an empty subject', () => {
    assert.deepEqual(encodeEvent('', 'connection-established', []), bytes('1\0\0connection-established\0\0'));
    assert.deepEqual(encodeEvent('', 'domain-add', [['vm', 'work']]), bytes('1\0\0domain-add\0vm\0work\0\0'));
  });

  void test('NUL inside a field is dropped', () => {
    assert.deepEqual(encodeEvent('w\0ork', 'e', [['k\0', '\0v']]), bytes('1\0work\0e\0k\0v\0\0'));
  });
});

// --- request parser ----------------------------------------------------------------------

void describe('parseAdminRequest: valid requests', () => {
  void test('no argument, empty payload', () => {
    const req = parseAdminRequest(bytes('admin.vm.List+ dom0 name dom0\0'));
    assert.equal(req.method, 'admin.vm.List');
    assert.equal(req.arg, '');
    assert.equal(req.source, 'dom0');
    assert.equal(req.destType, 'name');
    assert.equal(req.dest, 'dom0');
    assert.deepEqual(req.payload, Buffer.alloc(0));
  });

  void test('argument and payload', () => {
    const req = parseAdminRequest(bytes('admin.vm.Create.AppVM+debian-12 dom0 name dom0\0name=work label=blue'));
    assert.equal(req.method, 'admin.vm.Create.AppVM');
    assert.equal(req.arg, 'debian-12');
    assert.deepEqual(req.payload, bytes('name=work label=blue'));
  });

  void test('the method splits on the first "+" only (shutdown modes)', () => {
    const req = parseAdminRequest(bytes('admin.vm.Shutdown+force+wait dom0 name work\0'));
    assert.equal(req.method, 'admin.vm.Shutdown');
    assert.equal(req.arg, 'force+wait');
  });

  void test('keyword destination adminvm', () => {
    const req = parseAdminRequest(bytes('admin.vm.List+ dom0 keyword adminvm\0'));
    assert.equal(req.destType, 'keyword');
    assert.equal(req.dest, 'adminvm');
  });

  void test('uuid: destination', () => {
    const req = parseAdminRequest(bytes('admin.vm.List+ dom0 name uuid:00000000-0000-0000-0000-000000000000\0'));
    assert.equal(req.dest, 'uuid:00000000-0000-0000-0000-000000000000');
  });

  void test('the payload is split off at the first NUL and kept intact, NULs and high bytes included', () => {
    const payload = Buffer.from([0x00, 0x41, 0x00, 0x00, 0xff, 0x20, 0x0a]);
    const req = parseAdminRequest(Buffer.concat([bytes('admin.vm.feature.Set+f dom0 name work\0'), payload]));
    assert.equal(req.dest, 'work');
    assert.deepEqual(req.payload, payload);
  });

  void test('a request of exactly 65536 bytes is accepted', () => {
    const header = bytes('admin.vm.feature.Set+f dom0 name work\0');
    const input = Buffer.concat([header, Buffer.alloc(MAX_REQUEST_BYTES - header.length, 0x61)]);
    assert.equal(input.length, 65536);
    assert.equal(parseAdminRequest(input).payload.length, MAX_REQUEST_BYTES - header.length);
  });
});

void describe('parseAdminRequest: framing violations throw FramingError', () => {
  const cases: readonly (readonly [string, Buffer])[] = [
    ['empty input', Buffer.alloc(0)],
    ['no NUL at all', bytes('admin.vm.List+ dom0 name dom0')],
    ['3 header fields', bytes('admin.vm.List+ dom0 name\0')],
    ['5 header fields', bytes('admin.vm.List+ dom0 name dom0 extra\0')],
    ['double space (empty field)', bytes('admin.vm.List+  dom0 name dom0\0')],
    ['trailing space', bytes('admin.vm.List+ dom0 name dom0 \0')],
    ['empty header', bytes('\0payload')],
    ['method without "+"', bytes('admin.vm.List dom0 name dom0\0')],
    ['tab instead of space', bytes('admin.vm.List+\tdom0 name dom0\0')],
    ['newline in the header', bytes('admin.vm.List+ dom0 name dom0\n\0')],
    ['carriage return in the argument', bytes('admin.vm.property.Get+na\rme dom0 name work\0')],
    ['DEL in the destination', bytes('admin.vm.List+ dom0 name wo\x7frk\0')],
    ['non-ASCII byte in the destination', Buffer.concat([bytes('admin.vm.List+ dom0 name w'), Buffer.from([0xc3, 0xa9]), bytes('\0')])],
    ['0xff in the method', Buffer.concat([bytes('admin.vm.Li'), Buffer.from([0xff]), bytes('st+ dom0 name dom0\0')])],
    ['empty method', bytes('+ dom0 name dom0\0')],
    ['method starting with a digit', bytes('1admin.vm.List+ dom0 name dom0\0')],
    ['method starting with a dot', bytes('.admin+ dom0 name dom0\0')],
    ['"-" in the method', bytes('admin.vm-List+ dom0 name dom0\0')],
    ['"/" in the method', bytes('admin/../x+ dom0 name dom0\0')],
    ['method over 255 chars', bytes(`a${'b'.repeat(255)}+ dom0 name dom0\0`)],
    ['"/" in the argument', bytes('admin.vm.property.Get+../x dom0 name work\0')],
    ['"=" in the argument', bytes('admin.vm.property.Get+a=b dom0 name work\0')],
    ['argument over 255 chars', bytes(`admin.vm.property.Get+${'a'.repeat(256)} dom0 name work\0`)],
    ['empty source', bytes('admin.vm.List+  name dom0\0')],
    ['"/" in the source', bytes('admin.vm.List+ ../dom0 name dom0\0')],
    ['"+" in the destination', bytes('admin.vm.List+ dom0 name a+b\0')],
    ['"*" in the destination', bytes('admin.vm.List+ dom0 name @*\0')],
    ['empty destination', bytes('admin.vm.List+ dom0 name \0')],
    ['destination over 255 chars', bytes(`admin.vm.List+ dom0 name ${'a'.repeat(256)}\0`)],
    ['destination type uuid', bytes('admin.vm.List+ dom0 uuid dom0\0')],
    ['destination type Name (case matters)', bytes('admin.vm.List+ dom0 Name dom0\0')],
    ['empty destination type', bytes('admin.vm.List+ dom0  dom0\0')],
  ];
  for (const [name, input] of cases) {
    void test(name, () => {
      assert.throws(() => parseAdminRequest(input), isFramingError);
    });
  }

  void test('a request of 65537 bytes is refused even when well formed', () => {
    const header = bytes('admin.vm.feature.Set+f dom0 name work\0');
    const input = Buffer.concat([header, Buffer.alloc(MAX_REQUEST_BYTES + 1 - header.length, 0x61)]);
    assert.equal(input.length, 65537);
    assert.throws(() => parseAdminRequest(input), isFramingError);
  });

  void test('a header with no NUL and over 64 KiB is refused', () => {
    assert.throws(() => parseAdminRequest(Buffer.alloc(MAX_REQUEST_BYTES * 2, 0x61)), isFramingError);
  });
});

// --- accumulator -------------------------------------------------------------------------

void describe('RequestAccumulator', () => {
  void test('accepts exactly 65536 bytes and returns them in order', () => {
    const acc = new RequestAccumulator();
    assert.equal(acc.push(Buffer.alloc(65535, 0x61)), true);
    assert.equal(acc.push(Buffer.from([0x62])), true);
    assert.equal(acc.overflowed, false);
    const all = acc.take();
    assert.equal(all.length, 65536);
    assert.equal(all[0], 0x61);
    assert.equal(all[65535], 0x62);
  });

  void test('refuses the chunk that would go past 65536, and everything after it', () => {
    const acc = new RequestAccumulator();
    assert.equal(acc.push(Buffer.alloc(65536)), true);
    assert.equal(acc.push(Buffer.from([0x61])), false);
    assert.equal(acc.overflowed, true);
    assert.equal(acc.push(Buffer.alloc(0)), false);
    assert.equal(acc.push(Buffer.from([0x61])), false);
    // Nothing is kept once over the cap, and what is left cannot parse as a request.
    assert.throws(() => parseAdminRequest(acc.take()), isFramingError);
  });

  void test('a single oversized chunk is refused without being kept', () => {
    const acc = new RequestAccumulator();
    assert.equal(acc.push(Buffer.alloc(65537)), false);
    assert.equal(acc.overflowed, true);
  });

  void test('accepts any chunking of up to 65536 bytes, refuses any chunking of more', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 20000 }), { maxLength: 12 }), (sizes) => {
        const acc = new RequestAccumulator();
        let total = 0;
        let refused = false;
        for (const size of sizes) {
          const accepted = acc.push(Buffer.alloc(size, 0x61));
          total += size;
          assert.equal(accepted, !refused && total <= MAX_REQUEST_BYTES);
          if (!accepted) refused = true;
        }
        assert.equal(acc.overflowed, refused);
        if (!refused) assert.equal(acc.take().length, total);
      }),
      { numRuns: 200 },
    );
  });
});

// --- replies -----------------------------------------------------------------------------

void describe('parseAdminReply', () => {
  void test('OK with and without content', () => {
    assert.deepEqual(parseAdminReply(Buffer.from([0x30, 0x00])), { kind: 'ok', content: Buffer.alloc(0) });
    assert.deepEqual(parseAdminReply(bytes('0\0a\0b')), { kind: 'ok', content: bytes('a\0b') });
  });

  void test('the documented exception example', () => {
    assert.deepEqual(parseAdminReply(bytes("2\0QubesNoSuchPropertyError\0\0Invalid property 'foo' of vm1\0")), {
      kind: 'exception',
      type: 'QubesNoSuchPropertyError',
      message: "Invalid property 'foo' of vm1",
    });
  });

  void test('malformed replies throw ReplyFormatError', () => {
    const bad = [
      Buffer.alloc(0),
      bytes('0'),
      bytes('00'),
      bytes('2\0T\0\0message'), // trailing NUL missing
      bytes('2\0T\0'),
      bytes('1\0s\0e\0\0'), // events are not replies
      bytes('3\0'),
    ];
    for (const reply of bad) assert.throws(() => parseAdminReply(reply), ReplyFormatError, reply.toString('latin1'));
  });

  void test('round trip: encodeOk', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (content) => {
        assert.deepEqual(parseAdminReply(encodeOk(Buffer.from(content))), { kind: 'ok', content: Buffer.from(content) });
      }),
    );
  });

  void test('round trip: encodeException, "%" included', () => {
    const messageArb = fc.string({ unit: fc.oneof(fc.constant('%'), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 1 })), maxLength: 30 });
    fc.assert(
      fc.property(textArb, messageArb.filter((m) => !m.includes('\0')), (type, message) => {
        assert.deepEqual(parseAdminReply(encodeException(type, message)), { kind: 'exception', type, message });
      }),
    );
  });
});

void describe('EventStreamParser', () => {
  void test('parses the documented event shapes', () => {
    const parser = new EventStreamParser();
    assert.deepEqual(parser.push(bytes('1\0\0connection-established\0\0')), [
      { subject: '', event: 'connection-established', kwargs: [] },
    ]);
    assert.deepEqual(parser.push(bytes('1\0work\0domain-start\0start_guid\0True\0\0')), [
      { subject: 'work', event: 'domain-start', kwargs: [['start_guid', 'True']] },
    ]);
    // An empty value is a value; only an empty key ends the event.
    assert.deepEqual(parser.push(bytes('1\0w\0property-set:netvm\0name\0netvm\0oldvalue\0\0\0')), [
      { subject: 'w', event: 'property-set:netvm', kwargs: [['name', 'netvm'], ['oldvalue', '']] },
    ]);
  });

  void test('holds a partial event until it is complete', () => {
    const parser = new EventStreamParser();
    assert.deepEqual(parser.push(bytes('1')), []);
    assert.deepEqual(parser.push(bytes('\0work\0domain-sta')), []);
    assert.deepEqual(parser.push(bytes('rt\0k\0')), []);
    assert.deepEqual(parser.push(bytes('v\0')), []);
    assert.deepEqual(parser.push(bytes('\x001\0')), [{ subject: 'work', event: 'domain-start', kwargs: [['k', 'v']] }]);
    assert.deepEqual(parser.push(bytes('\0e\0\0')), [{ subject: '', event: 'e', kwargs: [] }]);
  });

  void test('a stream that is not events is refused', () => {
    assert.throws(() => new EventStreamParser().push(bytes('0\0ok')), ReplyFormatError);
    assert.throws(() => new EventStreamParser().push(bytes('2\0T\0\0m\0')), ReplyFormatError);
  });

  void test('round trip: the same events whatever the chunking', () => {
    fc.assert(
      fc.property(
        fc.array(eventArb, { maxLength: 6 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (events, rawCuts) => {
          const stream = Buffer.concat(events.map((e) => encodeEvent(e.subject, e.event, e.kwargs)));
          const cuts = [...new Set(rawCuts.map((c) => (stream.length === 0 ? 0 : c % (stream.length + 1))))].sort((a, b) => a - b);
          const parser = new EventStreamParser();
          const seen: AdminEvent[] = [];
          let from = 0;
          for (const cut of [...cuts, stream.length]) {
            seen.push(...parser.push(stream.subarray(from, cut)));
            from = cut;
          }
          assert.deepEqual(seen, events);
        },
      ),
      { numRuns: 300 },
    );
  });

  void test('byte-at-a-time feeding splits UTF-8 sequences and still decodes them', () => {
    const events: AdminEvent[] = [
      { subject: 'wörk', event: 'ä-event', kwargs: [['ключ', '値'], ['emoji', '🧱']] },
      { subject: '', event: 'x', kwargs: [] },
    ];
    const stream = Buffer.concat(events.map((e) => encodeEvent(e.subject, e.event, e.kwargs)));
    const parser = new EventStreamParser();
    const seen: AdminEvent[] = [];
    for (let i = 0; i < stream.length; i++) seen.push(...parser.push(stream.subarray(i, i + 1)));
    assert.deepEqual(seen, events);
  });
});

// --- fuzzing -----------------------------------------------------------------------------

void describe('parseAdminRequest fuzzing', () => {
  void test('round trip: encode then parse gives the same request', () => {
    fc.assert(
      fc.property(requestArb, (r) => {
        const encoded = encodeAdminRequest(r);
        const parsed = parseAdminRequest(encoded);
        assert.deepEqual({ ...parsed, payload: Buffer.from(parsed.payload) }, r);
        assertValidRequest(parsed, encoded);
      }),
      { numRuns: 500 },
    );
  });

  void test('arbitrary bytes: valid fields or FramingError, never anything else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (raw) => {
        checkParse(Buffer.from(raw));
      }),
      { numRuns: 2000 },
    );
  });

  void test('arbitrary printable headers: valid fields or FramingError', () => {
    const headerChar = charOf(`${ALNUM}_.:+@- /=*\t`);
    fc.assert(
      fc.property(fc.string({ unit: headerChar, maxLength: 80 }), payloadArb, (header, payload) => {
        checkParse(Buffer.concat([bytes(header), Buffer.from([0]), payload]));
      }),
      { numRuns: 2000 },
    );
  });

  void test('mutated valid requests: valid fields or FramingError', () => {
    fc.assert(
      fc.property(requestArb, fc.array(mutationArb, { minLength: 1, maxLength: 8 }), (r, mutations) => {
        checkParse(mutate(encodeAdminRequest(r), mutations));
      }),
      { numRuns: 2000 },
    );
  });

  void test('large inputs around the size cap: valid fields or FramingError', () => {
    fc.assert(
      fc.property(requestArb, fc.integer({ min: MAX_REQUEST_BYTES - 300, max: MAX_REQUEST_BYTES + 300 }), (r, size) => {
        const encoded = encodeAdminRequest(r);
        const input = Buffer.concat([encoded, Buffer.alloc(Math.max(0, size - encoded.length), 0x7a)]);
        checkParse(input);
        if (input.length > MAX_REQUEST_BYTES) assert.throws(() => parseAdminRequest(input), isFramingError);
        else assert.doesNotThrow(() => parseAdminRequest(input));
      }),
      { numRuns: 100 },
    );
  });
});
