// How the agent runs a command as a qube user: setpriv only for users with groups of their own
// beyond the primary one (Node's uid switch would drop them), plain uid/gid otherwise.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { asUser, hasOtherGroups, lookupUser, type Account } from './accounts.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bh-accounts-'));
after(() => { fs.rmSync(dir, { recursive: true, force: true }); });

function groupFile(text: string): string {
  const file = path.join(dir, `group-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(file, text);
  return file;
}

const user: Account = { name: 'user', uid: 1000, gid: 1000, home: '/home/user', shell: '/bin/sh' };

describe('hasOtherGroups', () => {
  test('listed as a member of another group: yes; only in its own (or a name that merely contains it): no', () => {
    assert.equal(hasOtherGroups(user, groupFile('root:x:0:\nuser:x:1000:\naudio:x:29:pulse,user\n')), true);
    assert.equal(hasOtherGroups(user, groupFile('root:x:0:\nuser:x:1000:user\naudio:x:29:pulse,user2\n')), false);
    assert.equal(hasOtherGroups(user, groupFile('')), false);
  });

  test('an unreadable group file counts as yes (the safe way: setpriv sets whatever groups exist)', () => {
    assert.equal(hasOtherGroups(user, path.join(dir, 'missing')), true);
  });
});

describe('asUser', () => {
  test('root runs directly; a user without other groups gets uid/gid; with other groups, setpriv --init-groups when present', () => {
    const root: Account = { name: 'root', uid: 0, gid: 0, home: '/root', shell: '/bin/sh' };
    assert.deepEqual(asUser(root, ['/bin/true', 'x']), { file: '/bin/true', args: ['x'], ids: {} });
    assert.deepEqual(asUser(user, ['/bin/true', 'x'], groupFile('user:x:1000:\n')), { file: '/bin/true', args: ['x'], ids: { uid: 1000, gid: 1000 } });
    const withGroups = asUser(user, ['/bin/true', 'x'], groupFile('audio:x:29:user\n'));
    if (fs.existsSync('/usr/bin/setpriv')) {
      assert.deepEqual(withGroups, { file: '/usr/bin/setpriv', args: ['--reuid=1000', '--regid=1000', '--init-groups', '--', '/bin/true', 'x'], ids: {} });
    } else {
      assert.deepEqual(withGroups, { file: '/bin/true', args: ['x'], ids: { uid: 1000, gid: 1000 } });
    }
  });
});

describe('lookupUser', () => {
  test('an empty or non-numeric uid/gid field is no account at all (never uid 0)', () => {
    const file = groupFile('user:x::1000:u:/home/user:/bin/sh\nother:x:0x10:1000:o:/:/bin/sh\nok:x:1001:1001:o:/home/ok:/bin/sh\n');
    assert.equal(lookupUser('user', file), undefined);
    assert.equal(lookupUser('other', file), undefined);
    assert.deepEqual(lookupUser('ok', file), { name: 'ok', uid: 1001, gid: 1001, home: '/home/ok', shell: '/bin/sh' });
  });
});
