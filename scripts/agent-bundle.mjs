// Assembles dist/agent-bundle: the in-qube agent and the protocol code it imports, nothing else.
// The container backend binds this directory read-only into every qube at /run/bulkhead/agent.
import fs from 'node:fs';
import path from 'node:path';

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
fs.rmSync(bundle, { recursive: true, force: true });
fs.renameSync(staged, bundle);
