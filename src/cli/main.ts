// Entry point of every command: `bulkhead <verb> ...`, or a qvm-* name (bin/qvm-ls is a link to
// bin/bulkhead; the name it was called by picks the command). Command modules load lazily so a
// qvm-* call pays only for what it runs.
import path from 'node:path';
import type { Command } from './common.js';

type Loader = () => Promise<Command>;

const COMMANDS: ReadonlyMap<string, Loader> = new Map<string, Loader>([
  ['qvm-ls', async () => (await import('./commands/ls.js')).qvmLs],
  ['qvm-create', async () => (await import('./commands/create.js')).qvmCreate],
  ['qvm-clone', async () => (await import('./commands/create.js')).qvmClone],
  ['qvm-remove', async () => (await import('./commands/create.js')).qvmRemove],
  ['qvm-prefs', async () => (await import('./commands/prefs.js')).qvmPrefs],
  ['qubes-prefs', async () => (await import('./commands/prefs.js')).qubesPrefs],
  ['qvm-features', async () => (await import('./commands/features.js')).qvmFeatures],
  ['qvm-service', async () => (await import('./commands/features.js')).qvmService],
  ['qvm-tags', async () => (await import('./commands/features.js')).qvmTags],
  ['qvm-start', async () => (await import('./commands/power.js')).qvmStart],
  ['qvm-shutdown', async () => (await import('./commands/power.js')).qvmShutdown],
  ['qvm-kill', async () => (await import('./commands/power.js')).qvmKill],
  ['qvm-pause', async () => (await import('./commands/power.js')).qvmPause],
  ['qvm-unpause', async () => (await import('./commands/power.js')).qvmUnpause],
  ['qvm-check', async () => (await import('./commands/power.js')).qvmCheck],
  ['qvm-run', async () => (await import('./commands/run.js')).qvmRun],
  ['qvm-volume', async () => (await import('./commands/volume.js')).qvmVolume],
  ['qvm-firewall', async () => (await import('./commands/firewall.js')).qvmFirewall],
  ['template', async () => (await import('./commands/template.js')).template],
  ['ask', async () => (await import('./commands/ask.js')).ask],
  ['policy', async () => (await import('./commands/policy.js')).policy],
]);

function usage(): string {
  return [
    'usage: bulkhead <command> [args...]',
    '',
    'commands:',
    '  daemon [--data-dir DIR] [--socket PATH] [--default-qubes] [--build-default-template]',
    '                 run the admin daemon (foreground)',
    ...[...COMMANDS.keys()].map((c) =>
      c.includes('-') ? `  ${c.padEnd(14)} (also: bulkhead ${c.replace(/^(qvm|qubes)-/, '')})` : `  ${c} ... (see bulkhead ${c} --help)`),
    '',
    'Every command takes --socket PATH (or BULKHEAD_SOCKET); default /run/bulkhead/qubesd.sock.',
  ].join('\n');
}

function lookup(verb: string): Loader | undefined {
  return COMMANDS.get(verb) ?? COMMANDS.get(`qvm-${verb}`) ?? COMMANDS.get(`qubes-${verb}`);
}

export async function main(argv: readonly string[]): Promise<number> {
  // `qvm-ls | head`: a reader that goes away ends the command quietly, as a pipe should.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(0);
      throw err;
    });
  }
  const invoked = path.basename(argv[1] ?? 'bulkhead');
  let args = argv.slice(2);
  let verb = invoked;
  if (invoked === 'bulkhead' || invoked.startsWith('main.')) {
    const [first, ...rest] = args;
    if (first === undefined || first === '-h' || first === '--help' || first === 'help') {
      process.stdout.write(`${usage()}\n`);
      return first === undefined ? 2 : 0;
    }
    verb = first;
    args = rest;
  }
  if (verb === 'daemon') {
    const { daemonMain } = await import('./daemon-cmd.js');
    return daemonMain(args);
  }
  const loader = lookup(verb);
  if (!loader) {
    process.stderr.write(`bulkhead: unknown command '${verb}'\n${usage()}\n`);
    return 2;
  }
  const cmd = await loader();
  const viaUmbrella = invoked === 'bulkhead' || invoked.startsWith('main.');
  return cmd.run(args, viaUmbrella ? cmd.name : invoked);
}
