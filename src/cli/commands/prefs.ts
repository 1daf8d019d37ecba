// qvm-prefs and qubes-prefs: list, get, set (-D: reset) qube and global properties.
import { RemoteError, type AdminClient } from '../client.js';
import {
  ExitError,
  UsageError,
  errorLine,
  formatTable,
  out,
  parse,
  parseGetAll,
  parseReading,
  printHelp,
  requireDomains,
  runCommand,
  type Command,
} from '../common.js';

/** Properties whose value `none` means None (sent as an empty payload), as qvm-prefs does. */
const NONE_AS_EMPTY = new Set(['netvm', 'template', 'default_dispvm', 'default_netvm', 'default_template', 'clockvm', 'updatevm', 'guivm', 'audiovm']);

interface Target {
  readonly prefix: 'admin.vm.property' | 'admin.property';
  readonly dest: string;
}

async function listProps(client: AdminClient, t: Target, hideDefault: boolean): Promise<void> {
  const props = parseGetAll(await client.call({ method: `${t.prefix}.GetAll`, dest: t.dest }));
  const rows: string[][] = [];
  for (const name of [...props.keys()].sort()) {
    const p = props.get(name);
    if (!p) continue;
    const unset = p.value === '' && (p.type === 'int' || p.type === 'bool');
    if (hideDefault && p.isDefault) continue;
    if (unset) rows.push([name, 'U']);
    else rows.push([name, p.isDefault ? 'D' : '-', p.value === '' && p.type === 'vm' ? 'None' : p.value]);
  }
  for (const line of formatTable(rows)) out(line);
}

async function prefs(prog: string, cmd: Command, argv: string[], global: boolean): Promise<number> {
  const a = parse(argv, {
    'hide-default': { type: 'boolean' },
    default: { type: 'boolean', short: 'D' },
    'help-properties': { type: 'boolean' },
  });
  if (a.flag('help')) return printHelp(cmd, prog);
  const args = [...a.positionals];
  let dest = 'dom0';
  if (!global) {
    const vm = args.shift();
    if (vm === undefined) throw new UsageError('the following arguments are required: VMNAME');
    await requireDomains(a.client, [vm]);
    dest = vm;
  }
  const t: Target = { prefix: global ? 'admin.property' : 'admin.vm.property', dest };
  if (a.flag('help-properties')) {
    const names = await a.client.callList({ method: `${t.prefix}.List`, dest });
    for (const n of names) out(`${n}: ${await a.client.call({ method: `${t.prefix}.Help`, dest, arg: n })}`);
    return 0;
  }
  const [rawProp, value, ...extra] = args;
  if (extra.length > 0) throw new UsageError(`unrecognized arguments: ${extra.join(' ')}`);
  if (rawProp === undefined) {
    if (a.flag('default')) throw new UsageError('-D/--default needs a property');
    await listProps(a.client, t, a.flag('hide-default'));
    return 0;
  }
  const prop = rawProp.replaceAll('-', '_');
  try {
    if (a.flag('default')) {
      if (value !== undefined) throw new UsageError('cannot set and reset a property at once');
      await a.client.call({ method: `${t.prefix}.Reset`, dest, arg: prop });
    } else if (value !== undefined) {
      const payload = NONE_AS_EMPTY.has(prop) && value.toLowerCase() === 'none' ? '' : value;
      await a.client.call({ method: `${t.prefix}.Set`, dest, arg: prop, payload });
    } else {
      const reading = parseReading(await a.client.call({ method: `${t.prefix}.Get`, dest, arg: prop }));
      if (!(a.flag('hide-default') && reading.isDefault) && reading.value !== '') out(reading.value);
    }
  } catch (err) {
    if (err instanceof RemoteError && err.type === 'QubesNoSuchPropertyError') {
      errorLine(prog, `no such property: '${prop}'`);
      throw new ExitError(2);
    }
    throw err;
  }
  return 0;
}

export const qvmPrefs: Command = {
  name: 'qvm-prefs',
  usage: '[-h] [--socket PATH] [--hide-default] [-D] [--help-properties] VMNAME [PROPERTY [VALUE]]',
  summary: 'List, get or set (-D: reset to default) properties of a qube.',
  run(argv, prog) {
    return runCommand(this, prog, () => prefs(prog, this, argv, false));
  },
};

export const qubesPrefs: Command = {
  name: 'qubes-prefs',
  usage: '[-h] [--socket PATH] [--hide-default] [-D] [--help-properties] [PROPERTY [VALUE]]',
  summary: 'List, get or set (-D: reset to default) global properties.',
  run(argv, prog) {
    return runCommand(this, prog, () => prefs(prog, this, argv, true));
  },
};
