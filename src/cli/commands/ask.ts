// bulkhead ask: the pending qrexec `ask` questions, answered from the command line until the
// desktop exists (bulkhead.ask.List / bulkhead.ask.Answer, admin domain only).
import { formatTable, out, parse, printHelp, runCommand, UsageError, type Command } from '../common.js';

export const ask: Command = {
  name: 'ask',
  usage: '[-h] [--socket PATH] {list | answer ID (allow TARGET | deny)}',
  summary: 'List pending qrexec asks, or answer one: allow it to one of the offered targets, or deny it.',
  run(argv, prog) {
    return runCommand(this, prog, async () => {
      const a = parse(argv, {});
      if (a.flag('help')) return printHelp(this, prog);
      const [action = 'list', ...args] = a.positionals;
      if (action === 'list' || action === 'ls') {
        if (args.length > 0) throw new UsageError('list takes no arguments');
        const rows = (await a.client.callList({ method: 'bulkhead.ask.List', dest: 'dom0' })).map((line) => {
          const [id = '', ...pairs] = line.split(' ');
          const kv = new Map(pairs.map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
          const arg = kv.get('argument') ?? '+';
          return [id, kv.get('source') ?? '', `${kv.get('service') ?? ''}${arg === '+' ? '' : arg}`,
            kv.get('targets') ?? '', kv.get('default_target') || '-', `${kv.get('expires_in') ?? '?'}s`];
        });
        if (rows.length === 0) return 0;
        for (const line of formatTable([['ID', 'SOURCE', 'SERVICE', 'TARGETS', 'DEFAULT', 'EXPIRES'], ...rows])) out(line);
        return 0;
      }
      if (action === 'answer') {
        const [id, verdict, target, ...extra] = args;
        if (id === undefined || verdict === undefined || extra.length > 0) throw new UsageError('answer takes ID allow TARGET, or ID deny');
        let payload: string;
        if (verdict === 'allow') {
          if (target === undefined) throw new UsageError('allow needs the TARGET to allow (one of the offered targets)');
          payload = `allow ${target}`;
        } else if (verdict === 'deny') {
          if (target !== undefined) throw new UsageError('deny takes no target');
          payload = 'deny';
        } else {
          throw new UsageError(`invalid answer '${verdict}' (choose from allow, deny)`);
        }
        await a.client.call({ method: 'bulkhead.ask.Answer', dest: 'dom0', arg: id, payload });
        return 0;
      }
      throw new UsageError(`invalid action '${action}' (choose from list, answer)`);
    });
  },
};
