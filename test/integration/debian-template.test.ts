// The Debian template from Debian's packages: debootstrap (network: Debian's mirror), the cache
// that makes a rebuild fast, and a qube running on it. The slowest test of the suite (~1–2 min).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { describe, test } from 'node:test';
import { suiteQubes } from './qube-helpers.js';

describe('Debian template', () => {
  const host = suiteQubes();

  test('template build debian: bookworm from Debian packages, cached; its qubes run the agent', { timeout: 600_000 }, async () => {
    const h = host();
    const first = await h.run('bulkhead', ['template', 'build', 'debian', 'deb'], { timeoutMs: 540_000 });
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /debootstrap bookworm/);
    assert.equal(fs.readdirSync(h.cacheDir).filter((f) => f.endsWith('.tar')).length, 1);

    const t0 = Date.now();
    const again = await h.run('bulkhead', ['template', 'build', 'debian', 'deb'], { timeoutMs: 120_000 });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /using the cached Debian bookworm root/);
    assert.match(again.stdout, /rebuilt TemplateVM 'deb'/);
    const rebuildMs = Date.now() - t0;
    assert.ok(rebuildMs < 60_000, `a cached rebuild took ${rebuildMs} ms`);

    await h.ok('qvm-create', ['-t', 'deb', '-l', 'blue', 'deb-app']);
    const r = await h.exec('deb-app', 'cat /etc/debian_version; id -un; dpkg-query -W -f "\\${Package}\\n" coreutils bash procps iproute2 | sort | tr "\\n" " "');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^12\.\d+\nuser\nbash coreutils iproute2 procps $/);
    // qrexec in a Debian qube: the client on the usual path, the shipped services, the local folder.
    const q = await h.exec('deb-app', 'command -v qrexec-client-vm; ls /etc/qubes-rpc | tr "\\n" " "; test -d /usr/local/etc/qubes-rpc && echo local');
    assert.equal(q.stdout, '/usr/bin/qrexec-client-vm\nqubes.VMExec qubes.VMShell qubes.WaitForSession local\n', q.stderr);
    // The template itself is a full system its root can change (apt's state is writable).
    await h.ok('qvm-shutdown', ['--wait', 'deb-app']);
    const t = await h.root('deb', 'touch /var/lib/dpkg/bulkhead-test && echo writable');
    assert.equal(t.stdout, 'writable\n', t.stderr);
    await h.ok('qvm-shutdown', ['--wait', 'deb']);
  });
});
