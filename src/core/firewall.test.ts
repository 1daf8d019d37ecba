// Firewall rules: every key, every refusal with its message, the canonical form (Qubes' server
// order, masked networks, compressed IPv6), payload framing, and fuzzing of the untrusted parser.
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { QubesError } from './errors.js';
import {
  DEFAULT_FIREWALL,
  MAX_FIREWALL_RULES,
  canonicalAddress,
  formatRule,
  parseHost,
  parseRule,
  parseRules,
  parseRulesPayload,
  ruleActive,
  type FirewallHost,
  type FirewallRule,
} from './firewall.js';

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** Asserts that `fn` throws a QubesValueError whose message matches `re`. */
function throwsValue(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof QubesError, `not a QubesError: ${String(err)}`);
    assert.equal(err.type, 'QubesValueError');
    assert.match(err.message, re);
    return true;
  });
}

function refused(line: string, re: RegExp): void {
  throwsValue(() => parseRule(line), re);
}

function canon(line: string): string {
  return formatRule(parseRule(line));
}

/** RFC 5952 text of an IPv6 address, by the WHATWG URL serializer (an independent oracle). */
function ipv6Text(addr: string): string {
  return new URL(`http://[${addr}]/`).hostname.slice(1, -1);
}

describe('parseRule: each key', () => {
  test('action alone', () => {
    assert.deepEqual(parseRule('action=accept'), { action: 'accept' });
    assert.deepEqual(parseRule('action=drop'), { action: 'drop' });
    assert.deepEqual(DEFAULT_FIREWALL.map((l) => parseRule(l)), [{ action: 'accept' }]);
  });

  test('expire', () => {
    assert.deepEqual(parseRule('action=accept expire=1700000000'), { action: 'accept', expire: 1700000000 });
    assert.deepEqual(parseRule('action=accept expire=0'), { action: 'accept', expire: 0 });
    assert.deepEqual(parseRule(`action=accept expire=${2 ** 40}`), { action: 'accept', expire: 2 ** 40 });
  });

  test('dst4, dst6, dsthost, dstname', () => {
    assert.deepEqual(parseRule('action=accept dst4=10.0.0.0/8'), { action: 'accept', host: { type: 'dst4', addr: '10.0.0.0', prefix: 8 } });
    assert.deepEqual(parseRule('action=accept dst4=1.2.3.4'), { action: 'accept', host: { type: 'dst4', addr: '1.2.3.4', prefix: 32 } });
    assert.deepEqual(parseRule('action=accept dst6=2001:db8::/32'), { action: 'accept', host: { type: 'dst6', addr: '2001:db8::', prefix: 32 } });
    assert.deepEqual(parseRule('action=accept dst6=::1'), { action: 'accept', host: { type: 'dst6', addr: '::1', prefix: 128 } });
    assert.deepEqual(parseRule('action=accept dsthost=example.com'), { action: 'accept', host: { type: 'dsthost', name: 'example.com' } });
    assert.deepEqual(parseRule('action=accept dsthost=10.1.0.0/16'), { action: 'accept', host: { type: 'dst4', addr: '10.1.0.0', prefix: 16 } });
    assert.deepEqual(parseRule('action=accept dsthost=fd00::/8'), { action: 'accept', host: { type: 'dst6', addr: 'fd00::', prefix: 8 } });
    // dstname is an old spelling of dsthost.
    assert.deepEqual(parseRule('action=drop dstname=www.example.org'), { action: 'drop', host: { type: 'dsthost', name: 'www.example.org' } });
    assert.deepEqual(parseRule('action=drop dsthost=a_b-c.d0'), { action: 'drop', host: { type: 'dsthost', name: 'a_b-c.d0' } });
  });

  test('proto, dstports, icmptype, specialtarget, comment', () => {
    assert.deepEqual(parseRule('action=accept proto=tcp'), { action: 'accept', proto: 'tcp' });
    assert.deepEqual(parseRule('action=accept proto=udp dstports=53'), { action: 'accept', proto: 'udp', dstports: [53, 53] });
    assert.deepEqual(parseRule('action=accept proto=tcp dstports=1024-65535'), { action: 'accept', proto: 'tcp', dstports: [1024, 65535] });
    assert.deepEqual(parseRule('action=accept proto=tcp dstports=0-0'), { action: 'accept', proto: 'tcp', dstports: [0, 0] });
    assert.deepEqual(parseRule('action=accept proto=icmp'), { action: 'accept', proto: 'icmp' });
    assert.deepEqual(parseRule('action=accept proto=icmp icmptype=8'), { action: 'accept', proto: 'icmp', icmptype: 8 });
    assert.deepEqual(parseRule('action=accept proto=icmp icmptype=255'), { action: 'accept', proto: 'icmp', icmptype: 255 });
    assert.deepEqual(parseRule('action=accept specialtarget=dns'), { action: 'accept', specialtarget: 'dns' });
    assert.deepEqual(parseRule('action=accept comment=Allow web: ports [80,443]; ok/_-.'), { action: 'accept', comment: 'Allow web: ports [80,443]; ok/_-.' });
    assert.deepEqual(parseRule('action=accept comment='), { action: 'accept', comment: '' });
    assert.deepEqual(parseRule('action=accept comment= spaces  kept '), { action: 'accept', comment: ' spaces  kept ' });
  });

  test('everything after comment= is the comment, even key=value-looking words', () => {
    assert.deepEqual(parseRule('action=drop comment=a proto b'), { action: 'drop', comment: 'a proto b' });
    refused('action=drop comment=x proto=tcp', /strange characters in comment/);
    // A comment first leaves no action.
    refused('comment=x action accept', /Missing action=/);
    // `comment=` inside a word is not a comment.
    refused('action=accept xcomment=y', /Unknown firewall option: 'xcomment'/);
  });

  test('every key together, in any order, with extra spaces', () => {
    const r = parseRule('  icmptype=3 proto=icmp   dst4=192.168.1.7/24 expire=99 action=drop comment=all of it');
    assert.deepEqual(r, {
      action: 'drop', expire: 99, host: { type: 'dst4', addr: '192.168.1.0', prefix: 24 }, proto: 'icmp', icmptype: 3, comment: 'all of it',
    });
    const s = parseRule('dstports=443 specialtarget=dns proto=tcp dsthost=example.net action=accept');
    assert.deepEqual(s, { action: 'accept', host: { type: 'dsthost', name: 'example.net' }, proto: 'tcp', specialtarget: 'dns', dstports: [443, 443] });
  });
});

describe('parseRule: refusals', () => {
  test('netmasks', () => {
    refused('action=accept dst4=1.2.3.4/33', /^netmask for IPv4 must be <= 32$/);
    refused('action=accept dsthost=1.2.3.4/33', /^netmask for IPv4 must be <= 32$/);
    refused('action=accept dst6=::1/129', /^netmask for IPv6 must be <= 128$/);
    refused('action=accept dst4=1.2.3.4/-1', /^Invalid netmask: '-1' \(must be a non-negative number\)$/);
    refused('action=accept dst4=1.2.3.4/', /^Invalid netmask: ''/);
    refused('action=accept dst4=1.2.3.4/1000', /^Invalid netmask: '1000'/);
    refused('action=accept dst4=1.2.3.4/8/8', /^Too many \/: 1\.2\.3\.4\/8\/8$/);
  });

  test('IP addresses', () => {
    refused('action=accept dst4=1.2.3.256', /^Invalid IP address: 1\.2\.3\.256$/);
    refused('action=accept dst4=1.2.3', /^Invalid IP address: 1\.2\.3$/);
    refused('action=accept dst4=01.2.3.4', /^Invalid IP address/);
    refused('action=accept dst4=example.com', /^Invalid IP address: example\.com$/);
    refused('action=accept dst4=1.2.3.256/24', /^Invalid IP address: 1\.2\.3\.256$/);
    refused('action=accept dsthost=example.com/24', /^Invalid IP address: example\.com$/);
    refused('action=accept dst6=1::2::3', /^Invalid IP address: 1::2::3$/);
    refused('action=accept dst4=::1', /^Not an IPv4 address: ::1$/);
    refused('action=accept dst6=1.2.3.4/32', /^Not an IPv6 address: 1\.2\.3\.4\/32$/);
    refused('action=accept dst4=', /^Empty dst4$/);
    refused('action=accept dsthost=', /^Empty dsthost$/);
    // A zone index never gets through ('%' is not a value character).
    refused('action=accept dst6=fe80::1%eth0', /^strange characters in rule: 'dst6=fe80::1%eth0'$/);
  });

  test('hostnames', () => {
    refused('action=accept dsthost=Example.com', /^Invalid hostname: 'Example\.com' \(lowercase letters, digits, '\.', '-' and '_' only\)$/);
    refused('action=accept dsthost=a:b', /^Invalid hostname: 'a:b'/);
    refused('action=accept dsthost=a;b', /^Invalid hostname: 'a;b'/);
    refused('action=accept dsthost=[a]', /^Invalid hostname/);
    refused('action=accept dsthost=...', /^Invalid hostname: '\.\.\.'/);
    refused('action=accept dsthost=-_-', /^Invalid hostname/);
    refused('action=accept dsthost=-sdns', /^Invalid hostname/);
    refused('action=accept dsthost=_a', /^Invalid hostname/);
    refused(`action=accept dsthost=${'a'.repeat(254)}`, /^Invalid hostname/);
    assert.equal(parseRule(`action=accept dsthost=${'a'.repeat(253)}`).host?.type, 'dsthost');
    refused('action=accept dsthost=a!b', /^strange characters in rule: 'dsthost=a!b'$/);
    refused('action=accept dsthost=a$(reboot)', /^strange characters in rule/);
    refused('action=accept dsthost="a"', /^strange characters in rule/);
  });

  test('ports', () => {
    refused('action=accept proto=tcp dstports=65536', /^Ports out of range: '65536' \(0-65535\)$/);
    refused('action=accept proto=tcp dstports=1-65536', /^Ports out of range: '1-65536'/);
    refused('action=accept proto=tcp dstports=90-80', /^Invalid port range: '90-80'$/);
    refused('action=accept proto=tcp dstports=1-2-3', /^Invalid port range: '1-2-3'$/);
    refused('action=accept proto=tcp dstports=http', /^Invalid port: 'http' \(expected a decimal number\)$/);
    refused('action=accept proto=tcp dstports=', /^Invalid port: ''/);
    refused('action=accept proto=tcp dstports=-80', /^Invalid port: ''/);
    refused('action=accept proto=tcp dstports=80-', /^Invalid port: ''/);
    refused(`action=accept proto=tcp dstports=${'9'.repeat(16)}`, /^Invalid port/);
    refused('action=accept dstports=80', /^dstports valid only for 'tcp' and 'udp' protocols$/);
    refused('action=accept proto=icmp dstports=80', /^dstports valid only for 'tcp' and 'udp' protocols$/);
  });

  test('icmptype', () => {
    refused('action=accept icmptype=8', /^icmptype valid only for 'icmp' protocol$/);
    refused('action=accept proto=tcp icmptype=8', /^icmptype valid only for 'icmp' protocol$/);
    refused('action=accept proto=icmp icmptype=256', /^ICMP type out of range: 256 \(0-255\)$/);
    refused('action=accept proto=icmp icmptype=echo', /^Invalid icmptype: 'echo'/);
  });

  test('keys, elements, action, proto, specialtarget, expire', () => {
    refused('action=accept foo=bar', /^Unknown firewall option: 'foo'$/);
    refused('action=accept Action=drop', /^Unknown firewall option: 'Action'$/);
    refused('action=accept __proto__=x', /^Unknown firewall option: '__proto__'$/);
    refused('action=accept tcp', /^Invalid rule element: 'tcp' \(expected key=value\)$/);
    refused('action=accept =tcp', /^Invalid rule element: '=tcp'/);
    refused('action=accept proto=tcp=udp', /^strange characters in rule: 'proto=tcp=udp'$/);
    refused('action=accept\tproto=tcp', /^strange characters in rule/);
    refused('', /^Missing action= \(accept or drop\)$/);
    refused('proto=tcp dstports=80', /^Missing action=/);
    refused('action=allow', /^Invalid action: 'allow' \(accept or drop\)$/);
    refused('action=', /^Invalid action: ''/);
    refused('action=accept proto=sctp', /^Invalid proto: 'sctp' \(tcp, udp or icmp\)$/);
    refused('action=accept specialtarget=ntp', /^Invalid specialtarget: 'ntp' \(only dns\)$/);
    refused('action=accept expire=+10', /^strange characters in rule/);
    refused('action=accept expire=soon', /^Invalid expire: 'soon' \(expected a decimal number\)$/);
    refused(`action=accept expire=${2 ** 40 + 1}`, /^Invalid expire: '1099511627777' \(too far in the future\)$/);
  });

  test('duplicate keys, dst4/dst6/dstname/dsthost sharing one slot', () => {
    refused('action=accept action=drop', /^Option 'action' already set$/);
    refused('action=accept proto=tcp proto=udp', /^Option 'proto' already set$/);
    refused('action=accept dst4=1.2.3.4 dsthost=example.com', /^Option 'dsthost' already set$/);
    refused('action=accept dsthost=example.com dst4=1.2.3.4', /^Option 'dsthost' already set$/);
    refused('action=accept dst4=1.2.3.4 dst6=::1', /^Option 'dsthost' already set$/);
    refused('action=accept dstname=a dsthost=b', /^Option 'dsthost' already set$/);
    refused('action=accept expire=1 expire=1', /^Option 'expire' already set$/);
  });

  test('comments', () => {
    refused('action=accept comment=a=b', /^strange characters in comment \(letters, digits, spaces and ':;,\.\/-_\[\]' only\)$/);
    refused('action=accept comment=café', /^strange characters in comment/);
    refused('action=accept comment=a\tb', /^strange characters in comment/);
    refused('action=accept comment=a\nb', /^strange characters in comment/);
    refused('action=accept comment="quoted"', /^strange characters in comment/);
    refused(`action=accept comment=${'x'.repeat(513)}`, /^Comment too long \(at most 512 characters\)$/);
    assert.equal(parseRule(`action=accept comment=${'x'.repeat(512)}`).comment?.length, 512);
  });
});

describe('canonical form', () => {
  test('dsthost with an address becomes dst4/dst6 with a prefix', () => {
    assert.equal(canon('action=accept dsthost=1.2.3.4'), 'action=accept dst4=1.2.3.4/32');
    assert.equal(canon('action=accept dsthost=::1'), 'action=accept dst6=::1/128');
    assert.equal(canon('action=accept dstname=example.com'), 'action=accept dsthost=example.com');
  });

  test('host bits are masked off', () => {
    assert.equal(canon('action=accept dst4=10.1.2.3/8'), 'action=accept dst4=10.0.0.0/8');
    assert.equal(canon('action=accept dst4=192.168.77.200/26'), 'action=accept dst4=192.168.77.192/26');
    assert.equal(canon('action=accept dst4=255.255.255.255/0'), 'action=accept dst4=0.0.0.0/0');
    assert.equal(canon('action=accept dst4=10.1.2.3/31'), 'action=accept dst4=10.1.2.2/31');
    assert.equal(canon('action=accept dst6=2001:db8:1:2:3:4:5:6/64'), 'action=accept dst6=2001:db8:1:2::/64');
    assert.equal(canon('action=accept dst6=ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/0'), 'action=accept dst6=::/0');
    assert.equal(canon('action=accept dst6=2001:db8::ffff/127'), 'action=accept dst6=2001:db8::fffe/127');
  });

  test('IPv6 is compressed lowercase (RFC 5952)', () => {
    assert.equal(canon('action=accept dst6=2001:0DB8:0000:0000:0000:0000:0000:0001'), 'action=accept dst6=2001:db8::1/128');
    assert.equal(canon('action=accept dst6=0:0:0:0:0:0:0:0'), 'action=accept dst6=::/128');
    // A single zero group is not compressed; the longest run is, the first of equal runs.
    assert.equal(canon('action=accept dst6=1:0:2:3:4:5:6:7'), 'action=accept dst6=1:0:2:3:4:5:6:7/128');
    assert.equal(canon('action=accept dst6=1:0:0:2:0:0:0:3'), 'action=accept dst6=1:0:0:2::3/128');
    assert.equal(canon('action=accept dst6=1:0:0:2:3:0:0:4'), 'action=accept dst6=1::2:3:0:0:4/128');
    assert.equal(canon('action=accept dst6=1:2:3:4:5:6:7::'), 'action=accept dst6=1:2:3:4:5:6:7:0/128');
    // An embedded IPv4 tail becomes two hex groups.
    assert.equal(canon('action=accept dst6=::ffff:1.2.3.4'), 'action=accept dst6=::ffff:102:304/128');
    assert.equal(canon('action=accept dst6=::FFFF:192.168.0.1/120'), 'action=accept dst6=::ffff:c0a8:0/120');
    assert.equal(canon('action=accept dst6=1:2:3:4:5:6:1.2.3.4'), 'action=accept dst6=1:2:3:4:5:6:102:304/128');
  });

  test('ports and numbers', () => {
    assert.equal(canon('action=accept proto=tcp dstports=80'), 'action=accept proto=tcp dstports=80-80');
    assert.equal(canon('action=accept proto=udp dstports=0080-00443'), 'action=accept proto=udp dstports=80-443');
    assert.equal(canon('action=accept proto=icmp icmptype=008'), 'action=accept proto=icmp icmptype=8');
    assert.equal(canon('action=accept expire=000123'), 'action=accept expire=123');
  });

  test("Qubes' server order whatever the input order", () => {
    assert.equal(
      canon('dstports=443 proto=tcp specialtarget=dns dst4=10.0.0.0/8 expire=5 action=drop comment=c d'),
      'action=drop expire=5 dst4=10.0.0.0/8 proto=tcp specialtarget=dns dstports=443-443 comment=c d',
    );
    assert.equal(canon('icmptype=0 proto=icmp dsthost=h action=accept'), 'action=accept dsthost=h proto=icmp icmptype=0');
  });

  test('formatRule of a hand-made rule', () => {
    const r: FirewallRule = {
      action: 'accept', expire: 7, host: { type: 'dst6', addr: 'fd00::', prefix: 8 }, proto: 'udp', specialtarget: 'dns', dstports: [53, 53], comment: 'z',
    };
    assert.equal(formatRule(r), 'action=accept expire=7 dst6=fd00::/8 proto=udp specialtarget=dns dstports=53-53 comment=z');
  });
});

describe('parseHost', () => {
  test('kinds and key checks', () => {
    assert.deepEqual(parseHost('dsthost', '10.0.0.1/24'), { type: 'dst4', addr: '10.0.0.0', prefix: 24 });
    assert.deepEqual(parseHost('dsthost', 'host'), { type: 'dsthost', name: 'host' });
    assert.deepEqual(parseHost('dst6', '::'), { type: 'dst6', addr: '::', prefix: 128 });
    throwsValue(() => parseHost('dst6', 'host'), /^Invalid IP address: host$/);
    throwsValue(() => parseHost('dst4', '::/0'), /^Not an IPv4 address/);
  });
});

test('canonicalAddress: plain addresses only, IPv6 as compressed hex groups', () => {
  assert.equal(canonicalAddress('1.2.3.4'), '1.2.3.4');
  assert.equal(canonicalAddress('0:0:0:0:0:0:1.2.3.4'), '::102:304');
  assert.equal(canonicalAddress('::FFFF:1.2.3.4'), '::ffff:102:304');
  assert.equal(canonicalAddress('1::1.2.3.4'), '1::102:304');
  assert.equal(canonicalAddress('2001:0DB8::0001'), '2001:db8::1');
  assert.equal(canonicalAddress('::'), '::');
  for (const bad of ['', '1.2.3', '01.2.3.4', '1.2.3.4/32', 'fe80::1%eth0', ' ::1', '::1 ', 'example.com', '1::2::3', `${'0:'.repeat(30)}1`]) {
    assert.equal(canonicalAddress(bad), undefined, bad);
  }
  fc.assert(
    fc.property(fc.oneof(fc.ipV4(), fc.ipV6(), fc.ipV6().map((a) => a.toUpperCase())), (a) => {
      const c = canonicalAddress(a);
      assert.ok(c !== undefined);
      assert.match(c, /^[0-9a-f:.]+$/);
      if (net.isIP(a) === 4) assert.equal(c, a);
      else {
        // The URL serializer (RFC 5952 compression, hex groups only) as the oracle.
        assert.equal(c, ipv6Text(a));
        assert.ok(!c.includes('.'));
      }
    }),
    { numRuns: 2000 },
  );
});

describe('lists and payloads', () => {
  test('parseRules numbers the bad rule', () => {
    assert.deepEqual(parseRules(['action=accept proto=tcp', 'action=drop']), [{ action: 'accept', proto: 'tcp' }, { action: 'drop' }]);
    throwsValue(() => parseRules(['action=accept', 'action=drop', 'action=maybe']), /^Rule 3: Invalid action: 'maybe'/);
    assert.deepEqual(parseRules([]), []);
  });

  test('too many rules', () => {
    assert.equal(parseRules(new Array<string>(MAX_FIREWALL_RULES).fill('action=drop')).length, MAX_FIREWALL_RULES);
    throwsValue(() => parseRules(new Array<string>(MAX_FIREWALL_RULES + 1).fill('action=drop')), /^Too many firewall rules \(at most 4096\)$/);
    const payload = Buffer.from('action=drop\n'.repeat(MAX_FIREWALL_RULES + 1));
    throwsValue(() => parseRulesPayload(payload), /^Too many firewall rules/);
  });

  test('payload framing', () => {
    assert.deepEqual(parseRulesPayload(Buffer.alloc(0)), []);
    assert.deepEqual(parseRulesPayload(Buffer.from('action=accept\n')), [{ action: 'accept' }]);
    assert.deepEqual(parseRulesPayload(Buffer.from('action=accept proto=tcp\naction=drop')), [{ action: 'accept', proto: 'tcp' }, { action: 'drop' }]);
    // Printable ASCII passes the framing; the rule parser then judges the characters.
    throwsValue(() => parseRulesPayload(Buffer.from('action=accept comment=a b ~\n')), /^Rule 1: strange characters in comment/);
  });

  test('payload refusals: blank lines, non-ASCII and control bytes', () => {
    throwsValue(() => parseRulesPayload(Buffer.from('action=accept\n\naction=drop\n')), /^Rule 2: Missing action=/);
    throwsValue(() => parseRulesPayload(Buffer.from('\n')), /^Rule 1: Missing action=/);
    throwsValue(() => parseRulesPayload(Buffer.from('action=drop\n\n')), /^Rule 2: Missing action=/);
    for (const bad of [0x00, 0x09, 0x0d, 0x1b, 0x7f, 0x80, 0xc3, 0xff]) {
      const payload = Buffer.concat([Buffer.from('action=accept comment=a'), Buffer.from([bad]), Buffer.from('\n')]);
      throwsValue(() => parseRulesPayload(payload), /^Firewall rules must be printable ASCII, one rule per line$/);
    }
    // UTF-8 text is refused as a whole, not decoded.
    throwsValue(() => parseRulesPayload(Buffer.from('action=accept comment=é\n', 'utf8')), /printable ASCII/);
    throwsValue(() => parseRulesPayload(Buffer.from('action=accept\r\n')), /printable ASCII/);
  });
});

test('ruleActive: a rule exists strictly before its expiry', () => {
  assert.equal(ruleActive({ action: 'accept' }, 1e12), true);
  assert.equal(ruleActive({ action: 'accept', expire: 100 }, 99), true);
  assert.equal(ruleActive({ action: 'accept', expire: 100 }, 100), false);
  assert.equal(ruleActive({ action: 'accept', expire: 100 }, 101), false);
});

// ---- Properties ----

const COMMENT_ALPHABET = 'abcXYZ019:;,./_[] -';
const HOST_ALPHABET = 'abcxyz0189._-';

function charOf(chars: string): fc.Arbitrary<string> {
  return fc.constantFrom(...chars.split(''));
}

function mask32(n: number, prefix: number): number {
  return prefix === 0 ? 0 : (n & ((~0 << (32 - prefix)) >>> 0)) >>> 0;
}

function ipv4Of(n: number): string {
  return [24, 16, 8, 0].map((sh) => String((n >>> sh) & 255)).join('.');
}

const dst4Arb: fc.Arbitrary<FirewallHost> = fc
  .tuple(fc.nat({ max: 0xffffffff }), fc.integer({ min: 0, max: 32 }))
  .map(([n, prefix]) => ({ type: 'dst4', addr: ipv4Of(mask32(n, prefix)), prefix }));

function maskGroups(groups: readonly number[], prefix: number): number[] {
  return groups.map((g, i) => {
    const bits = Math.max(0, Math.min(16, prefix - i * 16));
    return bits === 0 ? 0 : g & ((0xffff << (16 - bits)) & 0xffff);
  });
}

/** Groups biased toward zeros, so that compression is exercised. */
const groupsArb = fc.array(fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 });

const dst6Arb: fc.Arbitrary<FirewallHost> = fc
  .tuple(groupsArb, fc.integer({ min: 0, max: 128 }))
  .map(([groups, prefix]) => ({ type: 'dst6', addr: ipv6Text(maskGroups(groups, prefix).map((g) => g.toString(16)).join(':')), prefix }));

const hostnameArb = fc
  .string({ unit: charOf(HOST_ALPHABET), minLength: 1, maxLength: 60 })
  .filter((s) => /^[a-z0-9]/.test(s) && net.isIP(s) === 0);

const dsthostArb: fc.Arbitrary<FirewallHost> = fc.oneof(
  hostnameArb.map((name) => ({ type: 'dsthost' as const, name })),
  fc.constant({ type: 'dsthost' as const, name: 'a'.repeat(253) }),
);

const hostArb = fc.oneof(dst4Arb, dst6Arb, dsthostArb);

const protoPartArb: fc.Arbitrary<Pick<FirewallRule, 'proto' | 'dstports' | 'icmptype'>> = fc.oneof(
  fc.constant({}),
  fc.record(
    {
      proto: fc.constantFrom('tcp' as const, 'udp' as const),
      dstports: fc.tuple(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 })).map(([a, b]): readonly [number, number] => (a <= b ? [a, b] : [b, a])),
    },
    { requiredKeys: ['proto'] },
  ),
  fc.record({ proto: fc.constant('icmp' as const), icmptype: fc.integer({ min: 0, max: 255 }) }, { requiredKeys: ['proto'] }),
);

/** Canonical rules built from valid parts (absent keys absent, never `undefined`). */
const ruleArb: fc.Arbitrary<FirewallRule> = fc
  .record(
    {
      action: fc.constantFrom('accept' as const, 'drop' as const),
      expire: fc.nat({ max: 2 ** 40 }),
      host: hostArb,
      specialtarget: fc.constant('dns' as const),
      comment: fc.string({ unit: charOf(COMMENT_ALPHABET), maxLength: 80 }),
      proto: protoPartArb,
    },
    { requiredKeys: ['action', 'proto'] },
  )
  .map(({ proto, ...rest }) => {
    const r: Mutable<FirewallRule> = { action: rest.action };
    if (rest.expire !== undefined) r.expire = rest.expire;
    if (rest.host !== undefined) r.host = rest.host;
    if (proto.proto !== undefined) r.proto = proto.proto;
    if (rest.specialtarget !== undefined) r.specialtarget = rest.specialtarget;
    if (proto.dstports !== undefined) r.dstports = proto.dstports;
    if (proto.icmptype !== undefined) r.icmptype = proto.icmptype;
    if (rest.comment !== undefined) r.comment = rest.comment;
    return r;
  });

/** Parses, and checks the outcome is a canonical rule or a QubesValueError (nothing else). */
function parseOrRefuse(line: string): FirewallRule | undefined {
  try {
    const r = parseRule(line);
    const text = formatRule(r);
    assert.deepEqual(parseRule(text), r, `${JSON.stringify(line)} -> ${JSON.stringify(text)}`);
    assert.equal(formatRule(parseRule(text)), text);
    return r;
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    assert.ok(err instanceof QubesError, `${JSON.stringify(line)} threw ${String(err)}`);
    assert.equal(err.type, 'QubesValueError');
    return undefined;
  }
}

const STRICT = {
  addr: /^[0-9a-f:.]+$/,
  hostname: /^[a-z0-9][a-z0-9._-]*$/,
};

/** Every value of a parsed rule that can reach nftables text is of a strict shape. */
function assertStrictValues(r: FirewallRule): void {
  assert.ok(['accept', 'drop'].includes(r.action));
  if (r.expire !== undefined) assert.ok(Number.isSafeInteger(r.expire) && r.expire >= 0);
  if (r.host !== undefined) {
    if (r.host.type === 'dsthost') {
      assert.match(r.host.name, STRICT.hostname);
      assert.equal(net.isIP(r.host.name), 0);
    } else {
      assert.match(r.host.addr, STRICT.addr);
      assert.equal(net.isIP(r.host.addr), r.host.type === 'dst4' ? 4 : 6);
      assert.ok(Number.isInteger(r.host.prefix) && r.host.prefix >= 0 && r.host.prefix <= (r.host.type === 'dst4' ? 32 : 128));
    }
  }
  if (r.proto !== undefined) assert.ok(['tcp', 'udp', 'icmp'].includes(r.proto));
  if (r.specialtarget !== undefined) assert.equal(r.specialtarget, 'dns');
  if (r.dstports !== undefined) {
    const [lo, hi] = r.dstports;
    assert.ok(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && lo <= hi && hi <= 65535);
  }
  if (r.icmptype !== undefined) assert.ok(Number.isInteger(r.icmptype) && r.icmptype >= 0 && r.icmptype <= 255);
  if (r.comment !== undefined) assert.match(r.comment, /^[A-Za-z0-9:;,./_[\] -]*$/);
}

/** Edits of a valid line: characters inserted, removed, replaced, words repeated or dropped. */
const EDIT_CHARS = ' =/-.:%$;\'"\\\t\n\r\0éA9zé😀[]{}';
const editArb = fc.oneof(
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), text: fc.string({ unit: charOf(EDIT_CHARS), minLength: 1, maxLength: 4 }) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ op: fc.constant('word' as const), at: fc.nat(), dup: fc.boolean() }),
  fc.record({ op: fc.constant('key' as const), at: fc.nat(), key: fc.constantFrom('action=', 'dst4=', 'dst6=', 'dsthost=', 'dstname=', 'proto=', 'dstports=', 'icmptype=', 'specialtarget=', 'expire=', 'comment=', ' comment=', 'x=') }),
);

function applyEdits(line: string, edits: readonly EditOp[]): string {
  let s = line;
  for (const e of edits) {
    const at = s.length === 0 ? 0 : e.at % (s.length + 1);
    if (e.op === 'insert') s = s.slice(0, at) + e.text + s.slice(at);
    else if (e.op === 'key') s = s.slice(0, at) + e.key + s.slice(at);
    else if (e.op === 'delete') s = s.slice(0, at) + s.slice(at + e.len);
    else {
      const words = s.split(' ');
      const i = e.at % words.length;
      if (e.dup) words.splice(i, 0, words[i] ?? '');
      else words.splice(i, 1);
      s = words.join(' ');
    }
  }
  return s;
}
type EditOp = typeof editArb extends fc.Arbitrary<infer T> ? T : never;

describe('properties', () => {
  test('(a) parseRule(formatRule(r)) deep-equals r; formatRule is idempotent', () => {
    fc.assert(
      fc.property(ruleArb, (r) => {
        const text = formatRule(r);
        const back = parseRule(text);
        assert.deepEqual(back, r);
        assert.equal(formatRule(back), text);
        assert.equal(formatRule(parseRule(formatRule(back))), text);
      }),
      { numRuns: 2000 },
    );
  });

  test('(a) every input spelling of an address gives the canonical rule', () => {
    fc.assert(
      fc.property(groupsArb, fc.integer({ min: 0, max: 128 }), fc.boolean(), fc.boolean(), (groups, prefix, upper, pad) => {
        let text = groups.map((g) => (pad ? g.toString(16).padStart(4, '0') : g.toString(16))).join(':');
        if (upper) text = text.toUpperCase();
        const r = parseRule(`action=accept dsthost=${text}/${prefix}`);
        const expected = ipv6Text(maskGroups(groups, prefix).map((g) => g.toString(16)).join(':'));
        assert.deepEqual(r.host, { type: 'dst6', addr: expected, prefix });
        // The compressed form Node itself prints parses the same.
        assert.deepEqual(parseRule(`action=accept dst6=${ipv6Text(text)}/${prefix}`).host, r.host);
      }),
      { numRuns: 1000 },
    );
    fc.assert(
      fc.property(fc.nat({ max: 0xffffffff }), fc.integer({ min: 0, max: 32 }), (n, prefix) => {
        const r = parseRule(`action=drop dsthost=${ipv4Of(n)}/${prefix}`);
        assert.deepEqual(r.host, { type: 'dst4', addr: ipv4Of(mask32(n, prefix)), prefix });
        assert.deepEqual(parseRule(`action=drop dst6=::ffff:${ipv4Of(n)}`).host, { type: 'dst6', addr: ipv6Text(`::ffff:${ipv4Of(n)}`), prefix: 128 });
      }),
      { numRuns: 1000 },
    );
  });

  test('(b) arbitrary strings: a canonical rule or a QubesValueError, never another error', () => {
    fc.assert(fc.property(fc.string({ maxLength: 200 }), (s) => { parseOrRefuse(s); }), { numRuns: 3000 });
    // fast-check 4's full-Unicode strings (formerly fc.fullUnicodeString).
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 200 }), (s) => { parseOrRefuse(s); }), { numRuns: 3000 });
    fc.assert(
      fc.property(fc.array(fc.string({ unit: charOf('action=acceptdropdst46host/:.0129abf proto=tcpudpicmp-'), maxLength: 12 }), { maxLength: 8 }), (words) => {
        parseOrRefuse(words.join(' '));
      }),
      { numRuns: 3000 },
    );
  });

  test('(b) mutations of valid lines: a canonical rule or a QubesValueError', () => {
    let accepted = 0;
    let refusedCount = 0;
    fc.assert(
      fc.property(ruleArb, fc.array(editArb, { minLength: 1, maxLength: 4 }), (r, edits) => {
        const line = applyEdits(formatRule(r), edits);
        if (parseOrRefuse(line) === undefined) refusedCount++;
        else accepted++;
      }),
      { numRuns: 5000 },
    );
    // Both outcomes are exercised.
    assert.ok(accepted > 100 && refusedCount > 100, `accepted ${accepted}, refused ${refusedCount}`);
  });

  test('(c) values that can reach nftables text have strict shapes', () => {
    const lines = fc.oneof(
      ruleArb.map((r) => formatRule(r)),
      fc.tuple(ruleArb, fc.array(editArb, { minLength: 1, maxLength: 3 })).map(([r, e]) => applyEdits(formatRule(r), e)),
      fc.string({ unit: 'binary', maxLength: 120 }),
    );
    fc.assert(
      fc.property(lines, (line) => {
        const r = parseOrRefuse(line);
        if (r !== undefined) assertStrictValues(r);
      }),
      { numRuns: 5000 },
    );
  });

  test('(c) payloads: only printable ASCII lines reach the parser, results are strict', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(ruleArb.map((r) => formatRule(r)), fc.string({ maxLength: 40 })), { maxLength: 6 }), fc.boolean(), (lines, finalNewline) => {
        const payload = Buffer.from(lines.join('\n') + (finalNewline && lines.length > 0 ? '\n' : ''), 'utf8');
        try {
          for (const r of parseRulesPayload(payload)) assertStrictValues(r);
          assert.ok(payload.every((b) => b === 0x0a || (b >= 0x20 && b <= 0x7e)));
        } catch (err) {
          if (err instanceof assert.AssertionError) throw err;
          assert.ok(err instanceof QubesError, String(err));
        }
      }),
      { numRuns: 2000 },
    );
  });
});
