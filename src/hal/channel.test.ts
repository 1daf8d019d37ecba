// The admin-domain end of a qube's channel, driven by a stand-in agent over a real Unix socket
// (the boundary is faked, the socket and framing are real).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test, type TestContext } from 'node:test';
import fc from 'fast-check';
import {
  encodeDataConnect,
  encodeExitCode,
  encodeFrame,
  encodeHello,
  FrameParser,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  MSG_EXEC_CMDLINE,
  MSG_HELLO,
  MSG_SHUTDOWN,
  parseExecParams,
  type Frame,
  type ServiceTrigger,
} from '../protocol/qrexec.js';
import { ChannelError, MAX_PENDING_TRIGGERS, QubeChannel, type TriggerReply } from './channel.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bh-channel-'));
after(() => { fs.rmSync(dir, { recursive: true, force: true }); });
let n = 0;

async function channel(t: TestContext): Promise<{ ch: QubeChannel; sock: string; callSock: string }> {
  const sock = path.join(dir, `c${n}.sock`);
  const callSock = path.join(dir, `c${n++}-call.sock`);
  const ch = await QubeChannel.listen(sock, callSock, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
  t.after(() => ch.close());
  return { ch, sock, callSock };
}

/** A stand-in agent connection that collects frames. */
function connect(sock: string): Promise<{ s: net.Socket; frames: Frame[]; next: () => Promise<Frame> }> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: sock, allowHalfOpen: true });
    const parser = new FrameParser();
    const frames: Frame[] = [];
    const waiters: ((f: Frame) => void)[] = [];
    s.on('data', (c: Buffer) => {
      for (const f of parser.push(c)) {
        const w = waiters.shift();
        if (w) w(f);
        else frames.push(f);
      }
    });
    s.once('connect', () => {
      resolve({ s, frames, next: () => new Promise((r) => { const f = frames.shift(); if (f) r(f); else waiters.push(r); }) });
    });
    s.once('error', reject);
  });
}

/** The peer closed (or reset) the connection. */
function closed(s: net.Socket): Promise<void> {
  return new Promise((r) => {
    if (s.destroyed || s.readableEnded) r();
    s.once('close', () => { r(); });
    s.once('end', () => { r(); });
    s.once('error', () => { r(); });
  });
}

describe('qube channel', () => {
  test('the agent socket is 0600, the call socket 0666; HELLO is answered with version 3 and marks the channel connected', async (t) => {
    const { ch, sock, callSock } = await channel(t);
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
    // Any user of the qube may call services; the folder around it is root-only on the host.
    assert.equal(fs.statSync(callSock).mode & 0o777, 0o666);
    const hello = ch.waitHello(2000);
    const a = await connect(sock);
    a.s.write(encodeHello(3));
    await hello;
    const reply = await a.next();
    assert.equal(reply.type, MSG_HELLO);
    assert.equal(reply.payload.readUInt32LE(0), 3);
    assert.equal(ch.connected, true);
    a.s.destroy();
    await ch.close();
    assert.equal(fs.existsSync(sock), false);
    assert.equal(fs.existsSync(callSock), false);
  });

  test('exec: EXEC_CMDLINE with a port, the data connection is matched by DATA_CONNECT', async (t) => {
    const { ch, sock } = await channel(t);
    const a = await connect(sock);
    a.s.write(encodeHello(3));
    await ch.waitHello(2000);
    await a.next();
    const pending = ch.exec('user:echo hi');
    const cmd = await a.next();
    assert.equal(cmd.type, MSG_EXEC_CMDLINE);
    const params = parseExecParams(cmd.payload);
    assert.equal(params.cmdline, 'user:echo hi');
    const d = await connect(sock);
    // The data connection's first frame and the first output arrive in one write.
    d.s.write(Buffer.concat([encodeDataConnect(params.connectPort), encodeFrame(MSG_DATA_STDOUT, Buffer.from('hi\n'))]));
    const data = await pending;
    const parser = new FrameParser();
    const got: Frame[] = [];
    data.on('data', (c: Buffer) => got.push(...parser.push(c)));
    data.resume(); // handed over paused, so nothing is lost before the caller listens
    d.s.end(encodeExitCode(0));
    data.end(encodeFrame(MSG_DATA_STDIN));
    const stdin = await d.next();
    assert.equal(stdin.type, MSG_DATA_STDIN);
    await closed(data);
    assert.deepEqual(got.map((f) => f.type), [MSG_DATA_STDOUT, 0x193]);
    assert.equal(got[0]?.payload.toString(), 'hi\n');
    a.s.destroy();
    await ch.close();
  });

  test('a second HELLO, an unknown port, or garbage closes that connection and nothing else', async (t) => {
    const { ch, sock } = await channel(t);
    const a = await connect(sock);
    a.s.write(encodeHello(3));
    await ch.waitHello(2000);
    const b = await connect(sock);
    b.s.write(encodeHello(3));
    await closed(b.s);
    const c = await connect(sock);
    c.s.write(encodeDataConnect(12345));
    await closed(c.s);
    await fc.assert(fc.asyncProperty(fc.uint8Array({ minLength: 8, maxLength: 64 }), async (bytes) => {
      const g = await connect(sock);
      g.s.write(Buffer.from(bytes));
      g.s.end();
      await closed(g.s);
    }), { numRuns: 30 });
    assert.equal(ch.connected, true);
    assert.equal((await a.next()).type, MSG_HELLO);
    assert.equal(ch.requestShutdown(), true);
    assert.equal((await a.next()).type, MSG_SHUTDOWN);
    a.s.destroy();
    await ch.close();
  });

  test('waitHello times out when nobody connects; the agent hanging up is reported', async (t) => {
    const { ch, sock } = await channel(t);
    await assert.rejects(ch.waitHello(50), /did not connect/);
    // An abort that came before the wait began still counts.
    const ac = new AbortController();
    ac.abort(new Error('killed early'));
    await assert.rejects(ch.waitHello(5000, ac.signal), /killed early/);
    const a = await connect(sock);
    let gone = false;
    ch.onDisconnect(() => { gone = true; });
    a.s.write(encodeHello(3));
    await ch.waitHello(2000);
    const pending = ch.exec('user:true');
    a.s.destroy();
    await assert.rejects(pending, /disconnected/);
    assert.equal(gone, true);
    await ch.close();
  });
});

// --- service calls from the qube (TRIGGER_SERVICE3 on the control connection) ------------
//
// Frames are written by hand from docs/protocol/qrexec.md: TRIGGER_SERVICE3 = 0x212 with
// target[64], request id[32] (NUL-padded), `SERVICE+ARG` + NUL; SERVICE_REFUSED = 0x203 with the id
// padded to 32 bytes; SERVICE_CONNECT = 0x202 with exec params u32 0, u32 port, id + NUL;
// DATA_CONNECT = 0x1000 with u32 port.

function le32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v, 0);
  return b;
}

function rawFrame(type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([le32(type), le32(payload.length), payload]);
}

function pad(text: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  Buffer.from(text, 'latin1').copy(out, 0, 0, size);
  return out;
}

function triggerFrame(target: string, id: string, name: string): Buffer {
  return rawFrame(0x212, Buffer.concat([pad(target, 64), pad(id, 32), Buffer.from(`${name}\0`, 'latin1')]));
}

type Agent = Awaited<ReturnType<typeof connect>>;

interface Call {
  readonly t: ServiceTrigger;
  readonly reply: TriggerReply;
}

interface Ready {
  readonly ch: QubeChannel;
  readonly sock: string;
  readonly callSock: string;
  readonly a: Agent;
  /** Every call the handler received, in order. */
  readonly calls: Call[];
  /** The next call the handler receives (or already received and not yet taken). */
  readonly nextCall: () => Promise<Call>;
  /** Resolves when onDisconnect fires. */
  readonly disconnected: Promise<void>;
}

/** An agent connection whose socket is destroyed when the test ends. */
async function agent(t: TestContext, sock: string): Promise<Agent> {
  const a = await connect(sock);
  t.after(() => { a.s.destroy(); });
  return a;
}

/** A channel with an agent past HELLO; `withHandler` installs a handler that queues the calls. */
async function ready(t: TestContext, withHandler = true): Promise<Ready> {
  const { ch, sock, callSock } = await channel(t);
  const calls: Call[] = [];
  let taken = 0;
  const waiters: ((c: Call) => void)[] = [];
  if (withHandler) {
    ch.onServiceRequest((trigger, reply) => {
      const c = { t: trigger, reply };
      calls.push(c);
      const w = waiters.shift();
      if (w) {
        taken++;
        w(c);
      }
    });
  }
  const disconnected = new Promise<void>((r) => { ch.onDisconnect(r); });
  const a = await agent(t, sock);
  a.s.write(encodeHello(3));
  await ch.waitHello(2000);
  assert.equal((await a.next()).type, MSG_HELLO);
  const nextCall = (): Promise<Call> => new Promise((r) => {
    const c = calls[taken];
    if (c) {
      taken++;
      r(c);
    } else {
      waiters.push(r);
    }
  });
  return { ch, sock, callSock, a, calls, nextCall, disconnected };
}

function assertRefused(f: Frame, id: string): void {
  assert.equal(f.type, 0x203, `expected SERVICE_REFUSED, got 0x${f.type.toString(16)}`);
  assert.deepEqual(f.payload, pad(id, 32));
}

/** Collects `n` bytes from a paused socket handed over by the channel. */
function readBytes(s: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    s.on('data', (c: Buffer) => {
      parts.push(c);
      size += c.length;
      if (size >= n) resolve(Buffer.concat(parts));
    });
    s.once('error', reject);
    s.once('close', () => { resolve(Buffer.concat(parts)); });
    s.resume();
  });
}

describe('qube channel: service calls from the qube', { timeout: 15_000 }, () => {
  test('MAX_PENDING_TRIGGERS is 32 (doc: at most 32 calls of one qube may wait)', () => {
    assert.equal(MAX_PENDING_TRIGGERS, 32);
  });

  test('a TRIGGER_SERVICE3 after HELLO reaches the handler, parsed; several in one write and one split byte by byte', async (t) => {
    const r = await ready(t);
    r.a.s.write(triggerFrame('@dispvm:dvm', '17', 'qubes.Test+x'));
    const first = await r.nextCall();
    assert.deepEqual({ ...first.t }, { target: '@dispvm:dvm', requestId: '17', serviceAndArg: 'qubes.Test+x' });
    r.a.s.write(Buffer.concat([triggerFrame('', 'a', 'qubes.GetDate'), triggerFrame('vault', 'b', 'my.Svc+')]));
    assert.deepEqual({ ...(await r.nextCall()).t }, { target: '', requestId: 'a', serviceAndArg: 'qubes.GetDate' });
    assert.deepEqual({ ...(await r.nextCall()).t }, { target: 'vault', requestId: 'b', serviceAndArg: 'my.Svc+' });
    const split = triggerFrame('work', 'c', 'x+y');
    for (const byte of split) {
      r.a.s.write(Buffer.from([byte]));
      await new Promise((res) => setImmediate(res));
    }
    assert.deepEqual({ ...(await r.nextCall()).t }, { target: 'work', requestId: 'c', serviceAndArg: 'x+y' });
    assert.equal(r.ch.connected, true);
  });

  test('reply.refuse() writes SERVICE_REFUSED (0x203) with the id NUL-padded to 32 bytes', async (t) => {
    const r = await ready(t);
    r.a.s.write(triggerFrame('vault', 'req-1', 'qubes.Test'));
    const c = await r.nextCall();
    c.reply.refuse();
    const f = await r.a.next();
    // 03020000 20000000, then '7265712d31' and 27 NULs
    assert.equal(f.type, 0x203);
    assert.deepEqual(f.payload, Buffer.from(`7265712d31${'00'.repeat(27)}`, 'hex'));
    // The id is free again: the same id reaches the handler once more.
    r.a.s.write(triggerFrame('vault', 'req-1', 'qubes.Test'));
    assert.equal((await r.nextCall()).t.requestId, 'req-1');
  });

  test('reply.connect() writes SERVICE_CONNECT and resolves with the data connection; bytes after DATA_CONNECT are kept', async (t) => {
    const r = await ready(t);
    r.a.s.write(triggerFrame('vault', 'id.7', 'qubes.Test+x'));
    const c = await r.nextCall();
    const pending = c.reply.connect();
    const f = await r.a.next();
    assert.equal(f.type, 0x202);
    assert.equal(f.payload.length, 4 + 4 + 4 + 1);
    const port = f.payload.readUInt32LE(4);
    // u32 0, u32 port, 'id.7' = 69642e37, NUL
    assert.deepEqual(f.payload, Buffer.concat([Buffer.from('00000000', 'hex'), le32(port), Buffer.from('69642e3700', 'hex')]));
    const d = await agent(t, r.sock);
    // DATA_CONNECT, a whole DATA_STDIN frame and the first 5 bytes of the next one in one write;
    // the rest of that frame in a later write.
    const next = rawFrame(0x190, Buffer.from('second'));
    const after = Buffer.concat([rawFrame(0x190, Buffer.from('ping')), next]);
    d.s.write(Buffer.concat([rawFrame(0x1000, le32(port)), rawFrame(0x190, Buffer.from('ping')), next.subarray(0, 5)]));
    const data = await pending;
    d.s.write(next.subarray(5));
    assert.deepEqual(await readBytes(data, after.length), after);
    // And the other way: what the daemon writes reaches the agent's data connection.
    data.write(rawFrame(0x191, Buffer.from('pong')));
    const back = await d.next();
    assert.equal(back.type, 0x191);
    assert.equal(back.payload.toString(), 'pong');
    data.destroy();
  });

  test('a second trigger with a pending id is refused at once, without reaching the handler', async (t) => {
    const r = await ready(t);
    r.a.s.write(triggerFrame('vault', 'dup', 'a'));
    const c = await r.nextCall();
    r.a.s.write(triggerFrame('work', 'dup', 'b'));
    assertRefused(await r.a.next(), 'dup');
    assert.equal(r.calls.length, 1);
    // Other ids still pass while 'dup' is pending.
    r.a.s.write(triggerFrame('work', 'other', 'b'));
    assert.equal((await r.nextCall()).t.requestId, 'other');
    c.reply.refuse();
    assertRefused(await r.a.next(), 'dup');
    assert.equal(r.a.frames.length, 0);
  });

  test('the 33rd pending trigger is refused at once; answering one makes room', async (t) => {
    const r = await ready(t);
    r.a.s.write(Buffer.concat(Array.from({ length: 32 }, (_, i) => triggerFrame('vault', `p${i}`, 'a'))));
    for (let i = 0; i < 32; i++) assert.equal((await r.nextCall()).t.requestId, `p${i}`);
    r.a.s.write(triggerFrame('vault', 'p32', 'a'));
    assertRefused(await r.a.next(), 'p32');
    assert.equal(r.calls.length, 32);
    r.calls[5]!.reply.refuse();
    assertRefused(await r.a.next(), 'p5');
    r.a.s.write(triggerFrame('vault', 'p33', 'a'));
    assert.equal((await r.nextCall()).t.requestId, 'p33');
    r.a.s.write(triggerFrame('vault', 'p34', 'a'));
    assertRefused(await r.a.next(), 'p34');
    assert.equal(r.calls.length, 33);
  });

  test('without a handler every trigger is refused', async (t) => {
    const r = await ready(t, false);
    r.a.s.write(Buffer.concat([triggerFrame('vault', 'x1', 'a'), triggerFrame('', 'x2', 'b+c')]));
    assertRefused(await r.a.next(), 'x1');
    assertRefused(await r.a.next(), 'x2');
    assert.equal(r.ch.connected, true);
  });

  const fatal: readonly (readonly [string, Buffer])[] = [
    ['a trigger without NUL in the target', rawFrame(0x212, Buffer.concat([Buffer.alloc(64, 0x61), pad('1', 32), Buffer.from('a\0')]))],
    ['a trigger with a byte after the id terminator', rawFrame(0x212, Buffer.concat([pad('w', 64), pad('1\0x', 32), Buffer.from('a\0')]))],
    ['a trigger with a bad target', triggerFrame('a b', '1', 'a')],
    ['a trigger with a bad service', triggerFrame('w', '1', 'a/b')],
    ['a trigger without the final NUL', rawFrame(0x212, Buffer.concat([pad('w', 64), pad('1', 32), Buffer.from('a')]))],
    ['a short trigger', rawFrame(0x212, Buffer.alloc(10))],
    ['a pre-v3 TRIGGER_SERVICE (0x210)', rawFrame(0x210, Buffer.alloc(64))],
    ['DATA_STDOUT', rawFrame(0x191, Buffer.from('x'))],
    ['DATA_STDIN EOF', rawFrame(0x190)],
    ['a second HELLO', rawFrame(0x300, le32(3))],
    ['DATA_CONNECT', rawFrame(0x1000, le32(1))],
    ['SHUTDOWN', rawFrame(0x1001)],
    ['SERVICE_REFUSED', rawFrame(0x203, pad('1', 32))],
    ['EXEC_CMDLINE', rawFrame(0x200, Buffer.concat([le32(0), le32(1), Buffer.from('user:true\0')]))],
    ['an unknown type', rawFrame(0x999)],
    ['an oversize header', Buffer.concat([le32(0x212), le32(65537)])],
  ];
  for (const [name, bytes] of fatal) {
    test(`${name} after HELLO closes the control connection and fires onDisconnect`, async (t) => {
      const r = await ready(t);
      r.a.s.write(bytes);
      await Promise.all([closed(r.a.s), r.disconnected]);
      assert.equal(r.ch.connected, false);
      assert.equal(r.calls.length, 0);
    });
  }

  test('a malformed trigger after a good one: the good one reached the handler, its connect() then rejects', async (t) => {
    const r = await ready(t);
    r.a.s.write(triggerFrame('vault', 'ok', 'a'));
    const c = await r.nextCall();
    r.a.s.write(triggerFrame('vault', 'bad id', 'a'));
    await r.disconnected;
    assert.equal(r.calls.length, 1);
    await assert.rejects(async () => c.reply.connect(), ChannelError);
  });

  test('connect() after the control connection closed rejects; refuse() then is silent', async (t) => {
    const r = await ready(t);
    r.a.s.write(Buffer.concat([triggerFrame('vault', 'one', 'a'), triggerFrame('vault', 'two', 'a')]));
    const one = await r.nextCall();
    const two = await r.nextCall();
    // The channel closes the control connection itself (an unexpected frame).
    r.a.s.write(rawFrame(0x191, Buffer.from('x')));
    await r.disconnected;
    await assert.rejects(async () => one.reply.connect(), ChannelError);
    assert.doesNotThrow(() => { two.reply.refuse(); });
  });

  test('the agent closing its control connection fires onDisconnect without waiting for a write by the daemon', async (t) => {
    const r = await ready(t);
    r.a.s.write(triggerFrame('vault', 'one', 'a'));
    const one = await r.nextCall();
    // The agent process goes away: its end of the socket is closed (it had read everything).
    r.a.s.destroy();
    const fired = await Promise.race([r.disconnected.then(() => true), new Promise<boolean>((res) => setTimeout(() => { res(false); }, 500))]);
    assert.equal(fired, true, 'onDisconnect did not fire within 500 ms of the agent\'s EOF');
    assert.equal(r.ch.connected, false);
    await assert.rejects(async () => one.reply.connect(), ChannelError);
  });

  test('answering twice: refuse() after connect() is a no-op, connect() after refuse() throws or rejects', async (t) => {
    const r = await ready(t);
    r.a.s.write(Buffer.concat([triggerFrame('vault', 'c1', 'a'), triggerFrame('vault', 'r1', 'a')]));
    const c1 = await r.nextCall();
    const r1 = await r.nextCall();
    const pending = c1.reply.connect();
    c1.reply.refuse();
    r1.reply.refuse();
    r1.reply.refuse();
    await assert.rejects(async () => r1.reply.connect(), ChannelError);
    // What reached the agent, in order: one SERVICE_CONNECT, one SERVICE_REFUSED, then SHUTDOWN
    // (sent last to mark the end).
    assert.equal(r.ch.requestShutdown(), true);
    const f1 = await r.a.next();
    assert.equal(f1.type, 0x202);
    assertRefused(await r.a.next(), 'r1');
    assert.equal((await r.a.next()).type, MSG_SHUTDOWN);
    // connect() still completes.
    const d = await agent(t, r.sock);
    d.s.write(rawFrame(0x1000, le32(f1.payload.readUInt32LE(4))));
    (await pending).destroy();
  });
});

describe('qube channel: calls on the call socket', { timeout: 15_000 }, () => {
  test('only a TRIGGER_SERVICE3 first frame is taken there: HELLO and DATA_CONNECT close the connection', async (t) => {
    const r = await ready(t);
    for (const first of [encodeHello(3), rawFrame(0x1000, Buffer.from([1, 0, 0, 0]))]) {
      const c = await connect(r.callSock);
      c.s.write(first);
      await closed(c.s);
    }
    assert.equal(r.calls.length, 0);
    assert.equal(r.ch.connected, true, 'the agent\'s control connection is untouched');
  });

  test('a refused call: SERVICE_REFUSED, then the daemon closes the connection even if the caller keeps it open', async (t) => {
    const r = await ready(t);
    const c = await connect(r.callSock);
    c.s.write(triggerFrame('vault', 'mine', 'test.Svc'));
    const call = await r.nextCall();
    assert.deepEqual(call.t, { target: 'vault', requestId: 'mine', serviceAndArg: 'test.Svc' });
    call.reply.refuse();
    assertRefused(await c.next(), 'mine');
    await closed(c.s);
  });

  test('an allowed call: SERVICE_CONNECT on the same connection, and bytes the caller sent while waiting come first, in order', async (t) => {
    const r = await ready(t);
    const c = await connect(r.callSock);
    c.s.write(Buffer.concat([triggerFrame('vault', 'mine', 'test.Svc'), Buffer.from('early-')]));
    const call = await r.nextCall();
    c.s.write('later');
    await new Promise((res) => setTimeout(res, 50));
    const sock = await call.reply.connect();
    const f = await c.next();
    assert.equal(f.type, 0x202);
    assert.equal(parseExecParams(f.payload).cmdline, 'mine');
    assert.deepEqual(await readBytes(sock, 11), Buffer.from('early-later'));
    sock.destroy();
  });

  test('a caller that hangs up while waiting is reported gone; connect() then rejects', async (t) => {
    const r = await ready(t);
    const c = await connect(r.callSock);
    c.s.write(triggerFrame('vault', 'mine', 'test.Svc'));
    const call = await r.nextCall();
    assert.equal(call.reply.alive(), true);
    c.s.end();
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(call.reply.alive(), false);
    await assert.rejects(call.reply.connect(), ChannelError);
  });
});
