// qvm-firewall's pure parts: RULE words (positional and key=value forms), the `list` table and
// the `--raw` lines.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { QubesError } from '../../core/errors.js';
import { formatRule, parseRule, type FirewallRule } from '../../core/firewall.js';
import { UsageError } from '../common.js';
import { rawRule, ruleTable, rulesFromWords } from './firewall.js';

const NOW = 1_700_000_000;

function words(text: string): FirewallRule {
  return rulesFromWords(text.split(' '), NOW);
}

function usage(list: readonly string[], re: RegExp): void {
  assert.throws(() => rulesFromWords(list, NOW), (err: unknown) => {
    assert.ok(err instanceof UsageError, `not a UsageError: ${String(err)}`);
    assert.match(err.message, re);
    return true;
  });
}

function qubesValue(list: readonly string[], re: RegExp): void {
  assert.throws(() => rulesFromWords(list, NOW), (err: unknown) => {
    assert.ok(err instanceof QubesError, `not a QubesError: ${String(err)}`);
    assert.equal(err.type, 'QubesValueError');
    assert.match(err.message, re);
    return true;
  });
}

describe('rulesFromWords', () => {
  test('positional words fill action, dsthost, proto, dstports in order', () => {
    const positional = words('accept 127.0.0.1 tcp 80');
    assert.deepEqual(positional, words('action=accept dsthost=127.0.0.1 proto=tcp dstports=80'));
    assert.deepEqual(positional, { action: 'accept', host: { type: 'dst4', addr: '127.0.0.1', prefix: 32 }, proto: 'tcp', dstports: [80, 80] });
    assert.deepEqual(words('drop'), { action: 'drop' });
    assert.deepEqual(words('drop example.com'), { action: 'drop', host: { type: 'dsthost', name: 'example.com' } });
    assert.deepEqual(words('accept 10.0.0.0/8 udp 1000-2000'), words('action=accept dst4=10.0.0.0/8 proto=udp dstports=1000-2000'));
  });

  test('positional icmp: the word after the protocol is the ICMP type', () => {
    assert.deepEqual(words('accept 1.2.3.4 icmp 8'), { action: 'accept', host: { type: 'dst4', addr: '1.2.3.4', prefix: 32 }, proto: 'icmp', icmptype: 8 });
    assert.deepEqual(words('accept 1.2.3.4 icmp 8'), words('action=accept dsthost=1.2.3.4 proto=icmp icmptype=8'));
    // proto given first as key=value: the positional order still skips dstports.
    assert.deepEqual(words('proto=icmp drop example.com 3'), { action: 'drop', host: { type: 'dsthost', name: 'example.com' }, proto: 'icmp', icmptype: 3 });
    // And skips icmptype for tcp/udp.
    assert.deepEqual(words('proto=udp accept h 53'), { action: 'accept', host: { type: 'dsthost', name: 'h' }, proto: 'udp', dstports: [53, 53] });
  });

  test('mixed forms: key=value words take their slot, bare words fill the rest', () => {
    assert.deepEqual(words('dsthost=example.com accept tcp 443'), { action: 'accept', host: { type: 'dsthost', name: 'example.com' }, proto: 'tcp', dstports: [443, 443] });
    assert.deepEqual(words('action=drop specialtarget=dns'), { action: 'drop', specialtarget: 'dns' });
  });

  test('dst4 and dst6 mean dsthost', () => {
    assert.deepEqual(words('action=accept dst4=10.1.2.3/8'), { action: 'accept', host: { type: 'dst4', addr: '10.0.0.0', prefix: 8 } });
    assert.deepEqual(words('action=accept dst6=2001:db8::1'), { action: 'accept', host: { type: 'dst6', addr: '2001:db8::1', prefix: 128 } });
    assert.deepEqual(words('accept dst4=1.2.3.4'), { action: 'accept', host: { type: 'dst4', addr: '1.2.3.4', prefix: 32 } });
    usage(['accept', 'example.com', 'dst4=1.2.3.4'], /^invalid rule description: dst4=1\.2\.3\.4 \(dsthost given twice\)$/);
    // dst4 and dst6 are only spellings: the address decides the family.
    assert.deepEqual(words('action=accept dst4=::1'), { action: 'accept', host: { type: 'dst6', addr: '::1', prefix: 128 } });
    usage(['action=accept', 'dst4=1.2.3.4', 'dst6=::1'], /\(dsthost given twice\)$/);
  });

  test('expire=+N is N seconds from the given now; a plain expire is absolute', () => {
    assert.deepEqual(words('accept expire=+60'), { action: 'accept', expire: NOW + 60 });
    assert.deepEqual(rulesFromWords(['accept', 'expire=+0'], 5), { action: 'accept', expire: 5 });
    assert.deepEqual(rulesFromWords(['accept', 'expire=+9999999999'], 1), { action: 'accept', expire: 10_000_000_000 });
    assert.deepEqual(words('accept expire=1800000000'), { action: 'accept', expire: 1_800_000_000 });
    usage(['accept', 'expire=+'], /^invalid rule description: expire=\+$/);
    usage(['accept', 'expire=+12345678901'], /^invalid rule description: expire=\+12345678901$/);
    usage(['accept', 'expire=+-5'], /^invalid rule description: expire=\+-5$/);
    usage(['accept', 'expire=+1h'], /^invalid rule description/);
    qubesValue(['accept', 'expire=tomorrow'], /^Invalid expire/);
  });

  test('comments: one word that may hold spaces, always written last', () => {
    assert.deepEqual(rulesFromWords(['comment=allow the web', 'accept', 'example.com'], NOW), {
      action: 'accept', host: { type: 'dsthost', name: 'example.com' }, comment: 'allow the web',
    });
    assert.deepEqual(rulesFromWords(['accept', 'comment=a b  c '], NOW), { action: 'accept', comment: 'a b  c ' });
    assert.deepEqual(rulesFromWords(['accept', 'comment='], NOW), { action: 'accept', comment: '' });
    // A comment holding '=' reaches the rule parser, which refuses it.
    qubesValue(['accept', 'comment=a=b'], /^strange characters in comment/);
    usage(['accept', 'comment=a', 'comment=b'], /\(comment given twice\)$/);
  });

  test('invalid rule description', () => {
    usage(['accept', 'h', 'tcp', '80', 'extra'], /^invalid rule description: extra$/);
    usage(['accept', 'h', 'icmp', '8', '9'], /^invalid rule description: 9$/);
    usage(['accept', 'a=b=c'], /^invalid rule description: a=b=c$/);
    usage(['accept', '=tcp'], /^invalid rule description: =tcp$/);
    usage(['accept', 'proto='], /^invalid rule description: proto=$/);
    usage(['action=accept', 'action=drop'], /^invalid rule description: action=drop \(action given twice\)$/);
    usage(['accept', 'action=drop'], /\(action given twice\)$/);
  });

  test('Invalid rule element', () => {
    usage(['accept', 'foo=bar'], /^Invalid rule element: foo=bar$/);
    usage(['accept', 'dstname=example.com'], /^Invalid rule element: dstname=example\.com$/);
    usage(['accept', 'Action=drop'], /^Invalid rule element: Action=drop$/);
  });

  test('what the rule parser refuses stays a QubesError', () => {
    qubesValue(['allow'], /^Invalid action: 'allow'/);
    qubesValue(['accept', 'h', 'tcp', '65536'], /^Ports out of range/);
    qubesValue(['accept', 'Example.com'], /^Invalid hostname/);
    qubesValue(['accept', 'h', 'icmp', '256'], /^ICMP type out of range/);
    qubesValue(['accept', 'h', 'sctp'], /^Invalid proto/);
    qubesValue(['proto=tcp'], /^Missing action=/);
    qubesValue([], /^Missing action=/);
    qubesValue(['accept', 'a;b'], /^Invalid hostname/);
    // A bare word fills the next free slot even if it looks like something else.
    qubesValue(['proto=tcp', 'accept', 'h', 'udp'], /^Invalid port: 'udp'/);
    // A word holding a space does not become a valid rule.
    qubesValue(['accept', 'h tcp'], /^Invalid rule element: 'tcp'/);
  });

  test('property: key=value words in any order give the same rule as the canonical line', () => {
    const kv = fc.record({
      action: fc.constantFrom('accept', 'drop'),
      host: fc.option(fc.constantFrom('dsthost=example.com', 'dst4=10.0.0.0/8', 'dst6=fd00::/8', 'dsthost=1.2.3.4')),
      proto: fc.option(fc.constantFrom('tcp', 'udp', 'icmp')),
      port: fc.integer({ min: 0, max: 65535 }),
      icmp: fc.integer({ min: 0, max: 255 }),
      dns: fc.boolean(),
      comment: fc.option(fc.string({ unit: fc.constantFrom(...'ab 9:;,./_[]-'.split('')), maxLength: 12 })),
    });
    fc.assert(
      fc.property(kv, fc.nat(), (r, shuffle) => {
        const list = [`action=${r.action}`];
        if (r.host !== null) list.push(r.host);
        if (r.proto !== null) list.push(`proto=${r.proto}`);
        if (r.proto === 'tcp' || r.proto === 'udp') list.push(`dstports=${r.port}`);
        if (r.proto === 'icmp') list.push(`icmptype=${r.icmp}`);
        if (r.dns) list.push('specialtarget=dns');
        if (r.comment !== null) list.push(`comment=${r.comment}`);
        const expected = parseRule(list.join(' '));
        // Rotate: any order of the words gives the same rule.
        const k = shuffle % list.length;
        const rotated = [...list.slice(k), ...list.slice(0, k)];
        assert.deepEqual(rulesFromWords(rotated, NOW), expected);
        // And the canonical line's words, given back to qvm-firewall, too (comment as one word).
        const text = formatRule(expected);
        const at = text.indexOf(' comment=');
        const back = at < 0 ? text.split(' ') : [...text.slice(0, at).split(' '), text.slice(at + 1)];
        assert.deepEqual(rulesFromWords(back, NOW), expected);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('ruleTable', () => {
  test('header and cells, as qvm-firewall list prints them', () => {
    const rules = [
      'action=accept dsthost=example.com proto=tcp dstports=443 comment=web',
      `action=accept expire=${NOW + 60} dst4=10.0.0.0/8 proto=udp dstports=1000-2000`,
      'action=accept proto=icmp icmptype=8',
      'action=accept specialtarget=dns',
      'action=drop',
    ].map((l) => parseRule(l));
    assert.deepEqual(ruleTable(rules, NOW), [
      'NO  ACTION  HOST         PROTOCOL  PORT(S)    SPECIAL TARGET  ICMP TYPE  EXPIRE  COMMENT',
      '0   accept  example.com  tcp       443        -               -          -       web',
      '1   accept  10.0.0.0/8   udp       1000-2000  -               -          +60s    -',
      '2   accept  -            icmp      -          -               8          -       -',
      '3   accept  -            -         -          dns             -          -       -',
      '4   drop    -            -         -          -               -          -       -',
    ]);
  });

  test('an empty list is the header alone', () => {
    assert.deepEqual(ruleTable([], NOW), ['NO  ACTION  HOST  PROTOCOL  PORT(S)  SPECIAL TARGET  ICMP TYPE  EXPIRE  COMMENT']);
  });

  test('IPv6 hosts, comments with spaces, expiry in seconds from now', () => {
    const [head, row] = ruleTable([parseRule(`action=drop expire=${NOW + 3600} dst6=2001:db8::/32 comment=no  docs`)], NOW);
    assert.ok(head?.startsWith('NO  ACTION  HOST'));
    assert.equal(row, '0   drop    2001:db8::/32  -         -        -               -          +3600s  no  docs');
  });
});

describe('rawRule', () => {
  test("the client's order: action proto host dstports icmptype specialtarget expire comment", () => {
    const r = parseRule('action=accept expire=99 dsthost=example.com proto=tcp specialtarget=dns dstports=53 comment=a b');
    assert.equal(rawRule(r), 'action=accept proto=tcp dsthost=example.com dstports=53-53 specialtarget=dns expire=99 comment=a b');
    assert.equal(rawRule(parseRule('action=drop dst4=10.1.2.3/8 proto=icmp icmptype=3')), 'action=drop proto=icmp dst4=10.0.0.0/8 icmptype=3');
    assert.equal(rawRule(parseRule('action=drop dst6=2001:db8::/32')), 'action=drop dst6=2001:db8::/32');
    assert.equal(rawRule(parseRule('action=accept')), 'action=accept');
  });

  test('0.0.0.0/0 and ::/0 (everything) are omitted', () => {
    assert.equal(rawRule(parseRule('action=accept dst4=0.0.0.0/0 proto=tcp')), 'action=accept proto=tcp');
    assert.equal(rawRule(parseRule('action=accept dst4=1.2.3.4/0')), 'action=accept');
    assert.equal(rawRule(parseRule('action=accept dst6=::/0')), 'action=accept');
    assert.equal(rawRule(parseRule('action=accept dst4=0.0.0.0/1')), 'action=accept dst4=0.0.0.0/1');
  });

  test('property: a raw line parses back to the same rule (up to an omitted /0 network)', () => {
    const lines = fc.tuple(
      fc.constantFrom('action=accept', 'action=drop'),
      fc.constantFrom('', 'dsthost=h.example', 'dst4=10.0.0.0/8', 'dst4=0.0.0.0/0', 'dst6=::/0', 'dst6=fd00::/8'),
      fc.constantFrom('', 'proto=tcp dstports=1-2', 'proto=udp', 'proto=icmp icmptype=0'),
      fc.constantFrom('', 'specialtarget=dns'),
      fc.constantFrom('', 'expire=5'),
      fc.constantFrom('', 'comment=x y'),
    ).map((ws) => ws.filter((w) => w !== '').join(' '));
    fc.assert(
      fc.property(lines, (line) => {
        const r = parseRule(line);
        const back = parseRule(rawRule(r));
        const everything = r.host !== undefined && r.host.type !== 'dsthost' && r.host.prefix === 0;
        if (everything) {
          const rest: { -readonly [K in keyof FirewallRule]?: FirewallRule[K] } = { ...r };
          delete rest.host;
          assert.deepEqual(back, rest);
        } else {
          assert.deepEqual(back, r);
        }
      }),
      { numRuns: 300 },
    );
  });
});
