import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { QubeLaunchSpec } from '../types.js';
import { buildOciConfig, MASKED_PATHS, QUBE_CAPABILITIES, type OciInputs } from './oci.js';
import { hostUidBase, qubePaths, UID_BASE, UID_RANGE } from './paths.js';
import { DENIED_SYSCALLS, seccompProfile } from './seccomp.js';

const spec: QubeLaunchSpec = {
  name: 'work', uuid: '0f0e0d0c-0b0a-4908-8706-050403020100', qid: 3, klass: 'AppVM',
  rootTemplate: 'tpl', rootTemplateUuid: '11111111-2222-4333-8444-555555555555',
  memoryMiB: 400, maxmemMiB: 1000, vcpus: 2, qrexecTimeoutSec: 60,
};

function inputs(over: Partial<OciInputs> = {}): OciInputs {
  return {
    spec, top: '/d/vm/u/volatile/top', rootVolume: '/d/vm/t/root', volatileRoot: true, topDirs: ['etc', 'var'],
    upper: '/d/vm/u/volatile/upper', work: '/d/vm/u/volatile/work', hostUsr: true, privateVolume: '/d/vm/u/private',
    socket: '/d/vm/u/run/qrexec.sock', callSocket: '/d/vm/u/run/qrexec-call.sock', agentBundle: '/opt/b/agent-bundle', nodeBinary: '/usr/bin/node',
    initBinary: '/usr/bin/tini-static', cgroupsPath: '/bulkhead/bh-x', pidsLimit: 4096, resolvConf: null, ...over,
  };
}

describe('OCI config of a container qube', () => {
  test('user namespace: the qube\'s uid 0 is its own unprivileged host range', () => {
    const c = buildOciConfig(inputs());
    const base = hostUidBase(3);
    assert.equal(base, UID_BASE + 3 * UID_RANGE);
    assert.deepEqual(c.linux.uidMappings, [{ containerID: 0, hostID: base, size: UID_RANGE }]);
    assert.deepEqual(c.linux.gidMappings, [{ containerID: 0, hostID: base, size: UID_RANGE }]);
    assert.notEqual(hostUidBase(4), base);
    assert.ok(hostUidBase(10000) + UID_RANGE <= 0xffffffff);
    assert.throws(() => hostUidBase(0), RangeError);
    assert.throws(() => hostUidBase(10001), RangeError);
  });

  test('a resolv.conf is bound read-only over /etc/resolv.conf, after every root mount', () => {
    assert.equal(buildOciConfig(inputs()).mounts.find((m) => m.destination === '/etc/resolv.conf'), undefined);
    const c = buildOciConfig(inputs({ resolvConf: '/d/vm/u/volatile/resolv.conf' }));
    const i = c.mounts.findIndex((m) => m.destination === '/etc/resolv.conf');
    assert.ok(i > c.mounts.findIndex((m) => m.destination === '/etc'));
    assert.deepEqual(c.mounts[i], { destination: '/etc/resolv.conf', type: 'bind', source: '/d/vm/u/volatile/resolv.conf', options: ['bind', 'ro', 'nosuid', 'nodev', 'noexec'] });
  });

  test('every namespace, no_new_privs, bounded capabilities, hostname = qube name', () => {
    const c = buildOciConfig(inputs());
    assert.deepEqual(c.linux.namespaces.map((n) => n.type).sort(), ['cgroup', 'ipc', 'mount', 'network', 'pid', 'user', 'uts']);
    const p = c.process as { noNewPrivileges: boolean; capabilities: Record<string, string[] | undefined> };
    assert.equal(p.noNewPrivileges, true);
    for (const set of ['bounding', 'effective', 'permitted']) {
      assert.deepEqual(p.capabilities[set], [...QUBE_CAPABILITIES]);
      for (const dangerous of ['CAP_SYS_ADMIN', 'CAP_SYS_MODULE', 'CAP_SYS_PTRACE', 'CAP_SYS_TIME', 'CAP_MKNOD', 'CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_SYS_RAWIO', 'CAP_BPF']) {
        assert.ok(!p.capabilities[set].includes(dangerous), `${set} has ${dangerous}`);
      }
    }
    assert.deepEqual(p.capabilities.ambient, []);
    assert.equal(c.hostname, 'work');
  });

  test('AppVM root: overlays of the template\'s directories over a volatile upper layer', () => {
    const c = buildOciConfig(inputs());
    const etc = c.mounts.find((m) => m.destination === '/etc');
    assert.equal(etc?.type, 'overlay');
    assert.deepEqual(etc.options, ['lowerdir=/d/vm/u/volatile/top/.bulkhead-lower/etc', 'upperdir=/d/vm/u/volatile/upper/etc', 'workdir=/d/vm/u/volatile/work/etc']);
    const lower = c.mounts.find((m) => m.destination === '/.bulkhead-lower');
    assert.ok(lower?.options?.includes('ro'));
    assert.ok(MASKED_PATHS.includes('/.bulkhead-lower'));
    const usr = c.mounts.find((m) => m.destination === '/usr');
    assert.deepEqual(usr?.options, ['rbind', 'ro', 'nosuid', 'nodev']);
  });

  test('TemplateVM root: its own volume, writable, idmapped; no host /usr unless asked', () => {
    const c = buildOciConfig(inputs({ volatileRoot: false, hostUsr: false, topDirs: ['etc', 'usr'] }));
    const etc = c.mounts.find((m) => m.destination === '/etc');
    assert.equal(etc?.type, 'bind');
    assert.equal(etc.source, '/d/vm/t/root/etc');
    assert.ok(etc.options?.includes('rw'));
    assert.ok(etc.options?.some((o) => o.startsWith(`idmap=uids=0-${hostUidBase(3)}-65536`)));
    assert.equal(c.mounts.filter((m) => m.destination === '/usr').length, 1);
    assert.equal(c.mounts.find((m) => m.destination === '/usr')?.source, '/d/vm/t/root/usr');
    assert.equal(c.mounts.some((m) => m.destination === '/.bulkhead-lower'), false);
  });

  test('private volume at /rw and /home, agent bundle read-only, the channel socket bound in', () => {
    const c = buildOciConfig(inputs());
    const byDest = new Map(c.mounts.map((m) => [m.destination, m]));
    assert.equal(byDest.get('/rw')?.source, '/d/vm/u/private');
    // /home is a link to rw/home inside the qube, never a bind of a path the qube controls.
    assert.equal(byDest.has('/home'), false);
    assert.ok(byDest.get('/run/bulkhead/agent')?.options?.includes('ro'));
    assert.ok(byDest.get('/run/bulkhead/node')?.options?.includes('ro'));
    assert.equal(byDest.get('/run/bulkhead/qrexec.sock')?.source, '/d/vm/u/run/qrexec.sock');
    assert.ok(byDest.get('/sys')?.options?.includes('ro'));
    // Every bind from the host is nodev (and the host's own files nosuid too).
    const binds = c.mounts.filter((x) => x.type === 'bind');
    assert.ok(binds.length >= 5);
    for (const m of binds) assert.ok(m.options?.includes('nodev'), m.destination);
    for (const d of ['/usr', '/rw', '/run/bulkhead/agent', '/run/bulkhead/node', '/run/bulkhead/init', '/run/bulkhead/qrexec.sock']) {
      assert.ok(byDest.get(d)?.options?.includes('nosuid'), d);
    }
  });

  test('limits: maxmem → memory, vcpus → CPU quota, pids; none without cgroups', () => {
    const c = buildOciConfig(inputs());
    assert.equal(c.linux.cgroupsPath, '/bulkhead/bh-x');
    assert.deepEqual(c.linux.resources, {
      devices: [{ allow: false, access: 'rwm' }],
      memory: { limit: 1000 * 1024 * 1024, swap: 1000 * 1024 * 1024 },
      pids: { limit: 4096 },
      cpu: { quota: 200000, period: 100000 },
    });
    const none = buildOciConfig(inputs({ cgroupsPath: null }));
    assert.equal(none.linux.resources, undefined);
    assert.equal(none.linux.cgroupsPath, undefined);
  });

  test('qube paths are named by uuid only', () => {
    const p = qubePaths('/var/lib/bulkhead', spec.uuid);
    for (const v of Object.values(p) as string[]) assert.ok(!v.includes('work'), v);
    assert.throws(() => qubePaths('/d', '../etc'), RangeError);
  });
});

describe('seccomp profile', () => {
  test('refuses keyrings, modules, mounts, namespaces, clock, bpf; clone3 gets ENOSYS; native ABI only', () => {
    const p = seccompProfile();
    assert.equal(p.defaultAction, 'SCMP_ACT_ALLOW');
    assert.equal(p.architectures.length, 1);
    for (const s of ['keyctl', 'add_key', 'init_module', 'finit_module', 'mount', 'umount2', 'unshare', 'setns', 'settimeofday', 'clock_settime', 'bpf', 'perf_event_open', 'kexec_load', 'open_by_handle_at', 'io_uring_setup']) {
      assert.ok(DENIED_SYSCALLS.includes(s), s);
      // …and the profile itself refuses it unconditionally with EPERM.
      assert.ok(p.syscalls.some((r) => r.names.includes(s) && r.action === 'SCMP_ACT_ERRNO' && r.errnoRet === 1 && r.args === undefined), s);
    }
    const clone3 = p.syscalls.find((r) => r.names.includes('clone3'));
    assert.equal(clone3?.errnoRet, 38);
    const cloneRules = p.syscalls.filter((r) => r.names.includes('clone'));
    const newuser = cloneRules.find((r) => r.args?.[0]?.value === 0x10000000);
    assert.equal(newuser?.args?.[0]?.op, 'SCMP_CMP_MASKED_EQ');
    assert.equal(new Set(DENIED_SYSCALLS).size, DENIED_SYSCALLS.length);
  });
});
