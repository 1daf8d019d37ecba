// Enforces the one-way dependency direction between source folders (see ARCHITECTURE.md):
// protocol, policy <- core <- hal <- net <- daemon <- cli (policy is pure: it imports nothing of ours). A file may import only from its own folder and the
// folders listed for it.
import fs from 'node:fs';
import path from 'node:path';

const allowed = {
  protocol: [],
  policy: [],
  agent: ['protocol'],
  core: ['protocol'],
  hal: ['protocol', 'core'],
  net: ['protocol', 'core', 'hal'],
  daemon: ['protocol', 'policy', 'core', 'hal', 'net'],
  cli: ['protocol', 'policy', 'core', 'hal', 'net', 'daemon'],
};

const root = path.resolve(import.meta.dirname, '..', 'src');
const problems = [];
function walk(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) walk(full);
    else if (entry.name.endsWith('.ts')) check(full);
  }
}
function check(file) {
  const rel = path.relative(root, file);
  const layer = rel.split(path.sep)[0];
  if (!(layer in allowed)) {
    problems.push(`${rel}: folder '${layer}' is not in scripts/check-imports.mjs`);
    return;
  }
  const text = fs.readFileSync(file, 'utf8');
  for (const m of text.matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
    const target = path.relative(root, path.resolve(path.dirname(file), m[1]));
    const targetLayer = target.split(path.sep)[0];
    if (targetLayer !== layer && !allowed[layer].includes(targetLayer)) {
      problems.push(`${rel}: imports ${m[1]} (${targetLayer}), which ${layer} may not depend on`);
    }
  }
}
walk(root);
if (problems.length > 0) {
  console.error(problems.join('\n'));
  process.exit(1);
}
