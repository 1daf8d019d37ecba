// qvm-create, qvm-clone, qvm-remove. A failed create or clone removes what it made, so no
// half-configured qube is left behind.
import { createInterface } from 'node:readline/promises';
import { qubeNameProblem } from '../../core/names.js';
import { RemoteError, type AdminClient } from '../client.js';
import {
  UsageError,
  errorLine,
  out,
  parse,
  parseGetAll,
  parseVolumeInfo,
  printHelp,
  requireDomains,
  runCommand,
  type Command,
} from '../common.js';

/** Copies one volume from `src` to `dst` (admin.vm.volume.CloneFrom / CloneTo, as Qubes' client does). */
async function cloneVolume(client: AdminClient, src: string, dst: string, volume: string): Promise<void> {
  const token = await client.call({ method: 'admin.vm.volume.CloneFrom', dest: src, arg: volume });
  await client.call({ method: 'admin.vm.volume.CloneTo', dest: dst, arg: volume, payload: token });
}

/** Copies every persistent volume (`save_on_stop`) of `dst` from `src` (qvm-clone). */
async function clonePersistentVolumes(client: AdminClient, src: string, dst: string): Promise<void> {
  for (const volume of await client.callList({ method: 'admin.vm.volume.List', dest: dst })) {
    const info = parseVolumeInfo(await client.call({ method: 'admin.vm.volume.Info', dest: dst, arg: volume }));
    if (info.get('save_on_stop') === 'True') await cloneVolume(client, src, dst, volume);
  }
}

/** Properties a clone does not copy: identity, class, read-only and the ones set at create. */
const NOT_COPIED = new Set(['name', 'qid', 'uuid', 'klass', 'icon', 'updateable', 'label', 'template']);

async function labels(client: AdminClient): Promise<string[]> {
  return await client.callList({ method: 'admin.label.List', dest: 'dom0' });
}

async function classes(client: AdminClient): Promise<string[]> {
  return await client.callList({ method: 'admin.vmclass.List', dest: 'dom0' });
}

/** Removes a qube this command created, reporting (not hiding) a failure to do so. */
async function rollback(client: AdminClient, prog: string, name: string): Promise<void> {
  try {
    await client.call({ method: 'admin.vm.Remove', dest: name });
  } catch (err) {
    errorLine(prog, `could not remove the partly created qube '${name}': ${(err as Error).message}`);
  }
}

function parseProps(specs: string[]): [string, string][] {
  return specs.map((spec) => {
    const eq = spec.indexOf('=');
    if (eq <= 0) throw new UsageError(`--prop expects NAME=VALUE, not '${spec}'`);
    return [spec.slice(0, eq).replaceAll('-', '_'), spec.slice(eq + 1)];
  });
}

export const qvmCreate: Command = {
  name: 'qvm-create',
  usage:
    '[-h] [--socket PATH] [-C CLASS] [-t TEMPLATE] [-l LABEL] [--prop NAME=VALUE] [--standalone] [--disp] ' +
    '[--help-classes] [-q] VMNAME',
  summary: 'Create a new qube.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {
        class: { type: 'string', short: 'C' },
        template: { type: 'string', short: 't' },
        label: { type: 'string', short: 'l' },
        prop: { type: 'string', multiple: true },
        property: { type: 'string', multiple: true },
        standalone: { type: 'boolean' },
        disp: { type: 'boolean' },
        'help-classes': { type: 'boolean' },
      });
      if (a.flag('help')) return printHelp(this, prog);
      if (a.flag('help-classes')) {
        for (const c of (await classes(a.client)).sort()) out(c);
        return 0;
      }
      const [name, ...extra] = a.positionals;
      if (name === undefined) throw new UsageError('the following arguments are required: VMNAME');
      if (extra.length > 0) throw new UsageError(`unrecognized arguments: ${extra.join(' ')}`);
      const props = parseProps([...a.strs('prop'), ...a.strs('property')]);
      if (props.some(([p]) => p === 'name')) throw new UsageError('name the qube with VMNAME, not --prop name=...');
      let klass = a.str('class') ?? 'AppVM';
      if (a.flag('standalone')) klass = 'StandaloneVM';
      if (a.flag('disp')) klass = 'DispVM';
      const known = await classes(a.client);
      const matched = known.find((c) => c.toLowerCase() === klass.toLowerCase());
      if (!matched || matched === 'AdminVM') throw new UsageError(`no such class: '${klass}'; available: ${known.filter((c) => c !== 'AdminVM').join(', ')}`);
      const label = a.str('label') ?? (matched === 'DispVM' ? 'red' : undefined);
      if (label === undefined) throw new UsageError('--label option is mandatory');
      const available = await labels(a.client);
      if (!available.includes(label)) throw new UsageError(`no such label: '${label}'; available: ${available.join(', ')}`);
      const nameProblem = qubeNameProblem(name);
      if (nameProblem !== undefined) {
        process.stderr.write(`Error creating VM: ${nameProblem}\n`);
        return 1;
      }
      const template = a.str('template');
      // A TemplateVM or StandaloneVM made "from" a template gets its own copy of that root.
      const rootFrom = template !== undefined && (matched === 'TemplateVM' || matched === 'StandaloneVM') ? template : undefined;
      if (rootFrom !== undefined) await requireDomains(a.client, [rootFrom]);
      try {
        await a.client.call({
          method: `admin.vm.Create.${matched}`,
          dest: 'dom0',
          arg: rootFrom === undefined ? (template ?? '') : '',
          payload: `name=${name} label=${label}`,
        });
      } catch (err) {
        if (err instanceof RemoteError) {
          process.stderr.write(`Error creating VM: ${err.message}\n`);
          return 1;
        }
        throw err;
      }
      if (rootFrom !== undefined) {
        try {
          await cloneVolume(a.client, rootFrom, name, 'root');
        } catch (err) {
          errorLine(prog, `copying the root of '${rootFrom}' failed: ${(err as Error).message}; '${name}' was not created`);
          await rollback(a.client, prog, name);
          return 1;
        }
      }
      for (const [prop, value] of props) {
        try {
          await a.client.call({ method: 'admin.vm.property.Set', dest: name, arg: prop, payload: value });
        } catch (err) {
          errorLine(prog, `failed to set property '${prop}': ${(err as Error).message}; '${name}' was not created`);
          await rollback(a.client, prog, name);
          return 1;
        }
      }
      return 0;
    });
  },
};

export const qvmClone: Command = {
  name: 'qvm-clone',
  usage: '[-h] [--socket PATH] [-C CLASS] [-l LABEL] [-q] SOURCE NEW_NAME',
  summary: 'Create a copy of a qube: its properties, features, tags, notes and persistent volumes.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, { class: { type: 'string', short: 'C' }, label: { type: 'string', short: 'l' } });
      if (a.flag('help')) return printHelp(this, prog);
      const [src, dst, ...extra] = a.positionals;
      if (src === undefined || dst === undefined) throw new UsageError('the following arguments are required: SOURCE NEW_NAME');
      if (extra.length > 0) throw new UsageError(`unrecognized arguments: ${extra.join(' ')}`);
      const [source] = await requireDomains(a.client, [src]);
      if (!source || source.klass === 'AdminVM') throw new UsageError('cannot clone the AdminVM');
      const wanted = a.str('class') ?? source.klass;
      const known = await classes(a.client);
      const klass = known.find((c) => c.toLowerCase() === wanted.toLowerCase() && c !== 'AdminVM');
      if (klass === undefined) throw new UsageError(`no such class: '${wanted}'`);
      const problem = qubeNameProblem(dst);
      if (problem !== undefined) throw new UsageError(`invalid name '${dst}': ${problem}`);
      const props = parseGetAll(await a.client.call({ method: 'admin.vm.property.GetAll', dest: src }));
      const label = a.str('label') ?? props.get('label')?.value ?? 'red';
      const template = props.get('template');
      await a.client.call({
        method: `admin.vm.Create.${klass}`,
        dest: 'dom0',
        arg: template && (klass === 'AppVM' || klass === 'DispVM') ? template.value : '',
        payload: `name=${dst} label=${label}`,
      });
      try {
        for (const [prop, p] of props) {
          if (p.isDefault || NOT_COPIED.has(prop)) continue;
          await a.client.call({ method: 'admin.vm.property.Set', dest: dst, arg: prop, payload: p.value });
        }
        const features = await a.client.callList({ method: 'admin.vm.feature.List', dest: src });
        for (const f of features) {
          const value = await a.client.call({ method: 'admin.vm.feature.Get', dest: src, arg: f });
          await a.client.call({ method: 'admin.vm.feature.Set', dest: dst, arg: f, payload: value });
        }
        const tags = await a.client.callList({ method: 'admin.vm.tag.List', dest: src });
        for (const t of tags) {
          if (!t.startsWith('created-by-')) await a.client.call({ method: 'admin.vm.tag.Set', dest: dst, arg: t });
        }
        const notes = await a.client.callRaw({ method: 'admin.vm.notes.Get', dest: src });
        if (notes.length > 0) await a.client.call({ method: 'admin.vm.notes.Set', dest: dst, payload: notes });
        await clonePersistentVolumes(a.client, src, dst);
      } catch (err) {
        errorLine(prog, `cloning ${src} to ${dst} failed: ${(err as Error).message}; nothing was kept`);
        await rollback(a.client, prog, dst);
        return 1;
      }
      return 0;
    });
  },
};

async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await Promise.race([
      rl.question(question),
      new Promise<string>((r) => rl.once('close', () => { r(''); })),
    ]);
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}

export const qvmRemove: Command = {
  name: 'qvm-remove',
  usage: '[-h] [--socket PATH] [-f] [-q] VMNAME [VMNAME ...]',
  summary: 'Remove qubes (asks first unless -f).',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, { force: { type: 'boolean', short: 'f' }, 'force-root': { type: 'boolean' } });
      if (a.flag('help')) return printHelp(this, prog);
      if (a.positionals.length === 0) throw new UsageError('the following arguments are required: VMNAME');
      if (a.positionals.includes('dom0')) throw new UsageError('cannot remove dom0');
      const domains = await requireDomains(a.client, a.positionals);
      if (!a.flag('force')) {
        out(`This will completely remove the selected qube(s)...`);
        for (const d of domains) out(` ${d.name}`);
        if (!(await confirm('Are you sure? [y/N] '))) {
          errorLine(prog, 'not confirmed; nothing removed');
          return 1;
        }
      }
      let ok = true;
      for (const d of domains) {
        try {
          await a.client.call({ method: 'admin.vm.Remove', dest: d.name });
        } catch (err) {
          if (!(err instanceof RemoteError)) throw err;
          errorLine(prog, err.message);
          ok = false;
        }
      }
      return ok ? 0 : 1;
    });
  },
};
