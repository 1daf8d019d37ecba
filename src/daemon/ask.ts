// qrexec `ask`: pending questions to the user, answered by a prompt provider (the desktop later;
// now the TTY the daemon runs in, and `bulkhead ask list|answer`). Unanswered asks are denied
// after a timeout. Every question is bounded: a qube flooding calls gets its extra asks denied
// at once, and one qube cannot crowd out the others.
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { QubesError } from '../core/errors.js';
import type { AskAnswer, PendingAsk } from './methods.js';

export const DEFAULT_ASK_TIMEOUT_MS = 60_000;
/** Pending asks at most, in all, and from one source qube. */
const MAX_PENDING = 64;
const MAX_PENDING_PER_SOURCE = 4;

export interface AskQuestion {
  readonly source: string;
  readonly service: string;
  readonly argument: string;
  readonly targets: readonly string[];
  readonly defaultTarget: string | null;
}

/** Shows a question somewhere a human is; calls `answer` at most once. Returns a dismiss function. */
export interface PromptProvider {
  present(ask: PendingAsk, answer: (a: AskAnswer) => void): () => void;
}

interface Entry {
  readonly ask: AskQuestion & { readonly id: string };
  readonly expires: number;
  readonly resolve: (a: AskAnswer) => void;
  readonly timer: NodeJS.Timeout;
  dismiss: (() => void)[];
}

export class AskBroker {
  readonly #timeoutMs: number;
  readonly #log: Logger;
  readonly #pending = new Map<string, Entry>();
  readonly #providers = new Set<PromptProvider>();
  #closed = false;

  constructor(log: Logger, timeoutMs = DEFAULT_ASK_TIMEOUT_MS) {
    this.#log = log;
    this.#timeoutMs = timeoutMs;
  }

  addProvider(p: PromptProvider): () => void {
    this.#providers.add(p);
    return () => this.#providers.delete(p);
  }

  /** Asks; resolves with the answer (deny on timeout, overload or close). Never rejects. */
  ask(q: AskQuestion): Promise<AskAnswer> {
    if (this.#closed) return Promise.resolve({ allow: false });
    const fromSource = [...this.#pending.values()].filter((e) => e.ask.source === q.source).length;
    if (this.#pending.size >= MAX_PENDING || fromSource >= MAX_PENDING_PER_SOURCE) {
      this.#log.warn({ source: q.source, service: q.service }, 'too many pending asks; denied without asking');
      return Promise.resolve({ allow: false });
    }
    const id = crypto.randomBytes(4).toString('hex');
    return new Promise<AskAnswer>((resolve) => {
      const timer = setTimeout(() => {
        this.#log.info({ id, source: q.source, service: q.service }, 'ask not answered in time; denied');
        this.#settle(id, { allow: false });
      }, this.#timeoutMs);
      const entry: Entry = { ask: { ...q, id }, expires: Date.now() + this.#timeoutMs, resolve, timer, dismiss: [] };
      this.#pending.set(id, entry);
      this.#log.info({ id, source: q.source, service: q.service, argument: q.argument, targets: q.targets }, 'qrexec ask pending');
      for (const p of this.#providers) {
        // A provider may answer inside present(): then the others are not shown a settled ask.
        if (!this.#pending.has(id)) break;
        try {
          const dismiss = p.present(this.#view(entry), (a) => { this.#answerChecked(id, a); });
          if (this.#pending.has(id)) entry.dismiss.push(dismiss);
          else dismiss();
        } catch (err) {
          this.#log.warn({ err }, 'prompt provider failed');
        }
      }
    });
  }

  list(): PendingAsk[] {
    return [...this.#pending.values()].map((e) => this.#view(e));
  }

  /** Answers a pending ask; throws QubesError for an unknown id or a target that was not offered. */
  answer(id: string, a: AskAnswer): void {
    const e = this.#pending.get(id);
    if (e === undefined) throw new QubesError('QubesValueError', `No pending ask with id '${id}' (answered, expired or never asked)`);
    if (a.allow && !e.ask.targets.includes(a.target)) {
      throw new QubesError('QubesValueError', `'${a.target}' is not one of the offered targets: ${e.ask.targets.join(', ')}`);
    }
    this.#settle(id, a);
  }

  #answerChecked(id: string, a: AskAnswer): void {
    try {
      this.answer(id, a);
    } catch (err) {
      this.#log.warn({ id, err: (err as Error).message }, 'prompt answer ignored');
    }
  }

  #view(e: Entry): PendingAsk {
    return { ...e.ask, expiresIn: Math.max(0, Math.ceil((e.expires - Date.now()) / 1000)) };
  }

  #settle(id: string, a: AskAnswer): void {
    const e = this.#pending.get(id);
    if (e === undefined) return;
    this.#pending.delete(id);
    clearTimeout(e.timer);
    for (const d of e.dismiss) {
      try {
        d();
      } catch {
        // a provider that cannot take its prompt back changes nothing
      }
    }
    this.#log.info({ id, answer: a.allow ? `allow ${a.target}` : 'deny' }, 'qrexec ask answered');
    e.resolve(a);
  }

  /** Denies everything pending, and every later ask. */
  close(): void {
    this.#closed = true;
    for (const id of [...this.#pending.keys()]) this.#settle(id, { allow: false });
  }
}
