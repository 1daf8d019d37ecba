// The default set of qubes a newcomer's system starts with (defined on the first start of an
// empty data dir): the template, the disposable template, the networking qubes (sys-net with a
// `nat` uplink through the host, sys-firewall as every AppVM's netvm), and the usual AppVMs.
import type { Registry } from '../core/registry.js';

export const DEFAULT_TEMPLATE = 'debian-12';
export const DEFAULT_DVM = 'default-dvm';
export const SYS_NET = 'sys-net';
export const SYS_FIREWALL = 'sys-firewall';

export function defineDefaultQubes(registry: Registry): void {
  const make = (klass: 'TemplateVM' | 'AppVM', name: string, label: string, template?: string): void => {
    registry.create({ klass, name, label, source: 'dom0', ...(template === undefined ? {} : { template }) });
  };
  make('TemplateVM', DEFAULT_TEMPLATE, 'black');
  registry.setGlobal('default_template', DEFAULT_TEMPLATE);
  make('AppVM', SYS_NET, 'red', DEFAULT_TEMPLATE);
  registry.setProp(SYS_NET, 'provides_network', 'True');
  registry.setProp(SYS_NET, 'netvm', '');
  registry.featureSet(SYS_NET, 'net.uplink', 'nat');
  make('AppVM', SYS_FIREWALL, 'green', DEFAULT_TEMPLATE);
  registry.setProp(SYS_FIREWALL, 'provides_network', 'True');
  registry.setProp(SYS_FIREWALL, 'netvm', SYS_NET);
  registry.setGlobal('default_netvm', SYS_FIREWALL);
  make('AppVM', DEFAULT_DVM, 'red', DEFAULT_TEMPLATE);
  registry.setProp(DEFAULT_DVM, 'template_for_dispvms', 'True');
  registry.setGlobal('default_dispvm', DEFAULT_DVM);
  make('AppVM', 'work', 'blue', DEFAULT_TEMPLATE);
  make('AppVM', 'personal', 'yellow', DEFAULT_TEMPLATE);
  make('AppVM', 'untrusted', 'red', DEFAULT_TEMPLATE);
  make('AppVM', 'vault', 'black', DEFAULT_TEMPLATE);
  registry.setProp('vault', 'netvm', '');
}
