// qvm-ls: list qubes as Qubes does — one admin.vm.List, then one GetAll per listed qube.
import { RemoteError, type AdminClient } from '../client.js';
import {
  UsageError,
  formatTable,
  listDomains,
  CLI_CONCURRENCY,
  mapLimit,
  out,
  parse,
  parseGetAll,
  pickDomains,
  printHelp,
  runCommand,
  type Command,
  type DomainInfo,
  type PropLine,
} from '../common.js';

const FORMATS: Readonly<Record<string, readonly string[]>> = {
  simple: ['name', 'state', 'class', 'label', 'template', 'netvm'],
  network: ['name', 'state', 'netvm', 'ip', 'ipback', 'gateway'],
  full: ['name', 'state', 'class', 'label', 'qid', 'xid', 'uuid'],
  prefs: ['name', 'label', 'template', 'netvm', 'memory', 'maxmem', 'vcpus', 'backend'],
};

interface Row {
  readonly domain: DomainInfo;
  readonly props: Map<string, PropLine>;
  readonly tags: readonly string[];
  depth: number;
}

function cell(row: Row, column: string): string {
  switch (column) {
    case 'name':
      return row.domain.name;
    case 'state':
      return row.domain.state;
    case 'class':
      return row.domain.klass;
    case 'tags':
      return row.tags.length > 0 ? row.tags.join(',') : '-';
    default: {
      const p = row.props.get(column);
      return p === undefined || p.value === '' ? '-' : p.value;
    }
  }
}

async function fetchRow(client: AdminClient, domain: DomainInfo, withTags: boolean): Promise<Row> {
  const props = parseGetAll(await client.call({ method: 'admin.vm.property.GetAll', dest: domain.name }));
  const tags = withTags
    ? await client.callList({ method: 'admin.vm.tag.List', dest: domain.name })
    : [];
  return { domain, props, tags, depth: 0 };
}

/** Orders rows as a netvm tree: each qube under the qube that provides its network. */
function treeOrder(rows: Row[]): Row[] {
  const byName = new Map(rows.map((r) => [r.domain.name, r]));
  const children = new Map<string, Row[]>();
  const roots: Row[] = [];
  for (const r of rows) {
    const netvm = r.props.get('netvm')?.value ?? '';
    if (netvm !== '' && byName.has(netvm) && netvm !== r.domain.name) {
      const list = children.get(netvm) ?? [];
      list.push(r);
      children.set(netvm, list);
    } else {
      roots.push(r);
    }
  }
  const ordered: Row[] = [];
  const visit = (r: Row, depth: number): void => {
    if (ordered.includes(r)) return;
    r.depth = depth;
    ordered.push(r);
    for (const c of children.get(r.domain.name) ?? []) visit(c, depth + 1);
  };
  for (const r of roots) visit(r, 0);
  for (const r of rows) visit(r, 0); // anything left (cannot happen without loops)
  return ordered;
}

export const qvmLs: Command = {
  name: 'qvm-ls',
  usage:
    '[-h] [--socket PATH] [--all] [--exclude VM] [--running] [--halted] [--paused] [--class CLASS] ' +
    '[--tags TAG] [--format FORMAT | -O FIELDS] [--raw-data | --raw-list] [--tree] [--help-formats] [VMNAME ...]',
  summary: 'List qubes and some of their properties.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {
        all: { type: 'boolean' },
        exclude: { type: 'string', multiple: true },
        running: { type: 'boolean' },
        halted: { type: 'boolean' },
        paused: { type: 'boolean' },
        class: { type: 'string', multiple: true },
        tags: { type: 'string', multiple: true },
        format: { type: 'string' },
        fields: { type: 'string', short: 'O' },
        'raw-data': { type: 'boolean' },
        'raw-list': { type: 'boolean' },
        tree: { type: 'boolean', short: 't' },
        'help-formats': { type: 'boolean' },
      });
      if (a.flag('help')) return printHelp(this, prog);
      if (a.flag('help-formats')) {
        for (const [name, cols] of Object.entries(FORMATS)) out(`${name}: ${cols.join(' ')}`);
        return 0;
      }
      const formatName = a.str('format');
      const fieldsArg = a.str('fields');
      if (formatName !== undefined && fieldsArg !== undefined) throw new UsageError('--format and -O/--fields exclude each other');
      let columns: readonly string[];
      if (fieldsArg !== undefined) {
        columns = fieldsArg.split(',').map((f) => f.trim().toLowerCase()).filter((f) => f !== '');
        if (columns.length === 0) throw new UsageError('-O/--fields needs at least one field');
      } else {
        const fmt = FORMATS[formatName ?? 'simple'];
        if (!fmt) throw new UsageError(`unknown format '${formatName ?? ''}'; known: ${Object.keys(FORMATS).join(', ')}`);
        columns = fmt;
      }

      let domains = await listDomains(a.client);
      if (a.positionals.length > 0) domains = pickDomains(domains, a.positionals);
      const excluded = new Set(a.strs('exclude'));
      const states = new Set<string>();
      if (a.flag('running')) states.add('Running');
      if (a.flag('halted')) states.add('Halted');
      if (a.flag('paused')) states.add('Paused');
      const classes = new Set(a.strs('class'));
      domains = domains.filter(
        (d) =>
          !excluded.has(d.name) &&
          (states.size === 0 || states.has(d.state)) &&
          (classes.size === 0 || classes.has(d.klass)),
      );
      const wantTags = a.strs('tags');
      const needTags = wantTags.length > 0 || columns.includes('tags');
      // A qube removed while we list it is skipped, as Qubes does.
      const fetched = await mapLimit(domains, CLI_CONCURRENCY, async (d) => {
        try {
          return await fetchRow(a.client, d, needTags);
        } catch (err) {
          if (err instanceof RemoteError && err.type === 'QubesVMNotFoundError') return undefined;
          throw err;
        }
      });
      let rows = fetched.filter((r): r is Row => r !== undefined);
      if (wantTags.length > 0) rows = rows.filter((r) => r.tags.some((t) => wantTags.includes(t)));

      if (a.flag('raw-list')) {
        for (const r of rows) out(r.domain.name);
        return 0;
      }
      if (a.flag('tree')) rows = treeOrder(rows);
      const body = rows.map((r) =>
        columns.map((c) => {
          const v = cell(r, c);
          return c === 'name' && r.depth > 0 ? `${'  '.repeat(r.depth - 1)}└─${v}` : v;
        }),
      );
      if (a.flag('raw-data')) {
        for (const line of body) out(line.join('|'));
        return 0;
      }
      const header = columns.map((c) => c.toUpperCase());
      for (const line of formatTable([header, ...body])) out(line);
      return 0;
    });
  },
};
