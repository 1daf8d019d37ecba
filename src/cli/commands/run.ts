// qvm-run: runs a command (or with --service, a qrexec service) in a qube through its agent:
// -p/--pass-io, -u/--user, -a/--autostart (default) and -n/--no-autostart, --all/--exclude,
// --no-gui (accepted; there is no GUI yet), escape-character filtering on terminals by default.
// The admin domain is trusted: its calls do not go through the qrexec policy, as in Qubes.
import { isValidUserName } from '../../core/names.js';
import { isValidServiceAndArg } from '../../protocol/qrexec.js';
import { execSocketPath } from '../../daemon/exec-server.js';
import { socketFromEnv } from '../client.js';
import { UsageError, listDomains, pickDomains, printHelp, runCommand, parse, type Command } from '../common.js';
import { execInQube } from '../exec-client.js';

/** Options that take a value: everything after the qube name and the command is the command's. */
const VALUE_OPTIONS = new Set(['-u', '--user', '--socket', '--exclude']);
/** Options after which the next word is already the command (no VMNAME). */
const NO_VMNAME = new Set(['--all']);

/** Splits argv at the command: qvm-run's own options, then VMNAME, then COMMAND [ARGS...]. */
export function splitRunArgs(argv: readonly string[]): { own: string[]; rest: string[] } {
  const own: string[] = [];
  let positionals = argv.some((a) => NO_VMNAME.has(a)) ? 1 : 0;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a === '--') {
      const [vm, ...cmd] = argv.slice(i + 1);
      if (positionals === 0 && vm !== undefined) return { own: [...own, vm], rest: cmd };
      if (positionals === 1 && own.includes('--all')) return { own, rest: argv.slice(i + 1) };
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
  usage: '[-h] [--socket PATH] [-p] [-u USER] [-a | -n] [--service] [--no-gui] [--filter-escape-chars | --no-filter-escape-chars] (VMNAME | --all [--exclude VMNAME ...]) COMMAND [ARGS ...]',
  summary: 'Run a command in a qube (started first unless --no-autostart). With -p, pass stdin, stdout and stderr and exit with the command\'s exit code. With --service, COMMAND is a qrexec SERVICE+ARG to call.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const { own, rest } = splitRunArgs(argv);
      const a = parse(own, {
        'pass-io': { type: 'boolean', short: 'p' },
        user: { type: 'string', short: 'u' },
        autostart: { type: 'boolean', short: 'a' },
        'no-autostart': { type: 'boolean', short: 'n' },
        service: { type: 'boolean' },
        'no-gui': { type: 'boolean' },
        gui: { type: 'boolean' },
        all: { type: 'boolean' },
        exclude: { type: 'string', multiple: true },
        'filter-escape-chars': { type: 'boolean' },
        'no-filter-escape-chars': { type: 'boolean' },
      });
      if (a.flag('help')) return printHelp(this, prog);
      const all = a.flag('all');
      const excluded = a.strs('exclude');
      if (excluded.length > 0 && !all) throw new UsageError('--exclude only applies with --all');
      const positionals = [...a.positionals];
      const vm = all ? undefined : positionals.shift();
      if (!all && vm === undefined) throw new UsageError('the following arguments are required: VMNAME, COMMAND');
      const words = [...positionals, ...rest];
      const [cmd, ...args] = words;
      if (cmd === undefined || cmd === '') throw new UsageError('the following arguments are required: COMMAND');
      if (a.flag('autostart') && a.flag('no-autostart')) throw new UsageError('--autostart and --no-autostart exclude each other');
      const user = a.str('user');
      if (user !== undefined && !isValidUserName(user)) throw new UsageError(`invalid user name: '${user}'`);
      const service = a.flag('service');
      if (service && args.length > 0) throw new UsageError('--service takes one SERVICE+ARG and no further arguments');
      if (service && !isValidServiceAndArg(cmd)) throw new UsageError(`invalid service name: '${cmd}'`);
      const passIo = a.flag('pass-io');
      if (passIo && all) throw new UsageError('--pass-io cannot be used with --all (one qube at a time)');
      const domains = await listDomains(a.client);
      pickDomains(domains, all ? excluded : [vm ?? '']);
      // --all: every running qube but dom0 and the excluded ones (never started for this).
      const targets = all
        ? domains.filter((d) => d.klass !== 'AdminVM' && d.state === 'Running' && !excluded.includes(d.name)).map((d) => d.name)
        : [vm ?? ''];
      const command = service ? cmd : [cmd, ...args.map(shellQuote)].join(' ');
      const filterOut = !a.flag('no-filter-escape-chars') && (a.flag('filter-escape-chars') || process.stdout.isTTY);
      const filterErr = !a.flag('no-filter-escape-chars') && (a.flag('filter-escape-chars') || process.stderr.isTTY);
      let worst = 0;
      for (const target of targets) {
        const code = await execInQube({
          socketPath: execSocketPath(socketFromEnv(a.str('socket'))),
          target,
          user: user ?? null,
          command,
          service,
          // --all runs only in qubes already running.
          autostart: !all && !a.flag('no-autostart'),
          detached: !passIo,
          stdin: passIo ? process.stdin : undefined,
          onStdout: (c) => process.stdout.write(filterOut ? filterEscapes(c) : c),
          onStderr: (c) => process.stderr.write(filterErr ? filterEscapes(c) : c),
          drainSource: { stdout: process.stdout, stderr: process.stderr },
        });
        if (all && code !== 0) process.stderr.write(`${prog}: ${target}: exit code ${code}\n`);
        worst = Math.max(worst, code);
      }
      if (passIo) process.stdin.destroy();
      return worst;
    });
  },
};
