// Shared plumbing of the qvm-* commands: argument parsing with Qubes' exit codes (0 ok,
// 1 error, 2 usage), the Admin API client, domain lookups, column output.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { AdminClient, DaemonError, RemoteError, socketFromEnv } from './client.js';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** A failure already reported to the user; carries the exit code. */
export class ExitError extends Error {
  override readonly name = 'ExitError';
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

export interface Command {
  readonly name: string;
  readonly usage: string;
  readonly summary: string;
  run(argv: string[], prog: string): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig['options']>;

const COMMON_OPTIONS = {
  socket: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  quiet: { type: 'boolean', short: 'q' },
  verbose: { type: 'boolean', short: 'v' },
} as const satisfies Options;

type Value = string | boolean | (string | boolean)[] | undefined;

export class Parsed {
  readonly positionals: string[];
  readonly client: AdminClient;
  readonly #values: Record<string, Value>;

  constructor(values: Record<string, Value>, positionals: string[]) {
    this.#values = values;
    this.positionals = positionals;
    const socket = values.socket;
    this.client = new AdminClient(socketFromEnv(typeof socket === 'string' ? socket : undefined));
  }

  flag(name: string): boolean {
    return this.#values[name] === true;
  }

  str(name: string): string | undefined {
    const v = this.#values[name];
    return typeof v === 'string' ? v : undefined;
  }

  strs(name: string): string[] {
    const v = this.#values[name];
    if (Array.isArray(v)) return v.filter((x): x is string => typeof x === 'string');
    return typeof v === 'string' ? [v] : [];
  }
}

/** Parses argv; throws UsageError for anything parseArgs rejects. */
export function parse(argv: string[], options: Options): Parsed {
  // argparse takes `-1` as a value (qvm-prefs work memory -1); parseArgs would see an option.
  // Negative numbers are hidden behind a NUL prefix (never in real arguments) and restored after.
  const hide = (a: string): string => (/^-[0-9]/.test(a) ? `\0${a}` : a);
  const show = <T>(v: T): T => (typeof v === 'string' && v.startsWith('\0') ? (v.slice(1) as T) : v);
  try {
    const { values, positionals } = parseArgs({
      args: argv.map(hide),
      options: { ...COMMON_OPTIONS, ...options },
      allowPositionals: true,
      strict: true,
    });
    const restored: Record<string, Value> = {};
    for (const [k, v] of Object.entries(values as Record<string, Value>)) restored[k] = Array.isArray(v) ? v.map(show) : show(v);
    return new Parsed(restored, positionals.map(show));
  } catch (err) {
    if (err instanceof TypeError && 'code' in err) throw new UsageError(err.message.split('\n')[0] ?? err.message);
    throw err;
  }
}

export function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

export function errorLine(prog: string, message: string): void {
  process.stderr.write(`${prog}: error: ${message}\n`);
}

export interface DomainInfo {
  readonly name: string;
  readonly klass: string;
  readonly state: string;
  readonly uuid: string;
}

/** admin.vm.List to dom0, parsed (`NAME class=C state=S uuid=U`). */
export async function listDomains(client: AdminClient): Promise<DomainInfo[]> {
  const text = await client.call({ method: 'admin.vm.List', dest: 'dom0' });
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => {
      const [name = '', ...pairs] = line.split(' ');
      const kv = new Map(pairs.map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
      return { name, klass: kv.get('class') ?? '', state: kv.get('state') ?? '', uuid: kv.get('uuid') ?? '' };
    });
}

/** Checks the named qubes exist (one admin.vm.List), as Qubes' argument parser does: exit 2. */
export async function requireDomains(client: AdminClient, names: readonly string[]): Promise<DomainInfo[]> {
  return pickDomains(await listDomains(client), names);
}

/** The named qubes out of an admin.vm.List answer; an unknown name is a usage error. */
export function pickDomains(all: readonly DomainInfo[], names: readonly string[]): DomainInfo[] {
  const byName = new Map(all.map((d) => [d.name, d]));
  return names.map((n) => {
    const d = byName.get(n);
    if (!d) throw new UsageError(`no such domain: '${n}'`);
    return d;
  });
}

/** How many Admin API calls a command keeps in flight at once. */
export const CLI_CONCURRENCY = 16;

/** Runs `fn` over `items` with at most `limit` calls in flight (one Admin API connection each). */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** `column -t` layout: columns padded to their widest cell, two spaces apart. */
export function formatTable(rows: readonly (readonly string[])[]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length); });
  return rows.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  );
}

/** Parses a GetAll reply into name → {isDefault, type, value}. */
export interface PropLine {
  readonly isDefault: boolean;
  readonly type: string;
  readonly value: string;
}

export function parseGetAll(text: string): Map<string, PropLine> {
  const props = new Map<string, PropLine>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const space = line.indexOf(' ');
    const name = line.slice(0, space);
    const reading = parseReading(unescapeGetAll(line.slice(space + 1)));
    props.set(name, reading);
  }
  return props;
}

function unescapeGetAll(s: string): string {
  return s.replace(/\\(.)/g, (_m, c: string) => (c === 'n' ? '\n' : c));
}

/** `default=True type=vm VALUE` → parts. */
export function parseReading(text: string): PropLine {
  const m = /^default=(True|False) type=(\S+) ([\s\S]*)$/.exec(text);
  if (!m) throw new DaemonError(`unexpected property reply: ${text.slice(0, 80)}`);
  return { isDefault: m[1] === 'True', type: m[2] ?? '', value: m[3] ?? '' };
}

/** Runs a command body, mapping errors to Qubes' exit codes and messages. */
export async function runCommand(cmd: Command, prog: string, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`usage: ${prog} ${cmd.usage}\n`);
      errorLine(prog, err.message);
      return 2;
    }
    if (err instanceof ExitError) return err.code;
    if (err instanceof RemoteError || err instanceof DaemonError) {
      errorLine(prog, err.message);
      return 1;
    }
    throw err;
  }
}

export function printHelp(cmd: Command, prog: string): number {
  out(`usage: ${prog} ${cmd.usage}\n\n${cmd.summary}`);
  return 0;
}

/** An admin.vm.volume.Info reply (`key=value` lines) as a map. */
export function parseVolumeInfo(text: string): Map<string, string> {
  const info = new Map<string, string>();
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) info.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return info;
}
