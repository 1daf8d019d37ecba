// The Admin API over a real Unix socket, in process: golden bytes of the Qubes wire format
// (written from docs/protocol/admin-api.md), error families, events, and the lifecycle wired to
// the HAL (here the FakeBackend test double — the real backends have their own tests).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { Registry } from '../core/registry.js';
import { FakeBackend } from '../hal/fake.js';
import type { BackendKind, HypervisorBackend } from '../hal/types.js';
import { startDaemon, type RunningDaemon } from './daemon.js';
import { silentLogger } from './log.js';
import { METHODS } from './methods.js';

interface Harness {
  readonly dir: string;
  readonly socket: string;
  readonly daemon: RunningDaemon;
}

async function harness(backends?: ReadonlyMap<BackendKind, HypervisorBackend>): Promise<Harness> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-api-'));
  const socket = path.join(dir, 'qubesd.sock');
  const daemon = await startDaemon({ dataDir: path.join(dir, 'data'), socketPath: socket, log: silentLogger(), network: false, defaultQubes: true, ...(backends ? { backends } : {}) });
  return { dir, socket, daemon };
}

async function dispose(h: Harness): Promise<void> {
  await h.daemon.close();
  fs.rmSync(h.dir, { recursive: true, force: true });
}

/** Sends raw request bytes, half-closes, returns every byte until the server closes. */
function raw(socket: string, request: Buffer | string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    const chunks: Buffer[] = [];
    s.on('connect', () => s.end(request));
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') resolve(Buffer.concat(chunks));
      else reject(err);
    });
    s.on('close', () => { resolve(Buffer.concat(chunks)); });
  });
}

function req(method: string, dest: string, payload = '', arg = ''): string {
  return `${method}+${arg} dom0 name ${dest}\0${payload}`;
}

function ok(content: string): Buffer {
  return Buffer.from(`0\0${content}`, 'utf8');
}

function exc(type: string, message: string): Buffer {
  return Buffer.from(`2\0${type}\0\0${message}\0`, 'utf8');
}

test('the daemon refuses to replace a file that is not a socket, and releases its lock', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-api-'));
  try {
    const notSocket = path.join(dir, 'important.txt');
    fs.writeFileSync(notSocket, 'keep me');
    const dataDir = path.join(dir, 'data');
    await assert.rejects(
      startDaemon({ dataDir, socketPath: notSocket, log: silentLogger(), network: false }),
      /exists and is not a socket; refusing to replace it/,
    );
    assert.equal(fs.readFileSync(notSocket, 'utf8'), 'keep me');
    const d = await startDaemon({ dataDir, socketPath: path.join(dir, 'ok.sock'), log: silentLogger(), network: false });
    await d.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

describe('Admin API wire format (golden bytes)', () => {
  let h: Harness;
  before(async () => {
    h = await harness();
  });
  after(async () => {
    await dispose(h);
  });

  test('admin.vmclass.List', async () => {
    assert.deepEqual(await raw(h.socket, req('admin.vmclass.List', 'dom0')), ok('AppVM\nTemplateVM\nStandaloneVM\nAdminVM\nDispVM\n'));
  });

  test('admin.vm.List to dom0: every qube, sorted, dom0 with the zero uuid', async () => {
    const reply = (await raw(h.socket, req('admin.vm.List', 'dom0'))).toString();
    const lines = reply.slice(2).split('\n');
    assert.equal(reply.slice(0, 2), '0\0');
    assert.equal(lines.pop(), '', 'every line ends with \\n');
    assert.ok(lines.includes('dom0 class=AdminVM state=Running uuid=00000000-0000-0000-0000-000000000000'));
    for (const line of lines) assert.match(line, /^[a-zA-Z][\w.-]* class=\w+ state=\w+ uuid=[0-9a-f-]{36}$/);
    const names = lines.map((l) => l.split(' ')[0] ?? '');
    assert.deepEqual(names, [...names].sort());
    assert.ok(names.includes('work') && names.includes('debian-12'));
  });

  test('admin.vm.List to a qube: exactly that one line', async () => {
    const reply = (await raw(h.socket, req('admin.vm.List', 'work'))).toString();
    assert.match(reply, /^0\0work class=AppVM state=Halted uuid=[0-9a-f-]{36}\n$/);
  });

  test('admin.vm.property.Get: default flag, type, value; two spaces even when empty', async () => {
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Get', 'work', '', 'label')), ok('default=False type=label blue'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Get', 'work', '', 'memory')), ok('default=True type=int 400'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Get', 'work', '', 'template')), ok('default=False type=vm debian-12'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Get', 'vault', '', 'netvm')), ok('default=False type=vm '));
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Get', 'work', '', 'autostart')), ok('default=True type=bool False'));
    assert.deepEqual(await raw(h.socket, req('admin.property.Get', 'dom0', '', 'default_template')), ok('default=False type=vm debian-12'));
    assert.deepEqual(await raw(h.socket, req('admin.property.Get', 'dom0', '', 'clockvm')), ok('default=True type=vm '));
  });

  test('GetAll: one NAME + Get line per property; GetDefault: type and value only', async () => {
    const all = (await raw(h.socket, req('admin.vm.property.GetAll', 'work'))).toString();
    assert.ok(all.startsWith('0\0'));
    assert.ok(all.includes('\nlabel default=False type=label blue\n'));
    assert.ok(all.includes('\nnetvm default=True type=vm sys-firewall\n'));
    const names = all.slice(2).split('\n').filter((l) => l !== '').map((l) => l.split(' ')[0]);
    const listed = (await raw(h.socket, req('admin.vm.property.List', 'work'))).toString().slice(2).split('\n').filter((l) => l !== '');
    assert.deepEqual(names, listed);
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.GetDefault', 'work', '', 'vcpus')), ok('type=int 2'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.GetDefault', 'work', '', 'name')), ok(''));
  });

  test('labels: List ends with \\n, Get gives 0xRRGGBB, Index the number', async () => {
    assert.deepEqual(await raw(h.socket, req('admin.label.List', 'dom0')), ok('red\norange\nyellow\ngreen\ngray\nblue\npurple\nblack\n'));
    assert.deepEqual(await raw(h.socket, req('admin.label.Get', 'dom0', '', 'red')), ok('0xcc0000'));
    assert.deepEqual(await raw(h.socket, req('admin.label.Index', 'dom0', '', 'blue')), ok('6'));
    assert.deepEqual(await raw(h.socket, req('admin.label.Get', 'dom0', '', 'pink')), exc('QubesLabelNotFoundError', 'Label does not exist: pink'));
  });

  test('exception replies carry the Qubes type name and a trailing NUL', async () => {
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Get', 'work', '', 'foo')), exc('QubesNoSuchPropertyError', "Invalid property 'foo' of work"));
    assert.deepEqual(await raw(h.socket, req('admin.vm.List', 'ghost')), exc('QubesVMNotFoundError', "No such domain: 'ghost'"));
    assert.deepEqual(await raw(h.socket, req('admin.vm.feature.Get', 'work', '', 'nope')), exc('QubesFeatureNotFoundError', 'Feature not set for domain work: nope'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.Shutdown', 'work')), exc('QubesVMNotStartedError', "Domain is powered off: 'work'"));
    assert.deepEqual(await raw(h.socket, req('admin.vm.Unpause', 'work')), exc('QubesVMNotPausedError', "Domain is not paused: 'work'"));
  });

  test('create, set, reset, features, tags and notes through the wire', async () => {
    assert.deepEqual(await raw(h.socket, req('admin.vm.Create.AppVM', 'dom0', 'name=wire1 label=green', 'debian-12')), ok(''));
    assert.match((await raw(h.socket, req('admin.vm.List', 'wire1'))).toString(), /^0\0wire1 class=AppVM state=Halted/);
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Set', 'wire1', '800', 'memory')), ok(''));
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Get', 'wire1', '', 'memory')), ok('default=False type=int 800'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Reset', 'wire1', '', 'memory')), ok(''));
    assert.deepEqual(await raw(h.socket, req('admin.vm.property.Set', 'wire1', 'lots', 'memory')), exc('QubesPropertyValueError', "Failed to parse property value as int: 'lots' for 'memory'"));
    assert.deepEqual(await raw(h.socket, req('admin.vm.feature.Set', 'wire1', '1', 'service.cups')), ok(''));
    assert.deepEqual(await raw(h.socket, req('admin.vm.feature.List', 'wire1')), ok('service.cups\n'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.tag.Set', 'wire1', '', 'banking')), ok(''));
    assert.deepEqual(await raw(h.socket, req('admin.vm.tag.Get', 'wire1', '', 'banking')), ok('1'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.tag.Get', 'wire1', '', 'other')), ok('0'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.tag.List', 'wire1')), ok('banking\ncreated-by-dom0\n'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.notes.Set', 'wire1', 'über\nnotes')), ok(''));
    assert.deepEqual(await raw(h.socket, req('admin.vm.notes.Get', 'wire1')), ok('über\nnotes'));
    assert.deepEqual(await raw(h.socket, 'admin.vm.CurrentState+ dom0 keyword adminvm\0'), ok('mem=0 mem_static_max=0 cputime=0 power_state=Running'));
    assert.deepEqual(await raw(h.socket, req('admin.vm.Remove', 'wire1')), ok(''));
    assert.deepEqual(await raw(h.socket, req('admin.vm.List', 'wire1')), exc('QubesVMNotFoundError', "No such domain: 'wire1'"));
  });

  test('a percent sign in a message is doubled for the Python client', async () => {
    assert.deepEqual(
      await raw(h.socket, req('admin.vm.property.Set', 'work', '50%', 'memory')),
      exc('QubesPropertyValueError', "Failed to parse property value as int: '50%%' for 'memory'"),
    );
  });

  test('protocol errors close the connection without a reply; the daemon keeps serving', async () => {
    const closed = [
      req('admin.no.Such', 'dom0'),
      req('admin.vm.List', 'dom0', 'unexpected payload'),
      req('admin.vm.List', 'dom0', '', 'unexpected-arg'),
      req('admin.vm.property.Get', 'work'), // argument required
      req('admin.label.List', 'work'), // dom0-only
      req('admin.vm.Create.AppVM', 'dom0', 'name=x label=red label=red'),
      req('admin.vm.Create.AppVM', 'dom0', 'name=x'),
      req('admin.vm.Create.AdminVM', 'dom0', 'name=x label=red'),
      req('admin.vm.Shutdown', 'work', '', 'now'),
      'admin.vm.List+ dom0 name dom0', // no NUL
      'admin.vm.List dom0 name dom0\0', // no +
      'admin.vm.List+ dom0 name\0',
      'admin.vm.List+ dom0 keyword somewhere\0',
      'admin.vm.List+ work name dom0\0', // only dom0 speaks on the local socket
      Buffer.concat([Buffer.from('admin.vm.List+ dom0 name dom0\0'), Buffer.alloc(65536, 0x41)]),
    ];
    for (const request of closed) {
      assert.deepEqual(await raw(h.socket, request), Buffer.alloc(0), `expected no reply to ${String(request).slice(0, 60)}`);
    }
    assert.deepEqual((await raw(h.socket, req('admin.label.Index', 'dom0', '', 'red'))), ok('1'));
  });

  test('concurrent writers: 20 creates at once all land with distinct qids', async () => {
    const names = Array.from({ length: 20 }, (_, i) => `conc${i}`);
    const replies = await Promise.all(names.map((n) => raw(h.socket, req('admin.vm.Create.AppVM', 'dom0', `name=${n} label=red`))));
    for (const r of replies) assert.deepEqual(r, ok(''));
    const qids = await Promise.all(names.map(async (n) => (await raw(h.socket, req('admin.vm.property.Get', n, '', 'qid'))).toString()));
    assert.equal(new Set(qids).size, 20);
  });

  test('fuzz: random requests to every method never crash the daemon nor break the registry', async () => {
    const methods = [...METHODS.keys()].filter((m) => m !== 'admin.Events');
    const token = fc.constantFrom('', 'work', 'dom0', 'vault', 'debian-12', 'ghost', 'memory', 'netvm', 'label', 'name', 'x', 'uuid:00000000-0000-0000-0000-000000000000');
    const payload = fc.oneof(fc.constant(''), fc.string({ maxLength: 40 }), fc.constantFrom('name=f1 label=red', 'name=work label=red', 'True', 'none', '800', 'sys', 'name= label='));
    let answered = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...methods), token, token, payload, async (method, arg, dest, body) => {
        const reply = await raw(h.socket, `${method}+${arg} dom0 name ${dest === '' ? 'dom0' : dest}\0${body}`);
        // A reply is OK, an exception with the trailing NUL, or nothing (connection closed).
        if (reply.length > 0) {
          answered++;
          assert.ok(reply[0] === 0x30 || reply[0] === 0x32, reply.toString());
          assert.equal(reply[1], 0);
          if (reply[0] === 0x32) assert.equal(reply[reply.length - 1], 0);
        }
      }),
      { numRuns: 300 },
    );
    // The reply checks above ran (not every request was closed without a reply).
    assert.ok(answered > 0);
    // Still serving, and the registry still passes its own integrity check (it would not load otherwise).
    assert.deepEqual(await raw(h.socket, req('admin.label.Index', 'dom0', '', 'black')), ok('8'));
    assert.doesNotThrow(() => new Registry(h.daemon.registry.state, () => undefined));
  });

  test('every declared method names its scope and shape', () => {
    for (const m of METHODS.values()) {
      assert.match(m.name, /^(admin|bulkhead)\.[A-Za-z.]+$/);
      assert.ok((['read', 'write'] as string[]).includes(m.scope));
      assert.ok((m.handler === undefined) !== (m.stream === undefined), `${m.name}: handler xor stream`);
      assert.ok(m.help.length > 0);
    }
  });
});

/** Reads events from an admin.Events stream as raw bytes. */
class EventReader {
  readonly #socket: net.Socket;
  #buffer = Buffer.alloc(0);
  #waiters: (() => void)[] = [];

  constructor(socketPath: string, dest = 'dom0') {
    this.#socket = net.connect(socketPath);
    this.#socket.on('connect', () => this.#socket.end(req('admin.Events', dest)));
    this.#socket.on('data', (c: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, c]);
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  /** Waits until the stream contains `expected` and returns everything before and including it. */
  async until(expected: Buffer | string): Promise<Buffer> {
    const needle = Buffer.from(expected);
    for (let i = 0; i < 100; i++) {
      const at = this.#buffer.indexOf(needle);
      if (at >= 0) {
        const out = this.#buffer.subarray(0, at + needle.length);
        this.#buffer = this.#buffer.subarray(at + needle.length);
        return out;
      }
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 50);
      });
    }
    throw new Error(`event not seen: ${JSON.stringify(needle.toString())}; have ${JSON.stringify(this.#buffer.toString())}`);
  }

  close(): void {
    this.#socket.destroy();
  }
}

describe('admin.Events', () => {
  let h: Harness;
  before(async () => {
    h = await harness();
  });
  after(async () => {
    await dispose(h);
  });

  test('starts with connection-established, then streams changes in Qubes framing', async () => {
    const events = new EventReader(h.socket);
    try {
      assert.deepEqual(await events.until('1\0\0connection-established\0\0'), Buffer.from('1\0\0connection-established\0\0'));
      await raw(h.socket, req('admin.vm.property.Set', 'work', '600', 'memory'));
      await events.until('1\0work\0property-set:memory\0name\0memory\0newvalue\x00600\x00oldvalue\x00400\0\0');
      await raw(h.socket, req('admin.vm.Create.AppVM', 'dom0', 'name=ev1 label=red'));
      await events.until('1\0\0domain-add\0vm\0ev1\0\0');
      await raw(h.socket, req('admin.vm.Remove', 'ev1'));
      await events.until('1\0\0domain-delete\0vm\0ev1\0\0');
    } finally {
      events.close();
    }
  });

  test('a stream for one qube sees only that qube', async () => {
    const events = new EventReader(h.socket, 'personal');
    try {
      await events.until('1\0\0connection-established\0\0');
      await raw(h.socket, req('admin.vm.tag.Set', 'work', '', 'w'));
      await raw(h.socket, req('admin.vm.tag.Set', 'personal', '', 'p'));
      const seen = await events.until('domain-tag-add:p\0tag\0p\0\0');
      assert.equal(seen.includes(Buffer.from('domain-tag-add:w')), false);
    } finally {
      events.close();
    }
  });
});

describe('lifecycle through the HAL', () => {
  test('without a backend, Start answers a clear error and the qube stays Halted', async () => {
    const h = await harness();
    try {
      const reply = (await raw(h.socket, req('admin.vm.Start', 'work'))).toString();
      assert.match(reply, /^2\0QubesException\0\0Start failed: the 'container' isolation backend is not available on this host \(see the daemon log\)\0$/);
      assert.match((await raw(h.socket, req('admin.vm.List', 'work'))).toString(), /state=Halted/);
    } finally {
      await dispose(h);
    }
  });

  test('start (netvm first), pause, unpause, shutdown with events and states', async () => {
    const fake = new FakeBackend();
    const h = await harness(new Map([['container', fake]]));
    const events = new EventReader(h.socket);
    try {
      await events.until('connection-established');
      assert.deepEqual(await raw(h.socket, req('admin.vm.Create.AppVM', 'dom0', 'name=net label=red')), ok(''));
      await raw(h.socket, req('admin.vm.property.Set', 'net', 'True', 'provides_network'));
      await raw(h.socket, req('admin.vm.property.Set', 'work', 'net', 'netvm'));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Start', 'work')), ok(''));
      assert.deepEqual(fake.started.map((s) => s.name), ['net', 'work']);
      assert.equal(fake.started[1]?.rootTemplate, 'debian-12');
      await events.until('1\0work\0domain-pre-start\0\0');
      await events.until('1\0work\0domain-start\0');
      assert.match((await raw(h.socket, req('admin.vm.CurrentState', 'work'))).toString(), /power_state=Running$/);
      assert.deepEqual(await raw(h.socket, req('admin.vm.Start', 'work')), ok(''), 'starting a running qube is OK');
      assert.deepEqual(await raw(h.socket, req('admin.vm.Shutdown', 'net')), exc('QubesVMInUseError', "Domain is in use: 'net'; running qubes use it as netvm: work"));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Remove', 'work')), exc('QubesVMNotHaltedError', "Domain is not powered off: 'work'"));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Pause', 'work')), ok(''));
      await events.until('1\0work\0domain-paused\0\0');
      assert.match((await raw(h.socket, req('admin.vm.List', 'work'))).toString(), /state=Paused/);
      assert.deepEqual(await raw(h.socket, req('admin.vm.Shutdown', 'work')), exc('QubesVMNotRunningError', "Domain not running (either powered off or paused): 'work'"));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Unpause', 'work')), ok(''));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Shutdown', 'work', '', 'wait')), ok(''));
      await events.until('1\0work\0domain-shutdown\0\0');
      assert.match((await raw(h.socket, req('admin.vm.List', 'work'))).toString(), /state=Halted/);
      assert.deepEqual(await raw(h.socket, req('admin.vm.Kill', 'net')), ok(''));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Kill', 'net')), exc('QubesVMNotStartedError', "Domain is powered off: 'net'"));
    } finally {
      events.close();
      await dispose(h);
    }
  });

  test('a running qube stays where it runs when its template switches backend', async () => {
    const container = new FakeBackend();
    const vm = new FakeBackend({ kind: 'vm' });
    const h = await harness(new Map<BackendKind, HypervisorBackend>([['container', container], ['vm', vm]]));
    try {
      await raw(h.socket, req('admin.vm.Start', 'work'));
      assert.deepEqual(await raw(h.socket, req('admin.vm.property.Set', 'debian-12', 'vm', 'backend')), ok(''));
      assert.deepEqual(await raw(h.socket, req('admin.vm.property.Get', 'work', '', 'backend')), ok('default=True type=str vm'));
      assert.match((await raw(h.socket, req('admin.vm.List', 'work'))).toString(), /state=Running/);
      assert.deepEqual(await raw(h.socket, req('admin.vm.Remove', 'work')), exc('QubesVMNotHaltedError', "Domain is not powered off: 'work'"));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Kill', 'work')), ok(''));
      assert.equal(container.state('work'), 'Halted', 'the kill went to the backend that ran it');
      await raw(h.socket, req('admin.vm.Start', 'work'));
      assert.equal(vm.state('work'), 'Running', 'the next start uses the new backend');
    } finally {
      await dispose(h);
    }
  });

  test('renames: refused while qubes using it run; clients see delete + add; per-qube streams follow', async () => {
    const fake = new FakeBackend();
    const h = await harness(new Map([['container', fake]]));
    const all = new EventReader(h.socket);
    const mine = new EventReader(h.socket, 'personal');
    try {
      await all.until('connection-established');
      await mine.until('connection-established');
      await raw(h.socket, req('admin.vm.Start', 'work'));
      assert.deepEqual(
        await raw(h.socket, req('admin.vm.property.Set', 'debian-12', 'deb', 'name')),
        exc('QubesVMInUseError', "Cannot rename 'debian-12' while qubes that use it are running: sys-net, sys-firewall, work"),
      );
      assert.deepEqual(await raw(h.socket, req('admin.vm.property.Set', 'personal', 'private', 'name')), ok(''));
      await all.until('1\0\0domain-delete\0vm\0personal\0\0');
      await all.until('1\0\0domain-add\0vm\0private\0\0');
      await raw(h.socket, req('admin.vm.tag.Set', 'private', '', 'after'));
      await mine.until('1\0private\0domain-tag-add:after\0tag\0after\0\0');
    } finally {
      all.close();
      mine.close();
      await dispose(h);
    }
  });

  test('pausing a halted qube and removing dom0 answer the Qubes error types', async () => {
    const h = await harness(new Map([['container', new FakeBackend()]]));
    try {
      assert.deepEqual(await raw(h.socket, req('admin.vm.Pause', 'work')), exc('QubesVMNotRunningError', "Domain not running (either powered off or paused): 'work'"));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Remove', 'dom0')), exc('QubesVMInUseError', "'dom0' cannot be removed"));
    } finally {
      await dispose(h);
    }
  });

  test('a failed start reports the reason, fires domain-start-failed and leaves the qube Halted', async () => {
    const fake = new FakeBackend({ failStart: new Map([['work', 'template root is missing']]) });
    const h = await harness(new Map([['container', fake]]));
    const events = new EventReader(h.socket);
    try {
      await events.until('connection-established');
      assert.deepEqual(await raw(h.socket, req('admin.vm.Start', 'work')), exc('QubesException', 'Start failed: template root is missing'));
      await events.until('1\0work\0domain-start-failed\0reason\0template root is missing\0\0');
      assert.match((await raw(h.socket, req('admin.vm.List', 'work'))).toString(), /state=Halted/);
    } finally {
      events.close();
      await dispose(h);
    }
  });

  test('shutdown --wait past shutdown_timeout answers QubesVMShutdownTimeoutError', async () => {
    const fake = new FakeBackend({ hangOnShutdown: new Set(['work']) });
    const h = await harness(new Map([['container', fake]]));
    try {
      await raw(h.socket, req('admin.vm.property.Set', 'work', '1', 'shutdown_timeout'));
      await raw(h.socket, req('admin.vm.Start', 'work'));
      assert.deepEqual(await raw(h.socket, req('admin.vm.Shutdown', 'work', '', 'wait')), exc('QubesVMShutdownTimeoutError', "Domain shutdown timed out: 'work'"));
    } finally {
      await dispose(h);
    }
  });

  test('a qube that dies on its own is reported Halted with a domain-shutdown event', async () => {
    const fake = new FakeBackend();
    const h = await harness(new Map([['container', fake]]));
    const events = new EventReader(h.socket);
    try {
      await events.until('connection-established');
      await raw(h.socket, req('admin.vm.Start', 'work'));
      fake.crash('work', 'out of memory');
      await events.until('1\0work\0domain-shutdown\0reason\0out of memory\0\0');
      assert.match((await raw(h.socket, req('admin.vm.List', 'work'))).toString(), /state=Halted/);
    } finally {
      events.close();
      await dispose(h);
    }
  });
});
