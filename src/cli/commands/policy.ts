// bulkhead policy lint|eval: check a qrexec policy directory, and ask it what it would decide
// for one call (docs/policy.md).
import path from 'node:path';
import { z } from 'zod';
import { DEFAULT_DATA_DIR } from '../../daemon/daemon.js';
import { loadFailure, loadPolicyDir, nodePolicyFs, type PolicyRequest, type Resolution, type SystemInfo } from '../../policy/index.js';
import { splitServiceAndArg } from '../../protocol/qrexec.js';
import { DaemonError, RemoteError } from '../client.js';
import { ExitError, UsageError, errorLine, out, parse, printHelp, runCommand, type Command, type Parsed } from '../common.js';

/** A system-info file bigger than this is refused (Qubes' own output is a few KiB per qube). */
const MAX_SYSTEM_INFO_BYTES = 16 * 1024 * 1024;

const domainSchema = z.strictObject({
  type: z.string(),
  tags: z.array(z.string()),
  default_dispvm: z.string().nullable(),
  template_for_dispvms: z.boolean(),
  power_state: z.string(),
  uuid: z.string(),
  internal: z.boolean().optional(),
  // Present in Qubes' output; not used by the engine.
  icon: z.string().nullable().optional(),
  guivm: z.string().nullable().optional(),
  relayvm: z.string().nullable().optional(),
  transport_rpc: z.string().nullable().optional(),
});

/** Qube names (a letter first, so never __proto__ and the like) and their `uuid:` forms. */
const DOMAIN_KEY = /^(?:[A-Za-z][A-Za-z0-9_.-]*|uuid:[0-9A-Fa-f-]+)$/;

const KEY_RULE = 'not a qube name (a letter, then letters, digits, _ . -) or uuid:UUID';

const systemInfoSchema = z.strictObject({
  domains: z.record(z.string().regex(DOMAIN_KEY, KEY_RULE), domainSchema),
});

/** Qubes' system-info JSON, checked field by field; throws with every problem listed. */
export function parseSystemInfo(untrustedText: string, origin: string): SystemInfo {
  let json: unknown;
  try {
    // zod drops a "__proto__" key silently; refuse it instead of ignoring a qube.
    json = JSON.parse(untrustedText, (key, value: unknown) => {
      if (key === '__proto__') throw new Error('the key "__proto__" is not allowed');
      return value;
    });
  } catch (err) {
    throw new Error(`${origin}: invalid JSON: ${(err as Error).message}`, { cause: err });
  }
  const checked = systemInfoSchema.safeParse(json);
  if (!checked.success) {
    const problems = checked.error.issues.map((i) => {
      const where = i.path.length > 0 ? i.path.join('.') : '(top level)';
      return `  ${where}: ${i.code === 'invalid_key' ? KEY_RULE : i.message}`;
    });
    throw new Error(`${origin}: not a system-info document:\n${problems.join('\n')}`);
  }
  return checked.data;
}

/** `svc+arg` → service and argument (`+arg`, or `+` when there is none): split at the first +. */
export function splitServiceArgument(serviceAndArg: string): { service: string; argument: string } {
  const { service, arg } = splitServiceAndArg(serviceAndArg);
  return { service, argument: `+${arg}` };
}

/** The result as `key=value` lines (docs/policy.md). */
export function formatResolution(r: Resolution): string[] {
  const yesNo = (b: boolean): string => (b ? 'yes' : 'no');
  const pyBool = (b: boolean): string => (b ? 'True' : 'False');
  switch (r.result) {
    case 'allow':
      return [
        'result=allow',
        `target=${r.target}`,
        `autostart=${pyBool(r.autostart)}`,
        ...(r.user === null ? [] : [`user=${r.user}`]),
        `notify=${yesNo(r.notify)}`,
        `requested_target=${r.requestedTarget}`,
        `rule=${r.rule}`,
      ];
    case 'ask':
      return [
        'result=ask',
        `targets=${r.targets.join(',')}`,
        `default_target=${r.defaultTarget ?? ''}`,
        `autostart=${pyBool(r.autostart)}`,
        ...(r.user === null ? [] : [`user=${r.user}`]),
        `notify=${yesNo(r.notify)}`,
        `requested_target=${r.requestedTarget}`,
        `rule=${r.rule}`,
      ];
    case 'deny':
      return ['result=deny', `reason=${r.reason}`, `notify=${yesNo(r.notify)}`, ...(r.rule === undefined ? [] : [`rule=${r.rule}`])];
  }
}

/**
 * `--data-dir`'s policy folder; without it, the folder of the daemon on `--socket` /
 * BULKHEAD_SOCKET; with no daemon there, the default data dir's.
 */
async function defaultPolicyDir(a: Parsed): Promise<string> {
  const dataDir = a.str('data-dir');
  if (dataDir !== undefined) return path.join(path.resolve(dataDir), 'policy.d');
  try {
    const dir = (await a.client.call({ method: 'bulkhead.policy.Dir', dest: 'dom0' })).trim();
    if (path.isAbsolute(dir)) return dir;
  } catch (err) {
    if (!(err instanceof DaemonError)) throw err;
  }
  return path.join(DEFAULT_DATA_DIR, 'policy.d');
}

/** The file, through the policy loader's capped read (a regular file, at most the cap), as strict UTF-8. */
async function readSystemInfoFile(file: string): Promise<string> {
  try {
    const { data } = await nodePolicyFs.readFile(file, MAX_SYSTEM_INFO_BYTES);
    return new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch (err) {
    const reason = err instanceof TypeError ? 'not valid UTF-8' : ((err as NodeJS.ErrnoException).code ?? (err as Error).message);
    throw new Error(`cannot read ${file}: ${reason}`, { cause: err });
  }
}

async function systemInfo(a: Parsed, prog: string): Promise<SystemInfo> {
  const file = a.str('system-info');
  try {
    if (file !== undefined) return parseSystemInfo(await readSystemInfoFile(file), file);
    const reply = await a.client.call({ method: 'bulkhead.policy.SystemInfo', dest: 'dom0' });
    return parseSystemInfo(reply, 'the daemon\'s bulkhead.policy.SystemInfo reply');
  } catch (err) {
    if (!(err instanceof Error) || err instanceof RemoteError || err instanceof DaemonError) throw err;
    errorLine(prog, err.message);
    throw new ExitError(1);
  }
}

async function lint(a: Parsed, args: readonly string[]): Promise<number> {
  if (a.str('policy-dir') !== undefined || a.str('system-info') !== undefined) throw new UsageError('lint takes [--data-dir DIR] [DIR] only');
  if (args.length > 1) throw new UsageError('lint takes at most one directory');
  const dir = args[0] ?? (await defaultPolicyDir(a));
  const loaded = await loadPolicyDir(dir);
  if (!loaded.ok) {
    for (const e of loaded.errors) process.stderr.write(`${e}\n`);
    return 1;
  }
  out(`OK: ${loaded.policy.ruleCount} rules in ${loaded.files.length} files`);
  return 0;
}

async function evaluate(a: Parsed, args: readonly string[], prog: string): Promise<number> {
  if (args.length !== 3) throw new UsageError('eval needs SOURCE TARGET SERVICE[+ARG] (TARGET may be \'\' for @default)');
  const [source = '', target = '', serviceAndArg = ''] = args;
  const { service, argument } = splitServiceArgument(serviceAndArg);
  if (source === '') throw new UsageError('SOURCE is empty');
  if (service === '') throw new UsageError(`no service name in '${serviceAndArg}'`);
  const sys = await systemInfo(a, prog);
  const loaded = await loadPolicyDir(a.str('policy-dir') ?? (await defaultPolicyDir(a)));
  if (!loaded.ok) {
    for (const e of loaded.errors) process.stderr.write(`${e}\n`);
    for (const line of formatResolution(loadFailure(loaded.errors))) out(line);
    return 1;
  }
  const req: PolicyRequest = { source, target, service, argument };
  for (const line of formatResolution(loaded.policy.evaluate(req, sys))) out(line);
  return 0;
}

export const policy: Command = {
  name: 'bulkhead policy',
  usage: [
    'lint [--data-dir DIR] [POLICY_DIR]',
    '       bulkhead policy eval [--policy-dir DIR] [--data-dir DIR] [--system-info FILE] [--socket PATH] SOURCE TARGET SERVICE[+ARG]',
  ].join('\n'),
  summary: [
    'Check and query the qrexec policy (docs/policy.md).',
    '  lint  load POLICY_DIR (default <data-dir>/policy.d) as the daemon would: print each error as',
    '        file:line: message and exit 1, or print "OK: N rules in M files".',
    '  eval  what the policy decides for one call, as key=value lines (result=allow|ask|deny ...).',
    '        TARGET \'\' means @default. The qubes come from --system-info FILE (Qubes\' system-info',
    '        JSON) or, without it, from the running daemon. Exit 0 when evaluated (whatever the',
    '        result); 1 when the policy does not load (result=deny is still printed) or input is bad.',
    `  --data-dir DIR  the daemon's data directory. Without it (and without POLICY_DIR / --policy-dir),`,
    `                  the folder of the daemon on --socket (BULKHEAD_SOCKET); with no daemon, ${DEFAULT_DATA_DIR}.`,
  ].join('\n'),
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, { 'data-dir': { type: 'string' }, 'policy-dir': { type: 'string' }, 'system-info': { type: 'string' } });
      if (a.flag('help')) return printHelp(this, prog);
      const [verb, ...rest] = a.positionals;
      if (verb === 'lint') return lint(a, rest);
      if (verb === 'eval') return evaluate(a, rest, prog);
      throw new UsageError(verb === undefined ? 'expected lint or eval' : `unknown subcommand '${verb}' (lint or eval)`);
    });
  },
};
