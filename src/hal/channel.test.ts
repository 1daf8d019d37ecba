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
} from '../protocol/qrexec.js';
import { QubeChannel } from './channel.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bh-channel-'));
after(() => { fs.rmSync(dir, { recursive: true, force: true }); });
let n = 0;

async function channel(t: TestContext): Promise<{ ch: QubeChannel; sock: string }> {
  const sock = path.join(dir, `c${n++}.sock`);
  const ch = await QubeChannel.listen(sock, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
  t.after(() => ch.close());
  return { ch, sock };
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
  test('socket is 0600; HELLO is answered with version 3 and marks the channel connected', async (t) => {
    const { ch, sock } = await channel(t);
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
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
