// bulkhead template build host|debian [NAME]: builds a root filesystem and registers it as a
// TemplateVM (or replaces the root of an existing, halted TemplateVM of that name).
import { templateCacheDir, withBuiltRoot, type TemplateFlavor } from '../../hal/container/templates.js';
import { RemoteError } from '../client.js';
import { ExitError, UsageError, errorLine, listDomains, out, parse, printHelp, runCommand, type Command } from '../common.js';

const DEFAULT_NAMES: Record<TemplateFlavor, string> = { debian: 'debian-12', host: 'host' };
const TEMPLATE_CACHE = templateCacheDir();

export const template: Command = {
  name: 'bulkhead template',
  usage: '[-h] [--socket PATH] [--label LABEL] build {host,debian} [NAME]',
  summary: [
    'Build a TemplateVM root and register it (default names: host, debian-12).',
    '  host    a small skeleton with the host\'s /usr bound read-only: no download, fastest start; for tests.',
    '  debian  Debian bookworm from Debian\'s packages (debootstrap minbase + qube essentials), cached',
    `          in ${TEMPLATE_CACHE}: the first build takes about a minute, later ones seconds.`,
  ].join('\n'),
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, { label: { type: 'string' } });
      if (a.flag('help')) return printHelp(this, prog);
      const [verb, flavorArg, nameArg, ...extra] = a.positionals;
      if (verb !== 'build') throw new UsageError('expected: build {host,debian} [NAME]');
      if (flavorArg !== 'host' && flavorArg !== 'debian') throw new UsageError(`unknown template kind '${flavorArg ?? ''}' (host or debian)`);
      if (extra.length > 0) throw new UsageError('too many arguments');
      const flavor: TemplateFlavor = flavorArg;
      const name = nameArg ?? DEFAULT_NAMES[flavor];
      const existing = (await listDomains(a.client)).find((d) => d.name === name);
      if (existing && existing.klass !== 'TemplateVM') {
        errorLine(prog, `'${name}' exists and is a ${existing.klass}, not a TemplateVM`);
        throw new ExitError(1);
      }
      if (existing && existing.state !== 'Halted') {
        errorLine(prog, `'${name}' is running; shut it down first`);
        throw new ExitError(1);
      }
      const made = { created: false };
      try {
        await withBuiltRoot(flavor, (m) => { if (!a.flag('quiet')) out(m); }, async (root) => {
          if (!existing) {
            await a.client.call({ method: 'admin.vm.Create.TemplateVM', dest: 'dom0', payload: `name=${name} label=${a.str('label') ?? 'black'}` });
            made.created = true;
          }
          await a.client.call({ method: 'bulkhead.vm.volume.ImportDir', dest: name, arg: 'root', payload: JSON.stringify(root) });
        });
      } catch (err) {
        if (made.created) await a.client.call({ method: 'admin.vm.Remove', dest: name }).catch(() => undefined);
        if (err instanceof RemoteError) throw err;
        errorLine(prog, `building the ${flavor} template failed: ${(err as Error).message}`);
        throw new ExitError(1);
      }
      if (!a.flag('quiet')) out(`${existing ? 'rebuilt' : 'created'} TemplateVM '${name}' (${flavor})`);
      return 0;
    });
  },
};
