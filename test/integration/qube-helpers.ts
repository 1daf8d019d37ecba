// Plumbing for tests that run real qubes: a daemon with the container backend (crun), a host
// template built by the real `bulkhead template build`, AppVMs, and commands run inside them
// with the real qvm-run. Everything is removed after the suite (qubes are stopped by the daemon;
// containers of a daemon that died hard are reaped by Daemon.stop).
import path from 'node:path';
import { after, before, type TestContext } from 'node:test';
import { Daemon, startDaemon, waitFor, type RunOptions, type RunResult, type StartOptions } from './helpers.js';

export interface QubeRunOptions {
  readonly user?: string;
  readonly input?: string;
  readonly timeoutMs?: number;
}

export class QubeHost {
  constructor(readonly daemon: Daemon) {}

  get cacheDir(): string {
    return path.join(this.daemon.tmpDir, 'cache');
  }

  /** Runs a command against this daemon, with the test's own template cache. */
  run(cmd: string, args: readonly string[] = [], opts: Omit<RunOptions, 'socketPath' | 'env'> = {}): Promise<RunResult> {
    return this.daemon.run(cmd, args, { ...opts, env: { BULKHEAD_CACHE_DIR: this.cacheDir } });
  }

  /** Runs a command and fails the test (with its output) unless it exits 0. */
  ok(cmd: string, args: readonly string[] = [], opts: Omit<RunOptions, 'socketPath' | 'env'> = {}): Promise<string> {
    return this.daemon.ok(cmd, args, { ...opts, env: { BULKHEAD_CACHE_DIR: this.cacheDir } });
  }

  /** `qvm-run -p [-u USER] VM 'COMMAND'` (a shell command line). */
  exec(vm: string, command: string, opts: QubeRunOptions = {}): Promise<RunResult> {
    const args = ['-p', ...(opts.user === undefined ? [] : ['-u', opts.user]), vm, command];
    return this.daemon.run('qvm-run', args, { input: opts.input ?? '', timeoutMs: opts.timeoutMs ?? 30_000 });
  }

  /** As exec, as the qube's root. */
  root(vm: string, command: string, opts: Omit<QubeRunOptions, 'user'> = {}): Promise<RunResult> {
    return this.exec(vm, command, { ...opts, user: 'root' });
  }

  async state(vm: string): Promise<string> {
    const text = await this.daemon.client().call({ method: 'admin.vm.CurrentState', dest: vm });
    return /power_state=(\S+)/.exec(text)?.[1] ?? '';
  }

  async uuid(vm: string): Promise<string> {
    return (await this.daemon.client().call({ method: 'admin.vm.property.Get', dest: vm, arg: 'uuid' })).split(' ').pop() ?? '';
  }

  async waitState(vm: string, want: string, timeoutMs = 10_000): Promise<void> {
    let last = '';
    await waitFor(async () => (last = await this.state(vm)) === want, timeoutMs, `${vm} to be ${want} (it is ${last})`);
  }

  /**
   * Collects the event names of `vm` from admin.Events, once the stream is established (no
   * event of the test can be missed); the stream ends with the test even when it fails.
   */
  async events(t: TestContext, vm: string): Promise<{ readonly names: string[]; stop: () => Promise<void> }> {
    const names: string[] = [];
    const ac = new AbortController();
    let established = false;
    const stream = this.daemon.client().events(vm, (e) => {
      if (e.event === 'connection-established') established = true;
      else names.push(e.event);
    }, ac.signal);
    const stop = async (): Promise<void> => {
      ac.abort();
      await stream;
    };
    t.after(stop);
    await waitFor(() => established, 5000, 'the event stream');
    return { names, stop };
  }
}

/**
 * One daemon with a host template `tpl` and the given AppVMs for a whole describe block,
 * stopped (with every qube) in after(), even when tests fail.
 */
export function suiteQubes(appvms: readonly string[] = [], opts: { start?: boolean; daemon?: Omit<StartOptions, 't'> } = {}): () => QubeHost {
  let host: QubeHost | undefined;
  before(async () => {
    const daemon = await startDaemon(opts.daemon);
    host = new QubeHost(daemon);
    await host.ok('bulkhead', ['template', 'build', 'host', 'tpl']);
    for (const vm of appvms) await host.ok('qvm-create', ['-t', 'tpl', '-l', 'red', vm]);
    if (opts.start === true && appvms.length > 0) await host.ok('qvm-start', [...appvms]);
  });
  after(async () => {
    await host?.daemon.stop();
  });
  return () => {
    if (!host) throw new Error('suite not started');
    return host;
  };
}
