// qvm-volume: list a qube's volumes and show one volume's details (admin.vm.volume.List / Info).
import {
  ExitError, UsageError, errorLine, formatTable, listDomains, CLI_CONCURRENCY, mapLimit, out, parse, parseVolumeInfo, pickDomains, printHelp, requireDomains,
  runCommand, type Command,
} from '../common.js';

export const qvmVolume: Command = {
  name: 'qvm-volume',
  usage: '[-h] [--socket PATH] {list,ls,l,info,i} ...\n  list [VMNAME ...]\n  info VMNAME:VOLUME [PROPERTY]',
  summary: 'List the volumes of qubes, or show the details of one volume.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {});
      if (a.flag('help')) return printHelp(this, prog);
      const [action = 'list', ...args] = a.positionals;
      if (['list', 'ls', 'l'].includes(action)) {
        // dom0 has no volumes (the daemon lists none), so it is left out unless named.
        const all = await listDomains(a.client);
        const domains = args.length > 0 ? pickDomains(all, args) : all.filter((d) => d.klass !== 'AdminVM');
        const perQube = await mapLimit(domains, CLI_CONCURRENCY, async (d) => {
          const rows: string[][] = [];
          for (const v of await a.client.callList({ method: 'admin.vm.volume.List', dest: d.name })) {
            const info = parseVolumeInfo(await a.client.call({ method: 'admin.vm.volume.Info', dest: d.name, arg: v }));
            rows.push([`${info.get('pool') ?? ''}:${info.get('vid') ?? ''}`, d.name, v, 'No']);
          }
          return rows;
        });
        for (const line of formatTable([['POOL:VOLUME', 'VMNAME', 'VOLUME_NAME', 'REVERT_POSSIBLE'], ...perQube.flat()])) out(line);
        return 0;
      }
      if (['info', 'i'].includes(action)) {
        const [spec, property] = args;
        if (spec === undefined || args.length > 2) throw new UsageError('info takes VMNAME:VOLUME [PROPERTY]');
        const colon = spec.indexOf(':');
        if (colon <= 0) throw new UsageError(`expected VMNAME:VOLUME, got '${spec}'`);
        const vm = spec.slice(0, colon);
        const volume = spec.slice(colon + 1);
        await requireDomains(a.client, [vm]);
        const names = await a.client.callList({ method: 'admin.vm.volume.List', dest: vm });
        if (!names.includes(volume)) throw new UsageError(`no volume '${volume}' in qube '${vm}'`);
        const info = parseVolumeInfo(await a.client.call({ method: 'admin.vm.volume.Info', dest: vm, arg: volume }));
        if (property !== undefined) {
          const value = info.get(property);
          if (value === undefined) {
            errorLine(prog, `no such property: ${property}`);
            throw new ExitError(1);
          }
          out(value);
          return 0;
        }
        for (const line of formatTable([...info.entries()].map(([k, v]) => [k, v]))) out(line);
        out('Available revisions (for revert): none');
        return 0;
      }
      throw new UsageError(`invalid action '${action}' (choose from list, info)`);
    });
  },
};
