// qvm-run: runs a command in a qube through its agent. This is the basic form: -p/--pass-io,
// -u/--user, -a/--autostart (default) and -n/--no-autostart, escape-character filtering on
// terminals. Services, policy and the rest of Qubes' flags come with the qrexec router.
import { isValidUserName } from '../../core/names.js';
import { execSocketPath } from '../../daemon/exec-server.js';
import { socketFromEnv } from '../client.js';
import { UsageError, printHelp, requireDomains, runCommand, parse, type Command } from '../common.js';
import { execInQube } from '../exec-client.js';

/** Options that take a value: everything after the qube name and the command is the command's. */
const VALUE_OPTIONS = new Set(['-u', '--user', '--socket']);

/** Splits argv at the command: qvm-run's own options, then VMNAME, then COMMAND [ARGS...]. */
export function splitRunArgs(argv: readonly string[]): { own: string[]; rest: string[] } {
  const own: string[] = [];
  let positionals = 0;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--') {
      const [vm, ...cmd] = argv.slice(i + 1);
      if (positionals === 0 && vm !== undefined) return { own: [...own, vm], rest: cmd };
      return { own, rest: argv.slice(i + 1) };
    }
    if (a.startsWith('-') && a !== '-') {
      own.push(a);
      if (VALUE_OPTIONS.has(a) && i + 1 < argv.length) own.push(argv[++i] ?? '');
      continue;
    }
    if (positionals === 0) {
      own.push(a);
      positionals = 1;
      continue;
    }
    return { own, rest: argv.slice(i) };
  }
  return { own, rest: [] };
}

/** POSIX shell quoting for the arguments after the command (Qubes joins them quoted). */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'"'"'`)}'`;
}

/** Replaces terminal control characters (except tab, newline, CR) as Qubes' filter does. */
export function filterEscapes(chunk: Buffer): Buffer {
  const out = Buffer.from(chunk);
  for (let i = 0; i < out.length; i++) {
    const b = out[i] ?? 0;
    if ((b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0d) || b === 0x7f) out[i] = 0x5f;
  }
  return out;
}

export const qvmRun: Command = {
  name: 'qvm-run',
  usage: '[-h] [--socket PATH] [-p] [-u USER] [-a | -n] [--filter-escape-chars | --no-filter-escape-chars] VMNAME COMMAND [ARGS ...]',
  summary: 'Run a command in a qube (started first unless --no-autostart). With -p, pass stdin, stdout and stderr and exit with the command\'s exit code.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const { own, rest } = splitRunArgs(argv);
      const a = parse(own, {
        'pass-io': { type: 'boolean', short: 'p' },
        user: { type: 'string', short: 'u' },
        autostart: { type: 'boolean', short: 'a' },
        'no-autostart': { type: 'boolean', short: 'n' },
        'filter-escape-chars': { type: 'boolean' },
        'no-filter-escape-chars': { type: 'boolean' },
      });
      if (a.flag('help')) return printHelp(this, prog);
      const [vm, ...extra] = a.positionals;
      if (vm === undefined) throw new UsageError('the following arguments are required: VMNAME, COMMAND');
      const words = [...extra, ...rest];
      const [cmd, ...args] = words;
      if (cmd === undefined || cmd === '') throw new UsageError('the following arguments are required: COMMAND');
      if (a.flag('autostart') && a.flag('no-autostart')) throw new UsageError('--autostart and --no-autostart exclude each other');
      const user = a.str('user');
      if (user !== undefined && !isValidUserName(user)) throw new UsageError(`invalid user name: '${user}'`);
      await requireDomains(a.client, [vm]);
      const passIo = a.flag('pass-io');
      const command = [cmd, ...args.map(shellQuote)].join(' ');
      const filterOut = !a.flag('no-filter-escape-chars') && (a.flag('filter-escape-chars') || process.stdout.isTTY);
      const filterErr = !a.flag('no-filter-escape-chars') && (a.flag('filter-escape-chars') || process.stderr.isTTY);
      const code = await execInQube({
        socketPath: execSocketPath(socketFromEnv(a.str('socket'))),
        target: vm,
        user: user ?? null,
        command,
        autostart: !a.flag('no-autostart'),
        detached: !passIo,
        stdin: passIo ? process.stdin : undefined,
        onStdout: (c) => process.stdout.write(filterOut ? filterEscapes(c) : c),
        onStderr: (c) => process.stderr.write(filterErr ? filterEscapes(c) : c),
        drainSource: { stdout: process.stdout, stderr: process.stderr },
      });
      if (passIo) process.stdin.destroy();
      return code;
    });
  },
};
