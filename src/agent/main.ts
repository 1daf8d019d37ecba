// bulkhead-agent: runs inside every qube (as the qube's root, under tini as PID 1). It connects
// to the admin domain over the qube's channel (/run/bulkhead/qrexec.sock), says HELLO in the
// qrexec framing, then runs the commands the admin domain sends (EXEC_CMDLINE `USER:COMMAND`),
// each over its own data connection: DATA_STDIN in; DATA_STDOUT, DATA_STDERR, DATA_EXIT_CODE
// out. Imports only the protocol layer; it is bound read-only into every qube.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import {
  encodeDataConnect,
  encodeExitCode,
  encodeFinish,
  encodeFrame,
  encodeHello,
  FrameParser,
  MAX_DATA_CHUNK,
  MSG_DATA_STDERR,
  MSG_DATA_STDIN,
  MSG_DATA_STDOUT,
  MSG_EXEC_CMDLINE,
  MSG_HELLO,
  MSG_JUST_EXEC,
  MSG_SHUTDOWN,
  parseExecParams,
  parseHello,
  QREXEC_PROTOCOL_VERSION,
} from '../protocol/qrexec.js';

const CHANNEL = process.env.BULKHEAD_CHANNEL ?? '/run/bulkhead/qrexec.sock';
const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function log(message: string): void {
  process.stderr.write(`bulkhead-agent: ${message}\n`);
}

interface Account {
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
  readonly shell: string;
}

function lookupUser(name: string): Account | undefined {
  let passwd: string;
  try {
    passwd = fs.readFileSync('/etc/passwd', 'utf8');
  } catch {
    return undefined;
  }
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 7) {
      const uid = Number(f[2]);
      const gid = Number(f[3]);
      if (!Number.isInteger(uid) || !Number.isInteger(gid)) return undefined;
      return { uid, gid, home: f[5] ?? '/', shell: f[6] ?? '/bin/sh' };
    }
  }
  return undefined;
}

const SETPRIV = '/usr/bin/setpriv';

/**
 * How to run `/bin/sh -c COMMAND` as the account. Node's own uid/gid switch drops every
 * supplementary group, so where the qube has setpriv (util-linux) it switches ids and sets the
 * user's groups from /etc/group; root's commands run directly.
 */
function asUser(account: Account, command: string): [string, string[], { uid?: number; gid?: number }] {
  if (account.uid === 0 && account.gid === 0) return ['/bin/sh', ['-c', command], {}];
  if (fs.existsSync(SETPRIV)) {
    return [SETPRIV, [`--reuid=${account.uid}`, `--regid=${account.gid}`, '--init-groups', '--', '/bin/sh', '-c', command], {}];
  }
  return ['/bin/sh', ['-c', command], { uid: account.uid, gid: account.gid }];
}

function sendChunked(sock: net.Socket, type: number, data: Buffer): boolean {
  let ok = true;
  for (let off = 0; off < data.length; off += MAX_DATA_CHUNK) {
    ok = sock.write(encodeFrame(type, data.subarray(off, off + MAX_DATA_CHUNK)));
  }
  return ok;
}

function finishWithError(sock: net.Socket, message: string, code: number): void {
  sock.end(encodeFinish(`${message}\n`, code));
}

const children = new Set<ChildProcess>();

/** Runs one command on its own data connection. */
function runCommand(port: number, cmdline: string, justExec: boolean): void {
  const sock = net.connect({ path: CHANNEL, allowHalfOpen: true });
  sock.on('error', (err) => { log(`data connection ${port}: ${err.message}`); });
  sock.write(encodeDataConnect(port));
  const colon = cmdline.indexOf(':');
  if (colon <= 0) {
    finishWithError(sock, 'bulkhead-agent: malformed command (expected USER:COMMAND)', 125);
    return;
  }
  const userName = cmdline.slice(0, colon);
  const command = cmdline.slice(colon + 1);
  const account = lookupUser(userName);
  if (account === undefined) {
    finishWithError(sock, `bulkhead-agent: no such user in this qube: ${userName}`, 125);
    return;
  }
  const cwd = fs.existsSync(account.home) ? account.home : '/';
  const env = { PATH, HOME: account.home, USER: userName, LOGNAME: userName, SHELL: account.shell, QREXEC_REMOTE_DOMAIN: 'dom0' };
  if (justExec) {
    // No I/O: start it on its own and report only whether it started.
    const [file, args, ids] = asUser(account, command);
    const detached = spawn(file, args, { ...ids, cwd, env, stdio: 'ignore', detached: true });
    detached.once('spawn', () => {
      detached.unref();
      sock.end(encodeFinish('', 0));
    });
    detached.once('error', (err) => { finishWithError(sock, `bulkhead-agent: cannot run the command: ${err.message}`, 127); });
    return;
  }
  const [file, args, ids] = asUser(account, command);
  const child = spawn(file, args, { ...ids, cwd, env, stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  let spawnFailed = false;
  child.on('error', (err) => {
    spawnFailed = true;
    children.delete(child);
    finishWithError(sock, `bulkhead-agent: cannot run the command: ${err.message}`, 127);
  });
  const pump = (stream: NodeJS.ReadableStream & { pause(): void; resume(): void }, type: number): void => {
    stream.on('data', (chunk: Buffer) => {
      if (!sendChunked(sock, type, chunk)) {
        stream.pause();
        sock.once('drain', () => { stream.resume(); });
      }
    });
    stream.on('end', () => { sock.write(encodeFrame(type)); });
  };
  pump(child.stdout, MSG_DATA_STDOUT);
  pump(child.stderr, MSG_DATA_STDERR);
  child.stdin.on('error', () => { /* the command stopped reading */ });
  const parser = new FrameParser();
  sock.on('data', (untrustedChunk: Buffer) => {
    let frames;
    try {
      frames = parser.push(untrustedChunk);
    } catch (err) {
      log(`data connection ${port}: ${(err as Error).message}`);
      sock.destroy();
      child.kill('SIGKILL');
      return;
    }
    for (const f of frames) {
      if (f.type !== MSG_DATA_STDIN) continue;
      if (f.payload.length === 0) child.stdin.end();
      else if (!child.stdin.write(f.payload)) {
        sock.pause();
        child.stdin.once('drain', () => { sock.resume(); });
      }
    }
  });
  sock.on('close', () => { child.stdin.destroy(); });
  child.on('close', (code, signal) => {
    children.delete(child);
    if (spawnFailed) return;
    const exit = code ?? 128 + (signal === null ? 0 : signalNumber(signal));
    sock.end(encodeExitCode(exit));
  });
}

function signalNumber(signal: NodeJS.Signals): number {
  return os.constants.signals[signal];
}

/** Powers the qube off: SIGTERM to every process, a short grace, then exit (PID 1 follows). */
function powerOff(): void {
  try {
    process.kill(-1, 'SIGTERM');
  } catch {
    // nothing else runs
  }
  const deadline = Date.now() + 2000;
  const check = (): void => {
    const others = fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e) && e !== '1' && e !== String(process.pid));
    if (others.length === 0 || Date.now() > deadline) process.exit(0);
    setTimeout(check, 20);
  };
  check();
}

function main(): void {
  const control = net.connect(CHANNEL);
  const parser = new FrameParser();
  let greeted = false;
  control.on('connect', () => { control.write(encodeHello(QREXEC_PROTOCOL_VERSION)); });
  control.on('error', (err) => {
    log(`channel: ${err.message}`);
    process.exit(1);
  });
  control.on('close', () => {
    // The admin domain went away: a qube without its channel powers off.
    powerOff();
  });
  control.on('data', (untrustedChunk: Buffer) => {
    let frames;
    try {
      frames = parser.push(untrustedChunk);
    } catch (err) {
      log(`channel: ${(err as Error).message}`);
      process.exit(1);
    }
    for (const f of frames) {
      if (!greeted) {
        if (f.type !== MSG_HELLO) {
          log('channel: expected HELLO');
          process.exit(1);
        }
        parseHello(f.payload);
        greeted = true;
        continue;
      }
      if (f.type === MSG_EXEC_CMDLINE || f.type === MSG_JUST_EXEC) {
        const params = parseExecParams(f.payload);
        runCommand(params.connectPort, params.cmdline, f.type === MSG_JUST_EXEC);
      } else if (f.type === MSG_SHUTDOWN) {
        powerOff();
      }
    }
  });
}

process.on('SIGTERM', () => { powerOff(); });
main();
