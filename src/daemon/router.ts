// The qrexec router: a qube asks for a service (TRIGGER_SERVICE3 on its channel) → policy →
// (ask) → the target is started if allowed → both ends are connected → the bytes between them
// are copied as they are (no parsing, no re-encoding) until both hang up. Every refusal answers
// SERVICE_REFUSED (the caller's qrexec-client-vm exits 126) and leaves the caller's qube as it was.
import crypto from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { QubeRecord } from '../core/model.js';
import { qubeValue } from '../core/properties.js';
import type { Registry } from '../core/registry.js';
import type { ServiceRequest } from '../hal/types.js';
import { answerAsk, type Resolution } from '../policy/index.js';
import { formatServiceCommand, splitServiceAndArg } from '../protocol/qrexec.js';
import type { AskBroker } from './ask.js';
import { serveDom0 } from './dom0-services.js';
import type { Lifecycle } from './lifecycle.js';
import type { AskAnswer, PendingAsk, QrexecAdmin } from './methods.js';
import type { PolicyStore } from './policy-store.js';
import type { AdminDispatcher } from './server.js';
import { systemInfo } from './system-info.js';

/** Connected calls one qube may have open at once (as caller). */
const MAX_ACTIVE_PER_SOURCE = 256;

export interface RouterDeps {
  readonly registry: Registry;
  readonly lifecycle: Lifecycle;
  readonly policy: PolicyStore;
  readonly asks: AskBroker;
  readonly dispatcher: AdminDispatcher;
  readonly log: Logger;
}

/** How the target the caller named reaches the service: QREXEC_REQUESTED_TARGET(_TYPE/_KEYWORD). */
function requestedTargetWord(t: string): { type: 'name' | 'keyword'; value: string } {
  if (t === '' || t === '@default') return { type: 'keyword', value: 'default' };
  if (t === '@adminvm') return { type: 'keyword', value: 'adminvm' };
  if (t.startsWith('@dispvm')) return { type: 'keyword', value: 'dispvm' };
  return { type: 'name', value: t };
}

/** Copies bytes both ways until both sides are done; either side failing ends both. */
export function splice(a: Duplex, b: Duplex): Promise<void> {
  return new Promise<void>((resolve) => {
    let closed = 0;
    const onClose = (): void => {
      closed += 1;
      if (closed === 2) resolve();
    };
    for (const [x, y] of [[a, b], [b, a]] as const) {
      x.on('error', () => { x.destroy(); y.destroy(); });
      x.once('close', () => {
        // A side gone before it finished writing takes the other down; one that ended cleanly
        // (its FIN passed on by pipe) lets the other finish.
        if (!x.readableEnded) y.destroy();
        onClose();
      });
    }
    a.pipe(b);
    b.pipe(a);
  });
}

export class QrexecRouter implements QrexecAdmin {
  readonly #d: RouterDeps;
  readonly #active = new Set<Duplex>();
  readonly #activeBySource = new Map<string, number>();
  #closed = false;

  constructor(deps: RouterDeps) {
    this.#d = deps;
  }

  // ---------- QrexecAdmin (admin-domain-only methods) ----------

  systemInfo(): unknown {
    return systemInfo(this.#d.registry, this.#d.lifecycle);
  }

  asks(): readonly PendingAsk[] {
    return this.#d.asks.list();
  }

  answerAsk(id: string, answer: AskAnswer): void {
    this.#d.asks.answer(id, answer);
  }

  /** May `source` see `q` through admin.vm.List / admin.Events? Policy decides, as in Qubes. */
  visible(source: QubeRecord, service: string, q: QubeRecord): boolean {
    const res = this.#d.policy.evaluate(
      { source: source.name, target: q.name, service, argument: '+' },
      systemInfo(this.#d.registry, this.#d.lifecycle),
    );
    return res.result === 'allow';
  }

  // ---------- routing ----------

  handle(r: ServiceRequest): void {
    if (this.#closed) {
      r.refuse();
      return;
    }
    this.#route(r).catch((err: unknown) => {
      this.#d.log.error({ err, source: r.source, service: r.trigger.serviceAndArg }, 'qrexec call failed');
      r.refuse();
    });
  }

  async #route(r: ServiceRequest): Promise<void> {
    const { registry, log } = this.#d;
    const { serviceAndArg, target: untrustedTarget } = r.trigger;
    const { service, arg } = splitServiceAndArg(serviceAndArg);
    const what = { source: r.source, target: untrustedTarget, service: serviceAndArg };
    const source = registry.state.qubes.get(r.source);
    if (source === undefined) {
      r.refuse();
      return;
    }
    if ((this.#activeBySource.get(r.source) ?? 0) >= MAX_ACTIVE_PER_SOURCE) {
      log.warn(what, 'qrexec: too many open calls from this qube; refused');
      r.refuse();
      return;
    }
    await this.#d.policy.refresh();
    let res: Resolution = this.#d.policy.evaluate(
      { source: r.source, target: untrustedTarget, service, argument: `+${arg}` },
      systemInfo(registry, this.#d.lifecycle),
    );
    if (res.result === 'ask') {
      const answer = await this.#d.asks.ask({
        source: r.source, service, argument: `+${arg}`, targets: res.targets, defaultTarget: res.defaultTarget,
      });
      res = answerAsk(res, answer);
    }
    if (res.result === 'ask') throw new Error('an ask resolved into another ask');
    if (res.result === 'deny') {
      log.info({ ...what, reason: res.reason }, 'qrexec: denied');
      if (res.notify) this.#notify(source, serviceAndArg, untrustedTarget, 'deny', res.reason);
      r.refuse();
      return;
    }
    if (res.notify) this.#notify(source, serviceAndArg, res.target, 'allow', '');
    if (res.target === r.source) {
      log.info(what, 'qrexec: loopback qrexec connection not supported; refused');
      r.refuse();
      return;
    }
    log.info({ ...what, to: res.target }, 'qrexec: allowed');
    if (res.target === 'dom0') {
      await this.#toDom0(r, source, service, arg, res.requestedTarget);
    } else if (res.target.startsWith('@dispvm:')) {
      await this.#toDispVM(r, res.target.slice('@dispvm:'.length), res, serviceAndArg);
    } else {
      await this.#toQube(r, res.target, res, serviceAndArg);
    }
  }

  #notify(source: QubeRecord, serviceAndArg: string, target: string, result: string, reason: string): void {
    this.#d.log.warn({ source: source.name, target, service: serviceAndArg, result, reason }, 'qrexec notification');
    // `vm` names the caller, so qubes' event streams show it only to those allowed to see it.
    this.#d.registry.emit({
      subject: '', event: 'bulkhead-qrexec-notify',
      kwargs: [['vm', source.name], ['target', target], ['service', serviceAndArg], ['result', result], ['reason', reason]],
    });
  }

  async #toDom0(r: ServiceRequest, source: QubeRecord, service: string, arg: string, requestedTarget: string): Promise<void> {
    // A service dom0 does not have ends with 127 (serveDom0), as one missing in a qube would.
    const sock = await r.connect();
    this.#track(r.source, sock);
    await serveDom0({ source, service, arg, requestedTarget, sock }, this.#dom0Deps());
  }

  #dom0Deps(): Parameters<typeof serveDom0>[1] {
    return {
      registry: this.#d.registry,
      dispatcher: this.#d.dispatcher,
      visible: (source, service, q) => this.visible(source, service, q),
    };
  }

  /** Runs the service in `targetName` (started first when allowed) and connects the caller. */
  async #toQube(r: ServiceRequest, targetName: string, res: Extract<Resolution, { result: 'allow' }>, serviceAndArg: string): Promise<void> {
    const { registry, lifecycle, log } = this.#d;
    const target = registry.state.qubes.get(targetName);
    if (target === undefined || target.klass === 'AdminVM') {
      r.refuse();
      return;
    }
    const state = lifecycle.powerState(target.name);
    if (state !== 'Running') {
      if (!res.autostart || state === 'Paused') {
        log.info({ source: r.source, target: target.name, state }, 'qrexec: target not running and may not be started; refused');
        r.refuse();
        return;
      }
      try {
        await lifecycle.start(target.name);
      } catch (err) {
        log.warn({ target: target.name, err: (err as Error).message }, 'qrexec: target did not start; refused');
        r.refuse();
        return;
      }
    }
    let remote: Duplex;
    try {
      remote = await this.#execService(target, res, serviceAndArg, r.source);
    } catch (err) {
      log.warn({ target: target.name, err: (err as Error).message }, 'qrexec: the target could not run the service; refused');
      r.refuse();
      return;
    }
    await this.#connectCaller(r, remote);
  }

  #execService(target: QubeRecord, res: Extract<Resolution, { result: 'allow' }>, serviceAndArg: string, source: string): Promise<Duplex> {
    const command = formatServiceCommand({ serviceAndArg, source, requestedTarget: requestedTargetWord(res.requestedTarget) });
    return this.#d.lifecycle.exec(target.name, res.user, command, false);
  }

  async #connectCaller(r: ServiceRequest, remote: Duplex): Promise<void> {
    let caller: Duplex;
    try {
      caller = await r.connect();
    } catch {
      remote.destroy();
      return;
    }
    this.#track(r.source, caller);
    this.#track(undefined, remote);
    await splice(caller, remote);
  }

  /** A new disposable from `dvmTemplate` runs the service and is removed when the call ends. */
  async #toDispVM(r: ServiceRequest, dvmTemplate: string, res: Extract<Resolution, { result: 'allow' }>, serviceAndArg: string): Promise<void> {
    const { registry, lifecycle, log } = this.#d;
    const template = registry.state.qubes.get(dvmTemplate);
    if (template === undefined) {
      r.refuse();
      return;
    }
    let disp: QubeRecord | undefined;
    try {
      disp = this.#createDisposable(template);
      await lifecycle.start(disp.name);
      const remote = await this.#execService(disp, res, serviceAndArg, r.source);
      await this.#connectCaller(r, remote);
    } catch (err) {
      log.warn({ template: dvmTemplate, err: (err as Error).message }, 'qrexec: disposable failed; refused');
      r.refuse();
    } finally {
      if (disp !== undefined) await this.#destroyDisposable(disp);
    }
  }

  #createDisposable(template: QubeRecord): QubeRecord {
    const { registry } = this.#d;
    const label = qubeValue(registry.state, template, 'label');
    for (;;) {
      const name = `disp${crypto.randomInt(1, 10_000)}`;
      if (registry.state.qubes.has(name)) continue;
      const q = registry.create({ klass: 'DispVM', name, label: typeof label === 'string' ? label : 'red', template: template.name, source: 'dom0' });
      registry.setProp(name, 'auto_cleanup', 'True');
      return q;
    }
  }

  async #destroyDisposable(disp: QubeRecord): Promise<void> {
    const { registry, lifecycle, log } = this.#d;
    try {
      if (lifecycle.powerState(disp.name) !== 'Halted') await lifecycle.kill(disp.name);
      registry.remove(disp.name);
      lifecycle.removeVolumes(disp);
    } catch (err) {
      log.error({ qube: disp.name, err: (err as Error).message }, 'qrexec: could not remove a disposable');
    }
  }

  /** Keeps `sock` to close with the router; a caller's socket also counts against its qube's limit. */
  #track(source: string | undefined, sock: Duplex): void {
    this.#active.add(sock);
    sock.once('close', () => { this.#active.delete(sock); });
    if (source === undefined) return;
    this.#activeBySource.set(source, (this.#activeBySource.get(source) ?? 0) + 1);
    sock.once('close', () => {
      const n = (this.#activeBySource.get(source) ?? 1) - 1;
      if (n <= 0) this.#activeBySource.delete(source);
      else this.#activeBySource.set(source, n);
    });
  }

  close(): void {
    this.#closed = true;
    this.#d.asks.close();
    for (const s of this.#active) s.destroy();
  }
}
