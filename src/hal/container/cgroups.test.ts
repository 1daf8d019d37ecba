import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cgroupModeOf } from './cgroups.js';

const line = (id: number, mp: string, fs: string): string => `${id} 1 0:${id} / ${mp} rw,relatime shared:${id} - ${fs} ${fs} rw`;

test('cgroup layout detection: unified, hybrid, legacy, none', () => {
  assert.equal(cgroupModeOf([line(30, '/sys/fs/cgroup', 'cgroup2')].join('\n')), 'unified');
  const v1 = [line(31, '/sys/fs/cgroup/memory', 'cgroup'), line(32, '/sys/fs/cgroup/pids', 'cgroup')];
  assert.equal(cgroupModeOf(v1.join('\n')), 'legacy');
  assert.equal(cgroupModeOf([...v1, line(33, '/sys/fs/cgroup/unified', 'cgroup2')].join('\n')), 'hybrid');
  assert.equal(cgroupModeOf([line(34, '/proc', 'proc')].join('\n')), 'none');
  assert.equal(cgroupModeOf('garbage\n\n - \n'), 'none');
});
