// The registry on disk: one JSON document, schema-validated on load, replaced atomically
// (write temp, fsync, keep the previous file as the last good copy, rename, fsync the folder).
// A kill -9 at any moment leaves either the old or the new complete document in place.
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { QUBE_CLASSES, type PropValue, type QubeRecord, type RegistryState } from './model.js';
import { isValidFeatureName, isValidTag, qubeNameProblem } from './names.js';
import { GLOBAL_PROPS, propDefFor, valueFitsType } from './properties.js';
import { DEFAULT_FIREWALL, formatRule, parseRules } from './firewall.js';
import { validateIntegrity } from './registry.js';

export const STORE_FILE = 'qubes.json';
export const BACKUP_FILE = 'qubes.json.bak';
const FORMAT = 'bulkhead-registry';

/** The store cannot be used; the daemon must not start. The message says why and what to do. */
export class StoreError extends Error {
  override readonly name = 'StoreError';
}

const propValue = z.union([z.string(), z.number().int(), z.boolean(), z.null()]);

const qubeSchema = z.strictObject({
  name: z.string().refine((n) => qubeNameProblem(n) === undefined || n === 'dom0', 'invalid qube name'),
  klass: z.enum(QUBE_CLASSES),
  qid: z.number().int().min(0).max(10000),
  uuid: z.string().regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/),
  props: z.array(z.tuple([z.string(), propValue])),
  features: z.array(z.tuple([z.string().refine(isValidFeatureName, 'invalid feature name'), z.string()])),
  tags: z.array(z.string().refine(isValidTag, 'invalid tag')),
  notes: z.string(),
  // Absent in files written before the firewall existed: the default list.
  firewall: z.array(z.string()).optional(),
});

const docSchema = z.strictObject({
  format: z.literal(FORMAT),
  version: z.literal(1),
  globals: z.array(z.tuple([z.string(), propValue])),
  qubes: z.array(qubeSchema),
});

type StoreDoc = z.infer<typeof docSchema>;

export function serialize(s: RegistryState): string {
  const doc: StoreDoc = {
    format: FORMAT,
    version: 1,
    globals: [...s.globals].sort(([a], [b]) => (a < b ? -1 : 1)),
    qubes: [...s.qubes.values()]
      .sort((a, b) => a.qid - b.qid)
      .map((q) => ({
        name: q.name,
        klass: q.klass,
        qid: q.qid,
        uuid: q.uuid,
        props: [...q.props].sort(([a], [b]) => (a < b ? -1 : 1)),
        features: [...q.features],
        tags: [...q.tags].sort(),
        notes: q.notes,
        firewall: [...q.firewall],
      })),
  };
  return JSON.stringify(doc, null, 1) + '\n';
}

/** Parses and checks a document; throws StoreError naming the first problem. */
export function deserialize(text: string, where: string): RegistryState {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new StoreError(`${where}: not valid JSON (${(err as Error).message})`);
  }
  const parsed = docSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new StoreError(`${where}: does not match the schema at ${issue?.path.join('.') ?? '?'}: ${issue?.message ?? ''}`);
  }
  const qubes = new Map<string, QubeRecord>();
  for (const rq of parsed.data.qubes) {
    if (qubes.has(rq.name)) throw new StoreError(`${where}: qube '${rq.name}' appears twice`);
    const props = new Map<string, PropValue>();
    for (const [k, v] of rq.props) {
      const def = propDefFor(rq.klass, k);
      if (!def) throw new StoreError(`${where}: qube '${rq.name}' has unknown property '${k}'`);
      if (!valueFitsType(def.type, v)) {
        throw new StoreError(`${where}: property '${k}' of qube '${rq.name}' is not a valid ${def.type}: ${JSON.stringify(v)}`);
      }
      props.set(k, v);
    }
    qubes.set(rq.name, {
      name: rq.name,
      klass: rq.klass,
      qid: rq.qid,
      uuid: rq.uuid,
      props,
      features: new Map(rq.features),
      tags: new Set(rq.tags),
      notes: rq.notes,
      firewall: storedFirewall(rq.firewall, rq.name, where),
    });
  }
  const globals = new Map<string, PropValue>();
  for (const [k, v] of parsed.data.globals) {
    const def = GLOBAL_PROPS.get(k);
    if (!def) throw new StoreError(`${where}: unknown global property '${k}'`);
    if (!valueFitsType(def.type, v)) {
      throw new StoreError(`${where}: global property '${k}' is not a valid ${def.type}: ${JSON.stringify(v)}`);
    }
    globals.set(k, v);
  }
  const state: RegistryState = { qubes, globals };
  try {
    validateIntegrity(state);
  } catch (err) {
    throw new StoreError(`${where}: inconsistent registry: ${(err as Error).message}`);
  }
  return state;
}

/** Stored rules must be valid and canonical, exactly as the daemon writes them. */
function storedFirewall(lines: readonly string[] | undefined, name: string, where: string): string[] {
  if (lines === undefined) return [...DEFAULT_FIREWALL];
  try {
    const rules = parseRules(lines);
    rules.forEach((r, i) => {
      if (formatRule(r) !== lines[i]) throw new Error(`rule ${i + 1} is not in canonical form`);
    });
  } catch (err) {
    throw new StoreError(`${where}: firewall of qube '${name}': ${(err as Error).message}`);
  }
  return [...lines];
}

export class Store {
  readonly #dir: string;

  constructor(dataDir: string) {
    this.#dir = dataDir;
  }

  get file(): string {
    return path.join(this.#dir, STORE_FILE);
  }

  /** The stored state, or undefined when no store exists yet (a fresh data dir). */
  load(): RegistryState | undefined {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        if (fs.existsSync(path.join(this.#dir, BACKUP_FILE))) {
          throw new StoreError(
            `${this.file} is missing but ${BACKUP_FILE} exists; refusing to start with an empty registry. ` +
              `Restore it with: cp ${path.join(this.#dir, BACKUP_FILE)} ${this.file}`,
          );
        }
        return undefined;
      }
      throw new StoreError(`${this.file}: cannot read (${code ?? (err as Error).message})`);
    }
    try {
      return deserialize(text, this.file);
    } catch (err) {
      if (err instanceof StoreError) {
        throw new StoreError(
          `${err.message}. The file and the last good copy (${BACKUP_FILE}) were left untouched; ` +
            `fix the file or restore the copy by hand, then start again.`,
        );
      }
      throw err;
    }
  }

  /** Makes the state durable, or throws (and then nothing on disk changed but a temp file). */
  save(s: RegistryState): void {
    const data = serialize(s);
    const tmp = path.join(this.#dir, `${STORE_FILE}.tmp`);
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeFileSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    if (fs.existsSync(this.file)) {
      const bakTmp = path.join(this.#dir, `${BACKUP_FILE}.tmp`);
      fs.rmSync(bakTmp, { force: true });
      fs.linkSync(this.file, bakTmp);
      fs.renameSync(bakTmp, path.join(this.#dir, BACKUP_FILE));
    }
    fs.renameSync(tmp, this.file);
    const dirFd = fs.openSync(this.#dir, 'r');
    try {
      fs.fsyncSync(dirFd);
    } finally {
      fs.closeSync(dirFd);
    }
  }
}
