// qvm-start, qvm-shutdown, qvm-kill, qvm-pause, qvm-unpause, qvm-check.
import { RemoteError, type AdminClient } from '../client.js';
import {
  UsageError,
  errorLine,
  listDomains,
  CLI_CONCURRENCY,
  mapLimit,
  out,
  pickDomains,
  parse,
  printHelp,
  requireDomains,
  runCommand,
  type Command,
  type DomainInfo,
} from '../common.js';

const NOT_STARTED = new Set(['QubesVMNotStartedError', 'QubesVMNotRunningError', 'QubesVMNotPausedError']);

/** The qubes a command acts on: the named ones, or with --all every qube but dom0, less --exclude. */
async function targets(client: AdminClient, names: string[], all: boolean, exclude: string[]): Promise<DomainInfo[]> {
  if (all) {
    if (names.length > 0) throw new UsageError('--all and qube names exclude each other');
    await requireDomains(client, exclude);
    const skip = new Set(exclude);
    return (await listDomains(client)).filter((d) => d.klass !== 'AdminVM' && !skip.has(d.name));
  }
  if (exclude.length > 0) throw new UsageError('--exclude only goes with --all');
  if (names.length === 0) throw new UsageError('one of the arguments --all VMNAME is required');
  return requireDomains(client, names);
}

async function currentState(client: AdminClient, vm: string): Promise<string> {
  const text = await client.call({ method: 'admin.vm.CurrentState', dest: vm });
  return /power_state=(\S+)/.exec(text)?.[1] ?? 'NA';
}

export const qvmStart: Command = {
  name: 'qvm-start',
  usage: '[-h] [--socket PATH] [--skip-if-running] [-q] VMNAME [VMNAME ...]',
  summary: 'Start qubes (and the qubes they need, such as their netvm).',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, { 'skip-if-running': { type: 'boolean' } });
      if (a.flag('help')) return printHelp(this, prog);
      const domains = await targets(a.client, a.positionals, false, []);
      const results = await mapLimit(domains, CLI_CONCURRENCY, async (d) => {
          try {
            const state = await currentState(a.client, d.name);
            if (state !== 'Halted' && state !== 'NA') {
              if (a.flag('skip-if-running')) return true;
              errorLine(prog, `${d.name}: Domain is already running`);
              return false;
            }
            await a.client.call({ method: 'admin.vm.Start', dest: d.name });
            return true;
          } catch (err) {
            if (!(err instanceof Error)) throw err;
            process.stderr.write(`Error: Starting qube failed: ${d.name}: ${err.message}\n`);
            return false;
          }
      });
      return results.every(Boolean) ? 0 : 1;
    });
  },
};

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** A netvm stays "in use" until the qubes behind it are down: retry for this long. */
const IN_USE_RETRIES = 40;
const IN_USE_DELAY_MS = 250;

/**
 * Shuts one qube down as Qubes' qvm-shutdown does: "in use" (a netvm whose clients are still
 * stopping) is retried; a server-side timeout is retried once, then the qube is killed. With
 * --timeout the client keeps the clock: no-wait shutdown, poll, kill at the deadline.
 */
async function shutdownOne(
  client: AdminClient,
  vm: string,
  opts: { force: boolean; wait: boolean; timeout: number | undefined },
): Promise<void> {
  const wait = opts.wait && opts.timeout === undefined;
  const arg = [opts.force ? 'force' : '', wait ? 'wait' : ''].filter((x) => x !== '').join('+');
  let timeouts = 0;
  for (let attempt = 0; ; attempt++) {
    try {
      await client.call({ method: 'admin.vm.Shutdown', dest: vm, arg });
      break;
    } catch (err) {
      if (err instanceof RemoteError && err.type === 'QubesVMInUseError' && attempt < IN_USE_RETRIES) {
        await sleep(IN_USE_DELAY_MS);
        continue;
      }
      if (err instanceof RemoteError && err.type === 'QubesVMShutdownTimeoutError') {
        if (++timeouts < 2) continue;
        await client.call({ method: 'admin.vm.Kill', dest: vm });
        return;
      }
      throw err;
    }
  }
  if (opts.timeout === undefined) return;
  const deadline = Date.now() + opts.timeout * 1000;
  while (Date.now() < deadline) {
    if ((await currentState(client, vm)) === 'Halted') return;
    await sleep(100);
  }
  process.stderr.write(`${vm}: not halted after ${opts.timeout}s; killing\n`);
  await client.call({ method: 'admin.vm.Kill', dest: vm });
}

export const qvmShutdown: Command = {
  name: 'qvm-shutdown',
  usage: '[-h] [--socket PATH] [--all] [--exclude VM] [--wait] [--timeout SEC] [--force] [-q] [VMNAME ...]',
  summary: 'Gracefully shut down qubes.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {
        all: { type: 'boolean' },
        exclude: { type: 'string', multiple: true },
        wait: { type: 'boolean' },
        force: { type: 'boolean' },
        timeout: { type: 'string' },
      });
      if (a.flag('help')) return printHelp(this, prog);
      const timeoutArg = a.str('timeout');
      const timeout = timeoutArg === undefined ? undefined : Number(timeoutArg);
      if (timeout !== undefined && !(Number.isInteger(timeout) && timeout > 0)) {
        throw new UsageError(`--timeout needs a positive number of seconds, not '${timeoutArg ?? ''}'`);
      }
      const exclude = a.strs('exclude');
      const domains = await targets(a.client, a.positionals, a.flag('all'), exclude);
      // Qubes: --all without --exclude shuts everything down, netvms included, so it forces.
      const force = a.flag('force') || (a.flag('all') && exclude.length === 0);
      const failures = await mapLimit(domains, CLI_CONCURRENCY, async (d) => {
        try {
          await shutdownOne(a.client, d.name, { force, wait: a.flag('wait'), timeout });
          return 0;
        } catch (err) {
          if (err instanceof RemoteError && NOT_STARTED.has(err.type)) return 0;
          if (!(err instanceof Error)) throw err;
          process.stderr.write(`Error: Failed to shut down: ${d.name}: ${err.message}\n`);
          return 1;
        }
      });
      return Math.min(failures.reduce<number>((x, y) => x + y, 0), 1);
    });
  },
};

function simpleAction(name: string, method: string, summary: string, ignoreNotStarted: boolean, allowAll: boolean): Command {
  return {
    name,
    usage: `[-h] [--socket PATH]${allowAll ? ' [--all] [--exclude VM]' : ''} VMNAME [VMNAME ...]`,
    summary,
    run(argv, prog) {
      return runCommand(this, prog, async () => {
        const a = parse(argv, allowAll ? { all: { type: 'boolean' }, exclude: { type: 'string', multiple: true } } : {});
        if (a.flag('help')) return printHelp(this, prog);
        const domains = await targets(a.client, a.positionals, a.flag('all'), a.strs('exclude'));
        let ok = true;
        for (const d of domains) {
          try {
            await a.client.call({ method, dest: d.name });
          } catch (err) {
            if (ignoreNotStarted && err instanceof RemoteError && NOT_STARTED.has(err.type)) continue;
            if (!(err instanceof Error)) throw err;
            errorLine(prog, `${d.name}: ${err.message}`);
            ok = false;
          }
        }
        return ok ? 0 : 1;
      });
    },
  };
}

export const qvmKill = simpleAction('qvm-kill', 'admin.vm.Kill', 'Stop qubes at once (no graceful shutdown).', true, false);
export const qvmPause = simpleAction('qvm-pause', 'admin.vm.Pause', 'Freeze running qubes.', false, true);
export const qvmUnpause = simpleAction('qvm-unpause', 'admin.vm.Unpause', 'Thaw paused qubes.', false, true);

export const qvmCheck: Command = {
  name: 'qvm-check',
  usage: '[-h] [--socket PATH] [-q] [--all] [--running | --paused | --template | --networked] VMNAME [VMNAME ...]',
  summary: 'Check that qubes exist (or are running, paused, templates, networked). Exit 0 if all are.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {
        all: { type: 'boolean' },
        running: { type: 'boolean' },
        paused: { type: 'boolean' },
        template: { type: 'boolean' },
        networked: { type: 'boolean' },
      });
      if (a.flag('help')) return printHelp(this, prog);
      const checks = ['running', 'paused', 'template', 'networked'].filter((c) => a.flag(c));
      if (checks.length > 1) throw new UsageError('give at most one of --running, --paused, --template, --networked');
      const all = await listDomains(a.client);
      const names = a.flag('all') ? all.map((d) => d.name) : a.positionals;
      if (names.length === 0) throw new UsageError('one of the arguments --all VMNAME is required');
      const quiet = a.flag('quiet');
      let ok = true;
      for (const d of pickDomains(all, names)) {
        let verdict: string;
        let pass: boolean;
        if (a.flag('running')) {
          pass = d.state === 'Running';
          verdict = pass ? 'is running' : 'is not running';
        } else if (a.flag('paused')) {
          pass = d.state === 'Paused';
          verdict = pass ? 'is paused' : 'is not paused';
        } else if (a.flag('template')) {
          pass = d.klass === 'TemplateVM';
          verdict = pass ? 'is a template' : 'is not a template';
        } else if (a.flag('networked')) {
          const netvm = d.klass === 'AdminVM' ? '' : await a.client.call({ method: 'admin.vm.property.Get', dest: d.name, arg: 'netvm' });
          pass = !/ $/.test(netvm) && netvm !== '';
          verdict = pass ? 'is networked' : 'is not networked';
        } else {
          [verdict, pass] = ['exists', true];
        }
        if (!quiet) out(`${d.name}: ${verdict}`);
        ok &&= pass;
      }
      return ok ? 0 : 1;
    });
  },
};
