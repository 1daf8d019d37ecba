// Services the admin domain serves itself (target dom0): stdin collection, qubes.GetDate and an
// unknown service. Frames are written by hand from docs/protocol/qrexec.md (u32 LE type, u32 LE
// len, payload; DATA_STDIN 0x190, DATA_STDOUT 0x191, DATA_STDERR 0x192, DATA_EXIT_CODE 0x193).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { after, describe, test, type TestContext } from 'node:test';
import fc from 'fast-check';
import type { QubeRecord } from '../core/model.js';
import { FrameParser, QrexecProtocolError, type Frame } from '../protocol/qrexec.js';
import { formatDate, readStdin, serveDom0, type Dom0Deps } from './dom0-services.js';
import type { AdminDispatcher } from './server.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bh-dom0-'));
after(() => { fs.rmSync(dir, { recursive: true, force: true }); });
let n = 0;

function hex(text: string): Buffer {
  return Buffer.from(text.replaceAll(' ', ''), 'hex');
}

function le32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v, 0);
  return b;
}

function rawFrame(type: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  return Buffer.concat([le32(type), le32(body.length), body]);
}

const stdin = (payload: Buffer | string = ''): Buffer => rawFrame(0x190, payload);

/** A connected pair of Unix sockets: `server` as the daemon gets it (allowHalfOpen, paused). */
async function socketPair(t: TestContext): Promise<{ server: net.Socket; client: net.Socket }> {
  const file = path.join(dir, `s${n++}.sock`);
  const srv = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
  await new Promise<void>((r) => { srv.listen(file, r); });
  const accepted = new Promise<net.Socket>((r) => { srv.once('connection', r); });
  const client = net.connect({ path: file, allowHalfOpen: true });
  await new Promise<void>((r, j) => { client.once('connect', r); client.once('error', j); });
  const server = await accepted;
  t.after(() => {
    client.destroy();
    server.destroy();
    srv.close();
  });
  return { server, client };
}

/** Every byte the peer sends until it ends its side. */
function readAll(s: net.Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on('data', (c: Buffer) => parts.push(c));
    s.once('end', () => { resolve(Buffer.concat(parts)); });
    s.once('error', reject);
  });
}

function frames(bytes: Buffer): Frame[] {
  const parser = new FrameParser();
  const out = parser.push(bytes);
  assert.equal(parser.pending, 0, 'the reply ends inside a frame');
  return out;
}

const source: QubeRecord = {
  name: 'work',
  klass: 'AppVM',
  qid: 3,
  uuid: '0b8f6a4e-1b2c-4d3e-8f90-1234567890ab',
  props: new Map(),
  features: new Map(),
  tags: new Set(),
  notes: '',
  firewall: [],
};

/** Deps whose dispatcher must not be touched by the services under test. */
const deps: Dom0Deps = {
  dispatcher: { dispatch: () => { throw new Error('the Admin API dispatcher must not be called'); } } as unknown as AdminDispatcher,
  visibility: () => () => false,
};

/** DATA_STDOUT EOF, DATA_STDERR EOF, DATA_EXIT_CODE(code): how every reply ends. */
function finishBytes(code: string): Buffer {
  return hex(`91010000 00000000 92010000 00000000 93010000 04000000 ${code}`);
}

/** Settles within `ms` or fails: readStdin must never leave the caller hanging. */
async function settled<T>(p: Promise<T>, ms = 2000): Promise<{ ok: true; value: T } | { ok: false; err: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, j) => { timer = setTimeout(() => { j(new Error(`not settled within ${ms} ms`)); }, ms); });
  try {
    return await Promise.race([p.then((value) => ({ ok: true as const, value }), (err: unknown) => ({ ok: false as const, err })), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe('readStdin', () => {
  test('collects DATA_STDIN payloads up to the empty frame', async () => {
    const s = new PassThrough();
    const p = readStdin(s, 100);
    s.write(Buffer.concat([stdin('abc'), stdin('de')]));
    s.write(stdin('f'));
    s.write(Buffer.concat([stdin(), stdin('after EOF')]));
    assert.deepEqual(await p, Buffer.from('abcdef'));
  });

  test('frames split byte by byte', async () => {
    const s = new PassThrough();
    const p = readStdin(s, 100);
    for (const byte of Buffer.concat([stdin('hello'), stdin(' world'), stdin()])) s.write(Buffer.from([byte]));
    assert.deepEqual(await p, Buffer.from('hello world'));
  });

  test('an immediate EOF is empty input', async () => {
    const s = new PassThrough();
    const p = readStdin(s, 0);
    s.write(stdin());
    assert.deepEqual(await p, Buffer.alloc(0));
  });

  test('exactly the cap is accepted, one byte more is rejected (counted over all frames)', async () => {
    const ok = new PassThrough();
    const p = readStdin(ok, 5);
    ok.write(Buffer.concat([stdin('abc'), stdin('de'), stdin()]));
    assert.deepEqual(await p, Buffer.from('abcde'));
    const over = new PassThrough();
    const q = readStdin(over, 5);
    over.write(Buffer.concat([stdin('abc'), stdin('def'), stdin()]));
    await assert.rejects(q, Error);
    const zero = new PassThrough();
    const r = readStdin(zero, 0);
    zero.write(stdin('x'));
    await assert.rejects(r, Error);
  });

  const others: readonly (readonly [string, Buffer])[] = [
    ['DATA_STDOUT', rawFrame(0x191, 'x')],
    ['DATA_STDERR', rawFrame(0x192, 'x')],
    ['DATA_EXIT_CODE', rawFrame(0x193, le32(0))],
    ['HELLO', rawFrame(0x300, le32(3))],
    ['DATA_CONNECT', rawFrame(0x1000, le32(1))],
    ['TRIGGER_SERVICE3', rawFrame(0x212, Buffer.alloc(100))],
  ];
  for (const [name, frame] of others) {
    test(`rejects a ${name} frame, even after good input`, async () => {
      const s = new PassThrough();
      const p = readStdin(s, 100);
      s.write(Buffer.concat([stdin('ok'), frame, stdin()]));
      await assert.rejects(p, Error);
    });
  }

  test('rejects a framing violation with QrexecProtocolError', async () => {
    for (const bad of [rawFrame(0x999), Buffer.concat([le32(0x190), le32(65537)])]) {
      const s = new PassThrough();
      const p = readStdin(s, 1 << 20);
      s.write(bad);
      await assert.rejects(p, QrexecProtocolError);
    }
  });

  test('a peer that ends without its EOF frame sent an incomplete request: rejected, nothing runs', async () => {
    const s = new PassThrough();
    const p = readStdin(s, 100);
    s.end(Buffer.concat([stdin('abc'), stdin('d')]));
    assert.equal((await settled(p)).ok, false);
    const cut = new PassThrough();
    const q = readStdin(cut, 100);
    cut.end(Buffer.concat([stdin('abc'), stdin('defgh').subarray(0, 10)]));
    assert.equal((await settled(q)).ok, false);
    const empty = new PassThrough();
    const r = readStdin(empty, 100);
    empty.end();
    assert.equal((await settled(r)).ok, false);
  });

  test('on a Unix socket: EOF frame; a half-close or hang-up before it is refused', async (t) => {
    const a = await socketPair(t);
    const pa = readStdin(a.server, 100);
    a.client.write(Buffer.concat([stdin('x'), stdin('y'), stdin()]));
    assert.deepEqual(await pa, Buffer.from('xy'));
    const b = await socketPair(t);
    const pb = readStdin(b.server, 100);
    b.client.end(stdin('half'));
    assert.equal((await settled(pb)).ok, false);
    const c = await socketPair(t);
    const pc = readStdin(c.server, 100);
    c.client.write(stdin('gone'));
    await new Promise((r) => setTimeout(r, 20));
    c.client.destroy();
    assert.equal((await settled(pc)).ok, false);
  });

  test('fuzz: random byte streams never throw synchronously and always settle once the stream ends', async () => {
    const pieceArb = fc.oneof(
      fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a)),
      fc.uint8Array({ maxLength: 30 }).map((a) => stdin(Buffer.from(a))),
      fc.constant(stdin()),
      fc.tuple(fc.constantFrom(0x190, 0x191, 0x193, 0x200, 0x999), fc.nat({ max: 70000 })).map(([type, len]) => Buffer.concat([le32(type), le32(len)])),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(pieceArb, { maxLength: 12 }), fc.nat({ max: 200 }), async (pieces, cap) => {
        const s = new PassThrough();
        let p: Promise<Buffer> | undefined;
        assert.doesNotThrow(() => { p = readStdin(s, cap); });
        for (const piece of pieces) s.write(piece);
        s.end();
        const r = await settled(p!);
        if (r.ok) assert.ok(r.value.length <= cap, `resolved with ${r.value.length} bytes over a cap of ${cap}`);
        else assert.ok(r.err instanceof Error, `rejected with a non-Error: ${String(r.err)}`);
      }),
      { numRuns: 300 },
    );
  });

  test('fuzz: well-formed stdin in any chunking gives the payloads up to EOF, or a rejection past the cap or without EOF', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 50 }), { maxLength: 8 }),
        fc.boolean(),
        fc.nat({ max: 300 }),
        fc.array(fc.nat(), { maxLength: 6 }),
        async (payloads, eof, cap, cuts) => {
          const stream = Buffer.concat([...payloads.map((p) => stdin(Buffer.from(p))), eof ? stdin() : Buffer.alloc(0)]);
          const s = new PassThrough();
          const p = readStdin(s, cap);
          const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((x, y) => x - y);
          let start = 0;
          for (const point of [...points, stream.length]) {
            s.write(stream.subarray(start, point));
            start = point;
          }
          s.end();
          const total = payloads.reduce((sum, pl) => sum + pl.length, 0);
          const r = await settled(p);
          if (total > cap || !eof) {
            assert.equal(r.ok, false);
          } else {
            assert.deepEqual(r, { ok: true, value: Buffer.concat(payloads.map((pl) => Buffer.from(pl))) });
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('formatDate', () => {
  test('UTC, whole seconds, as date -u -Iseconds prints it, with a newline', () => {
    assert.equal(formatDate(new Date(Date.UTC(2024, 1, 29, 23, 59, 59, 999))), '2024-02-29T23:59:59+00:00\n');
    assert.equal(formatDate(new Date(0)), '1970-01-01T00:00:00+00:00\n');
    assert.equal(formatDate(new Date(Date.UTC(2038, 0, 19, 3, 14, 8))), '2038-01-19T03:14:08+00:00\n');
    assert.equal(formatDate(new Date(Date.UTC(1999, 11, 31, 9, 5, 0, 1))), '1999-12-31T09:05:00+00:00\n');
  });

  test('any date from 1970 to 9999 reads back as the same second', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Date.UTC(9999, 11, 31, 23, 59, 59, 999) }), (ms) => {
        const text = formatDate(new Date(ms));
        assert.match(text, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n$/);
        assert.equal(Date.parse(text.trimEnd()), Math.floor(ms / 1000) * 1000);
      }),
      { numRuns: 500 },
    );
  });
});

describe('serveDom0', () => {
  test('qubes.GetDate: the date on stdout, then stdout EOF, stderr EOF and exit code 0', async (t) => {
    const { server, client } = await socketPair(t);
    const reply = readAll(client);
    const before = Math.floor(Date.now() / 1000) * 1000;
    await serveDom0({ source, service: 'qubes.GetDate', arg: '', requestedTarget: 'dom0', sock: server }, deps);
    const bytes = await reply;
    const after = Date.now();
    const got = frames(bytes);
    assert.equal(got.length, 4);
    assert.equal(got[0]!.type, 0x191);
    const text = got[0]!.payload.toString();
    assert.match(text, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\n$/);
    const when = Date.parse(text.trimEnd());
    assert.ok(when >= before && when <= after, `${text.trimEnd()} is not now`);
    // The whole tail, by hand.
    assert.deepEqual(bytes.subarray(8 + got[0]!.payload.length), finishBytes('00000000'));
    assert.deepEqual(bytes.subarray(0, 8), hex(`91010000 ${le32(text.length).toString('hex')}`));
  });

  test('qubes.GetDate ignores what the caller sends', async (t) => {
    const { server, client } = await socketPair(t);
    const reply = readAll(client);
    client.write(Buffer.concat([stdin('junk'), stdin()]));
    await serveDom0({ source, service: 'qubes.GetDate', arg: 'x', requestedTarget: '@adminvm', sock: server }, deps);
    const got = frames(await reply);
    assert.deepEqual(got.map((f) => f.type), [0x191, 0x191, 0x192, 0x193]);
  });

  for (const service of ['qubes.Unknown', 'my.Service', 'adminx.vm.List', 'qubes.Filecopy']) {
    test(`an unknown dom0 service (${service}) ends with exit code 127 and no output`, async (t) => {
      const { server, client } = await socketPair(t);
      const reply = readAll(client);
      await serveDom0({ source, service, arg: '', requestedTarget: 'dom0', sock: server }, deps);
      assert.deepEqual(await reply, finishBytes('7f000000'));
    });
  }
});
