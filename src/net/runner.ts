// Running iproute2, nftables and sysctl for the network orchestrator: argv only (no shell),
// input on stdin, a time limit, and the tool's own error text in the rejection.
import { spawn } from 'node:child_process';

export interface NetRunner {
  /** Runs `argv`; rejects with the program's stderr when it fails. */
  run(argv: readonly string[], input?: string): Promise<void>;
}

const TIMEOUT_MS = 20_000;
const MAX_STDERR = 4096;

export class ProcessRunner implements NetRunner {
  run(argv: readonly string[], input?: string): Promise<void> {
    const [cmd, ...args] = argv;
    if (cmd === undefined) return Promise.reject(new Error('empty command'));
    return new Promise<void>((resolve, reject) => {
      const child = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'] });
      let stderr = '';
      const err = child.stderr as NonNullable<typeof child.stderr>;
      err.setEncoding('utf8');
      err.on('data', (d: string) => { if (stderr.length < MAX_STDERR) stderr += d; });
      const timer = setTimeout(() => { child.kill('SIGKILL'); }, TIMEOUT_MS);
      child.on('error', (err) => { clearTimeout(timer); reject(new Error(`${cmd}: ${err.message}`)); });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve();
        else reject(new Error(`${[cmd, ...args.slice(0, 4)].join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim().slice(0, MAX_STDERR)}`));
      });
      if (input !== undefined && child.stdin) {
        child.stdin.on('error', () => undefined);
        child.stdin.end(input);
      }
    });
  }
}
