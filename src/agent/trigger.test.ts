// Service calls from a qube, end to end without a qube: a client (qrexec-call.ts and
// qrexec-client-vm's main) → the agent's trigger socket (trigger.ts) → a fake admin domain that
// answers on "the control connection" and serves the remote side of the call on the channel
// socket, as the daemon's router would.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { after, afterEach, before, describe, test } from 'node:test';
import {
  encodeDataConnect,
  encodeExecParams,
  encodeExitCode,
  encodeFrame,
  encodeServiceRefused,
  encodeTrigger,
  FrameParser,
  MSG_DATA_CONNECT,
  MSG_DATA_STDERR,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  MSG_SERVICE_CONNECT,
  MSG_TRIGGER_SERVICE3,
  parseDataConnect,
  parseExecParams,
  parseTrigger,
  type ServiceTrigger,
} from '../protocol/qrexec.js';
import { clientMain } from './client-vm.js';
import { callService, QrexecCallError, QrexecRefusedError } from './qrexec-call.js';
import { TriggerServer } from './trigger.js';

type Decision = 'allow' | 'refuse' | 'ignore';

/** The admin domain's side: decides each trigger; an allowed call's remote service upper-cases its stdin. */
class FakeAdmin {
  readonly triggers: ServiceTrigger[] = [];
  readonly server: net.Server;
  decide: (t: ServiceTrigger) => Decision = () => 'allow';
  trigger!: TriggerServer;
  #port = 100;
  readonly ports = new Set<number>();
  readonly #sockets = new Set<net.Socket>();

  constructor(readonly channel: string) {
    this.server = net.createServer({ allowHalfOpen: true }, (s) => { this.#data(s); });
  }

  /** What the agent sends on the control connection. */
  control(frame: Buffer): boolean {
    const parser = new FrameParser();
    const [f] = parser.push(frame);
    assert.equal(f?.type, MSG_TRIGGER_SERVICE3);
    const t = parseTrigger(f.payload);
    this.triggers.push(t);
    const decision = this.decide(t);
    setImmediate(() => {
      if (decision === 'refuse') this.trigger.handleServiceRefused(encodeServiceRefused(t.requestId));
      if (decision === 'allow') {
        const port = this.#port++;
        this.ports.add(port);
        this.trigger.handleServiceConnect(encodeExecParams(0, port, t.requestId));
      }
    });
    return true;
  }

  #data(s: net.Socket): void {
    this.#sockets.add(s);
    s.once('close', () => this.#sockets.delete(s));
    const parser = new FrameParser();
    let port: number | undefined;
    const input: Buffer[] = [];
    s.on('error', () => undefined);
    s.on('end', () => { s.end(); });
    s.on('data', (chunk: Buffer) => {
      for (const f of parser.push(chunk)) {
        if (port === undefined) {
          assert.equal(f.type, MSG_DATA_CONNECT);
          port = parseDataConnect(f.payload);
          assert.ok(this.ports.delete(port), `unknown port ${port}`);
          continue;
        }
        assert.equal(f.type, MSG_DATA_STDIN);
        if (f.payload.length > 0) {
          input.push(f.payload);
          continue;
        }
        const text = Buffer.concat(input).toString('latin1');
        if (text === 'hangup') {
          s.end(encodeFrame(MSG_DATA_STDOUT, Buffer.from('partial')));
          return;
        }
        const upper = Buffer.from(text.toUpperCase(), 'latin1');
        const chunks: Buffer[] = [];
        for (let off = 0; off < upper.length; off += 65536) chunks.push(encodeFrame(MSG_DATA_STDOUT, upper.subarray(off, off + 65536)));
        s.end(Buffer.concat([
          ...chunks,
          encodeFrame(MSG_DATA_STDOUT),
          encodeFrame(MSG_DATA_STDERR, Buffer.from(`${text.length} bytes\n`)),
          encodeFrame(MSG_DATA_STDERR),
          encodeExitCode(text.startsWith('exit') ? Number(text.slice(4)) : 3),
        ]));
      }
    });
  }

  close(): void {
    for (const s of this.#sockets) s.destroy();
    this.server.close();
  }
}

let tmp = '';
let admin: FakeAdmin;
let agentSocket = '';
let logs: string[] = [];

before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-agent-trigger-')); });
after(() => { fs.rmSync(tmp, { recursive: true, force: true }); });

let n = 0;
async function setUp(maxPending?: number): Promise<void> {
  n += 1;
  logs = [];
  admin = new FakeAdmin(path.join(tmp, `channel-${n}.sock`));
  await new Promise<void>((resolve) => admin.server.listen(admin.channel, resolve));
  agentSocket = path.join(tmp, `run-${n}`, 'qubes', 'qrexec-agent');
  admin.trigger = new TriggerServer({
    socketPath: agentSocket,
    channel: admin.channel,
    sendControl: (frame) => admin.control(frame),
    log: (m) => { logs.push(m); },
    ...(maxPending === undefined ? {} : { maxPending }),
  });
  await admin.trigger.listen();
}

afterEach(async () => {
  await admin.trigger.close();
  admin.close();
});

const waitFor = async (cond: () => boolean, what: string): Promise<void> => {
  const end = Date.now() + 3000;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe('service calls from a qube', () => {
  test('an allowed call: stdin out, stdout/stderr/exit code in; the socket is 0666; the agent uses its own request id', async () => {
    await setUp();
    assert.equal(fs.statSync(agentSocket).mode & 0o777, 0o666);
    assert.equal(fs.statSync(path.dirname(agentSocket)).mode & 0o777, 0o755);
    const r = await callService('$dispvm:tpl', 'my.Svc+arg', { socketPath: agentSocket, stdin: 'hello' });
    assert.deepEqual({ code: r.code, stdout: r.stdout.toString(), stderr: r.stderr.toString() }, { code: 3, stdout: 'HELLO', stderr: '5 bytes\n' });
    const [t] = admin.triggers;
    assert.equal(t?.target, '@dispvm:tpl');
    assert.equal(t.serviceAndArg, 'my.Svc+arg');
    assert.match(t.requestId, /^a\d+$/);
    assert.equal(admin.trigger.pendingCount, 0);
    const empty = await callService('', 'my.Svc', { socketPath: agentSocket, stdin: 'exit0' });
    assert.equal(empty.code, 0);
    assert.equal(admin.triggers[1]?.target, '@default');
  });

  test('a remote side that hangs up before its exit code: 125', async () => {
    await setUp();
    await assert.rejects(callService('vault', 'my.Svc', { socketPath: agentSocket, stdin: 'hangup' }), (err: unknown) => err instanceof QrexecCallError && err.exitCode === 125 && /before the service's exit code/.test(err.message));
  });

  test('large stdin passes in 64 KiB chunks', async () => {
    await setUp();
    const big = Buffer.alloc(300_000, 0x61);
    const r = await callService('vault', 'my.Svc', { socketPath: agentSocket, stdin: big });
    assert.equal(r.stdout.length, 300_000);
    assert.equal(r.stdout[0], 0x41);
  });

  test('a refused call: QrexecRefusedError (126); the client is told with its own id', async () => {
    await setUp();
    admin.decide = () => 'refuse';
    await assert.rejects(callService('vault', 'my.Svc', { socketPath: agentSocket }), (err: unknown) => err instanceof QrexecRefusedError && err.exitCode === 126);
    assert.equal(admin.trigger.pendingCount, 0);
  });

  test('no answer: the client gives up after its timeout (125) and the agent forgets the call; a late answer opens and closes the data connection', async () => {
    await setUp();
    admin.decide = () => 'ignore';
    const t0 = Date.now();
    await assert.rejects(callService('vault', 'my.Svc', { socketPath: agentSocket, timeoutMs: 200 }), (err: unknown) => err instanceof QrexecCallError && err.exitCode === 125 && /no answer/.test(err.message));
    assert.ok(Date.now() - t0 < 2000);
    await waitFor(() => admin.trigger.pendingCount === 0, 'the cancelled call to be dropped');
    const id = admin.triggers[0]?.requestId ?? '';
    const accepted = new Promise<void>((resolve) => admin.server.once('connection', (s) => { s.once('close', () => { resolve(); }); }));
    admin.ports.add(999);
    admin.trigger.handleServiceConnect(encodeExecParams(0, 999, id));
    await accepted;
  });

  test('at most maxPending calls wait; the next is refused at once', async () => {
    await setUp(2);
    admin.decide = () => 'ignore';
    const waiting = [1, 2].map(() => callService('vault', 'my.Svc', { socketPath: agentSocket, timeoutMs: 5000 }).catch((e: unknown) => e));
    await waitFor(() => admin.trigger.pendingCount === 2, 'two waiting calls');
    await assert.rejects(callService('vault', 'my.Svc', { socketPath: agentSocket }), QrexecRefusedError);
    assert.ok(logs.some((m) => /already wait/.test(m)), logs.join('\n'));
    // The control connection closing fails the waiting calls.
    admin.trigger.failAll();
    for (const e of await Promise.all(waiting)) assert.ok(e instanceof QrexecCallError && e.exitCode === 125 && /without an answer/.test(e.message), String(e));
  });

  test('answers with unknown ids or malformed payloads are ignored', async () => {
    await setUp();
    admin.trigger.handleServiceConnect(encodeExecParams(0, 5, 'a999'));
    admin.trigger.handleServiceConnect(Buffer.from('junk'));
    admin.trigger.handleServiceRefused(encodeServiceRefused('a999'));
    admin.trigger.handleServiceRefused(Buffer.alloc(3));
    assert.equal(logs.length, 2, logs.join('\n'));
    const r = await callService('vault', 'my.Svc', { socketPath: agentSocket, stdin: 'ok' });
    assert.equal(r.stdout.toString(), 'OK');
  });

  test('bytes a client sends right after its trigger are not lost', async () => {
    await setUp();
    const sock = net.connect(agentSocket);
    const parser = new FrameParser();
    const frames: { type: number; payload: Buffer }[] = [];
    sock.on('data', (c: Buffer) => frames.push(...parser.push(c)));
    const closed = new Promise<void>((resolve) => sock.once('close', () => { resolve(); }));
    sock.write(Buffer.concat([
      encodeFrame(MSG_TRIGGER_SERVICE3, encodeTrigger({ target: 'vault', requestId: 'mine', serviceAndArg: 'my.Svc' })),
      encodeFrame(MSG_DATA_STDIN, Buffer.from('pipe')),
      encodeFrame(MSG_DATA_STDIN, Buffer.from('lined')),
      encodeFrame(MSG_DATA_STDIN),
    ]));
    await closed;
    assert.equal(frames[0]?.type, MSG_SERVICE_CONNECT);
    assert.deepEqual(parseExecParams(frames[0].payload), { connectDomain: 0, connectPort: 0, cmdline: 'mine' });
    assert.equal(frames[1]?.payload.toString(), 'PIPELINED');
  });

  test('a client that sends garbage, or another frame first, is disconnected without a trigger', async () => {
    await setUp();
    for (const bytes of [Buffer.from('garbage!garbage!'), encodeFrame(MSG_DATA_STDIN, Buffer.from('x')), encodeDataConnect(3)]) {
      const sock = net.connect(agentSocket);
      sock.on('error', () => undefined);
      sock.write(bytes);
      await new Promise<void>((resolve) => sock.once('close', () => { resolve(); }));
    }
    assert.equal(admin.triggers.length, 0);
  });

  test('the agent socket missing: 125 with a clear message', async () => {
    await setUp();
    await assert.rejects(callService('vault', 'my.Svc', { socketPath: path.join(tmp, 'nothing-here') }), (err: unknown) => err instanceof QrexecCallError && err.exitCode === 125 && /cannot reach the qrexec agent/.test(err.message));
  });

  test('many sequential calls from one process', async () => {
    await setUp();
    for (let i = 0; i < 200; i++) {
      const r = await callService('vault', 'my.Svc', { socketPath: agentSocket, stdin: `exit${i % 7}` });
      assert.equal(r.code, i % 7);
    }
    assert.equal(admin.trigger.pendingCount, 0);
  });
});

describe('qrexec-client-vm main', () => {
  const io = (input = ''): { io: { stdin: PassThrough; stdout: PassThrough; stderr: PassThrough }; out: () => string; err: () => string } => {
    const stdin = new PassThrough();
    stdin.end(input);
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const o: Buffer[] = [];
    const e: Buffer[] = [];
    stdout.on('data', (c: Buffer) => o.push(c));
    stderr.on('data', (c: Buffer) => e.push(c));
    return { io: { stdin, stdout, stderr }, out: () => Buffer.concat(o).toString(), err: () => Buffer.concat(e).toString() };
  };

  test('without a local program: stdin/stdout/stderr are the service\'s, the exit code too', async () => {
    await setUp();
    const c = io('abc');
    assert.equal(await clientMain(['$default', 'my.Svc+x'], c.io, { socketPath: agentSocket }), 3);
    assert.equal(c.out(), 'ABC');
    assert.equal(c.err(), '3 bytes\n');
    assert.equal(admin.triggers[0]?.target, '@default');
  });

  test('refused: "Request refused", 126; no answer: 125', async () => {
    await setUp();
    admin.decide = () => 'refuse';
    const c = io();
    assert.equal(await clientMain(['vault', 'my.Svc'], c.io, { socketPath: agentSocket }), 126);
    assert.equal(c.err(), 'Request refused\n');
    admin.decide = () => 'ignore';
    const d = io();
    assert.equal(await clientMain(['vault', 'my.Svc'], d.io, { socketPath: agentSocket, timeoutMs: 100 }), 125);
    assert.match(d.err(), /no answer/);
  });

  test('with a local program: its stdout feeds the service, the service\'s stdout feeds it; its exit code is reported', async () => {
    await setUp();
    const file = path.join(tmp, 'local-out');
    const c = io();
    const code = await clientMain(['vault', 'my.Svc', '/bin/sh', '-c', `printf hello; exec >&-; cat > ${file}; exit 5`], c.io, { socketPath: agentSocket });
    assert.equal(code, 5);
    assert.equal(fs.readFileSync(file, 'utf8'), 'HELLO');
    assert.equal(c.err(), '5 bytes\n');
  });

  test('a local program that exits without reading: the call still ends, with its exit code', async () => {
    await setUp();
    const c = io();
    assert.equal(await clientMain(['vault', 'my.Svc', '/bin/sh', '-c', 'head -c 3000000 /dev/zero; exit 7'], c.io, { socketPath: agentSocket }), 7);
  });

  test('stdout closed by its reader: the call is dropped, exit 141 as after SIGPIPE', async () => {
    await setUp();
    const c = io('x'.repeat(3_000_000));
    c.io.stdout.once('data', () => { c.io.stdout.destroy(new Error('EPIPE')); });
    assert.equal(await clientMain(['vault', 'my.Svc'], c.io, { socketPath: agentSocket }), 141);
  });

  test('a local program that cannot start: 125 (the call is dropped)', async () => {
    await setUp();
    const c = io();
    assert.equal(await clientMain(['vault', 'my.Svc', path.join(tmp, 'no-such-program')], c.io, { socketPath: agentSocket }), 125);
    assert.match(c.err(), /cannot run/);
  });
});
