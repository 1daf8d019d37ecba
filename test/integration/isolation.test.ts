// Attacks on qube isolation FROM INSIDE a running qube, as its root (docs/threat-model.md,
// "Qube isolation"). Every probe must fail, and every test checks that the probe really ran
// (marker lines, specific errno names) and, where it helps, that the same probe succeeds on the
// host side or for the legitimate case, so a test cannot pass because nothing happened.
//
// Probes use the host's python3 (host templates bind the host's /usr read-only) for raw
// syscalls through ctypes; the syscall numbers below are the x86-64 and asm-generic (arm64) ones.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { detectCgroupMode } from '../../src/hal/container/cgroups.js';
import { REPO_ROOT, socketAccepts } from './helpers.js';
import { suiteQubes, type QubeHost } from './qube-helpers.js';

// ---------- probes ----------

const NR: Readonly<Record<string, Readonly<Record<string, number>>>> = {
  x64: {
    keyctl: 250, add_key: 248, request_key: 249, init_module: 175, finit_module: 313,
    delete_module: 176, bpf: 321, perf_event_open: 298, io_uring_setup: 425, userfaultfd: 323,
    unshare: 272, mount: 165, umount2: 166, fsopen: 430, open_tree: 428, pivot_root: 155,
    chroot: 161, setns: 308, settimeofday: 164, clock_settime: 227, adjtimex: 159, syslog: 103,
    open_by_handle_at: 304, name_to_handle_at: 303, sethostname: 170, setdomainname: 171,
    ptrace: 101, clone: 56, clone3: 435, pidfd_open: 434, kexec_load: 246, reboot: 169,
    acct: 163, swapon: 167, fanotify_init: 300,
  },
  arm64: {
    keyctl: 219, add_key: 217, request_key: 218, init_module: 105, finit_module: 273,
    delete_module: 106, bpf: 280, perf_event_open: 241, io_uring_setup: 425, userfaultfd: 282,
    unshare: 97, mount: 40, umount2: 39, fsopen: 430, open_tree: 428, pivot_root: 41,
    chroot: 51, setns: 268, settimeofday: 170, clock_settime: 112, adjtimex: 171, syslog: 116,
    open_by_handle_at: 265, name_to_handle_at: 264, sethostname: 161, setdomainname: 162,
    ptrace: 117, clone: 220, clone3: 435, pidfd_open: 434, kexec_load: 104, reboot: 142,
    acct: 89, swapon: 224, fanotify_init: 262,
  },
};
const HOST_NR = NR[process.arch];
const HAVE_PYTHON = fs.existsSync('/usr/bin/python3');
const NO_PROBES = !HAVE_PYTHON ? 'no /usr/bin/python3 on the host (qubes of the host template use its /usr)'
  : HOST_NR === undefined ? `no syscall table for ${process.arch}` : false;

/** Removes the common indentation of a template-literal block (for the Python snippets). */
function dedent(text: string): string {
  const lines = text.replace(/^\n/, '').split('\n');
  const indents = lines.filter((l) => l.trim() !== '').map((l) => /^ */.exec(l)?.[0].length ?? 0);
  const cut = Math.min(...indents);
  return lines.map((l) => l.slice(cut)).join('\n');
}

const PY_DONE = '__PY_PROBE_DONE__';
const SH_DONE = '__SH_PROBE_DONE__';

/** Helpers every Python probe starts with: raw syscalls by name, errno names, key=value output. */
function prelude(vars: Readonly<Record<string, unknown>>): string {
  return dedent(String.raw`
    import ctypes, errno, json, os, socket, stat, struct, subprocess, sys, time
    NR = json.loads(${JSON.stringify(JSON.stringify(HOST_NR ?? {}))})
    globals().update(json.loads(${JSON.stringify(JSON.stringify(vars))}))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def ename(n):
        return errno.errorcode.get(n, 'E%d' % n)
    def _arg(a):
        if a is None:
            return ctypes.c_void_p(0)
        if isinstance(a, bytes):
            return ctypes.c_char_p(a)
        return ctypes.c_long(a)
    def sc(name, *a):
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(NR[name]), *[_arg(x) for x in a])
        return 'OK' if r >= 0 else ename(ctypes.get_errno())
    def attempt(f, *a):
        try:
            f(*a)
            return 'OK'
        except OSError as e:
            return ename(e.errno)
    def out(k, v):
        print('%s=%s' % (k, v), flush=True)
    def write_file(p, data):
        fd = os.open(p, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    def search(needle):
        # Every file of this filesystem view holding needle, except /proc, /sys and /usr (the
        # host's /usr, read-only); top-level symlinks are skipped so grep never follows them.
        # A control file with a marker proves the search itself works (an empty answer means
        # "not found", never "grep failed").
        control = '/tmp/.search-control'
        marker = needle[::-1] + '-control'
        with open(control, 'w') as f:
            f.write(marker + '\n')
        try:
            tops = ['/' + d for d in sorted(os.listdir('/')) if d not in ('proc', 'sys', 'usr') and not os.path.islink('/' + d)]
            r = subprocess.run(['grep', '-rlsF', '-e', needle, '-e', marker, '--'] + tops, capture_output=True)
            hits = [l for l in r.stdout.decode().split('\n') if l]
        finally:
            os.unlink(control)
        if control not in hits:
            raise RuntimeError('the search cannot find its own control file')
        return sorted(h for h in hits if h != control)
  `);
}

type KV = Map<string, string>;

function parseKV(stdout: string, done: string, what: string): KV {
  const lines = stdout.split('\n').filter((l) => l !== '');
  assert.equal(lines.at(-1), done, `${what} did not run to its end:\n${stdout}`);
  const kv: KV = new Map();
  for (const line of lines.slice(0, -1)) {
    const i = line.indexOf('=');
    if (i > 0) kv.set(line.slice(0, i), line.slice(i + 1));
  }
  return kv;
}

function get(kv: KV, key: string): string {
  const v = kv.get(key);
  assert.notEqual(v, undefined, `probe printed no ${key}: ${JSON.stringify([...kv])}`);
  return v ?? '';
}

/** Runs a Python probe inside a qube (as root unless `user` is given); returns its key=value output. */
async function py(h: QubeHost, vm: string, body: string, vars: Record<string, unknown> = {}, user = 'root'): Promise<KV> {
  const input = `${prelude(vars)}\n${dedent(body)}\nprint(${JSON.stringify(PY_DONE)}, flush=True)\n`;
  const r = await h.exec(vm, 'python3 -', { user, input, timeoutMs: 60_000 });
  assert.equal(r.code, 0, `python probe in ${vm} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return parseKV(r.stdout, PY_DONE, `python probe in ${vm}`);
}

/** The same kind of probe on the host (only ever harmless calls: the control side). */
function hostPy(body: string, vars: Record<string, unknown> = {}): KV {
  const input = `${prelude(vars)}\n${dedent(body)}\nprint(${JSON.stringify(PY_DONE)}, flush=True)\n`;
  const r = spawnSync('python3', ['-'], { input, encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.status, 0, `host python probe exited ${String(r.status)}: ${r.stderr}`);
  return parseKV(r.stdout, PY_DONE, 'host python probe');
}

/** A shell probe: returns stdout (without the end marker) and stderr; fails unless it ran to its end. */
async function sh(h: QubeHost, vm: string, script: string, user = 'root'): Promise<{ out: string; err: string }> {
  const r = await h.exec(vm, `${script}\necho ${SH_DONE}`, { user, timeoutMs: 60_000 });
  assert.ok(r.stdout.endsWith(`${SH_DONE}\n`), `shell probe in ${vm} did not run to its end (exit ${r.code})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return { out: r.stdout.slice(0, -(SH_DONE.length + 1)), err: r.stderr };
}

// ---------- the host side ----------

function readOr(file: string, fallback = ''): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

/** Host pids of a qube's processes (those in its `bh-<uuid>` cgroup). */
function qubeHostPids(uuid: string): number[] {
  const pids: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    if (readOr(`/proc/${d}/cgroup`).includes(`bh-${uuid}`)) pids.push(Number(d));
  }
  return pids;
}

function cmdline(pid: number): string[] {
  return readOr(`/proc/${pid}/cmdline`).split('\0').filter((a) => a !== '');
}

/** The host pid of a qube's agent (node under tini). */
function agentHostPid(uuid: string): number {
  const pid = qubeHostPids(uuid).find((p) => cmdline(p)[0] === '/run/bulkhead/node');
  assert.ok(pid !== undefined, `no agent process found on the host for bh-${uuid}`);
  return pid;
}

/** A file of the qube's cgroup on the host (v1 controller hierarchy or the v2 unified tree). */
function cgroupFile(pid: number, controller: string, v1File: string, v2File: string): string | undefined {
  const lines = readOr(`/proc/${pid}/cgroup`).split('\n');
  for (const line of lines) {
    const [, ctrls, p] = line.split(':');
    if (ctrls !== undefined && p !== undefined && ctrls.split(',').includes(controller)) {
      return path.join('/sys/fs/cgroup', controller, p, v1File);
    }
  }
  const v2 = lines.find((l) => l.startsWith('0::'));
  if (v2 !== undefined && fs.existsSync('/sys/fs/cgroup/cgroup.controllers')) return path.join('/sys/fs/cgroup', v2.slice(3), v2File);
  return undefined;
}

const CAPS: readonly string[] = [
  'CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID',
  'SETPCAP', 'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW',
  'IPC_LOCK', 'IPC_OWNER', 'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT',
  'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE', 'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD',
  'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP', 'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG',
  'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ', 'PERFMON', 'BPF', 'CHECKPOINT_RESTORE',
];

function capNames(hex: string): string[] {
  const mask = BigInt(`0x${hex}`);
  const names: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((mask >> BigInt(bit)) & 1n) names.push(CAPS[bit] ?? `bit${bit}`);
  }
  return names;
}

function statusField(status: string, field: string): string {
  const m = new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(status);
  assert.ok(m, `no ${field} in\n${status}`);
  return (m[1] ?? '').trim();
}

/** Major and minor of a device number as Node reports it. */
function devNumbers(rdev: number): [number, number] {
  return [Math.floor(rdev / 256) & 0xfff, (rdev & 0xff) | (Math.floor(rdev / 4096) & 0xfff00)];
}

const REFUSED = /^(EPERM|EACCES|EROFS|ENOENT)$/;

/** Whether this process (the host's root) holds CAP_SYS_RESOURCE (bit 24) in its effective set. */
const HOST_HAS_SYS_RESOURCE = ((BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(readOr('/proc/self/status'))?.[1] ?? '0'}`) >> 24n) & 1n) === 1n;

describe('qube isolation: attacks from inside a qube, as its root', { skip: NO_PROBES }, () => {
  const host = suiteQubes(['attacker', 'victim'], { start: true });
  let attackerUuid = '';
  let victimUuid = '';
  let tplUuid = '';
  /** Host state a successful attack would change: restored in after() should a test fail that way. */
  const restore = new Map<string, string>();

  before(async () => {
    const h = host();
    attackerUuid = await h.uuid('attacker');
    victimUuid = await h.uuid('victim');
    tplUuid = await h.uuid('tpl');
    for (const f of ['/proc/sys/kernel/core_pattern', '/proc/sys/kernel/modprobe', '/proc/sys/kernel/randomize_va_space']) {
      if (fs.existsSync(f)) restore.set(f, fs.readFileSync(f, 'utf8'));
    }
  });

  after(() => {
    for (const [file, value] of restore) {
      if (readOr(file, value) !== value) fs.writeFileSync(file, value);
    }
  });

  test('host processes are invisible: the qube sees only its own (not the daemon, the host init, or the other qube)', async () => {
    const h = host();
    const outside = [h.daemon.pid, ...qubeHostPids(victimUuid), agentHostPid(attackerUuid)];
    for (const pid of outside) process.kill(pid, 0); // they exist, on the host
    const kv = await py(h, 'attacker', String.raw`
      pids = sorted(int(d) for d in os.listdir('/proc') if d.isdigit())
      out('pids', ','.join(map(str, pids)))
      for pid in pids:
          try:
              out('cmd.%d' % pid, open('/proc/%d/cmdline' % pid, 'rb').read().replace(b'\0', b' ').decode().strip())
          except OSError as e:
              out('cmd.%d' % pid, ename(e.errno))
      for pid in OUTSIDE:
          out('outside.%d' % pid, os.path.exists('/proc/%d' % pid))
      ps = subprocess.run(['ps', '-e', '-o', 'pid=,args='], capture_output=True).stdout.decode()
      out('ps', ';'.join(l.strip() for l in ps.split('\n') if l.strip()))
    `, { OUTSIDE: outside });
    const pids = get(kv, 'pids').split(',').map(Number);
    assert.ok(pids.length >= 3 && pids.length <= 8, `unexpected process list ${pids.join(',')}`);
    assert.match(get(kv, 'cmd.1'), /^\/run\/bulkhead\/init /);
    assert.notEqual(get(kv, 'cmd.1'), cmdline(1).join(' '), 'pid 1 is the host\'s init');
    assert.match(get(kv, 'cmd.2'), /^\/run\/bulkhead\/node .*agent\/main\.js$/);
    for (const pid of outside) {
      assert.ok(!pids.includes(pid), `host pid ${pid} collides with a qube pid`);
      assert.equal(get(kv, `outside.${pid}`), 'False', `host pid ${pid} visible in the qube`);
    }
    const all = [...kv].filter(([k]) => k.startsWith('cmd.')).map(([, v]) => v).join('\n') + get(kv, 'ps');
    for (const leak of ['daemon', h.daemon.dataDir, 'victim', victimUuid]) assert.ok(!all.includes(leak), `qube processes mention ${leak}`);
    assert.equal(get(kv, 'ps').split(';').length, pids.length + 1, get(kv, 'ps')); // ps itself joins
  });

  test('host files are out of reach: the data dir, the sockets\' dir, the repository, /root, /etc/shadow', async () => {
    const h = host();
    const marker = `host-secret-${crypto.randomUUID()}`;
    const markerFile = path.join(h.daemon.tmpDir, 'isolation-host-marker');
    fs.writeFileSync(markerFile, `${marker}\n`);
    try {
      const paths = [
        h.daemon.dataDir, path.join(h.daemon.dataDir, 'qubes.json'), path.join(h.daemon.dataDir, 'vm'),
        path.dirname(h.daemon.socketPath), markerFile, REPO_ROOT, path.join(REPO_ROOT, 'package.json'),
        path.join(REPO_ROOT, 'src'), path.join(REPO_ROOT, '.git'),
      ];
      for (const p of paths) assert.ok(fs.existsSync(p), `${p} should exist on the host`);
      // Device and inode numbers are global: the qube's /, /root, /etc and /etc/shadow must be
      // other objects than the host's, whatever they contain.
      const same = ['/', '/root', '/etc', '/etc/shadow'];
      const hostIds = Object.fromEntries(same.map((p) => {
        const st = fs.statSync(p);
        return [p, [st.dev, st.ino]];
      }));
      const kv = await py(h, 'attacker', String.raw`
        for p in PATHS:
            out('lstat:' + p, attempt(os.lstat, p))
            out('via-proc:' + p, attempt(os.lstat, '/proc/1/root' + p))
        out('root', json.dumps(sorted(os.listdir('/root'))))
        for p, (dev, ino) in HOSTIDS.items():
            st = os.stat(p)
            out('same:' + p, st.st_dev == dev and st.st_ino == ino)
        out('shadow', json.dumps(open('/etc/shadow').read()))
        out('found', json.dumps(search(MARKER)))
      `, { PATHS: paths, MARKER: marker, HOSTIDS: hostIds });
      for (const p of paths) {
        assert.equal(get(kv, `lstat:${p}`), 'ENOENT', `${p} is reachable in the qube`);
        assert.equal(get(kv, `via-proc:${p}`), 'ENOENT', `${p} is reachable through /proc/1/root`);
      }
      assert.equal(get(kv, 'root'), '[]', 'the qube\'s /root is not its template\'s (empty) one');
      for (const p of same) assert.equal(get(kv, `same:${p}`), 'False', `the qube's ${p} is the host's`);
      // The template's shadow file (templates.ts), not the host's.
      assert.equal(JSON.parse(get(kv, 'shadow')), 'root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\n');
      assert.equal(get(kv, 'found'), '[]', 'the host marker was found inside the qube');
    } finally {
      fs.rmSync(markerFile, { force: true });
    }
  });

  test('another qube\'s private volume can be neither read nor written', async () => {
    const h = host();
    const secret = `victim-secret-${crypto.randomUUID()}`;
    const w = await sh(h, 'victim', `printf '%s\\n' '${secret}' > /home/user/secret.txt && echo written`, 'user');
    assert.equal(w.out, 'written\n', w.err);
    const victimPrivate = path.join(h.daemon.dataDir, 'vm', victimUuid, 'private');
    // Control: the secret is on the host in the victim's volume, and the search finds it in the victim.
    assert.equal(fs.readFileSync(path.join(victimPrivate, 'home', 'user', 'secret.txt'), 'utf8'), `${secret}\n`);
    const control = await py(h, 'victim', "out('found', json.dumps(search(SECRET)))", { SECRET: secret });
    // /home is a link to rw/home (the search does not follow links), so the secret shows once.
    assert.deepEqual(JSON.parse(get(control, 'found')), ['/rw/home/user/secret.txt']);

    const kv = await py(h, 'attacker', String.raw`
      out('found', json.dumps(search(SECRET)))
      out('lstat', attempt(os.lstat, PRIV))
      out('home', json.dumps(sorted(os.listdir('/home/user'))))
      # Writing "into" the victim's volume path only ever lands in the attacker's own view.
      def pwn():
          os.makedirs(PRIV + '/home/user', exist_ok=True)
          with open(PRIV + '/home/user/pwned', 'w') as f:
              f.write('pwned')
      out('write', attempt(pwn))
      with open('/home/user/attacker-own', 'w') as f:
          f.write('mine')
    `, { SECRET: secret, PRIV: victimPrivate });
    assert.equal(get(kv, 'found'), '[]', 'the victim\'s secret was found inside the attacker');
    assert.equal(get(kv, 'lstat'), 'ENOENT');
    assert.ok(!get(kv, 'home').includes('secret.txt'));
    // Whatever the attacker wrote stayed in its own volume / view.
    assert.equal(fs.existsSync(path.join(victimPrivate, 'home', 'user', 'pwned')), false);
    assert.equal(fs.readFileSync(path.join(h.daemon.dataDir, 'vm', attackerUuid, 'private', 'home', 'user', 'attacker-own'), 'utf8'), 'mine');
    const after = await sh(h, 'victim', 'ls -A /home/user /rw; cat /home/user/secret.txt');
    assert.equal(after.out, `/home/user:\nsecret.txt\n\n/rw:\nhome\n${secret}\n`);
  });

  test('another qube\'s console log, volatile root and changes to / are out of reach; the template stays untouched', async () => {
    const h = host();
    const mark = `victim-console-${crypto.randomUUID()}`;
    const change = `victim-root-${crypto.randomUUID()}`;
    const v = await sh(h, 'victim', `echo '${mark}' >> /proc/1/fd/2; echo '${change}' > /etc/victim-change; echo ok`);
    assert.equal(v.out, 'ok\n', v.err);
    const victimDir = path.join(h.daemon.dataDir, 'vm', victimUuid);
    const victimVolatile = path.join(h.daemon.dataDir, 'volatile', victimUuid);
    const tplRoot = path.join(h.daemon.dataDir, 'vm', tplUuid, 'root');
    // Control: both landed on the host, in the victim's console log and its volatile upper layer.
    assert.ok(fs.readFileSync(path.join(victimDir, 'run', 'console.log'), 'utf8').includes(mark));
    assert.equal(fs.readFileSync(path.join(victimVolatile, 'upper', 'etc', 'victim-change'), 'utf8'), `${change}\n`);

    const probes = [
      path.join(victimDir, 'run', 'console.log'), victimVolatile, path.join(victimDir, 'run'),
      tplRoot, path.join(tplRoot, 'etc', 'passwd'),
    ];
    const kv = await py(h, 'attacker', String.raw`
      for p in PROBES:
          out('lstat:' + p, attempt(os.lstat, p))
      out('lower', json.dumps(os.listdir('/.bulkhead-lower')))
      out('etc', os.path.exists('/etc/victim-change'))
      out('found-mark', json.dumps(search(MARK)))
      out('found-change', json.dumps(search(CHANGE)))
      out('own-console', MARK.encode() in open('/proc/1/fd/1', 'rb').read())
      with open('/etc/attacker-change', 'w') as f:
          f.write('attacker')
    `, { PROBES: probes, MARK: mark, CHANGE: change });
    for (const p of probes) assert.equal(get(kv, `lstat:${p}`), 'ENOENT', `${p} reachable`);
    assert.equal(get(kv, 'lower'), '[]', 'the template layer is not masked');
    assert.equal(get(kv, 'etc'), 'False');
    assert.equal(get(kv, 'found-mark'), '[]');
    assert.equal(get(kv, 'found-change'), '[]');
    assert.equal(get(kv, 'own-console'), 'False');
    // Neither qube's change to / reached the shared template or the other qube.
    assert.equal(fs.existsSync(path.join(tplRoot, 'etc', 'victim-change')), false);
    assert.equal(fs.existsSync(path.join(tplRoot, 'etc', 'attacker-change')), false);
    const v2 = await sh(h, 'victim', 'test -e /etc/attacker-change && echo visible || echo absent');
    assert.equal(v2.out, 'absent\n');
  });

  test('the Admin API socket and the daemon\'s exec socket are unreachable; the only sockets are the qube\'s own channel and agent socket', async () => {
    const h = host();
    const execSocket = path.join(path.dirname(h.daemon.socketPath), 'qrexec.sock');
    assert.equal(await socketAccepts(h.daemon.socketPath), true);
    assert.equal(await socketAccepts(execSocket), true);
    const kv = await py(h, 'attacker', String.raw`
      def conn(p):
          s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
          try:
              s.connect(p)
          finally:
              s.close()
      for p in SOCKETS:
          out('connect:' + p, attempt(conn, p))
          out('connect-proc:' + p, attempt(conn, '/proc/1/root' + p))
      socks = []
      for top in os.listdir('/'):
          if top in ('proc', 'sys') or os.path.islink('/' + top):
              continue
          for d, dirs, files in os.walk('/' + top):
              for f in files:
                  try:
                      if stat.S_ISSOCK(os.lstat(os.path.join(d, f)).st_mode):
                          socks.append(os.path.join(d, f))
                  except OSError:
                      pass
      out('sockets', json.dumps(sorted(socks)))
      for line in open('/proc/self/mountinfo'):
          f = line.split()
          if f[4] == '/run/bulkhead/qrexec.sock':
              out('channel-source', f[3])
    `, { SOCKETS: [h.daemon.socketPath, execSocket] });
    for (const p of [h.daemon.socketPath, execSocket]) {
      assert.equal(get(kv, `connect:${p}`), 'ENOENT');
      assert.equal(get(kv, `connect-proc:${p}`), 'ENOENT');
    }
    // The channel's two sockets (bound from the host) and the agent's own on the qube's /run tmpfs.
    assert.equal(get(kv, 'sockets'), '["/run/bulkhead/qrexec-call.sock", "/run/bulkhead/qrexec.sock", "/run/qubes/qrexec-agent"]');
    assert.equal(get(kv, 'channel-source'), path.join(h.daemon.dataDir, 'vm', attackerUuid, 'run', 'qrexec.sock'));
  });

  test('global sysctls cannot be written (core_pattern, modprobe, hostname, randomize_va_space, drop_caches, ip_forward)', async () => {
    const h = host();
    const targets: Record<string, string> = {
      '/proc/sys/kernel/core_pattern': '|/tmp/pwn %p',
      '/proc/sys/kernel/modprobe': '/tmp/pwn',
      '/proc/sys/kernel/hostname': 'pwned-host',
      '/proc/sys/kernel/randomize_va_space': '0',
      '/proc/sys/vm/drop_caches': '3',
      '/proc/sys/net/ipv4/ip_forward': readOr('/proc/sys/net/ipv4/ip_forward').trim() === '1' ? '0' : '1',
    };
    const present = Object.keys(targets).filter((f) => fs.existsSync(f));
    assert.ok(present.length >= 4, `too few sysctls on this host: ${present.join(' ')}`);
    const before = new Map(present.filter((f) => !f.includes('drop_caches')).map((f) => [f, fs.readFileSync(f, 'utf8')]));
    const kv = await py(h, 'attacker', String.raw`
      for p, v in TARGETS.items():
          out('exists:' + p, os.path.exists(p))
          out('write:' + p, attempt(write_file, p, (v + '\n').encode()))
      out('ro', any(l.split()[4] == '/proc/sys' and 'ro' in l.split()[5].split(',') for l in open('/proc/self/mountinfo')))
    `, { TARGETS: Object.fromEntries(present.map((f) => [f, targets[f] ?? ''])) });
    for (const f of present) {
      assert.equal(get(kv, `exists:${f}`), 'True', `${f} missing in the qube: nothing was tried`);
      assert.match(get(kv, `write:${f}`), REFUSED, `${f} was written`);
    }
    assert.equal(get(kv, 'ro'), 'True', '/proc/sys is not mounted read-only');
    for (const [f, v] of before) assert.equal(fs.readFileSync(f, 'utf8'), v, `host ${f} changed`);
    assert.equal(os.hostname(), before.get('/proc/sys/kernel/hostname')?.trim());
  });

  test('no mounts: tmpfs, proc, cgroup, bind, remount of /usr, unmasking, new mount API, chroot, pivot_root', async () => {
    const h = host();
    const kv = await py(h, 'attacker', String.raw`
      before = open('/proc/self/mountinfo').read()
      os.makedirs('/var/tmp/m', exist_ok=True)
      MS_BIND, MS_REC, MS_REMOUNT, MS_RDONLY = 4096, 16384, 32, 1
      out('tmpfs', sc('mount', b'none', b'/var/tmp/m', b'tmpfs', 0, None))
      out('proc', sc('mount', b'proc', b'/var/tmp/m', b'proc', 0, None))
      out('cgroup2', sc('mount', b'none', b'/var/tmp/m', b'cgroup2', 0, None))
      out('cgroup1', sc('mount', b'none', b'/var/tmp/m', b'cgroup', 0, b'pids'))
      out('bind', sc('mount', b'/', b'/var/tmp/m', None, MS_BIND | MS_REC, None))
      out('remount-usr', sc('mount', None, b'/usr', None, MS_REMOUNT | MS_BIND, None))
      out('umount-usr', sc('umount2', b'/usr', 2))
      out('unmask-lower', sc('umount2', b'/.bulkhead-lower', 2))
      out('unmask-kallsyms', sc('umount2', b'/proc/kallsyms', 2))
      out('fsopen', sc('fsopen', b'tmpfs', 0))
      out('open_tree', sc('open_tree', -100, b'/', 1))
      out('chroot', sc('chroot', b'/var/tmp/m'))
      out('pivot_root', sc('pivot_root', b'/var/tmp/m', b'/var/tmp/m'))
      r = subprocess.run(['mount', '-t', 'tmpfs', 'none', '/var/tmp/m'], capture_output=True)
      out('mount-cmd', r.returncode)
      out('unchanged', open('/proc/self/mountinfo').read() == before)
      out('empty', os.listdir('/var/tmp/m') == [])
    `);
    for (const k of ['tmpfs', 'proc', 'cgroup2', 'cgroup1', 'bind', 'remount-usr', 'umount-usr', 'unmask-lower', 'unmask-kallsyms', 'fsopen', 'open_tree', 'chroot', 'pivot_root']) {
      assert.equal(get(kv, k), 'EPERM', `${k} was not refused`);
    }
    assert.notEqual(get(kv, 'mount-cmd'), '0');
    assert.equal(get(kv, 'unchanged'), 'True');
    assert.equal(get(kv, 'empty'), 'True');
  });

  test('no device nodes: mknod is refused for any device, even with the host\'s device numbers (a fifo works)', async () => {
    const h = host();
    const hostDevs: Record<string, [number, number, string]> = {};
    for (const d of ['/dev/kvm', '/dev/vda', '/dev/sda', '/dev/nvme0n1', '/dev/mem', '/dev/fuse']) {
      try {
        const st = fs.statSync(d);
        hostDevs[d] = [...devNumbers(st.rdev), st.isBlockDevice() ? 'b' : 'c'];
      } catch {
        // not on this host
      }
    }
    assert.ok(Object.keys(hostDevs).length > 0, 'no host device to imitate');
    const kv = await py(h, 'attacker', String.raw`
      for d in ['/tmp', '/var/tmp', '/dev', '/home/user', '/rw']:
          out('null:' + d, attempt(os.mknod, d + '/null-copy', stat.S_IFCHR | 0o666, os.makedev(1, 3)))
      for name, (ma, mi, kind) in HOSTDEVS.items():
          mode = (stat.S_IFBLK if kind == 'b' else stat.S_IFCHR) | 0o666
          out('host:' + name, attempt(os.mknod, '/var/tmp/' + os.path.basename(name), mode, os.makedev(ma, mi)))
      out('fifo', attempt(os.mkfifo, '/var/tmp/fifo'))
      out('fifo-is-fifo', stat.S_ISFIFO(os.lstat('/var/tmp/fifo').st_mode))
      os.unlink('/var/tmp/fifo')
      r = subprocess.run(['mknod', '/tmp/cmd-null', 'c', '1', '3'], capture_output=True)
      out('cmd', r.stderr.decode().strip())
    `, { HOSTDEVS: hostDevs });
    for (const d of ['/tmp', '/var/tmp', '/dev', '/home/user', '/rw']) assert.equal(get(kv, `null:${d}`), 'EPERM', d);
    for (const d of Object.keys(hostDevs)) assert.equal(get(kv, `host:${d}`), 'EPERM', d);
    assert.equal(get(kv, 'fifo'), 'OK');
    assert.equal(get(kv, 'fifo-is-fifo'), 'True');
    assert.match(get(kv, 'cmd'), /Operation not permitted/);
  });

  test('no kernel modules: init_module, finit_module, delete_module refused; the modprobe path cannot be redirected', async () => {
    const h = host();
    const kv = await py(h, 'attacker', String.raw`
      fd = os.open('/usr/bin/true', os.O_RDONLY)
      out('finit_module', sc('finit_module', fd, b'', 0))
      img = b'\x7fELF' + b'\0' * 60
      out('init_module', sc('init_module', img, len(img), b''))
      out('delete_module', sc('delete_module', b'bulkhead_no_such_module', os.O_NONBLOCK))
      out('modprobe-path', attempt(write_file, '/proc/sys/kernel/modprobe', b'/tmp/pwn\n'))
      out('sys-module', json.dumps(os.listdir('/sys/module')))
    `);
    for (const k of ['finit_module', 'init_module', 'delete_module']) assert.equal(get(kv, k), 'EPERM', k);
    assert.match(get(kv, 'modprobe-path'), REFUSED);
    assert.equal(get(kv, 'sys-module'), '[]');
    // Control: on the host the kernel itself answers (no such module, or no module support).
    const ctl = hostPy("out('delete_module', sc('delete_module', b'bulkhead_no_such_module', os.O_NONBLOCK))");
    assert.match(get(ctl, 'delete_module'), /^(ENOENT|ENOSYS)$/);
  });

  test('host devices are absent: /dev/kvm, /dev/net/tun, /dev/fuse, /dev/mem, disks, /dev/kmsg', async () => {
    const h = host();
    const devs = ['/dev/kvm', '/dev/net/tun', '/dev/fuse', '/dev/mem', '/dev/kmem', '/dev/port', '/dev/kmsg',
      '/dev/loop-control', '/dev/vda', '/dev/sda', '/dev/nvme0n1', '/dev/console', '/dev/tty0', '/dev/watchdog'];
    const onHost = devs.filter((d) => fs.existsSync(d));
    assert.ok(onHost.length >= 2, `host has too few of ${devs.join(' ')}`);
    const kv = await py(h, 'attacker', String.raw`
      for d in DEVS:
          out('open:' + d, attempt(lambda p: os.close(os.open(p, os.O_RDWR)), d))
      out('dev', json.dumps(sorted(os.listdir('/dev'))))
      out('tty', attempt(lambda p: os.close(os.open(p, os.O_RDWR)), '/dev/tty'))
    `, { DEVS: devs });
    for (const d of devs) assert.equal(get(kv, `open:${d}`), 'ENOENT', `${d} can be opened`);
    assert.deepEqual(JSON.parse(get(kv, 'dev')), ['core', 'fd', 'full', 'mqueue', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero']);
    assert.equal(get(kv, 'tty'), 'ENXIO'); // no controlling terminal: /dev/tty leads nowhere
  });

  test('the host\'s pseudo-terminals are invisible: the qube has its own devpts instance', async (t) => {
    const h = host();
    const holder = spawn('python3', ['-c', 'import os, pty, sys\nm, s = pty.openpty()\nprint(os.ttyname(s), flush=True)\nsys.stdin.read()'], { stdio: ['pipe', 'pipe', 'inherit'] });
    t.after(() => {
      holder.stdin.end();
      holder.kill();
    });
    const ttyName = await new Promise<string>((resolve, reject) => {
      holder.stdout.once('data', (d: Buffer) => { resolve(d.toString().trim()); });
      holder.once('error', reject);
    });
    assert.match(ttyName, /^\/dev\/pts\/\d+$/);
    assert.ok(fs.existsSync(ttyName));
    const kv = await py(h, 'attacker', String.raw`
      out('pts', json.dumps(sorted(os.listdir('/dev/pts'))))
      out('open-host', attempt(os.open, HOSTTTY, os.O_RDWR | os.O_NOCTTY))
      m, s = os.openpty()
      out('own', os.ttyname(s))
    `, { HOSTTTY: ttyName });
    assert.equal(get(kv, 'pts'), '["ptmx"]');
    assert.equal(get(kv, 'open-host'), 'ENOENT');
    assert.equal(get(kv, 'own'), '/dev/pts/0'); // its own instance, numbered from 0
  });

  test('no ptrace or signal of a process outside: the daemon, the other qube\'s agent', async () => {
    const h = host();
    const targets = [h.daemon.pid, agentHostPid(victimUuid), ...qubeHostPids(victimUuid)];
    for (const pid of targets) process.kill(pid, 0); // control: alive, signalable from the host
    const kv = await py(h, 'attacker', String.raw`
      pids = [int(d) for d in os.listdir('/proc') if d.isdigit()]
      for pid in TARGETS:
          out('collides:%d' % pid, pid in pids)
          out('kill:%d' % pid, attempt(os.kill, pid, 0))
          out('ptrace:%d' % pid, sc('ptrace', 16, pid, 0, 0))
          out('pidfd:%d' % pid, sc('pidfd_open', pid, 0))
      r = subprocess.run(['sh', '-c', 'kill -0 %d' % TARGETS[0]], capture_output=True)
      out('shell-kill', r.stderr.decode().strip())
      # Controls: its own processes can be signalled and traced.
      out('kill-own', attempt(os.kill, 1, 0))
      child = os.fork()
      if child == 0:
          time.sleep(30)
          os._exit(0)
      out('ptrace-own', sc('ptrace', 16, child, 0, 0))
      os.kill(child, 9)
      os.waitpid(child, 0)
    `, { TARGETS: targets });
    for (const pid of targets) {
      assert.equal(get(kv, `collides:${pid}`), 'False', `host pid ${pid} is also a qube pid: inconclusive`);
      assert.equal(get(kv, `kill:${pid}`), 'ESRCH');
      assert.equal(get(kv, `ptrace:${pid}`), 'ESRCH');
      assert.equal(get(kv, `pidfd:${pid}`), 'ESRCH');
    }
    assert.match(get(kv, 'shell-kill'), /No such process/);
    assert.equal(get(kv, 'kill-own'), 'OK');
    assert.equal(get(kv, 'ptrace-own'), 'OK');
    for (const pid of targets) process.kill(pid, 0); // all still alive
  });

  test('hostname changes are refused and change neither the host nor the other qube', async () => {
    const h = host();
    const hostName = os.hostname();
    const kv = await py(h, 'attacker', String.raw`
      r = subprocess.run(['hostname', 'pwned'], capture_output=True)
      out('cmd', '%d %s' % (r.returncode, r.stderr.decode().strip()))
      out('sethostname', sc('sethostname', b'pwned', 5))
      out('setdomainname', sc('setdomainname', b'pwned', 5))
      out('proc', attempt(write_file, '/proc/sys/kernel/hostname', b'pwned\n'))
      out('name', socket.gethostname())
    `);
    assert.match(get(kv, 'cmd'), /^1 .*(root|not permitted)/);
    assert.equal(get(kv, 'sethostname'), 'EPERM');
    assert.equal(get(kv, 'setdomainname'), 'EPERM');
    assert.match(get(kv, 'proc'), REFUSED);
    assert.equal(get(kv, 'name'), 'attacker');
    assert.equal(os.hostname(), hostName);
    assert.equal((await sh(h, 'victim', 'hostname')).out, 'victim\n');
  });

  test('the clock cannot be set: date -s, settimeofday, clock_settime, adjtimex refused', async () => {
    const h = host();
    const kv = await py(h, 'attacker', String.raw`
      r = subprocess.run(['date', '-s', '2001-01-01 00:00:00'], capture_output=True)
      out('date', '%d %s' % (r.returncode, r.stderr.decode().strip()))
      ts = struct.pack('qq', 978307200, 0)
      out('settimeofday', sc('settimeofday', ts, None))
      out('clock_settime', sc('clock_settime', 0, ts))
      out('adjtimex', sc('adjtimex', bytes(256)))
      out('now', int(time.time()))
    `);
    assert.match(get(kv, 'date'), /^1 .*Operation not permitted/);
    for (const k of ['settimeofday', 'clock_settime', 'adjtimex']) assert.equal(get(kv, k), 'EPERM', k);
    // Even a read-only adjtimex (modes 0) is refused: the profile, not the missing capability.
    assert.ok(Math.abs(Number(get(kv, 'now')) - Date.now() / 1000) < 60, 'the qube\'s clock moved');
    assert.ok(new Date().getFullYear() > 2001, 'the host clock moved');
  });

  test('the kernel keyring is refused by seccomp (EPERM), while the host kernel serves it', async () => {
    const h = host();
    const body = String.raw`
      out('keyctl', sc('keyctl', 0, -4, 0))
      out('add_key', sc('add_key', b'user', b'bulkhead-probe', b'v', 1, -4))
      out('request_key', sc('request_key', b'user', b'bulkhead-no-such-key', None, 0))
      out('keys', len(open('/proc/keys').read()) if os.path.exists('/proc/keys') else 'absent')
    `;
    const kv = await py(h, 'attacker', body);
    for (const k of ['keyctl', 'add_key', 'request_key']) assert.equal(get(kv, k), 'EPERM', k);
    assert.match(get(kv, 'keys'), /^(0|absent)$/);
    const ctl = hostPy("out('keyctl', sc('keyctl', 0, -4, 0))");
    assert.notEqual(get(ctl, 'keyctl'), 'EPERM', 'the host refuses keyctl too: inconclusive');
  });

  test('setuid binaries and file capabilities grant nothing: user processes have no capabilities, no_new_privs is set', async () => {
    const h = host();
    const prep = await py(h, 'attacker', String.raw`
      import shutil
      shutil.copy(os.path.realpath('/usr/bin/python3'), '/var/tmp/suid-py')
      os.chown('/var/tmp/suid-py', 0, 0)
      os.chmod('/var/tmp/suid-py', 0o4755)
      out('mode', oct(os.stat('/var/tmp/suid-py').st_mode & 0o7777))
      # security.capability v2: every capability permitted and effective.
      caps = struct.pack('<IIIII', 0x02000001, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff)
      out('setfcap', attempt(os.setxattr, '/var/tmp/suid-py', 'security.capability', caps))
      out('nosuid-var', any(l.split()[4] == '/var' and 'nosuid' in l.split()[5].split(',') for l in open('/proc/self/mountinfo')))
      st = open('/proc/self/status').read()
      out('root-nnp', st.split('NoNewPrivs:')[1].split()[0])
    `);
    assert.equal(get(prep, 'mode'), '0o4755');
    assert.equal(get(prep, 'setfcap'), 'EPERM');
    assert.equal(get(prep, 'nosuid-var'), 'False', '/var is nosuid: the setuid bit is not what is being tested');
    assert.equal(get(prep, 'root-nnp'), '1');
    const r = await h.exec('attacker', String.raw`/var/tmp/suid-py -c '
import os
st = open("/proc/self/status").read()
f = dict(l.split(":\t", 1) for l in st.splitlines() if ":\t" in l)
print(os.getresuid(), f["CapEff"], f["CapPrm"], f["NoNewPrivs"])
'; grep -E "^(CapEff|CapPrm|NoNewPrivs)" /proc/self/status; id -u`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '(1000, 1000, 1000) 0000000000000000 0000000000000000 1\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n1000\n');
    await sh(h, 'attacker', 'rm -f /var/tmp/suid-py');
  });

  test('/proc/*/root and /proc/*/cwd lead only into the qube\'s own root', async () => {
    const h = host();
    // A top-level entry of the host's / that a qube's / does not have (the repository's, unless
    // it lives under a name every qube has too, such as /tmp in a fresh clone).
    const qubeTop = new Set(['bin', 'boot', 'dev', 'etc', 'home', 'lib', 'lib32', 'lib64', 'libx32', 'media', 'mnt', 'opt', 'proc', 'root', 'run', 'rw', 'sbin', 'srv', 'sys', 'tmp', 'usr', 'var', 'lost+found']);
    const repoTop = REPO_ROOT.split('/')[1] ?? '';
    const hostTop = qubeTop.has(repoTop) ? (fs.readdirSync('/').find((n) => !qubeTop.has(n)) ?? '') : repoTop;
    assert.ok(hostTop === '' || fs.readdirSync('/').includes(hostTop));
    const kv = await py(h, 'attacker', String.raw`
      me = os.stat('/')
      bad = []
      for d in os.listdir('/proc'):
          if not d.isdigit():
              continue
          try:
              if os.readlink('/proc/%s/root' % d) != '/' or not os.path.samestat(os.stat('/proc/%s/root/' % d), me):
                  bad.append('root:' + d)
              cwd = os.readlink('/proc/%s/cwd' % d)
              if not os.path.samestat(os.stat('/proc/%s/cwd' % d), os.stat(cwd)):
                  bad.append('cwd:' + d)
          except FileNotFoundError:
              pass
      out('bad', json.dumps(bad))
      out('climb', sorted(os.listdir('/proc/1/root/../../..')) == sorted(os.listdir('/')))
      out('climb-cwd', sorted(os.listdir('/proc/self/cwd/../../..')) == sorted(os.listdir('/')))
      out('host-top', os.path.lexists('/proc/1/root/../' + HOSTTOP))
      out('root-is-top', os.path.samestat(os.stat('/..'), me))
    `, { HOSTTOP: hostTop });
    assert.equal(get(kv, 'bad'), '[]');
    assert.equal(get(kv, 'climb'), 'True');
    assert.equal(get(kv, 'climb-cwd'), 'True');
    // (With no such entry on this host, the climb checks above carry the test.)
    if (hostTop !== '') assert.equal(get(kv, 'host-top'), 'False', `/${hostTop} of the host is visible`);
    assert.equal(get(kv, 'root-is-top'), 'True');
  });

  test('file descriptors inherited from the host (the console log) lead nowhere else on the host', async () => {
    const h = host();
    const kv = await py(h, 'attacker', String.raw`
      hostside = []
      for d in os.listdir('/proc'):
          if not d.isdigit() or d == str(os.getpid()):
              continue
          for n in os.listdir('/proc/%s/fd' % d):
              p = '/proc/%s/fd/%s' % (d, n)
              try:
                  target = os.readlink(p)
                  st = os.stat(p)
              except OSError:
                  continue
              if not target.startswith('/'):
                  continue
              try:
                  inside = os.path.samestat(os.stat(target), st)
              except OSError:
                  inside = False
              if not inside:
                  hostside.append([p, target, stat.S_ISREG(st.st_mode)])
      out('hostside', json.dumps(hostside))
      if hostside:
          p = hostside[0][0]
          out('dotdot', attempt(os.stat, p + '/..'))
          out('as-dir', attempt(os.open, p, os.O_RDONLY | os.O_DIRECTORY))
          fd = os.open(p, os.O_RDONLY)
          out('openat', attempt(lambda: os.open('..', os.O_RDONLY, dir_fd=fd)))
    `);
    const hostside = JSON.parse(get(kv, 'hostside')) as [string, string, boolean][];
    // The only host objects a qube holds are its own console log (a regular file).
    assert.ok(hostside.length > 0, 'no inherited host descriptor found: nothing to probe');
    for (const [, target, regular] of hostside) {
      assert.equal(target, path.join(h.daemon.dataDir, 'vm', attackerUuid, 'run', 'console.log'));
      assert.equal(regular, true);
    }
    assert.equal(get(kv, 'dotdot'), 'ENOTDIR');
    assert.equal(get(kv, 'as-dir'), 'ENOTDIR');
    assert.equal(get(kv, 'openat'), 'ENOTDIR');
  });

  test('network: only lo exists, with no route, and no interface or address can be added', async () => {
    const h = host();
    const hostIfaces = Object.keys(os.networkInterfaces());
    const kv = await py(h, 'attacker', String.raw`
      out('dev', json.dumps(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').read().split('\n')[2:] if l.strip())))
      out('sys', json.dumps(sorted(os.listdir('/sys/class/net'))))
      out('routes', len(open('/proc/net/route').read().strip().split('\n')) - 1)
      r = subprocess.run(['ip', 'link', 'add', 'bh-dummy0', 'type', 'dummy'], capture_output=True)
      out('link-add', r.stderr.decode().strip())
      r = subprocess.run(['ip', 'addr', 'add', '10.200.200.1/32', 'dev', 'lo'], capture_output=True)
      out('addr-add', r.stderr.decode().strip())
      out('tun', attempt(os.open, '/dev/net/tun', os.O_RDWR))
    `);
    assert.equal(get(kv, 'dev'), '["lo"]');
    assert.equal(get(kv, 'sys'), '["lo"]');
    assert.equal(get(kv, 'routes'), '0');
    assert.match(get(kv, 'link-add'), /Operation not permitted/);
    assert.match(get(kv, 'addr-add'), /Operation not permitted/);
    assert.equal(get(kv, 'tun'), 'ENOENT');
    assert.ok(!hostIfaces.some((i) => i.startsWith('bh-dummy')));
  });

  test('host loopback and host addresses are unreachable; the qube\'s own loopback works', async (t) => {
    const h = host();
    let accepted = 0;
    const server = net.createServer((c) => {
      accepted++;
      c.on('error', () => undefined);
      c.end('host-service\n');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => { server.close(); });
    const port = (server.address() as net.AddressInfo).port;
    // Control: the service answers on the host.
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(); });
      c.once('error', reject);
    });
    assert.equal(accepted, 1);
    const hostAddrs = Object.values(os.networkInterfaces()).flat()
      .filter((a) => a !== undefined && a.family === 'IPv4' && !a.internal).map((a) => a?.address ?? '');
    const kv = await py(h, 'attacker', String.raw`
      def conn(addr, port):
          s = socket.socket()
          s.settimeout(3)
          try:
              s.connect((addr, port))
          finally:
              s.close()
      out('loopback', attempt(conn, '127.0.0.1', PORT))
      out('localhost6', attempt(lambda: socket.create_connection(('::1', PORT), 3).close()))
      for a in ADDRS:
          out('addr:' + a, attempt(conn, a, PORT))
      srv = socket.socket()
      srv.bind(('127.0.0.1', 0))
      srv.listen(1)
      out('own', attempt(conn, '127.0.0.1', srv.getsockname()[1]))
      r = subprocess.run(['bash', '-c', 'exec 3<>/dev/tcp/127.0.0.1/%d' % PORT], capture_output=True)
      out('bash', r.stderr.decode().strip())
    `, { PORT: port, ADDRS: hostAddrs });
    assert.equal(get(kv, 'loopback'), 'ECONNREFUSED');
    assert.match(get(kv, 'localhost6'), /^(ECONNREFUSED|EADDRNOTAVAIL|ENETUNREACH)$/);
    for (const a of hostAddrs) assert.match(get(kv, `addr:${a}`), /^(ENETUNREACH|EHOSTUNREACH)$/, a);
    assert.equal(get(kv, 'own'), 'OK');
    assert.match(get(kv, 'bash'), /Connection refused/);
    assert.equal(accepted, 1, 'the qube reached the host service');
  });

  test('the host\'s abstract unix sockets are unreachable (own network namespace)', async (t) => {
    const h = host();
    const name = `bulkhead-isolation-${crypto.randomUUID()}`;
    let accepted = 0;
    const server = net.createServer((c) => {
      accepted++;
      c.on('error', () => undefined);
      c.end();
    });
    await new Promise<void>((resolve) => server.listen(`\0${name}`, resolve));
    t.after(() => { server.close(); });
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(`\0${name}`, () => { c.destroy(); resolve(); });
      c.once('error', reject);
    });
    assert.equal(accepted, 1);
    const kv = await py(h, 'attacker', String.raw`
      s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
      out('connect', attempt(s.connect, '\0' + NAME))
      out('listed', NAME in open('/proc/net/unix').read())
    `, { NAME: name });
    assert.equal(get(kv, 'connect'), 'ECONNREFUSED');
    assert.equal(get(kv, 'listed'), 'False');
    assert.equal(accepted, 1);
  });

  test('raw and packet sockets are refused', async () => {
    const h = host();
    const kv = await py(h, 'attacker', String.raw`
      out('packet', attempt(socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0))
      out('raw-icmp', attempt(socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
      out('raw-tcp', attempt(socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP))
      out('raw6', attempt(socket.socket, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
      out('tcp', attempt(socket.socket, socket.AF_INET, socket.SOCK_STREAM, 0))
    `);
    for (const k of ['packet', 'raw-icmp', 'raw-tcp', 'raw6']) assert.equal(get(kv, k), 'EPERM', k);
    assert.equal(get(kv, 'tcp'), 'OK');
  });

  test('vsock (not network-namespaced) and rarely needed address families are refused', async () => {
    const h = host();
    // Control: the host kernel knows AF_VSOCK (the host can open such a socket).
    const hostProbe = spawnSync('python3', ['-c', 'import socket; socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM); print("OK")'], { encoding: 'utf8' });
    const kv = await py(h, 'attacker', String.raw`
      out('vsock', attempt(socket.socket, socket.AF_VSOCK, socket.SOCK_STREAM, 0))
      out('alg', attempt(socket.socket, 38, socket.SOCK_SEQPACKET, 0))
      out('tipc', attempt(socket.socket, 30, socket.SOCK_RDM, 0))
      out('unix', attempt(socket.socket, socket.AF_UNIX, socket.SOCK_STREAM, 0))
      out('netlink', attempt(socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, 0))
    `, {}, 'user');
    if (hostProbe.stdout.trim() === 'OK') assert.equal(get(kv, 'vsock'), 'EAFNOSUPPORT');
    else assert.notEqual(get(kv, 'vsock'), 'OK');
    assert.equal(get(kv, 'alg'), 'EAFNOSUPPORT');
    assert.equal(get(kv, 'tipc'), 'EAFNOSUPPORT');
    assert.equal(get(kv, 'unix'), 'OK');
    assert.equal(get(kv, 'netlink'), 'OK');
  });

  test('uid 0 maps to an unprivileged host uid range, distinct for each qube', async () => {
    const h = host();
    const maps = [];
    for (const vm of ['attacker', 'victim']) {
      const r = await sh(h, vm, 'cat /proc/self/uid_map /proc/self/gid_map; id -u');
      const m = /^\s*0\s+(\d+)\s+(\d+)\n\s*0\s+(\d+)\s+(\d+)\n0\n$/.exec(r.out);
      assert.ok(m, `${vm}: ${r.out}`);
      const [base, size, gbase, gsize] = [Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])];
      assert.equal(size, 65536);
      assert.equal(gsize, 65536);
      assert.equal(gbase, base);
      assert.ok(base >= 65536, `${vm}'s root is host uid ${base}`);
      maps.push(base);
    }
    const [a = 0, v = 0] = maps;
    assert.ok(Math.abs(a - v) >= 65536, `overlapping ranges ${a} and ${v}`);
    // The host agrees: the agents run as those host uids.
    for (const [uuid, base] of [[attackerUuid, a], [victimUuid, v]] as const) {
      const status = fs.readFileSync(`/proc/${agentHostPid(uuid)}/status`, 'utf8');
      assert.equal(statusField(status, 'Uid'), `${base}\t${base}\t${base}\t${base}`);
      assert.equal(statusField(status, 'Gid'), `${base}\t${base}\t${base}\t${base}`);
    }
  });

  test('each qube has its own user, mount, pid, net, ipc, uts and cgroup namespaces', async () => {
    const h = host();
    const kinds = ['user', 'mnt', 'pid', 'net', 'ipc', 'uts', 'cgroup'];
    const seen = new Map<string, string[]>();
    for (const vm of ['attacker', 'victim']) {
      const r = await sh(h, vm, kinds.map((k) => `readlink /proc/self/ns/${k}`).join('; '));
      seen.set(vm, r.out.trim().split('\n'));
    }
    kinds.forEach((k, i) => {
      const hostNs = fs.readlinkSync(`/proc/self/ns/${k}`);
      const a = seen.get('attacker')?.[i];
      const v = seen.get('victim')?.[i];
      assert.match(a ?? '', new RegExp(`^${k}:\\[\\d+\\]$`));
      assert.notEqual(a, hostNs, `attacker shares the host's ${k} namespace`);
      assert.notEqual(v, hostNs, `victim shares the host's ${k} namespace`);
      assert.notEqual(a, v, `attacker and victim share a ${k} namespace`);
    });
  });

  test('the mount table reveals no other qube\'s uuid or name', async () => {
    const h = host();
    const a = await sh(h, 'attacker', 'cat /proc/self/mountinfo /proc/self/mounts');
    assert.ok(a.out.includes(attackerUuid), 'mountinfo names no host path at all: inconclusive');
    for (const leak of [victimUuid, 'victim']) assert.ok(!a.out.includes(leak), `attacker's mount table mentions ${leak}`);
    const v = await sh(h, 'victim', 'cat /proc/self/mountinfo /proc/self/mounts');
    assert.ok(v.out.includes(victimUuid));
    for (const leak of [attackerUuid, 'attacker']) assert.ok(!v.out.includes(leak), `victim's mount table mentions ${leak}`);
  });

  test('no new namespaces: unshare, setns and clone with namespace flags are refused; clone3 answers ENOSYS', async () => {
    const h = host();
    const kv = await py(h, 'attacker', String.raw`
      FLAGS = {'user': 0x10000000, 'mnt': 0x00020000, 'pid': 0x20000000, 'net': 0x40000000,
               'ipc': 0x08000000, 'uts': 0x04000000, 'cgroup': 0x02000000, 'time': 0x00000080}
      def clone(flags):
          ctypes.set_errno(0)
          r = libc.syscall(ctypes.c_long(NR['clone']), ctypes.c_long(flags | 17), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
          if r == 0:
              os._exit(0)
          if r > 0:
              os.waitpid(r, 0)
              return 'OK'
          return ename(ctypes.get_errno())
      user_ns = os.readlink('/proc/self/ns/user')
      for k, f in FLAGS.items():
          out('unshare:' + k, sc('unshare', f))
          out('clone:' + k, clone(f))
      fd = os.open('/proc/self/ns/net', os.O_RDONLY)
      out('setns', sc('setns', fd, 0))
      out('clone3', sc('clone3', bytes(88), 88))
      out('plain-clone', clone(0))
      out('same-user-ns', os.readlink('/proc/self/ns/user') == user_ns)
      r = subprocess.run(['unshare', '-U', '-r', 'true'], capture_output=True)
      out('cmd', r.stderr.decode().strip())
    `);
    for (const k of ['user', 'mnt', 'pid', 'net', 'ipc', 'uts', 'cgroup', 'time']) {
      assert.equal(get(kv, `unshare:${k}`), 'EPERM', `unshare ${k}`);
      assert.equal(get(kv, `clone:${k}`), 'EPERM', `clone ${k}`);
    }
    assert.equal(get(kv, 'setns'), 'EPERM');
    assert.equal(get(kv, 'clone3'), 'ENOSYS');
    assert.equal(get(kv, 'plain-clone'), 'OK');
    assert.equal(get(kv, 'same-user-ns'), 'True');
    assert.match(get(kv, 'cmd'), /Operation not permitted/);
  });

  test('the capability bounding set holds only ten harmless capabilities (no SYS_ADMIN, SYS_MODULE, SYS_PTRACE, …)', async () => {
    const h = host();
    const r = await sh(h, 'attacker', 'grep -E "^Cap" /proc/self/status; grep -E "^Cap" /proc/1/status');
    const own = r.out.split('\n').slice(0, 5).join('\n');
    const init = r.out.split('\n').slice(5, 10).join('\n');
    for (const status of [own, init]) {
      assert.deepEqual(capNames(statusField(status, 'CapBnd')), [
        'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP', 'NET_BIND_SERVICE', 'AUDIT_WRITE',
      ]);
      assert.equal(statusField(status, 'CapInh'), '0000000000000000');
      assert.equal(statusField(status, 'CapAmb'), '0000000000000000');
      const eff = capNames(statusField(status, 'CapEff'));
      for (const cap of ['SYS_ADMIN', 'SYS_MODULE', 'SYS_PTRACE', 'SYS_TIME', 'MKNOD', 'NET_ADMIN', 'NET_RAW', 'SYS_RAWIO', 'SYS_BOOT', 'BPF',
        'DAC_READ_SEARCH', 'SYS_CHROOT', 'SETFCAP', 'PERFMON', 'SYS_RESOURCE', 'SYS_NICE', 'SYSLOG', 'CHECKPOINT_RESTORE']) {
        assert.ok(!capNames(statusField(status, 'CapBnd')).includes(cap), cap);
        assert.ok(!eff.includes(cap), cap);
      }
    }
  });

  test('the host /usr (host template) is read-only inside and stays untouched', async () => {
    const h = host();
    const name = `bulkhead-pwned-${crypto.randomUUID()}`;
    const trueBin = fs.realpathSync('/usr/bin/true');
    const before = fs.statSync(trueBin);
    const kv = await py(h, 'attacker', String.raw`
      def create(p):
          os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o755))
      out('create', attempt(create, '/usr/bin/' + NAME))
      out('mkdir', attempt(os.mkdir, '/usr/' + NAME))
      out('write', attempt(write_file, TRUE, b'#!/bin/sh\n'))
      out('chmod', attempt(os.chmod, TRUE, 0o4755))
      out('rename', attempt(os.rename, TRUE, TRUE + '.moved'))
      out('unlink', attempt(os.unlink, TRUE))
      out('utime', attempt(os.utime, TRUE, (0, 0)))
      out('owner', os.stat(TRUE).st_uid)
      for l in open('/proc/self/mountinfo'):
          f = l.split()
          if f[4] == '/usr':
              out('opts', f[5])
    `, { NAME: name, TRUE: trueBin });
    // EROFS from the read-only mount, or EACCES first: host root's files are foreign to the qube.
    for (const k of ['create', 'mkdir', 'write', 'chmod', 'rename', 'unlink', 'utime']) assert.match(get(kv, k), /^(EROFS|EACCES|EPERM)$/, k);
    assert.equal(get(kv, 'create'), 'EROFS');
    assert.equal(get(kv, 'owner'), '65534', 'host root\'s files should be unmapped (nobody) inside');
    assert.match(get(kv, 'opts'), /^ro,nosuid,nodev/);
    assert.equal(fs.existsSync(path.join('/usr/bin', name)), false);
    assert.equal(fs.existsSync(path.join('/usr', name)), false);
    const now = fs.statSync(trueBin);
    assert.equal(now.mode, before.mode);
    assert.equal(now.size, before.size);
    assert.equal(now.mtimeMs, before.mtimeMs);
  });

  test('/sys is read-only: no write to the host\'s devices or the qube\'s own interfaces', async () => {
    const h = host();
    const dev = fs.readdirSync('/sys/block').find((d) => fs.existsSync(`/sys/block/${d}/queue/read_ahead_kb`));
    const raFile = dev === undefined ? undefined : `/sys/block/${dev}/queue/read_ahead_kb`;
    const raBefore = raFile === undefined ? undefined : fs.readFileSync(raFile, 'utf8');
    if (raFile !== undefined && raBefore !== undefined) restore.set(raFile, raBefore);
    const kv = await py(h, 'attacker', String.raw`
      out('mtu', attempt(write_file, '/sys/class/net/lo/mtu', b'1280\n'))
      out('mkdir', attempt(os.mkdir, '/sys/pwned'))
      if RA:
          out('ra-exists', os.path.exists(RA))
          out('ra', attempt(write_file, RA, str(int(RAV) + 4).encode() + b'\n'))
      out('ro', any(l.split()[4] == '/sys' and l.split()[5].startswith('ro') for l in open('/proc/self/mountinfo')))
      out('lo-mtu', open('/sys/class/net/lo/mtu').read().strip())
    `, { RA: raFile ?? '', RAV: raBefore?.trim() ?? '0' });
    assert.equal(get(kv, 'mtu'), 'EROFS');
    assert.equal(get(kv, 'mkdir'), 'EROFS');
    assert.equal(get(kv, 'ro'), 'True');
    assert.equal(get(kv, 'lo-mtu'), '65536');
    if (raFile !== undefined) {
      assert.equal(get(kv, 'ra-exists'), 'True');
      assert.match(get(kv, 'ra'), /^(EROFS|EACCES)$/);
      assert.equal(fs.readFileSync(raFile, 'utf8'), raBefore);
    }
  });

  test('cgroup limits can be neither seen nor changed from inside (no cgroupfs, no release_agent)', { skip: detectCgroupMode() === 'none' && 'no cgroups on this host' }, async () => {
    const h = host();
    const agent = agentHostPid(attackerUuid);
    const pidsMax = cgroupFile(agent, 'pids', 'pids.max', 'pids.max');
    const memMax = cgroupFile(agent, 'memory', 'memory.limit_in_bytes', 'memory.max');
    assert.ok(pidsMax !== undefined && memMax !== undefined && fs.existsSync(pidsMax) && fs.existsSync(memMax), `${String(pidsMax)} ${String(memMax)}`);
    const before = [fs.readFileSync(pidsMax, 'utf8'), fs.readFileSync(memMax, 'utf8')];
    const kv = await py(h, 'attacker', String.raw`
      out('ls', json.dumps(os.listdir('/sys/fs/cgroup')))
      for f in ['/sys/fs/cgroup/pids.max', '/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/pids/pids.max', '/sys/fs/cgroup/release_agent']:
          out('write:' + f, attempt(lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT)), f))
      out('mkdir', attempt(os.mkdir, '/sys/fs/cgroup/escape'))
      os.makedirs('/var/tmp/cg', exist_ok=True)
      out('mount-v2', sc('mount', b'none', b'/var/tmp/cg', b'cgroup2', 0, None))
      out('mount-v1', sc('mount', b'none', b'/var/tmp/cg', b'cgroup', 0, b'rdma'))
      out('paths', json.dumps(sorted(set(l.split(':', 2)[2].strip() for l in open('/proc/self/cgroup')))))
    `);
    assert.equal(get(kv, 'ls'), '[]');
    for (const f of ['/sys/fs/cgroup/pids.max', '/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/pids/pids.max', '/sys/fs/cgroup/release_agent']) {
      assert.match(get(kv, `write:${f}`), REFUSED, f);
    }
    assert.match(get(kv, 'mkdir'), REFUSED);
    assert.equal(get(kv, 'mount-v2'), 'EPERM');
    assert.equal(get(kv, 'mount-v1'), 'EPERM');
    assert.equal(get(kv, 'paths'), '["/"]', 'the cgroup namespace shows host cgroup paths');
    assert.deepEqual([fs.readFileSync(pidsMax, 'utf8'), fs.readFileSync(memMax, 'utf8')], before);
  });

  test('kernel information is masked: kallsyms, kmsg, keys, timer_list, config.gz, /sys/kernel, /sys/firmware, /sys/module; dmesg refused', async () => {
    const h = host();
    const masked = ['/proc/kallsyms', '/proc/kmsg', '/proc/keys', '/proc/timer_list', '/proc/config.gz', '/proc/kcore',
      '/proc/sysrq-trigger', '/proc/sched_debug', '/proc/timer_stats', '/proc/latency_stats', '/proc/acpi', '/proc/asound',
      '/proc/scsi', '/sys/kernel', '/sys/firmware', '/sys/module', '/sys/devices/virtual/powercap'];
    const onHost = masked.filter((p) => fs.existsSync(p));
    // These must hold something on the host for the masking to mean anything.
    assert.ok(fs.readFileSync('/proc/kallsyms', 'utf8').length > 0);
    for (const d of ['/sys/kernel', '/sys/module', '/sys/firmware']) assert.ok(fs.readdirSync(d).length > 0, d);
    const kv = await py(h, 'attacker', String.raw`
      for p in PATHS:
          if not os.path.lexists(p):
              out(p, 'ABSENT')
          elif os.path.isdir(p):
              out(p, 'EMPTY' if os.listdir(p) == [] else 'LISTED')
          elif stat.S_ISCHR(os.stat(p).st_mode) and os.stat(p).st_rdev == os.makedev(1, 3):
              # Masked by the null device: reads are empty and writes vanish.
              out(p, 'NULLDEV')
          else:
              try:
                  fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
                  data = os.read(fd, 64)
                  os.close(fd)
                  out(p, 'EMPTY' if data == b'' else 'READABLE')
              except OSError as e:
                  out(p, ename(e.errno))
              out('write:' + p, attempt(write_file, p, b'h'))
      out('syslog', sc('syslog', 3, bytes(64), 64))
      r = subprocess.run(['dmesg'], capture_output=True)
      out('dmesg', r.stderr.decode().strip())
    `, { PATHS: masked });
    for (const p of masked) {
      const state = get(kv, p);
      if (onHost.includes(p)) {
        const dir = fs.statSync(p).isDirectory();
        assert.match(state, dir ? /^(EMPTY|ABSENT)$/ : /^(NULLDEV|ABSENT|EACCES|EPERM)$/, `${p}: ${state}`);
      }
      else assert.equal(state, 'ABSENT', `${p} exists in the qube but not on the host`);
      const w = kv.get(`write:${p}`);
      if (w !== undefined) assert.match(w, /^(EROFS|EACCES|EPERM|EIO)$/, `${p} accepted a write`);
    }
    assert.equal(get(kv, 'syslog'), 'EPERM');
    assert.match(get(kv, 'dmesg'), /Operation not permitted/);
  });

  test('large kernel attack surfaces are refused: bpf, perf_event_open, io_uring, userfaultfd, fanotify, open_by_handle_at, kexec, reboot, swap, acct', async () => {
    const h = host();
    // Harmless on any kernel (bad pointers, bad flags, bad magic): the host's kernel answers
    // EFAULT/EINVAL/EBADF where the qube gets the profile's EPERM before any argument is looked at.
    const harmless = String.raw`
      out('bpf', sc('bpf', 0, None, 0))
      out('perf_event_open', sc('perf_event_open', None, 0, -1, -1, 0))
      out('io_uring_setup', sc('io_uring_setup', 1, None))
      out('userfaultfd', sc('userfaultfd', 0x7fffffff))
      out('fanotify_init', sc('fanotify_init', 0x7fffffff, 0))
      out('open_by_handle_at', sc('open_by_handle_at', -1, None, 0))
      out('name_to_handle_at', sc('name_to_handle_at', -100, b'/', None, None, 0))
      out('reboot', sc('reboot', 0, 0, 0, None))
    `;
    const kv = await py(h, 'attacker', `${dedent(harmless)}
out('kexec_load', sc('kexec_load', 0, 0, None, 0))
out('swapon', sc('swapon', b'/var/tmp/no-such-swap', 0))
out('acct', sc('acct', b'/var/tmp/no-such-file'))`);
    const ctl = hostPy(harmless);
    for (const k of ['bpf', 'perf_event_open', 'io_uring_setup', 'userfaultfd', 'fanotify_init', 'open_by_handle_at', 'name_to_handle_at', 'reboot']) {
      assert.equal(get(kv, k), 'EPERM', `${k} in the qube`);
      assert.notEqual(get(ctl, k), 'EPERM', `${k} on the host: inconclusive`);
      assert.notEqual(get(ctl, k), 'OK', `${k} on the host succeeded: the probe is not harmless`);
    }
    for (const k of ['kexec_load', 'swapon', 'acct']) assert.equal(get(kv, k), 'EPERM', k);
  });

  test('foreign syscall ABIs (i386 int 0x80, x32) cannot bypass the profile: the caller is killed', { skip: process.arch !== 'x64' && 'x86-64 only' }, async () => {
    const h = host();
    const body = String.raw`
      import mmap, signal
      def in_child(f):
          r, w = os.pipe()
          pid = os.fork()
          if pid == 0:
              os.close(r)
              try:
                  res = f()
              except Exception as e:
                  res = 'exception ' + type(e).__name__
              os.write(w, str(res).encode())
              os._exit(0)
          os.close(w)
          data = os.read(r, 200).decode()
          os.close(r)
          _, st = os.waitpid(pid, 0)
          if os.WIFSIGNALED(st):
              return 'killed:' + signal.Signals(os.WTERMSIG(st)).name
          return data
      def int80(nr, a1=0):
          # push rbx; mov eax, nr; mov ebx, a1; int 0x80; pop rbx; ret
          code = b'\x53\xb8' + struct.pack('<I', nr) + b'\xbb' + struct.pack('<I', a1) + b'\xcd\x80\x5b\xc3'
          m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
          m.write(code)
          f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
          r = f()
          return 'ret:%d' % r if r >= 0 else ename(-r)
      def x32(nr, *a):
          ctypes.set_errno(0)
          r = libc.syscall(ctypes.c_long(0x40000000 | nr), *[ctypes.c_long(x) for x in a])
          return 'ret:%d' % r if r >= 0 else ename(ctypes.get_errno())
      out('i386-getpid', in_child(lambda: int80(20)))
      if not HOST:
          out('i386-unshare', in_child(lambda: int80(310, 0x10000000)))
          out('i386-keyctl', in_child(lambda: int80(288, 0)))
          out('x32-unshare', in_child(lambda: x32(272, 0x10000000)))
      out('x32-getpid', in_child(lambda: x32(39)))
    `;
    const kv = await py(h, 'attacker', body, { HOST: false });
    for (const k of ['i386-getpid', 'i386-unshare', 'i386-keyctl', 'x32-getpid', 'x32-unshare']) {
      assert.equal(get(kv, k), 'killed:SIGSYS', k);
    }
    // Control: the same code runs on the host (where the i386 entry point may be enabled).
    const ctl = hostPy(body, { HOST: true });
    assert.match(get(ctl, 'i386-getpid'), /^(ret:\d+|killed:SIGSEGV)$/);
    assert.match(get(ctl, 'x32-getpid'), /^(ret:\d+|ENOSYS)$/);
  });

  test('SysV IPC is private: the other qube\'s shared memory is invisible', async () => {
    const h = host();
    const key = 0x4b1d0000 + Math.floor(Math.random() * 0xffff);
    const body = String.raw`
      libc.shmget.restype = ctypes.c_int
      libc.shmat.restype = ctypes.c_void_p
      libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
      def shm_ids():
          return [l.split()[0] for l in open('/proc/sysvipc/shm').read().split('\n')[1:] if l.strip()]
      if CREATE:
          sid = libc.shmget(KEY, 4096, 0o1000 | 0o600)
          addr = libc.shmat(sid, None, 0)
          ctypes.memmove(addr, SECRET.encode(), len(SECRET))
          libc.shmdt(ctypes.c_void_p(addr))
          out('created', sid >= 0)
      ctypes.set_errno(0)
      out('shmget', 'OK' if libc.shmget(KEY, 0, 0) >= 0 else ename(ctypes.get_errno()))
      out('keys', json.dumps(shm_ids()))
      if REMOVE:
          libc.shmctl(libc.shmget(KEY, 0, 0), 0, None)
    `;
    const secret = `shm-${crypto.randomUUID()}`;
    const v = await py(h, 'victim', body, { KEY: key, SECRET: secret, CREATE: true, REMOVE: false });
    assert.equal(get(v, 'created'), 'True');
    assert.equal(get(v, 'shmget'), 'OK');
    assert.ok((JSON.parse(get(v, 'keys')) as string[]).includes(String(key)));
    const a = await py(h, 'attacker', body, { KEY: key, SECRET: secret, CREATE: false, REMOVE: false });
    assert.equal(get(a, 'shmget'), 'ENOENT');
    assert.equal(get(a, 'keys'), '[]');
    await py(h, 'victim', body, { KEY: key, SECRET: secret, CREATE: false, REMOVE: true });
  });

  test('the qube cannot escape its resource controls: no OOM immunity, higher priority, realtime scheduling or raised hard limits', async () => {
    const h = host();
    const kv = await py(h, 'attacker', String.raw`
      import resource
      out('oom-start', open('/proc/self/oom_score_adj').read().strip())
      out('oom-immune', attempt(write_file, '/proc/self/oom_score_adj', b'-1000\n'))
      out('oom-negative', attempt(write_file, '/proc/self/oom_score_adj', b'-1\n'))
      out('oom-raise', attempt(write_file, '/proc/self/oom_score_adj', b'600\n'))
      out('oom', open('/proc/self/oom_score_adj').read().strip())
      out('nice', attempt(os.setpriority, os.PRIO_PROCESS, 0, -5))
      out('fifo', attempt(os.sched_setscheduler, 0, os.SCHED_FIFO, os.sched_param(1)))
      soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
      out('rlimit-room', hard < int(open('/proc/sys/fs/nr_open').read()))
      try:
          resource.setrlimit(resource.RLIMIT_NOFILE, (hard + 1, hard + 1))
          out('rlimit', 'OK')
      except ValueError as e:
          out('rlimit', 'EPERM' if 'not allowed to raise' in str(e) else 'ValueError: ' + str(e))
      except OSError as e:
          out('rlimit', ename(e.errno))
    `);
    assert.equal(get(kv, 'oom-start'), '500');
    assert.equal(get(kv, 'oom-immune'), 'EACCES');
    assert.equal(get(kv, 'oom-negative'), 'EACCES');
    assert.equal(get(kv, 'oom-raise'), 'OK');
    assert.equal(get(kv, 'oom'), '600');
    assert.equal(get(kv, 'nice'), 'EACCES');
    assert.equal(get(kv, 'fifo'), 'EPERM');
    assert.equal(get(kv, 'rlimit-room'), 'True', 'hard + 1 stays within fs.nr_open: only the missing capability can refuse it');
    assert.equal(get(kv, 'rlimit'), 'EPERM');
  });

  // The kernel pins a floor (oom_score_adj_min) only when the writer holds CAP_SYS_RESOURCE in the
  // initial user namespace: crun writes the 500 as the host's root before entering the qube's
  // user namespace. A host root without that capability (some sandboxes) cannot pin any floor.
  test('the qube cannot lower its OOM score below the 500 it was started with', {
    skip: !HOST_HAS_SYS_RESOURCE && 'the host\'s root lacks CAP_SYS_RESOURCE: no OOM-score floor can be pinned on this host',
  }, async () => {
    const h = host();
    assert.equal(readOr(`/proc/${agentHostPid(attackerUuid)}/oom_score_adj`).trim(), '500');
    const kv = await py(h, 'attacker', String.raw`
      out('499', attempt(write_file, '/proc/self/oom_score_adj', b'499\n'))
      out('0', attempt(write_file, '/proc/self/oom_score_adj', b'0\n'))
      out('now', open('/proc/self/oom_score_adj').read().strip())
    `);
    assert.equal(get(kv, '499'), 'EACCES');
    assert.equal(get(kv, '0'), 'EACCES');
    assert.equal(get(kv, 'now'), '500');
  });

  test('a thread/fork bomb stops at the qube\'s pids limit; the host and the other qube keep working', { skip: detectCgroupMode() === 'none' && 'no cgroups on this host' }, async () => {
    const h = host();
    const agent = agentHostPid(attackerUuid);
    const maxFile = cgroupFile(agent, 'pids', 'pids.max', 'pids.max');
    assert.ok(maxFile !== undefined && fs.existsSync(maxFile), String(maxFile));
    const currentFile = path.join(path.dirname(maxFile), 'pids.current');
    const limit = Number(fs.readFileSync(maxFile, 'utf8').trim());
    assert.ok(Number.isInteger(limit) && limit > 100 && limit <= 65536, `pids.max ${limit}`);
    const bomb = py(h, 'attacker', String.raw`
      import threading
      threading.stack_size(65536)
      ev = threading.Event()
      threads = []
      err = ''
      try:
          while len(threads) < LIMIT + 100:
              t = threading.Thread(target=ev.wait)
              t.start()
              threads.append(t)
      except RuntimeError as e:
          err = str(e)
      def fork():
          pid = os.fork()
          if pid == 0:
              os._exit(0)
          os.waitpid(pid, 0)
      out('fork', attempt(fork))
      out('threads', len(threads))
      out('error', err)
      time.sleep(HOLD)
      ev.set()
      for t in threads:
          t.join()
    `, { LIMIT: limit, HOLD: 4 });
    bomb.catch(() => undefined); // awaited below; no unhandled rejection meanwhile
    // While the attacker sits at its limit: the host forks, the victim runs commands.
    const deadline = Date.now() + 20_000;
    let saturated = false;
    while (Date.now() < deadline) {
      if (Number(readOr(currentFile, '0').trim()) >= limit) {
        saturated = true;
        break;
      }
      await sleep(25);
    }
    let hostFork = -1;
    let victimAlive = '';
    if (saturated) {
      hostFork = spawnSync('true').status ?? -1;
      victimAlive = (await h.exec('victim', 'echo alive')).stdout;
    }
    const kv = await bomb;
    assert.ok(saturated, `pids.current never reached ${limit}`);
    const threads = Number(get(kv, 'threads'));
    assert.ok(threads > limit / 2 && threads < limit, `${threads} threads for a limit of ${limit}`);
    assert.match(get(kv, 'error'), /can't start new thread/);
    assert.equal(get(kv, 'fork'), 'EAGAIN');
    assert.equal(hostFork, 0);
    assert.equal(victimAlive, 'alive\n');
    assert.equal(fs.readFileSync(maxFile, 'utf8').trim(), String(limit));
    assert.equal((await h.exec('attacker', 'echo recovered')).stdout, 'recovered\n');
    assert.equal(await h.state('attacker'), 'Running');
  });
});
