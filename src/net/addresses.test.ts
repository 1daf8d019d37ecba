// Names and addresses of the network plumbing: kernel limits of interface names, the /30s of
// `nat` uplinks, and the two parsers of outside text (CIDR features, the host's resolv.conf).
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  CLIENT_IF,
  NETNS_DIR,
  NETNS_PREFIX,
  daemonTag,
  hostTableName,
  hostUplinkName,
  hostUplinkPrefix,
  isInterfaceName,
  netnsName,
  parseIpv4Cidr,
  resolvConfServers,
  resolvConfText,
  uplinkAddresses,
  vifName,
} from './addresses.js';

/** The registry's highest qid (src/core/registry.ts MAX_QID). */
const MAX_QID = 10000;
/** IFNAMSIZ - 1. */
const IFNAME_MAX = 15;

describe('names', () => {
  test('namespace handles, vifs, tables', () => {
    const uuid = '0b5e5ad6-6f2c-4d6e-9a51-3c1f2a8e7d10';
    assert.equal(netnsName('abcde', uuid), `bulkhead-abcde-${uuid}`);
    assert.ok(netnsName('abcde', uuid).startsWith(NETNS_PREFIX));
    assert.equal(NETNS_DIR, '/run/netns');
    assert.equal(vifName(7), 'vif7');
    assert.equal(CLIENT_IF, 'eth0');
    assert.equal(hostTableName('abcde'), 'bulkhead_abcde');
  });

  test('daemonTag: 5 hex characters, stable per data dir, different across dirs', () => {
    const a = daemonTag('/var/lib/bulkhead');
    assert.match(a, /^[0-9a-f]{5}$/);
    assert.equal(daemonTag('/var/lib/bulkhead'), a);
    assert.notEqual(daemonTag('/var/lib/bulkhead2'), a);
  });

  test('hostUplinkName: within IFNAMSIZ for every qid and tag, a valid interface name, under its prefix', () => {
    assert.equal(hostUplinkName('abcde', 12), 'bhabcde-12');
    assert.equal(hostUplinkPrefix('abcde'), 'bhabcde-');
    const longest = hostUplinkName('fffff', MAX_QID);
    assert.ok(longest.length <= IFNAME_MAX, longest);
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 60 }), fc.integer({ min: 1, max: MAX_QID }), (dir, qid) => {
        const tag = daemonTag(dir);
        const name = hostUplinkName(tag, qid);
        assert.ok(name.length <= IFNAME_MAX, name);
        assert.ok(isInterfaceName(name), name);
        assert.ok(name.startsWith(hostUplinkPrefix(tag)));
        // The prefix is a wildcard in nft text: no client vif, nor the client interface, falls under it.
        assert.ok(!vifName(qid).startsWith(hostUplinkPrefix(tag)) && !CLIENT_IF.startsWith(hostUplinkPrefix(tag)));
      }),
      { numRuns: 500 },
    );
  });

  test('vif names fit too', () => {
    assert.ok(vifName(MAX_QID).length <= IFNAME_MAX);
    assert.ok(isInterfaceName(vifName(MAX_QID)));
  });
});

describe('uplinkAddresses', () => {
  test('examples: host .1, netvm .2 of the qid-th /30 of the tag\'s /16 in 100.64.0.0/10', () => {
    assert.deepEqual(uplinkAddresses('00000', 1), { host: '100.64.0.5', netvm: '100.64.0.6' });
    assert.deepEqual(uplinkAddresses('00000', 64), { host: '100.64.1.1', netvm: '100.64.1.2' });
    assert.deepEqual(uplinkAddresses('ff000', MAX_QID), { host: '100.127.156.65', netvm: '100.127.156.66' });
    assert.notDeepEqual(uplinkAddresses('01000', 5), uplinkAddresses('02000', 5));
  });

  test('every qid of the registry gets its own /30, never its network or broadcast address', () => {
    for (const tag of ['00000', '3fabc', 'c0123']) {
      const seen = new Set<string>();
      for (let qid = 1; qid <= MAX_QID; qid++) {
        const { host, netvm } = uplinkAddresses(tag, qid);
        assert.ok(net.isIPv4(host) && net.isIPv4(netvm));
        const h = host.split('.').map(Number) as [number, number, number, number];
        const n = netvm.split('.').map(Number) as [number, number, number, number];
        assert.equal(h[0], 100);
        assert.ok(h[1] >= 64 && h[1] < 128);
        assert.deepEqual(n.slice(0, 3), h.slice(0, 3));
        assert.equal(h[3] % 4, 1);
        assert.equal(n[3], h[3] + 1);
        const net30 = `${h[1]}.${h[2]}.${h[3] - 1}`;
        assert.ok(!seen.has(net30), `qid ${qid} reuses ${net30}`);
        seen.add(net30);
      }
    }
  });
});

describe('isInterfaceName', () => {
  test('accepts what the kernel accepts, without wildcards', () => {
    for (const ok of ['eth0', 'enp0s31f6', 'wlan0.100', 'a-b_c', 'A', 'x'.repeat(15), '...', '-x']) assert.equal(isInterfaceName(ok), true, ok);
  });

  test('refuses empty, too long, dot names, and any other character', () => {
    for (const bad of ['', '.', '..', 'x'.repeat(16), 'eth 0', 'eth0/', 'eth*', 'eth?', 'a:b', 'a"b', "a'b", 'a\\b', 'a\nb', 'a\tb', 'eth0\n', 'é', 'a;b', 'a{b}', 'a@b', 'a%b']) {
      assert.equal(isInterfaceName(bad), false, JSON.stringify(bad));
    }
  });

  test('property: an accepted name is safe inside a quoted nft string', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 20 }), (s) => {
        if (isInterfaceName(s)) {
          assert.match(s, /^[A-Za-z0-9_.-]{1,15}$/);
          assert.ok(s !== '.' && s !== '..');
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('parseIpv4Cidr', () => {
  test('valid networks (kept as given)', () => {
    assert.deepEqual(parseIpv4Cidr('10.0.0.0/8'), { addr: '10.0.0.0', prefix: 8 });
    assert.deepEqual(parseIpv4Cidr('192.168.1.7/24'), { addr: '192.168.1.7', prefix: 24 });
    assert.deepEqual(parseIpv4Cidr('1.2.3.4/32'), { addr: '1.2.3.4', prefix: 32 });
    assert.deepEqual(parseIpv4Cidr('1.2.3.4/1'), { addr: '1.2.3.4', prefix: 1 });
    assert.deepEqual(parseIpv4Cidr('1.2.3.4/08'), { addr: '1.2.3.4', prefix: 8 });
  });

  test('refusals', () => {
    for (const bad of [
      '1.2.3.4', '1.2.3.4/', '1.2.3.4/0', '1.2.3.4/33', '1.2.3.4/99', '1.2.3.4/008', '1.2.3.256/8', '01.2.3.4/8', '1.2.3/8',
      '::1/64', ' 1.2.3.4/8', '1.2.3.4/8 ', '1.2.3.4/8\n', '1.2.3.4/-1', '1.2.3.4/8/8', 'a.b.c.d/8', '', '/8',
    ]) {
      assert.equal(parseIpv4Cidr(bad), undefined, JSON.stringify(bad));
    }
  });

  test('property: never throws; a result is a real IPv4 address with 1..32', () => {
    const inputs = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 30 }),
      fc.tuple(fc.ipV4(), fc.integer({ min: -5, max: 40 })).map(([a, p]) => `${a}/${p}`),
      fc.string({ unit: fc.constantFrom(...'0123456789./'.split('')), maxLength: 22 }),
    );
    fc.assert(
      fc.property(inputs, (s) => {
        const r = parseIpv4Cidr(s);
        if (r !== undefined) {
          assert.ok(net.isIPv4(r.addr));
          assert.ok(Number.isInteger(r.prefix) && r.prefix >= 1 && r.prefix <= 32);
          assert.equal(s, `${r.addr}/${s.split('/')[1] ?? ''}`);
        }
      }),
      { numRuns: 3000 },
    );
  });
});

describe('resolv.conf', () => {
  test('nameservers: IPv4 only, no loopback, no repeats, at most 3', () => {
    const text = [
      '# Generated by NetworkManager',
      'search example.com',
      'nameserver 127.0.0.53',
      'nameserver ::1',
      'nameserver 2001:4860:4860::8888',
      '  nameserver\t192.168.1.1  # the router',
      'nameserver 192.168.1.1',
      '#nameserver 6.6.6.6',
      '; nameserver 7.7.7.7',
      'nameserver 1.1.1.1\r',
      'nameserverx 5.5.5.5',
      'nameserver',
      'nameserver 999.1.1.1',
      'nameserver 9.9.9.9',
      'nameserver 8.8.8.8',
      'options edns0',
    ].join('\n');
    assert.deepEqual(resolvConfServers(text), ['192.168.1.1', '1.1.1.1', '9.9.9.9']);
    assert.deepEqual(resolvConfServers(''), []);
    assert.deepEqual(resolvConfServers('nameserver 127.0.0.1\nnameserver 127.1.2.3\n'), []);
  });

  test('resolvConfText', () => {
    assert.equal(resolvConfText(['10.139.1.1', '10.139.1.2']), '# Written by Bulkhead: DNS goes through this qube\'s netvm.\nnameserver 10.139.1.1\nnameserver 10.139.1.2\n');
    assert.deepEqual(resolvConfServers(resolvConfText(['10.139.1.1', '10.139.1.2'])), ['10.139.1.1', '10.139.1.2']);
  });

  test('property: any text gives at most 3 distinct non-loopback IPv4 addresses', () => {
    const line = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 40 }),
      fc.ipV4().map((a) => `nameserver ${a}`),
      fc.ipV6().map((a) => `nameserver ${a}`),
      fc.constantFrom('nameserver 127.0.0.1', 'nameserver 1.1.1.1', ' nameserver  1.1.1.1 x'),
    );
    fc.assert(
      fc.property(fc.array(line, { maxLength: 12 }), (lines) => {
        const out = resolvConfServers(lines.join('\n'));
        assert.ok(out.length <= 3);
        assert.equal(new Set(out).size, out.length);
        for (const a of out) {
          assert.ok(net.isIPv4(a), a);
          assert.ok(!a.startsWith('127.'));
          assert.match(a, /^[0-9.]+$/);
        }
      }),
      { numRuns: 2000 },
    );
  });
});
