// Service lookup order on a temporary tree, rpc-config parsing (golden and fuzzed) and reading,
// and the QREXEC_* environment of a call.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import {
  DEFAULT_RPC_CONFIG,
  findService,
  MAX_RPC_CONFIG_BYTES,
  parseRpcConfig,
  readRpcConfig,
  serviceDescriptor,
  serviceEnv,
  serviceFileNames,
} from './services.js';

let tmp = '';
before(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bulkhead-agent-services-')); });
after(() => { fs.rmSync(tmp, { recursive: true, force: true }); });

function tree(name: string): { local: string; etc: string; dirs: string[] } {
  const local = path.join(tmp, name, 'usr-local-etc-qubes-rpc');
  const etc = path.join(tmp, name, 'etc-qubes-rpc');
  fs.mkdirSync(local, { recursive: true });
  fs.mkdirSync(etc, { recursive: true });
  return { local, etc, dirs: [local, etc] };
}

function put(dir: string, name: string, mode = 0o755): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, '#!/bin/sh\n', { mode });
  fs.chmodSync(file, mode);
  return file;
}

describe('service lookup', () => {
  test('order: S+A in /usr/local, S+A in /etc, S in /usr/local, S in /etc', () => {
    const t = tree('order');
    assert.deepEqual(findService('my.Svc+arg', t.dirs), { kind: 'not-found' });
    const etcS = put(t.etc, 'my.Svc');
    assert.deepEqual(findService('my.Svc+arg', t.dirs), { kind: 'executable', path: etcS });
    const localS = put(t.local, 'my.Svc');
    assert.deepEqual(findService('my.Svc+arg', t.dirs), { kind: 'executable', path: localS });
    const etcSA = put(t.etc, 'my.Svc+arg');
    assert.deepEqual(findService('my.Svc+arg', t.dirs), { kind: 'executable', path: etcSA }, 'S+A anywhere beats S');
    const localSA = put(t.local, 'my.Svc+arg');
    assert.deepEqual(findService('my.Svc+arg', t.dirs), { kind: 'executable', path: localSA });
    // Another argument falls back to S; no argument tries `S+` first.
    assert.deepEqual(findService('my.Svc+other', t.dirs), { kind: 'executable', path: localS });
    assert.deepEqual(findService('my.Svc', t.dirs), { kind: 'executable', path: localS });
    const etcEmpty = put(t.etc, 'my.Svc+');
    assert.deepEqual(findService('my.Svc', t.dirs), { kind: 'executable', path: etcEmpty });
    assert.deepEqual(serviceFileNames('a.B'), ['a.B+', 'a.B']);
    assert.deepEqual(serviceFileNames('a.B+x+y'), ['a.B+x+y', 'a.B']);
    assert.deepEqual(serviceFileNames(`a.B+${'x'.repeat(300)}`), ['a.B'], 'a name over NAME_MAX is skipped');
  });

  test('kinds: executable, plain file, socket; the first entry found decides even when unusable', async () => {
    const t = tree('kinds');
    const plain = put(t.etc, 'plain.Svc', 0o644);
    assert.deepEqual(findService('plain.Svc', t.dirs), { kind: 'file', path: plain });
    const sockPath = path.join(t.etc, 'sock.Svc');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(sockPath, resolve));
    try {
      assert.deepEqual(findService('sock.Svc+x', t.dirs), { kind: 'socket', path: sockPath });
    } finally {
      await new Promise<void>((resolve) => server.close(() => { resolve(); }));
    }
    // A link is followed.
    const target = put(t.etc, 'target.Svc');
    fs.symlinkSync(target, path.join(t.local, 'link.Svc'));
    assert.deepEqual(findService('link.Svc', t.dirs), { kind: 'executable', path: path.join(t.local, 'link.Svc') });
    // A dangling link in /usr/local hides a good file in /etc: found, and unusable (125).
    fs.symlinkSync(path.join(tmp, 'nowhere'), path.join(t.local, 'dangling.Svc'));
    put(t.etc, 'dangling.Svc');
    assert.equal(findService('dangling.Svc', t.dirs).kind, 'unusable');
    fs.mkdirSync(path.join(t.local, 'dir.Svc'));
    assert.equal(findService('dir.Svc', t.dirs).kind, 'unusable');
    execFileSync('mkfifo', [path.join(t.local, 'fifo.Svc')]);
    assert.equal(findService('fifo.Svc', t.dirs).kind, 'unusable');
    // `..` never names a directory above the service directories.
    assert.equal(findService('..', t.dirs).kind, 'not-found');
  });
});

describe('rpc-config', () => {
  test('golden', () => {
    assert.deepEqual(parseRpcConfig(''), { ok: true, config: DEFAULT_RPC_CONFIG, ignored: [] });
    assert.deepEqual(parseRpcConfig('# comment\n\nwait-for-session=1\n  skip-service-descriptor = true  \n'), {
      ok: true, config: { waitForSession: true, skipServiceDescriptor: true }, ignored: [],
    });
    assert.deepEqual(parseRpcConfig('skip-service-descriptor=false\nforce-user=root\nexit-on-client-eof=1\n'), {
      ok: true, config: { waitForSession: false, skipServiceDescriptor: false }, ignored: ['force-user', 'exit-on-client-eof'],
    });
    for (const bad of ['wait-for-session', 'wait-for-session=yes', '=1', 'skip-service-descriptor=true\nskip-service-descriptor=false', 'a b=1']) {
      assert.equal(parseRpcConfig(bad).ok, false, bad);
    }
  });

  test('fuzzed: never throws, ignored keys bounded by the lines', () => {
    const line = fc.oneof(
      fc.string({ maxLength: 40 }),
      fc.constantFrom('wait-for-session=1', 'wait-for-session=0', 'skip-service-descriptor=true', '# x', '', 'k=v', '=', 'x=y=z'),
    );
    fc.assert(fc.property(fc.array(line, { maxLength: 30 }), (lines) => {
      const text = lines.join('\n');
      const r = parseRpcConfig(text);
      if (r.ok) {
        assert.ok(r.ignored.length <= lines.length);
        assert.equal(typeof r.config.waitForSession, 'boolean');
        assert.equal(typeof r.config.skipServiceDescriptor, 'boolean');
      } else {
        assert.ok(r.error.length < 200);
      }
    }), { numRuns: 2000 });
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 500 }), (text) => { parseRpcConfig(text); }), { numRuns: 1000 });
  });

  test('reading: S+A before S, defaults (logged) for a malformed, huge, non-UTF-8 or non-regular file', () => {
    const dir = path.join(tmp, 'rpc-config');
    fs.mkdirSync(dir);
    const logs: string[] = [];
    const log = (m: string): void => { logs.push(m); };
    assert.deepEqual(readRpcConfig('none.Svc+x', log, dir), DEFAULT_RPC_CONFIG);
    fs.writeFileSync(path.join(dir, 'a.Svc'), 'skip-service-descriptor=true\n');
    assert.deepEqual(readRpcConfig('a.Svc+x', log, dir), { waitForSession: false, skipServiceDescriptor: true });
    fs.writeFileSync(path.join(dir, 'a.Svc+x'), 'wait-for-session=1\nmystery=1\n');
    assert.deepEqual(readRpcConfig('a.Svc+x', log, dir), { waitForSession: true, skipServiceDescriptor: false }, 'S+A wins, no merge');
    assert.ok(logs.some((m) => /unknown key mystery/.test(m)), logs.join('\n'));
    logs.length = 0;
    fs.writeFileSync(path.join(dir, 'bad.Svc'), 'skip-service-descriptor=maybe\n');
    assert.deepEqual(readRpcConfig('bad.Svc', log, dir), DEFAULT_RPC_CONFIG);
    fs.writeFileSync(path.join(dir, 'big.Svc'), `skip-service-descriptor=true\n${'#'.repeat(MAX_RPC_CONFIG_BYTES)}\n`);
    assert.deepEqual(readRpcConfig('big.Svc', log, dir), DEFAULT_RPC_CONFIG);
    fs.writeFileSync(path.join(dir, 'latin1.Svc'), Buffer.from([0x23, 0xe9, 0x0a]));
    assert.deepEqual(readRpcConfig('latin1.Svc', log, dir), DEFAULT_RPC_CONFIG);
    execFileSync('mkfifo', [path.join(dir, 'fifo.Svc')]);
    assert.deepEqual(readRpcConfig('fifo.Svc', log, dir), DEFAULT_RPC_CONFIG, 'a FIFO does not block the agent');
    fs.mkdirSync(path.join(dir, 'dir.Svc'));
    assert.deepEqual(readRpcConfig('dir.Svc', log, dir), DEFAULT_RPC_CONFIG);
    assert.equal(logs.length, 5, logs.join('\n'));
  });
});

describe('service environment', () => {
  test('QREXEC_* of a call to a name and to a keyword; the socket descriptor', () => {
    assert.deepEqual(serviceEnv({ serviceAndArg: 'a.B+c', source: 'work', requestedTarget: { type: 'name', value: 'vault' } }), {
      QREXEC_REMOTE_DOMAIN: 'work',
      QREXEC_SERVICE_FULL_NAME: 'a.B+c',
      QREXEC_SERVICE_ARGUMENT: 'c',
      QREXEC_REQUESTED_TARGET_TYPE: 'name',
      QREXEC_REQUESTED_TARGET: 'vault',
    });
    assert.deepEqual(serviceEnv({ serviceAndArg: 'a.B', source: 'dom0', requestedTarget: { type: 'keyword', value: 'dispvm' } }), {
      QREXEC_REMOTE_DOMAIN: 'dom0',
      QREXEC_SERVICE_FULL_NAME: 'a.B',
      QREXEC_REQUESTED_TARGET_TYPE: 'keyword',
      QREXEC_REQUESTED_TARGET_KEYWORD: 'dispvm',
    });
    assert.deepEqual(serviceDescriptor({ serviceAndArg: 'a.B+c', source: 'work', requestedTarget: { type: 'keyword', value: 'default' } }), Buffer.from('a.B+c work\0'));
  });
});
