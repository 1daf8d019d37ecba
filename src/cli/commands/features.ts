// qvm-features, qvm-service (features named service.NAME) and qvm-tags.
import { RemoteError, type AdminClient } from '../client.js';
import { isValidFeatureName, isValidFeatureValue, isValidTag } from '../../core/names.js';
import {
  ExitError,
  UsageError,
  formatTable,
  out,
  parse,
  printHelp,
  requireDomains,
  runCommand,
  type Command,
} from '../common.js';

async function featureNames(client: AdminClient, vm: string): Promise<string[]> {
  return await client.callList({ method: 'admin.vm.feature.List', dest: vm });
}

/** undefined when the feature is not set. */
async function featureGet(client: AdminClient, vm: string, feature: string): Promise<string | undefined> {
  try {
    return await client.call({ method: 'admin.vm.feature.Get', dest: vm, arg: feature });
  } catch (err) {
    if (err instanceof RemoteError && err.type === 'QubesFeatureNotFoundError') return undefined;
    throw err;
  }
}

async function featureRemove(client: AdminClient, vm: string, feature: string): Promise<void> {
  try {
    await client.call({ method: 'admin.vm.feature.Remove', dest: vm, arg: feature });
  } catch (err) {
    if (!(err instanceof RemoteError && err.type === 'QubesFeatureNotFoundError')) throw err;
  }
}

export const qvmFeatures: Command = {
  name: 'qvm-features',
  usage: '[-h] [--socket PATH] [--unset | -D] VMNAME [FEATURE [VALUE]]',
  summary: 'List, get, set or unset features of a qube.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, { unset: { type: 'boolean' }, default: { type: 'boolean', short: 'D' }, delete: { type: 'boolean' } });
      if (a.flag('help')) return printHelp(this, prog);
      const [vm, feature, value, ...extra] = a.positionals;
      if (vm === undefined) throw new UsageError('the following arguments are required: VMNAME');
      if (extra.length > 0) throw new UsageError(`unrecognized arguments: ${extra.join(' ')}`);
      if (feature !== undefined && !isValidFeatureName(feature)) {
        throw new UsageError(`invalid feature name '${feature}': use letters, digits, _ . and -`);
      }
      if (value !== undefined && !isValidFeatureValue(value)) {
        throw new UsageError('feature values must be printable ASCII');
      }
      await requireDomains(a.client, [vm]);
      const unset = a.flag('unset') || a.flag('default') || a.flag('delete');
      if (feature === undefined) {
        if (unset) throw new UsageError('--unset requires a feature');
        const rows: string[][] = [];
        for (const name of await featureNames(a.client, vm)) rows.push([name, (await featureGet(a.client, vm, name)) ?? '']);
        for (const line of formatTable(rows)) out(line);
        return 0;
      }
      if (unset) {
        if (value !== undefined) throw new UsageError('cannot both set and unset a feature');
        await featureRemove(a.client, vm, feature);
        return 0;
      }
      if (value !== undefined) {
        await a.client.call({ method: 'admin.vm.feature.Set', dest: vm, arg: feature, payload: value });
        return 0;
      }
      const v = await featureGet(a.client, vm, feature);
      if (v === undefined) return 1;
      out(v);
      return 0;
    });
  },
};

const ON = new Set(['on', 'true', '1', 'yes', 'enable', 'enabled']);
const OFF = new Set(['off', 'false', '0', 'no', 'disable', 'disabled', '']);

export const qvmService: Command = {
  name: 'qvm-service',
  usage: '[-h] [--socket PATH] [--list | --enable | --disable | --unset] VMNAME [SERVICE [on|off]]',
  summary: 'Manage qube services (features named service.NAME).',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {
        list: { type: 'boolean', short: 'l' },
        enable: { type: 'boolean', short: 'e' },
        disable: { type: 'boolean', short: 'd' },
        unset: { type: 'boolean' },
        default: { type: 'boolean', short: 'D' },
      });
      if (a.flag('help')) return printHelp(this, prog);
      const [vm, service, value, ...extra] = a.positionals;
      if (vm === undefined) throw new UsageError('the following arguments are required: VMNAME');
      if (extra.length > 0) throw new UsageError(`unrecognized arguments: ${extra.join(' ')}`);
      const actions = ['enable', 'disable', 'unset', 'default'].filter((f) => a.flag(f));
      if (actions.length > 1 || (actions.length === 1 && value !== undefined)) {
        throw new UsageError('give only one of --enable, --disable, --unset or a value');
      }
      if (service !== undefined && !isValidFeatureName(`service.${service}`)) {
        throw new UsageError(`invalid service name '${service}'`);
      }
      await requireDomains(a.client, [vm]);
      if (service === undefined || a.flag('list')) {
        if (actions.length > 0) throw new UsageError('this action needs a SERVICE');
        const rows: string[][] = [];
        for (const f of await featureNames(a.client, vm)) {
          if (!f.startsWith('service.')) continue;
          const v = await featureGet(a.client, vm, f);
          rows.push([f.slice('service.'.length), v !== undefined && v !== '' ? 'on' : 'off']);
        }
        for (const line of formatTable(rows)) out(line);
        return 0;
      }
      const feature = `service.${service}`;
      if (a.flag('unset') || a.flag('default')) {
        await featureRemove(a.client, vm, feature);
        return 0;
      }
      let enable: boolean | undefined;
      if (a.flag('enable')) enable = true;
      else if (a.flag('disable')) enable = false;
      else if (value !== undefined) {
        const v = value.toLowerCase();
        if (ON.has(v)) enable = true;
        else if (OFF.has(v)) enable = false;
        else throw new UsageError(`invalid service value '${value}' (use on or off)`);
      }
      if (enable !== undefined) {
        await a.client.call({ method: 'admin.vm.feature.Set', dest: vm, arg: feature, payload: enable ? '1' : '' });
        return 0;
      }
      const current = await featureGet(a.client, vm, feature);
      if (current === undefined) return 1;
      out(current !== '' ? 'on' : 'off');
      return 0;
    });
  },
};

export const qvmTags: Command = {
  name: 'qvm-tags',
  usage: '[-h] [--socket PATH] VMNAME [list [TAG] | add TAG ... | del TAG ...]',
  summary: 'List, check, add or remove tags of a qube.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {});
      if (a.flag('help')) return printHelp(this, prog);
      const [vm, action = 'list', ...tags] = a.positionals;
      if (vm === undefined) throw new UsageError('the following arguments are required: VMNAME');
      const bad = tags.find((t) => !isValidTag(t));
      if (bad !== undefined) throw new UsageError(`invalid tag '${bad}': use letters, digits, _ and -`);
      await requireDomains(a.client, [vm]);
      switch (action) {
        case 'list':
        case 'ls': {
          if (tags.length > 1) throw new UsageError('list takes at most one TAG');
          const [tag] = tags;
          if (tag !== undefined) {
            const has = await a.client.call({ method: 'admin.vm.tag.Get', dest: vm, arg: tag });
            if (has !== '1') throw new ExitError(1);
            out(tag);
            return 0;
          }
          const all = await a.client.callList({ method: 'admin.vm.tag.List', dest: vm });
          for (const t of all.sort()) out(t);
          return 0;
        }
        case 'add':
        case 'set':
          if (tags.length === 0) throw new UsageError('add needs at least one TAG');
          for (const t of tags) await a.client.call({ method: 'admin.vm.tag.Set', dest: vm, arg: t });
          return 0;
        case 'del':
        case 'rm':
        case 'unset':
          if (tags.length === 0) throw new UsageError('del needs at least one TAG');
          for (const t of tags) {
            try {
              await a.client.call({ method: 'admin.vm.tag.Remove', dest: vm, arg: t });
            } catch (err) {
              if (!(err instanceof RemoteError && err.type === 'QubesTagNotFoundError')) throw err;
            }
          }
          return 0;
        default:
          throw new UsageError(`invalid action '${action}' (choose from list, add, del)`);
      }
    });
  },
};
