// bulkhead-agent: runs inside every qube (as the qube's root, under tini as PID 1). It connects
// to the admin domain over the qube's channel (/run/bulkhead/qrexec.sock), says HELLO in the
// qrexec framing, then
//   - runs what the admin domain sends (EXEC_CMDLINE / JUST_EXEC): plain commands and service
//     calls into this qube, each over its own data connection (exec.ts, services.ts);
//   - forwards service calls made in this qube (its local socket AGENT_TRIGGER_SOCKET, used by
//     qrexec-client-vm) and relays them once allowed (trigger.ts);
//   - powers the qube off on SHUTDOWN.
// Imports only the protocol layer; it is bound read-only into every qube.
import fs from 'node:fs';
import net from 'node:net';
import {
  AGENT_TRIGGER_SOCKET,
  encodeHello,
  FrameParser,
  MSG_EXEC_CMDLINE,
  MSG_HELLO,
  MSG_JUST_EXEC,
  MSG_SERVICE_CONNECT,
  MSG_SERVICE_REFUSED,
  MSG_SHUTDOWN,
  parseExecParams,
  parseHello,
  QREXEC_PROTOCOL_VERSION,
} from '../protocol/qrexec.js';
import { runExec } from './exec.js';
import { TriggerServer } from './trigger.js';

const CHANNEL = process.env.BULKHEAD_CHANNEL ?? '/run/bulkhead/qrexec.sock';

function log(message: string): void {
  process.stderr.write(`bulkhead-agent: ${message}\n`);
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
  const trigger = new TriggerServer({
    socketPath: AGENT_TRIGGER_SOCKET,
    channel: CHANNEL,
    sendControl: (frame) => {
      if (control.destroyed) return false;
      control.write(frame);
      return true;
    },
    log,
  });
  control.on('connect', () => { control.write(encodeHello(QREXEC_PROTOCOL_VERSION)); });
  control.on('error', (err) => {
    log(`channel: ${err.message}`);
    process.exit(1);
  });
  control.on('close', () => {
    // The admin domain went away: waiting calls fail, and a qube without its channel powers off.
    trigger.failAll();
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
        trigger.listen().catch((err: unknown) => { log(`service calls from this qube are unavailable: ${(err as Error).message}`); });
        continue;
      }
      try {
        if (f.type === MSG_EXEC_CMDLINE || f.type === MSG_JUST_EXEC) {
          const params = parseExecParams(f.payload);
          runExec({ channel: CHANNEL, log }, params.connectPort, params.cmdline, f.type === MSG_JUST_EXEC);
        } else if (f.type === MSG_SERVICE_CONNECT) {
          trigger.handleServiceConnect(f.payload);
        } else if (f.type === MSG_SERVICE_REFUSED) {
          trigger.handleServiceRefused(f.payload);
        } else if (f.type === MSG_SHUTDOWN) {
          powerOff();
        }
      } catch (err) {
        log(`channel: frame 0x${f.type.toString(16)} ignored: ${(err as Error).message}`);
      }
    }
  });
}

process.on('SIGTERM', () => { powerOff(); });
main();
