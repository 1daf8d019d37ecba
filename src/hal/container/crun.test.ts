import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Crun } from './crun.js';

test('crun runs directly on cgroup v2 and v1, and in a private mount namespace without the v2 mount on hybrid hosts', () => {
  for (const mode of ['unified', 'legacy', 'none'] as const) {
    assert.deepEqual(new Crun(mode).commandFor(['state', 'x']), ['crun', ['--cgroup-manager=cgroupfs', 'state', 'x']]);
  }
  const [cmd, argv] = new Crun('hybrid').commandFor(['run', '-d', 'x']);
  assert.equal(cmd, 'unshare');
  assert.deepEqual(argv.slice(0, 4), ['-m', '--propagation', 'private', '--']);
  assert.match(argv[6] ?? '', /^umount \/sys\/fs\/cgroup\/unified .*exec "\$0" "\$@"$/);
  assert.deepEqual(argv.slice(7), ['crun', '--cgroup-manager=cgroupfs', 'run', '-d', 'x']);
});
