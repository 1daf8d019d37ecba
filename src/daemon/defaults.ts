// The default set of qubes a newcomer's system starts with (defined on the first start of an
// empty data dir). Networking qubes (sys-net, sys-firewall) join with the networking issue.
import type { Registry } from '../core/registry.js';

export const DEFAULT_TEMPLATE = 'debian-12';
export const DEFAULT_DVM = 'default-dvm';

export function defineDefaultQubes(registry: Registry): void {
  const make = (klass: 'TemplateVM' | 'AppVM', name: string, label: string, template?: string): void => {
    registry.create({ klass, name, label, source: 'dom0', ...(template === undefined ? {} : { template }) });
  };
  make('TemplateVM', DEFAULT_TEMPLATE, 'black');
  registry.setGlobal('default_template', DEFAULT_TEMPLATE);
  make('AppVM', DEFAULT_DVM, 'red', DEFAULT_TEMPLATE);
  registry.setProp(DEFAULT_DVM, 'template_for_dispvms', 'True');
  registry.setGlobal('default_dispvm', DEFAULT_DVM);
  make('AppVM', 'work', 'blue', DEFAULT_TEMPLATE);
  make('AppVM', 'personal', 'yellow', DEFAULT_TEMPLATE);
  make('AppVM', 'untrusted', 'red', DEFAULT_TEMPLATE);
  make('AppVM', 'vault', 'black', DEFAULT_TEMPLATE);
  registry.setProp('vault', 'netvm', '');
}
