// Assembles dist/agent-bundle: the in-qube agent and the protocol code it imports, nothing else,
// plus the commands it offers inside qubes (bin/). The container backend binds this directory
// read-only into every qube at /run/bulkhead/agent, and the admin domain's node at
// /run/bulkhead/node; the agent puts /run/bulkhead/agent/bin on the PATH of everything it runs.
import fs from 'node:fs';
import path from 'node:path';

const QUBE_NODE = '/run/bulkhead/node';
const QUBE_BUNDLE = '/run/bulkhead/agent';
/** Commands of the bundle: name → the compiled module it runs. */
const COMMANDS = { 'qrexec-client-vm': 'agent/qrexec-client-vm.js' };

const dist = path.resolve(import.meta.dirname, '..', 'dist');
const bundle = path.join(dist, 'agent-bundle');
const staged = `${bundle}.new`;
fs.rmSync(staged, { recursive: true, force: true });
for (const part of ['agent', 'protocol']) {
  fs.mkdirSync(path.join(staged, part), { recursive: true });
  for (const f of fs.readdirSync(path.join(dist, part))) {
    if (f.endsWith('.js')) fs.copyFileSync(path.join(dist, part, f), path.join(staged, part, f));
  }
}
fs.writeFileSync(path.join(staged, 'package.json'), '{"type":"module"}\n');
fs.mkdirSync(path.join(staged, 'bin'), { mode: 0o755 });
for (const [name, module] of Object.entries(COMMANDS)) {
  if (!fs.existsSync(path.join(staged, module))) throw new Error(`agent bundle: ${module} was not built`);
  const file = path.join(staged, 'bin', name);
  fs.writeFileSync(file, `#!/bin/sh\nexec ${QUBE_NODE} ${QUBE_BUNDLE}/${module} "$@"\n`);
  fs.chmodSync(file, 0o755);
}
// Readable and traversable by every user of a qube (the bundle is bound as it is).
for (const dir of [staged, ...['agent', 'protocol', 'bin'].map((d) => path.join(staged, d))]) fs.chmodSync(dir, 0o755);
fs.rmSync(bundle, { recursive: true, force: true });
fs.renameSync(staged, bundle);
