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
import { answerAsk, type Resolution, type SystemInfo } from '../policy/index.js';
import { formatServiceCommand, splitServiceAndArg } from '../protocol/qrexec.js';
import type { AskBroker } from './ask.js';
import { serveDom0 } from './dom0-services.js';
import type { Lifecycle } from './lifecycle.js';
import type { AskAnswer, PendingAsk, QrexecAdmin } from './methods.js';
import type { PolicyStore } from './policy-store.js';
import type { AdminDispatcher } from './server.js';
import { systemInfo } from './system-info.js';

/** Calls one qube may have open at once (waiting for policy, ask or target, or connected). */
const MAX_CALLS_PER_SOURCE = 256;
/** Disposables started for calls: per source qube, and in all. */
const MAX_DISPOSABLES_PER_SOURCE = 4;
const MAX_DISPOSABLES = 16;
/** How long one view of the system serves admin.vm.List / admin.Events visibility checks. */
const VISIBILITY_VIEW_MS = 1000;

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

/** How long a caller may keep its connection once the service side has finished. */
const LINGER_MS = 10_000;
/** How long close() waits for calls in flight to clean up (disposables) before giving up. */
const CLOSE_WAIT_MS = 5_000;

/**
 * Copies bytes both ways between the caller and the service, unparsed, until both are closed.
 * The caller's half-close passes on (the service's stdin ends). The service side ending (its
 * agent ends after the exit code) is the end of the call: its connection is closed at once, the
 * caller gets the end after the last bytes and is closed LINGER_MS later if it has not gone by
 * then. The caller gone takes the service side down; either side failing takes both down.
 */
export function splice(caller: Duplex, service: Duplex): Promise<void> {
  return new Promise<void>((resolve) => {
    let closed = 0;
    let linger: NodeJS.Timeout | undefined;
    const onClose = (): void => {
      closed += 1;
      if (closed === 2) resolve();
    };
    caller.on('error', () => { caller.destroy(); service.destroy(); });
    service.on('error', () => { service.destroy(); caller.destroy(); });
    caller.once('close', () => {
      if (linger !== undefined) clearTimeout(linger);
      service.destroy();
      onClose();
    });
    service.once('end', () => {
      // pipe() ends the caller after the data already read; the service side has nothing more.
      setImmediate(() => { service.destroy(); });
      linger = setTimeout(() => { caller.destroy(); }, LINGER_MS);
      linger.unref();
    });
    service.once('close', () => {
      if (!service.readableEnded) caller.destroy();
      onClose();
    });
    caller.pipe(service);
    service.pipe(caller);
  });
}

export class QrexecRouter implements QrexecAdmin {
  readonly #d: RouterDeps;
  readonly #active = new Set<Duplex>();
  /** Calls of each source qube from trigger to the end of the data, waiting ones included. */
  readonly #callsBySource = new Map<string, number>();
  /** Disposables being set up or serving a call, per source and in all. */
  readonly #dispsBySource = new Map<string, number>();
  #disps = 0;
  readonly #inflight = new Set<Promise<void>>();
  #closed = false;

  constructor(deps: RouterDeps) {
    this.#d = deps;
  }

  // ---------- QrexecAdmin (admin-domain-only methods) ----------

  systemInfo(): unknown {
    return systemInfo(this.#d.registry, this.#d.lifecycle);
  }

  policyDir(): string {
    return this.#d.policy.dir;
  }

  asks(): readonly PendingAsk[] {
    return this.#d.asks.list();
  }

  answerAsk(id: string, answer: AskAnswer): void {
    this.#d.asks.answer(id, answer);
  }

  /**
   * Which qubes `source` may see through `service` (admin.vm.List / admin.Events): those the
   * policy would allow it to call that method on, as in Qubes. One view of the system per call.
   */
  visibility(source: QubeRecord, service: string): (q: QubeRecord) => boolean {
    // One view of the system for a burst of checks (a whole admin.vm.List), taken at the first
    // check (most admin calls never check) and refreshed for a long event stream so that tags or
    // power states changed later count.
    let sys: SystemInfo | undefined;
    let taken = 0;
    return (q) => {
      if (sys === undefined || Date.now() - taken > VISIBILITY_VIEW_MS) {
        sys = systemInfo(this.#d.registry, this.#d.lifecycle);
        taken = Date.now();
      }
      return this.#d.policy.evaluate({ source: source.name, target: q.name, service, argument: '+' }, sys).result === 'allow';
    };
  }

  // ---------- routing ----------

  handle(r: ServiceRequest): void {
    const calls = this.#callsBySource.get(r.source) ?? 0;
    if (this.#closed || calls >= MAX_CALLS_PER_SOURCE) {
      if (!this.#closed) this.#d.log.warn({ source: r.source }, 'qrexec: too many open calls from this qube; refused');
      r.refuse();
      return;
    }
    this.#callsBySource.set(r.source, calls + 1);
    const job = this.#route(r)
      .catch((err: unknown) => {
        this.#d.log.error({ err, source: r.source, service: r.trigger.serviceAndArg }, 'qrexec call failed');
        r.refuse();
      })
      .finally(() => {
        this.#inflight.delete(job);
        const n = (this.#callsBySource.get(r.source) ?? 1) - 1;
        if (n <= 0) this.#callsBySource.delete(r.source);
        else this.#callsBySource.set(r.source, n);
      });
    this.#inflight.add(job);
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
      if (res.notify) this.#notify(source, serviceAndArg, 'deny');
      r.refuse();
      return;
    }
    if (res.notify) this.#notify(source, serviceAndArg, 'allow');
    if (res.target === r.source) {
      log.info(what, 'qrexec: loopback qrexec connection not supported; refused');
      r.refuse();
      return;
    }
    // An ask can take a minute: a caller gone meanwhile starts nothing.
    if (!r.alive() || this.#closed) {
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

  /** notify=yes: logged, and an event naming only the caller (its stream-visibility decides who sees it). */
  #notify(source: QubeRecord, serviceAndArg: string, result: string): void {
    this.#d.log.warn({ source: source.name, service: serviceAndArg, result }, 'qrexec notification');
    this.#d.registry.emit({
      subject: '', event: 'bulkhead-qrexec-notify',
      kwargs: [['vm', source.name], ['service', serviceAndArg], ['result', result]],
    });
  }

  async #toDom0(r: ServiceRequest, source: QubeRecord, service: string, arg: string, requestedTarget: string): Promise<void> {
    // A service dom0 does not have ends with 127 (serveDom0), as one missing in a qube would.
    const sock = await r.connect();
    this.#track(sock);
    try {
      await serveDom0({ source, service, arg, requestedTarget, sock }, {
        dispatcher: this.#d.dispatcher,
        visibility: (src, svc) => this.visibility(src, svc),
      });
    } catch (err) {
      sock.destroy();
      throw err;
    }
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
    if (this.#closed) {
      r.refuse();
      return;
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

  /** Connects the caller to the service's data connection; resolves when both are closed. */
  async #connectCaller(r: ServiceRequest, remote: Duplex): Promise<void> {
    this.#track(remote);
    let caller: Duplex;
    try {
      caller = await r.connect();
    } catch {
      remote.destroy();
      return;
    }
    this.#track(caller);
    await splice(caller, remote);
  }

  /**
   * A new disposable from `dvmTemplate` runs the service; it is killed and removed as soon as the
   * service side is done (not when the caller decides to hang up), and on every failure.
   */
  async #toDispVM(r: ServiceRequest, dvmTemplate: string, res: Extract<Resolution, { result: 'allow' }>, serviceAndArg: string): Promise<void> {
    const { registry, lifecycle, log } = this.#d;
    const template = registry.state.qubes.get(dvmTemplate);
    const mine = this.#dispsBySource.get(r.source) ?? 0;
    if (template === undefined || mine >= MAX_DISPOSABLES_PER_SOURCE || this.#disps >= MAX_DISPOSABLES) {
      if (template !== undefined) log.warn({ source: r.source }, 'qrexec: too many disposables at once; refused');
      r.refuse();
      return;
    }
    this.#dispsBySource.set(r.source, mine + 1);
    this.#disps += 1;
    let disp: QubeRecord | undefined;
    try {
      disp = this.#createDisposable(template);
      await lifecycle.start(disp.name);
      if (this.#closed) throw new Error('the daemon is stopping');
      const remote = await this.#execService(disp, res, serviceAndArg, r.source);
      const serviceDone = new Promise<void>((resolve) => {
        if (remote.destroyed) resolve();
        else remote.once('close', () => { resolve(); });
      });
      const call = this.#connectCaller(r, remote);
      await serviceDone;
      await this.#destroyDisposable(disp);
      disp = undefined;
      await call;
    } catch (err) {
      log.warn({ template: dvmTemplate, err: (err as Error).message }, 'qrexec: disposable failed; refused');
      r.refuse();
    } finally {
      if (disp !== undefined) await this.#destroyDisposable(disp);
      const n = (this.#dispsBySource.get(r.source) ?? 1) - 1;
      if (n <= 0) this.#dispsBySource.delete(r.source);
      else this.#dispsBySource.set(r.source, n);
      this.#disps -= 1;
    }
  }

  #createDisposable(template: QubeRecord): QubeRecord {
    const { registry } = this.#d;
    const label = qubeValue(registry.state, template, 'label');
    let name: string | undefined;
    for (let i = 0; i < 100 && name === undefined; i++) {
      const candidate = `disp${crypto.randomInt(1, 10_000)}`;
      if (!registry.state.qubes.has(candidate)) name = candidate;
    }
    if (name === undefined) throw new Error('no free disposable name');
    const q = registry.create({ klass: 'DispVM', name, label: typeof label === 'string' ? label : 'red', template: template.name, source: 'dom0' });
    try {
      // Marks it as the daemon's to remove, also after a crash (see removeLeftoverDisposables).
      registry.setProp(name, 'auto_cleanup', 'True');
    } catch (err) {
      registry.remove(name);
      throw err;
    }
    return q;
  }

  async #destroyDisposable(disp: QubeRecord): Promise<void> {
    const { registry, lifecycle, log } = this.#d;
    try {
      if (lifecycle.powerState(disp.name) !== 'Halted') await lifecycle.kill(disp.name);
      // Volumes first: a record without volumes can be removed later, volumes without a record
      // would be lost for good.
      lifecycle.removeVolumes(disp);
      registry.remove(disp.name);
    } catch (err) {
      log.error({ qube: disp.name, err: (err as Error).message }, 'qrexec: could not remove a disposable');
    }
  }

  /** Keeps `sock` to close with the router (at once, when the router is closing). */
  #track(sock: Duplex): void {
    if (this.#closed) {
      sock.destroy();
      return;
    }
    this.#active.add(sock);
    sock.once('close', () => { this.#active.delete(sock); });
  }

  /** Refuses new calls, denies pending asks, ends open calls and waits for their clean-up (disposables). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#d.asks.close();
    for (const s of this.#active) s.destroy();
    // Calls still setting up notice #closed at their next step; none may hold the daemon's stop.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.#inflight]),
      new Promise<void>((resolve) => { timer = setTimeout(resolve, CLOSE_WAIT_MS); }),
    ]);
    clearTimeout(timer);
  }
}

/**
 * Disposables the daemon started for qrexec calls and could not remove (it stopped or died
 * meanwhile): halted DispVMs with auto_cleanup, removed with their volumes at start-up.
 */
export function removeLeftoverDisposables(registry: Registry, lifecycle: Lifecycle, log: Logger): void {
  for (const q of registry.list()) {
    if (q.klass !== 'DispVM' || qubeValue(registry.state, q, 'auto_cleanup') !== true) continue;
    // Without its backend on this host its volumes cannot be removed: keep it for a later start.
    if (!lifecycle.hasBackendFor(q) || lifecycle.powerState(q.name) !== 'Halted') continue;
    try {
      lifecycle.removeVolumes(q);
      registry.remove(q.name);
      log.info({ qube: q.name }, 'removed a disposable left from an earlier run');
    } catch (err) {
      log.warn({ qube: q.name, err: (err as Error).message }, 'could not remove a leftover disposable');
    }
  }
}
