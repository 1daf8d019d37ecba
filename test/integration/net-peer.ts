// The stand-in internet of the network tests, run by the test inside a network namespace it made
// (never on the host's network): TCP servers that answer `peer PORT REMOTE-ADDRESS`, and a DNS
// server answering A queries for a fixed set of `.test` names.
// Usage: node --import tsx net-peer.ts --tcp 7001,7002 [--dns name=1.2.3.4,... --dns-address A.B.C.D]
// (A UDP server bound to 0.0.0.0 would answer from whichever address routing picks, which NAT
// on the way back cannot match: the DNS server binds its own address.)
import dgram from 'node:dgram';
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { tcp: { type: 'string', default: '' }, dns: { type: 'string', default: '' }, 'dns-address': { type: 'string', default: '0.0.0.0' } } });
const names = new Map(values.dns.split(',').filter(Boolean).map((kv): [string, string] => { const [k = '', v = ''] = kv.split('='); return [k, v]; }));

for (const port of values.tcp.split(',').filter(Boolean).map(Number)) {
  net.createServer((s) => {
    s.on('error', () => undefined);
    s.end(`peer ${port} ${s.remoteAddress}\n`);
  }).listen(port, '0.0.0.0');
}

if (names.size > 0) {
  const server = dgram.createSocket('udp4');
  server.on('message', (msg, rinfo) => {
    if (msg.length < 17) return;
    // Question name: labels from offset 12.
    const labels: string[] = [];
    let off = 12;
    while (off < msg.length && msg[off] !== 0) {
      const len = msg[off] ?? 0;
      labels.push(msg.subarray(off + 1, off + 1 + len).toString('ascii'));
      off += len + 1;
    }
    const qEnd = off + 5;
    if (qEnd > msg.length) return;
    const qtype = msg.readUInt16BE(off + 1);
    const name = labels.join('.').toLowerCase();
    const addr = names.get(name);
    const header = Buffer.from(msg.subarray(0, 12));
    header.writeUInt16BE(addr === undefined ? 0x8183 : 0x8180, 2); // response; NXDOMAIN when unknown
    const answer = addr !== undefined && qtype === 1;
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(answer ? 1 : 0, 6);
    header.writeUInt16BE(0, 8);
    header.writeUInt16BE(0, 10);
    const parts = [header, msg.subarray(12, qEnd)];
    if (answer) {
      const rr = Buffer.alloc(16);
      rr.writeUInt16BE(0xc00c, 0);
      rr.writeUInt16BE(1, 2);
      rr.writeUInt16BE(1, 4);
      rr.writeUInt32BE(60, 6);
      rr.writeUInt16BE(4, 10);
      addr.split('.').forEach((o, i) => rr.writeUInt8(Number(o), 12 + i));
      parts.push(rr);
    }
    server.send(Buffer.concat(parts), rinfo.port, rinfo.address);
  });
  server.bind(53, values['dns-address']);
}
process.stdout.write('ready\n');
