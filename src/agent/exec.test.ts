// Service calls into a qube, run by the agent's exec code against a fake channel (the admin
// domain's end) with service directories in a temporary tree: lookup, argv and environment,
// shell-line files, socket services and their descriptor, stderr routing, exit codes. Commands
// run as the test's own user (root: the agent's own case for `-u root`).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  encodeFrame,
  FrameParser,
  MSG_DATA_CONNECT,
  MSG_DATA_EXIT_CODE,
  MSG_DATA_STDERR,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  parseDataConnect,
  parseExitCode,
} from '../protocol/qrexec.js';
import { COMMAND_PATH } from './accounts.js';
import { CappedStderrLog, runExec, STDERR_LOG_CAP, type ExecContext } from './exec.js';

interface Result {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number | undefined;
  readonly eof: { stdout: boolean; stderr: boolean };
}

let tmp = '';
let server: net.Server;
let ctx: ExecContext;
let local = '';
let etc = '';
let rpcConfig = '';
const logs: string[] = [];
const logged: string[] = [];
const waiting = new Map<number, (s: net.Socket) => void>();
let nextPort = 1;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-agent-exec-'));
  local = path.join(tmp, 'usr-local-etc-qubes-rpc');
  etc = path.join(tmp, 'etc-qubes-rpc');
  rpcConfig = path.join(tmp, 'rpc-config');
  for (const d of [local, etc, rpcConfig, path.join(tmp, 'home')]) fs.mkdirSync(d);
  const me = os.userInfo();
  fs.writeFileSync(path.join(tmp, 'passwd'), `${me.username}:x:${me.uid}:${me.gid}:me:${path.join(tmp, 'home')}:/bin/sh\n`);
  const channel = path.join(tmp, 'channel.sock');
  server = net.createServer({ allowHalfOpen: true }, (s) => {
    const parser = new FrameParser();
    const onData = (chunk: Buffer): void => {
      const [first, ...more] = parser.push(chunk);
      if (first === undefined) return;
      s.off('data', onData);
      s.pause();
      assert.equal(first.type, MSG_DATA_CONNECT);
      const rest = Buffer.concat([...more.map((f) => encodeFrame(f.type, f.payload)), parser.takeBuffered()]);
      if (rest.length > 0) s.unshift(rest);
      const port = parseDataConnect(first.payload);
      waiting.get(port)?.(s);
      waiting.delete(port);
    };
    s.on('data', onData);
  });
  await new Promise<void>((resolve) => server.listen(channel, resolve));
  ctx = {
    channel,
    log: (m) => { logs.push(m); },
    serviceDirs: [local, etc],
    rpcConfigDir: rpcConfig,
    passwdFile: path.join(tmp, 'passwd'),
    serviceStderr: (t) => { logged.push(t); },
  };
});

after(async () => {
  await new Promise<void>((resolve) => server.close(() => { resolve(); }));
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Runs `command` as the test's user, the way the daemon's EXEC_CMDLINE would, and collects the answer. */
function call(command: string, stdin = '', justExec = false): Promise<Result> {
  const port = nextPort++;
  const connected = new Promise<net.Socket>((resolve) => waiting.set(port, resolve));
  runExec(ctx, port, `${os.userInfo().username}:${command}`, justExec);
  return connected.then((s) => new Promise<Result>((resolve) => {
    const parser = new FrameParser();
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const eof = { stdout: false, stderr: false };
    let code: number | undefined;
    s.on('data', (chunk: Buffer) => {
      for (const f of parser.push(chunk)) {
        assert.equal(code, undefined, 'nothing after the exit code');
        if (f.type === MSG_DATA_STDOUT) {
          if (f.payload.length === 0) eof.stdout = true;
          else out.push(f.payload);
        } else if (f.type === MSG_DATA_STDERR) {
          if (f.payload.length === 0) eof.stderr = true;
          else err.push(f.payload);
        } else if (f.type === MSG_DATA_EXIT_CODE) {
          code = parseExitCode(f.payload);
        }
      }
    });
    s.on('end', () => { s.end(); });
    s.on('close', () => { resolve({ stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), code, eof }); });
    if (stdin !== '') s.write(encodeFrame(MSG_DATA_STDIN, Buffer.from(stdin)));
    s.write(encodeFrame(MSG_DATA_STDIN));
    s.resume();
  }));
}

function service(dir: string, name: string, body: string, mode = 0o755): void {
  fs.writeFileSync(path.join(dir, name), body, { mode });
  fs.chmodSync(path.join(dir, name), mode);
}

const ENV_DUMP = '#!/bin/sh\necho "argv:$#:$1"; echo "cwd:$(pwd)"; env | grep -E "^(QREXEC_|PATH=|HOME=|USER=|LOGNAME=|SHELL=)" | sort; cat\n';

describe('service calls into a qube', () => {
  test('an executable service: argv[1] = the argument, the QREXEC_* environment, cwd = home, stdin passed', async () => {
    service(local, 'test.Env', ENV_DUMP);
    const r = await call('QUBESRPC test.Env+an.arg work name vault', 'input\n');
    assert.equal(r.code, 0, r.stderr);
    const me = os.userInfo().username;
    assert.equal(r.stdout, [
      'argv:1:an.arg',
      `cwd:${path.join(tmp, 'home')}`,
      `HOME=${path.join(tmp, 'home')}`,
      `LOGNAME=${me}`,
      `PATH=${COMMAND_PATH}`,
      'QREXEC_REMOTE_DOMAIN=work',
      'QREXEC_REQUESTED_TARGET=vault',
      'QREXEC_REQUESTED_TARGET_TYPE=name',
      'QREXEC_SERVICE_ARGUMENT=an.arg',
      'QREXEC_SERVICE_FULL_NAME=test.Env+an.arg',
      'SHELL=/bin/sh',
      `USER=${me}`,
      'input',
      '',
    ].join('\n'));
    assert.deepEqual(r.eof, { stdout: true, stderr: true });
    const k = await call('QUBESRPC test.Env dom0 keyword dispvm');
    assert.match(k.stdout, /^argv:0:\n/);
    assert.match(k.stdout, /^QREXEC_REQUESTED_TARGET_KEYWORD=dispvm$/m);
    assert.match(k.stdout, /^QREXEC_REQUESTED_TARGET_TYPE=keyword$/m);
    assert.doesNotMatch(k.stdout, /QREXEC_SERVICE_ARGUMENT|QREXEC_REQUESTED_TARGET=/);
    // The short Qubes form: requested target @default.
    const s = await call('QUBESRPC test.Env+x dom0');
    assert.match(s.stdout, /^QREXEC_REQUESTED_TARGET_KEYWORD=default$/m);
  });

  test('S+A before S, /usr/local before /etc', async () => {
    service(etc, 'test.Order', '#!/bin/sh\necho etc-S\n');
    assert.equal((await call('QUBESRPC test.Order+a dom0')).stdout, 'etc-S\n');
    service(local, 'test.Order', '#!/bin/sh\necho local-S\n');
    assert.equal((await call('QUBESRPC test.Order+a dom0')).stdout, 'local-S\n');
    service(etc, 'test.Order+a', '#!/bin/sh\necho etc-SA\n');
    assert.equal((await call('QUBESRPC test.Order+a dom0')).stdout, 'etc-SA\n');
    service(local, 'test.Order+a', '#!/bin/sh\necho local-SA\n');
    assert.equal((await call('QUBESRPC test.Order+a dom0')).stdout, 'local-SA\n');
    assert.equal((await call('QUBESRPC test.Order+b dom0')).stdout, 'local-S\n');
  });

  test('not found: 127, the message to dom0; from another qube only logged', async () => {
    const r = await call('QUBESRPC test.Nothing+x dom0');
    assert.equal(r.code, 127);
    assert.match(r.stderr, /service not found in this qube: test\.Nothing\+x/);
    assert.equal(r.stdout, '');
    logs.length = 0;
    const q = await call('QUBESRPC test.Nothing work name me');
    assert.equal(q.code, 127);
    assert.equal(q.stderr, '');
    assert.ok(logs.some((m) => /test\.Nothing \(from work\): .*service not found/.test(m)), logs.join('\n'));
  });

  test('a non-executable file is a shell command line ($0 = its path, $1 = the argument)', async () => {
    service(etc, 'test.Line', 'echo "line:$1:$QREXEC_SERVICE_FULL_NAME"; tr a-z A-Z\n', 0o644);
    const r = await call('QUBESRPC test.Line+zz dom0', 'abc\n');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'line:zz:test.Line+zz\nABC\n');
    fs.writeFileSync(path.join(etc, 'test.Bad'), Buffer.from([0x65, 0x63, 0x68, 0x6f, 0x20, 0xff, 0x0a]));
    assert.equal((await call('QUBESRPC test.Bad dom0')).code, 125);
  });

  test('a service found but unusable (dangling link, directory): 125', async () => {
    fs.symlinkSync(path.join(tmp, 'nowhere'), path.join(local, 'test.Dangling'));
    const r = await call('QUBESRPC test.Dangling dom0');
    assert.equal(r.code, 125);
    assert.match(r.stderr, /cannot run service test\.Dangling/);
    fs.mkdirSync(path.join(etc, 'test.Dir'));
    assert.equal((await call('QUBESRPC test.Dir dom0')).code, 125);
  });

  test('stderr of a call from another qube goes to the log, prefixed and capped; from dom0 to the caller', async () => {
    service(etc, 'test.Err', '#!/bin/sh\necho out; echo "problem $1" >&2; exit 3\n');
    const d = await call('QUBESRPC test.Err+x dom0');
    assert.deepEqual([d.code, d.stdout, d.stderr], [3, 'out\n', 'problem x\n']);
    logged.length = 0;
    const q = await call('QUBESRPC test.Err+x work name me');
    assert.deepEqual([q.code, q.stdout, q.stderr, q.eof.stderr], [3, 'out\n', '', true]);
    assert.deepEqual(logged, ['test.Err+x (from work): problem x\n']);
    service(etc, 'test.Flood', '#!/bin/sh\nhead -c 300000 /dev/zero | tr "\\0" "e" >&2; echo done\n');
    logged.length = 0;
    const f = await call('QUBESRPC test.Flood work name me');
    assert.equal(f.stdout, 'done\n');
    const total = logged.join('');
    assert.ok(total.length < STDERR_LOG_CAP + 1000, `${total.length} bytes logged`);
    assert.match(total, /\(more stderr of this call dropped\)\n$/);
  });

  test('a socket service gets the descriptor, then the caller\'s bytes; its answer is stdout, exit 0', async () => {
    const sockPath = path.join(etc, 'test.Sock');
    const got: Buffer[] = [];
    const srv = net.createServer({ allowHalfOpen: true }, (c) => {
      const parts: Buffer[] = [];
      c.on('data', (b: Buffer) => parts.push(b));
      c.on('end', () => {
        got.push(Buffer.concat(parts));
        c.end(`seen ${Buffer.concat(parts).length} bytes`);
      });
    });
    await new Promise<void>((resolve) => srv.listen(sockPath, resolve));
    try {
      const r = await call('QUBESRPC test.Sock+arg work name me', 'payload');
      assert.deepEqual([r.code, r.stdout, r.eof], [0, `seen ${'test.Sock+arg work\0payload'.length} bytes`, { stdout: true, stderr: true }]);
      assert.equal(got[0]?.toString('latin1'), 'test.Sock+arg work\0payload');
      fs.writeFileSync(path.join(rpcConfig, 'test.Sock'), '# no descriptor\nskip-service-descriptor=true\n');
      const s = await call('QUBESRPC test.Sock+arg dom0', 'raw');
      assert.equal(s.stdout, 'seen 3 bytes');
      assert.equal(got[1]?.toString(), 'raw');
      // A socket nobody listens on any more: 125.
      fs.linkSync(sockPath, path.join(etc, 'test.Stale'));
    } finally {
      await new Promise<void>((resolve) => srv.close(() => { resolve(); }));
    }
    const stale = await call('QUBESRPC test.Stale dom0', 'x');
    assert.equal(stale.code, 125);
    assert.match(stale.stderr, /cannot connect to socket service/);
  });

  test('JUST_EXEC of a service: started, reported at once', async () => {
    const marker = path.join(tmp, 'just-exec-marker');
    service(etc, 'test.Just', `#!/bin/sh\necho "$1" > ${marker}\n`);
    const r = await call('QUBESRPC test.Just+ran dom0', '', true);
    assert.equal(r.code, 0);
    const end = Date.now() + 3000;
    while (!fs.existsSync(marker) && Date.now() < end) await new Promise((res) => setTimeout(res, 10));
    assert.equal(fs.readFileSync(marker, 'utf8'), 'ran\n');
  });

  test('plain commands are unchanged; malformed service calls fail with 125', async () => {
    const r = await call('echo "$QREXEC_REMOTE_DOMAIN $PATH"; exit 4');
    assert.deepEqual([r.code, r.stdout], [4, `dom0 ${COMMAND_PATH}\n`]);
    for (const bad of ['QUBESRPC', 'QUBESRPCtest.X dom0', 'QUBESRPC test.X', 'QUBESRPC test.X dom0 other vault', 'QUBESRPC te/st dom0', 'QUBESRPC test.X dom0 name']) {
      const b = await call(bad);
      assert.equal(b.code, 125, bad);
      assert.match(b.stderr, /malformed service call/, bad);
    }
  });
});

describe('a caller that goes away', () => {
  test('a command still writing is not left blocked: it ends once the connection is gone', async () => {
    const marker = path.join(tmp, 'still-writing-done');
    const port = nextPort++;
    const connected = new Promise<net.Socket>((resolve) => waiting.set(port, resolve));
    // Writes far more than a pipe holds; `done` is written only if the shell gets past `head`.
    runExec(ctx, port, `${os.userInfo().username}:head -c 10000000 /dev/zero; echo finished > ${marker}`, false);
    const s = await connected;
    const closedSeen = new Promise<void>((resolve) => { s.once('close', () => { resolve(); }); });
    s.destroy();
    await closedSeen;
    // head dies of EPIPE/SIGPIPE and the shell goes on: the marker appears; a stuck head never gets there.
    const deadline = Date.now() + 5000;
    while (!fs.existsSync(marker) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.ok(fs.existsSync(marker), 'the command went on after its output lost its reader');
  });
});

describe('CappedStderrLog', () => {
  test('prefixes whole lines, keeps partial lines until their end, stops at the cap', () => {
    const out: string[] = [];
    const l = new CappedStderrLog('p: ', (t) => out.push(t), 20);
    l.push(Buffer.from('ab\ncd'));
    l.push(Buffer.from('e\nfghijklmnopqrstuvwxyz\n'));
    l.push(Buffer.from('more\n'));
    l.end();
    assert.deepEqual(out, ['p: ab\n', 'p: cde\n', 'p: fghijklmnopqr\n', 'p: (more stderr of this call dropped)\n']);
  });
});
