// The daemon as a process: its socket, its lock on the data dir, signals, a corrupt store,
// durability under kill -9, oversized requests and concurrent writers.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { AdminClient, DaemonError } from '../../src/cli/client.js';
import { encodeAdminRequest, MAX_REQUEST_BYTES } from '../../src/protocol/admin-wire.js';
import {
  exitWithin,
  lines,
  makeTempDir,
  parseTable,
  removeTempDir,
  runCli,
  spawnDaemon,
  startDaemon,
  suiteDaemon,
} from './helpers.js';

const isRoot = process.getuid?.() === 0;

function listNames(text: string): string[] {
  return lines(text).map((l) => l.split(' ')[0] ?? '');
}

void describe('daemon process', () => {
  it('creates its socket with mode 0660 (srw-rw----), owned by root', { skip: !isRoot && 'needs root' }, async (t) => {
    const d = await startDaemon({ t });
    const st = fs.statSync(d.socketPath);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o7777, 0o660);
    assert.equal(st.uid, 0);
    assert.equal(st.gid, 0);
    const ls = execFileSync('ls', ['-ld', d.socketPath], { encoding: 'utf8' });
    assert.match(ls, /^srw-rw---- +\d+ root root /);
    // The registry is private to root as well; the data dir can only be traversed (qubes' host
    // uids reach their own volatile dirs through it), never listed.
    assert.equal(fs.statSync(d.dataDir).mode & 0o777, 0o711);
    assert.equal(fs.statSync(path.join(d.dataDir, 'qubes.json')).mode & 0o777, 0o600);
  });

  it('runs side by side with another daemon on other paths; each keeps its own qubes', async (t) => {
    const [a, b] = await Promise.all([startDaemon({ t }), startDaemon({ t })]);
    assert.notEqual(a.pid, b.pid);
    const ra = await a.run('qvm-create', ['-C', 'TemplateVM', '-l', 'red', 'only-a']);
    assert.equal(ra.code, 0, ra.stderr);
    const rb = await b.run('qvm-create', ['-C', 'TemplateVM', '-l', 'blue', 'only-b']);
    assert.equal(rb.code, 0, rb.stderr);
    assert.equal((await a.run('qubes-prefs', ['default_template', 'only-a'])).code, 0);

    assert.deepEqual(lines((await a.run('qvm-ls', ['--raw-list'])).stdout), ['dom0', 'only-a']);
    assert.deepEqual(lines((await b.run('qvm-ls', ['--raw-list'])).stdout), ['dom0', 'only-b']);
    assert.equal((await b.run('qubes-prefs', ['default_template'])).stdout, '');
    assert.equal((await b.run('qvm-check', ['only-a'])).code, 2);

    // Stopping one leaves the other serving.
    assert.deepEqual(await a.kill('SIGTERM'), { code: 0, signal: null });
    assert.deepEqual(lines((await b.run('qvm-ls', ['--raw-list'])).stdout), ['dom0', 'only-b']);
    assert.match(fs.readFileSync(path.join(a.dataDir, 'qubes.json'), 'utf8'), /only-a/);
    assert.doesNotMatch(fs.readFileSync(path.join(b.dataDir, 'qubes.json'), 'utf8'), /only-a/);
  });

  it('a second daemon on the same data dir refuses to start (exit 1) and leaves the first alone', async (t) => {
    const d = await startDaemon({ t });
    const other = makeTempDir();
    t.after(() => {
      removeTempDir(other);
    });
    const otherSocket = path.join(other, 'second.sock');
    const second = spawnDaemon({ dataDir: d.dataDir, socketPath: otherSocket });
    const status = await exitWithin(second);
    assert.deepEqual(status, { code: 1, signal: null }, second.stderr());
    assert.match(second.stderr(), /another Bulkhead daemon/);
    assert.match(second.stderr(), new RegExp(`pid ${d.pid}\\b`));
    assert.ok(second.stderr().includes(d.dataDir), second.stderr());
    assert.equal(fs.existsSync(otherSocket), false);
    // The first daemon keeps its lock and its socket, and serves.
    assert.equal(fs.readFileSync(path.join(d.dataDir, 'daemon.lock'), 'utf8').trim(), String(d.pid));
    const r = await d.run('qvm-create', ['-C', 'TemplateVM', '-l', 'red', 'still-works']);
    assert.equal(r.code, 0, r.stderr);

    // Same data dir and same socket: refused as well, and the live socket is not taken over.
    const third = spawnDaemon({ dataDir: d.dataDir, socketPath: d.socketPath });
    assert.deepEqual(await exitWithin(third), { code: 1, signal: null }, third.stderr());
    assert.ok(fs.existsSync(d.socketPath));
    assert.deepEqual(lines((await d.run('qvm-ls', ['--raw-list'])).stdout), ['dom0', 'still-works']);
  });

  it('a second daemon on the same socket (other data dir) refuses to start and leaves the socket alone', async (t) => {
    const d = await startDaemon({ t });
    const other = makeTempDir();
    t.after(() => {
      removeTempDir(other);
    });
    const second = spawnDaemon({ dataDir: path.join(other, 'data'), socketPath: d.socketPath });
    assert.deepEqual(await exitWithin(second), { code: 1, signal: null }, second.stderr());
    assert.match(second.stderr(), /another daemon is listening/);
    assert.equal(fs.existsSync(path.join(other, 'data', 'daemon.lock')), false, 'the failed daemon released its lock');
    const r = await d.run('qvm-ls', ['--raw-list']);
    assert.equal(r.code, 0, r.stderr);
  });

  it('SIGTERM: exits 0, removes its socket and lock, keeps the data; restart sees the data', async (t) => {
    const d = await startDaemon({ t });
    const r = await d.run('qvm-create', ['-C', 'TemplateVM', '-l', 'green', 'persisted']);
    assert.equal(r.code, 0, r.stderr);
    // An open event stream must not keep the daemon from stopping.
    const ac = new AbortController();
    const events: string[] = [];
    const stream = d.client().events('dom0', (e) => events.push(e.event), ac.signal);
    t.after(() => {
      ac.abort();
    });
    for (let i = 0; i < 500 && !events.includes('connection-established'); i++) await sleep(10);
    assert.ok(events.includes('connection-established'), 'event stream did not open');

    const lockFile = path.join(d.dataDir, 'daemon.lock');
    assert.ok(fs.existsSync(lockFile));
    assert.deepEqual(await d.kill('SIGTERM'), { code: 0, signal: null }, d.stderr());
    await stream; // the daemon closed it
    assert.equal(fs.existsSync(d.socketPath), false, 'socket removed');
    assert.equal(fs.existsSync(lockFile), false, 'lock removed');
    assert.ok(fs.existsSync(path.join(d.dataDir, 'qubes.json')));

    await d.start();
    assert.deepEqual(lines((await d.run('qvm-ls', ['--raw-list'])).stdout), ['dom0', 'persisted']);
    assert.deepEqual(await d.kill('SIGINT'), { code: 0, signal: null }, d.stderr());
    assert.equal(fs.existsSync(d.socketPath), false);
    assert.equal(fs.existsSync(lockFile), false);
  });

  it('a corrupt qubes.json stops the start (exit 1, names the file) and is left byte-for-byte untouched', async (t) => {
    const d = await startDaemon({ t, defaultQubes: true });
    const r = await d.run('qvm-create', ['-l', 'red', 'before-corruption']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await d.kill('SIGTERM'), { code: 0, signal: null });

    const file = path.join(d.dataDir, 'qubes.json');
    const bak = path.join(d.dataDir, 'qubes.json.bak');
    const good = fs.readFileSync(file);
    const goodBak = fs.readFileSync(bak);
    const corruptions: [string, Buffer][] = [
      ['garbage', Buffer.from('\x00\xffthis is not json at all {{{\n', 'latin1')],
      ['truncated', good.subarray(0, Math.floor(good.length / 2))],
      ['schema', Buffer.from('{"format":"bulkhead-registry","version":1,"globals":[],"qubes":[]}\n')],
      ['empty', Buffer.alloc(0)],
    ];
    for (const [what, bytes] of corruptions) {
      fs.writeFileSync(file, bytes);
      const before = fs.readdirSync(d.dataDir).sort();
      const proc = spawnDaemon({ dataDir: d.dataDir, socketPath: d.socketPath });
      const status = await exitWithin(proc);
      assert.deepEqual(status, { code: 1, signal: null }, `${what}: ${proc.stderr()}`);
      assert.ok(proc.stderr().includes(file), `${what}: the message names ${file}: ${proc.stderr()}`);
      assert.match(proc.stderr(), /bulkhead daemon: error: /, what);
      assert.doesNotMatch(proc.stderr(), /^\s+at /m, `${what}: no stack trace`);
      assert.ok(fs.readFileSync(file).equals(bytes), `${what}: qubes.json untouched`);
      assert.ok(fs.readFileSync(bak).equals(goodBak), `${what}: qubes.json.bak untouched`);
      assert.deepEqual(fs.readdirSync(d.dataDir).sort(), before, `${what}: no file added or removed`);
      assert.equal(fs.existsSync(d.socketPath), false, `${what}: no socket left`);
      const cli = await d.run('qvm-ls', []);
      assert.equal(cli.code, 1);
    }

    // qubes.json missing while the last good copy exists: refuse rather than start empty.
    fs.rmSync(file);
    const missing = spawnDaemon({ dataDir: d.dataDir, socketPath: d.socketPath });
    assert.deepEqual(await exitWithin(missing), { code: 1, signal: null }, missing.stderr());
    assert.match(missing.stderr(), /qubes\.json\.bak/);
    assert.equal(fs.existsSync(file), false, 'no empty registry was written');
    assert.ok(fs.readFileSync(bak).equals(goodBak));

    // The last good copy is a loadable registry: restoring it by hand brings the daemon back.
    fs.copyFileSync(bak, file);
    await d.start();
    const names = lines((await d.run('qvm-ls', ['--raw-list'])).stdout);
    assert.ok(names.includes('work') && names.includes('dom0'), names.join(' '));
  });
});

void describe('durability under kill -9', () => {
  it('every acknowledged write survives SIGKILL at a random moment', async (t) => {
    const d = await startDaemon({ t, defaultQubes: true });
    const client = d.client();
    const ackedTags = new Set<string>();
    const ackedQubes = new Set<string>();
    const unexpected: Error[] = [];
    let seq = 0; // dom0 feature `seq`, increasing
    let ackedSeq = -1;
    let timeoutStep = 0; // global default_qrexec_timeout = 1 + step % 3000
    let ackedStep = -1;
    const timeoutOf = (step: number): string => String(1 + (step % 3000));

    const ROUNDS = 3;
    for (let round = 0; round < ROUNDS; round++) {
      let acks = 0;
      let active = 0;
      /** Runs `write` until the daemon goes away; counts acknowledgements. */
      const loop = async (write: (i: number) => Promise<void>): Promise<void> => {
        active++;
        try {
          for (let i = 0; ; i++) {
            await write(i);
            acks++;
          }
        } catch (err) {
          if (!(err instanceof DaemonError)) unexpected.push(err as Error);
        } finally {
          active--;
        }
      };
      const loops = [
        loop(async (i) => {
          const tag = `r${round}-t${i}`;
          await client.call({ method: 'admin.vm.tag.Set', dest: 'work', arg: tag });
          ackedTags.add(tag);
        }),
        loop(async (i) => {
          const name = `r${round}-q${i}`;
          await client.call({ method: 'admin.vm.Create.AppVM', dest: 'dom0', payload: `name=${name} label=red` });
          ackedQubes.add(name);
        }),
        loop(async () => {
          const v = ++seq;
          await client.call({ method: 'admin.vm.feature.Set', dest: 'dom0', arg: 'seq', payload: String(v) });
          ackedSeq = v;
        }),
        loop(async () => {
          const step = ++timeoutStep;
          await client.call({ method: 'admin.property.Set', dest: 'dom0', arg: 'default_qrexec_timeout', payload: timeoutOf(step) });
          ackedStep = step;
        }),
      ];
      // Let writes get going, then kill at a random moment in the middle of them.
      const deadline = Date.now() + 10_000;
      while (acks < 20 && active === 4 && Date.now() < deadline) await sleep(2);
      assert.equal(active, 4, `writers stopped before the kill: ${unexpected.map((e) => e.message).join('; ')}`);
      const delay = Math.floor(Math.random() * 300);
      t.diagnostic(`round ${round}: SIGKILL after ${acks} acks + ${delay} ms`);
      await sleep(delay);
      assert.deepEqual(await d.kill('SIGKILL'), { code: null, signal: 'SIGKILL' });
      await Promise.all(loops);
      assert.deepEqual(unexpected, []);

      if (round === 0) {
        // The stale socket file is still there; the CLI must say the daemon is not running.
        assert.ok(fs.existsSync(d.socketPath));
        const r = await d.run('qvm-ls', []);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /is the daemon running/);
      }
      // The store must be complete JSON at any moment.
      JSON.parse(fs.readFileSync(path.join(d.dataDir, 'qubes.json'), 'utf8'));

      await d.start(); // loads the store (and takes over the dead daemon's lock and socket)
      assert.doesNotMatch(d.proc.stderr(), /new registry created/, 'the registry was loaded, not recreated');

      const qubes = new Set(listNames(await client.call({ method: 'admin.vm.List', dest: 'dom0' })));
      const missingQubes = [...ackedQubes].filter((q) => !qubes.has(q));
      assert.deepEqual(missingQubes, [], 'acknowledged creates lost');
      const tags = new Set(lines(await client.call({ method: 'admin.vm.tag.List', dest: 'work' })));
      const missingTags = [...ackedTags].filter((x) => !tags.has(x));
      assert.deepEqual(missingTags, [], 'acknowledged tags lost');

      const storedSeq = Number(await client.call({ method: 'admin.vm.feature.Get', dest: 'dom0', arg: 'seq' }));
      assert.ok(storedSeq === ackedSeq || storedSeq === seq, `seq ${storedSeq}, acked ${ackedSeq}, last sent ${seq}`);
      seq = storedSeq;
      const storedTimeout = (await client.call({ method: 'admin.property.Get', dest: 'dom0', arg: 'default_qrexec_timeout' }))
        .split(' ')
        .at(-1);
      assert.ok(
        storedTimeout === timeoutOf(ackedStep) || storedTimeout === timeoutOf(timeoutStep),
        `default_qrexec_timeout ${String(storedTimeout)}, acked ${timeoutOf(ackedStep)}, last sent ${timeoutOf(timeoutStep)}`,
      );
      t.diagnostic(`round ${round}: ${ackedQubes.size} qubes, ${ackedTags.size} tags, seq ${ackedSeq} acknowledged so far`);
    }
    assert.ok(ackedQubes.size > 0 && ackedTags.size > 0 && ackedSeq > 0 && ackedStep > 0);
    // And the CLI works on the recovered store.
    const ls = await d.run('qvm-ls', ['--raw-list']);
    assert.equal(ls.code, 0, ls.stderr);
    for (const q of ackedQubes) assert.ok(ls.stdout.includes(`${q}\n`), q);
  });
});

interface RawResult {
  readonly reply: Buffer;
  readonly error: string | undefined;
  readonly timedOut: boolean;
}

/** Sends raw bytes in chunks (optionally without half-closing) and collects what comes back. */
function rawRequest(
  socketPath: string,
  chunks: readonly Buffer[],
  opts: { end?: boolean; delayMs?: number; timeoutMs?: number } = {},
): Promise<RawResult> {
  return new Promise((resolve) => {
    const sock = net.connect(socketPath);
    const got: Buffer[] = [];
    let error: string | undefined;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      sock.destroy();
    }, opts.timeoutMs ?? 10_000);
    sock.on('data', (c: Buffer) => got.push(c));
    sock.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ reply: Buffer.concat(got), error, timedOut });
    });
    sock.on('connect', () => {
      void (async () => {
        for (const c of chunks) {
          if (sock.destroyed) return;
          sock.write(c);
          if (opts.delayMs !== undefined) await sleep(opts.delayMs);
        }
        if (opts.end !== false && !sock.destroyed) sock.end();
      })();
    });
  });
}

/** A notes.Set request to dom0 of exactly `total` bytes. */
function notesRequest(total: number): Buffer {
  const header = encodeAdminRequest({ method: 'admin.vm.notes.Set', dest: 'dom0' });
  return encodeAdminRequest({ method: 'admin.vm.notes.Set', dest: 'dom0', payload: 'n'.repeat(total - header.length) });
}

void describe('Admin API server under load', () => {
  const daemon = suiteDaemon();

  it('a request over 64 KiB gets the connection closed without a reply; the daemon keeps serving', async () => {
    const d = daemon();
    assert.equal(MAX_REQUEST_BYTES, 65536);
    const tooBig = notesRequest(MAX_REQUEST_BYTES + 1);
    assert.equal(tooBig.length, 65537);

    const once = await rawRequest(d.socketPath, [tooBig]);
    assert.equal(once.timedOut, false);
    assert.equal(once.reply.length, 0, `no reply expected, got ${once.reply.subarray(0, 40).toString()}`);

    // In small chunks, never half-closing: the daemon must close on its own at the cap.
    const chunks: Buffer[] = [];
    for (let off = 0; off < 100 * 1024; off += 8192) chunks.push(Buffer.alloc(8192, 0x61));
    chunks[0] = notesRequest(8192);
    const slow = await rawRequest(d.socketPath, chunks, { end: false, delayMs: 2, timeoutMs: 5000 });
    assert.equal(slow.timedOut, false, 'the daemon did not close an over-long request');
    assert.equal(slow.reply.length, 0);

    // Through the client: an error, not a reply.
    await assert.rejects(
      d.client().call({ method: 'admin.vm.notes.Set', dest: 'dom0', payload: 'x'.repeat(70 * 1024) }),
      DaemonError,
    );
    assert.equal(await d.client().call({ method: 'admin.vm.notes.Get', dest: 'dom0' }), '', 'nothing was stored');
    assert.match(d.stderr(), /request over 64 KiB/);

    // Still serving, and exactly 64 KiB is accepted.
    const exact = await rawRequest(d.socketPath, [notesRequest(MAX_REQUEST_BYTES)]);
    assert.equal(exact.reply.toString('latin1', 0, 2), '0\0', `reply: ${exact.reply.subarray(0, 40).toString()}`);
    const notes = await d.client().call({ method: 'admin.vm.notes.Get', dest: 'dom0' });
    assert.equal(notes.length, MAX_REQUEST_BYTES - encodeAdminRequest({ method: 'admin.vm.notes.Set', dest: 'dom0' }).length);
    const ls = await d.run('qvm-ls', []);
    assert.equal(ls.code, 0, ls.stderr);
    assert.ok(d.running);
  });

  it('20 concurrent qvm-create processes all succeed and qvm-ls shows them all', async () => {
    const d = daemon();
    const before = lines((await d.run('qvm-ls', ['--raw-list'])).stdout);
    const wanted = Array.from({ length: 20 }, (_v, i) => `conc-${String(i).padStart(2, '0')}`);
    const results = await Promise.all(
      wanted.map((name, i) => d.run('qvm-create', ['-C', i % 2 === 0 ? 'TemplateVM' : 'StandaloneVM', '-l', 'green', name])),
    );
    for (const [i, r] of results.entries()) assert.equal(r.code, 0, `${wanted[i] ?? '?'}: ${r.stderr}`);
    const ls = await d.run('qvm-ls', ['-O', 'name,class,qid']);
    assert.equal(ls.code, 0, ls.stderr);
    const { rows } = parseTable(ls.stdout);
    assert.deepEqual(rows.map((r) => r[0]).sort(), [...before, ...wanted].sort());
    const qids = rows.map((r) => r[2]);
    assert.equal(new Set(qids).size, qids.length, `qids not unique: ${qids.join(' ')}`);

    // And 20 concurrent writers to one qube (tags) through the Admin API.
    const client = new AdminClient(d.socketPath);
    await Promise.all(wanted.map((name) => client.call({ method: 'admin.vm.tag.Set', dest: 'conc-00', arg: `by-${name}` })));
    const tags = lines(await client.call({ method: 'admin.vm.tag.List', dest: 'conc-00' }));
    assert.deepEqual(tags, ['created-by-dom0', ...wanted.map((n) => `by-${n}`)].sort());
  });

  it('a CLI pointed at a stopped daemon says so', async (t) => {
    const dir = makeTempDir();
    t.after(() => {
      removeTempDir(dir);
    });
    const r = await runCli('qvm-ls', [], { socketPath: path.join(dir, 'none.sock') });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /is the daemon running/);
  });
});
