// A prompt provider for a daemon running in a terminal: each pending ask is shown in turn and
// answered by typing a target (allow) or `deny`. An ask answered elsewhere (`bulkhead ask
// answer`) or expired is taken off the screen.
import readline from 'node:readline';
import type { PromptProvider } from './ask.js';
import type { AskAnswer, PendingAsk } from './methods.js';

interface Queued {
  readonly ask: PendingAsk;
  readonly answer: (a: AskAnswer) => void;
  done: boolean;
}

export class TtyPrompt implements PromptProvider {
  readonly #rl: readline.Interface;
  readonly #output: NodeJS.WritableStream;
  readonly #queue: Queued[] = [];
  #current: Queued | undefined;
  readonly #guardMs: number;
  /** When the current question was put on screen. */
  #shownAt = 0;

  /**
   * `guardMs`: input arriving this soon after a question appears is ignored, so that an answer
   * typed for a question that just expired cannot answer the next one.
   */
  constructor(input: NodeJS.ReadableStream, output: NodeJS.WritableStream, guardMs = 1000) {
    this.#output = output;
    this.#guardMs = guardMs;
    this.#rl = readline.createInterface({ input, output, terminal: false });
    this.#rl.on('line', (line) => { this.#onLine(line.trim()); });
  }

  present(ask: PendingAsk, answer: (a: AskAnswer) => void): () => void {
    const q: Queued = { ask, answer, done: false };
    this.#queue.push(q);
    if (this.#current === undefined) this.#next();
    return () => {
      q.done = true;
      if (this.#current === q) {
        this.#output.write(`\n[ask ${ask.id}] answered elsewhere or expired\n`);
        this.#next();
      }
    };
  }

  #next(): void {
    this.#current = undefined;
    while (this.#queue.length > 0) {
      const q = this.#queue.shift();
      if (q === undefined || q.done) continue;
      this.#current = q;
      this.#shownAt = performance.now();
      const a = q.ask;
      const arg = a.argument === '+' ? '' : ` (argument ${a.argument.slice(1)})`;
      this.#output.write(
        `\n[ask ${a.id}] qube '${a.source}' asks for ${a.service}${arg}.\n`
        + `  targets: ${a.targets.join(', ')}\n`
        + `  type a target to allow, or 'deny'${a.defaultTarget === null ? '' : ` (empty = ${a.defaultTarget})`}; denied in ${a.expiresIn} s: `,
      );
      return;
    }
  }

  #onLine(line: string): void {
    const q = this.#current;
    if (q === undefined) return;
    if (performance.now() - this.#shownAt < this.#guardMs) {
      this.#output.write(`  (ignored: typed before this question was shown) [ask ${q.ask.id}] type a target or 'deny': `);
      return;
    }
    const target = line === '' ? q.ask.defaultTarget : line;
    if (target === null) {
      this.#output.write('  no default target: type one of the targets, or deny: ');
      return;
    }
    let answer: AskAnswer;
    // Only `deny` denies: `n` or `no` could be the name of a qube someone means to allow.
    if (target === 'deny') {
      answer = { allow: false };
    } else if (q.ask.targets.includes(target)) {
      answer = { allow: true, target };
    } else {
      this.#output.write(`  '${target}' is not offered; type one of ${q.ask.targets.join(', ')}, or deny: `);
      return;
    }
    // Off the screen first: the broker's dismiss for this very ask must not print anything.
    q.done = true;
    this.#current = undefined;
    q.answer(answer);
    this.#next();
  }

  close(): void {
    this.#rl.close();
  }
}
