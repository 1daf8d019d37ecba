// Plumbing for tests that run real qubes: a daemon with the container backend (crun), a host
// template built by the real `bulkhead template build`, AppVMs, and commands run inside them
// with the real qvm-run. Everything is removed after the suite (qubes are stopped by the daemon;
// containers of a daemon that died hard are reaped by Daemon.stop).
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before } from 'node:test';
import { Daemon, startDaemon, type RunResult } from './helpers.js';

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

  run(cmd: string, args: readonly string[] = [], input?: string): Promise<RunResult> {
    return this.daemon.run(cmd, args, { env: { BULKHEAD_CACHE_DIR: this.cacheDir }, ...(input === undefined ? {} : { input }) });
  }

  /** Runs a command and fails the test (with its output) unless it exits 0. */
  async ok(cmd: string, args: readonly string[] = [], input?: string): Promise<string> {
    const r = await this.run(cmd, args, input);
    assert.equal(r.code, 0, `${cmd} ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r.stdout;
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
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      last = await this.state(vm);
      if (last === want) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail(`${vm} is ${last}, not ${want}, after ${timeoutMs} ms`);
  }
}

/**
 * One daemon with a host template `tpl` and the given AppVMs for a whole describe block,
 * stopped (with every qube) in after(), even when tests fail.
 */
export function suiteQubes(appvms: readonly string[] = [], opts: { start?: boolean } = {}): () => QubeHost {
  let host: QubeHost | undefined;
  before(async () => {
    const daemon = await startDaemon();
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
