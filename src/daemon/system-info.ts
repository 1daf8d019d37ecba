// The qrexec policy's view of the qubes: Qubes' system-info shape, built from the registry and
// the power states. Built per request: cheap (one pass over the qubes) and never stale.
import { boolValue, refValue } from '../core/properties.js';
import type { Registry } from '../core/registry.js';
import type { DomainInfo, SystemInfo } from '../policy/index.js';
import type { Lifecycle } from './lifecycle.js';

export function systemInfo(registry: Registry, lifecycle: Lifecycle): SystemInfo {
  const s = registry.state;
  const domains: Record<string, DomainInfo> = {};
  for (const q of s.qubes.values()) {
    const internal = q.features.get('internal');
    domains[q.name] = {
      type: q.klass,
      tags: [...q.tags].sort(),
      default_dispvm: refValue(s, q, 'default_dispvm'),
      template_for_dispvms: boolValue(s, q, 'template_for_dispvms'),
      power_state: q.klass === 'AdminVM' ? 'Running' : lifecycle.powerState(q.name),
      uuid: q.uuid,
      internal: internal !== undefined && internal !== '' && internal !== '0',
    };
  }
  return { domains };
}
