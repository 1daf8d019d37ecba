// AskBroker: pending qrexec asks, answered by prompt providers or by id; denied on timeout,
// overload and close. Expected answers and limits are restated from the module's contract
// (4 pending asks per source, 64 in all), not read from the code.
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { QubesError } from '../core/errors.js';
import { AskBroker, type AskQuestion, type PromptProvider } from './ask.js';
import { silentLogger } from './log.js';
import type { AskAnswer, PendingAsk } from './methods.js';

const question: AskQuestion = {
  source: 'work',
  service: 'qubes.Filecopy',
  argument: '+',
  targets: ['vault', 'personal'],
  defaultTarget: 'vault',
};

function broker(t: TestContext, timeoutMs = 60_000): AskBroker {
  const b = new AskBroker(silentLogger(), timeoutMs);
  t.after(() => { b.close(); });
  return b;
}

/** A provider that records what it is shown and how often its dismiss functions ran. */
function recorder(): PromptProvider & { shown: { ask: PendingAsk; answer: (a: AskAnswer) => void }[]; dismissed: string[] } {
  const shown: { ask: PendingAsk; answer: (a: AskAnswer) => void }[] = [];
  const dismissed: string[] = [];
  return {
    shown,
    dismissed,
    present(ask, answer) {
      shown.push({ ask, answer });
      return () => { dismissed.push(ask.id); };
    },
  };
}

/** Resolves with 'pending' if `p` has not settled after the current macrotask. */
async function state<T>(p: Promise<T>): Promise<T | 'pending'> {
  return Promise.race([p, new Promise<'pending'>((r) => { setImmediate(() => { r('pending'); }); })]);
}

function isValueError(err: unknown): boolean {
  return err instanceof QubesError && err.type === 'QubesValueError';
}

describe('AskBroker', () => {
  test('ask() resolves with the answer a provider gives', async (t) => {
    const b = broker(t);
    const p = recorder();
    b.addProvider(p);
    const answer = b.ask(question);
    assert.equal(p.shown.length, 1);
    assert.equal(await state(answer), 'pending');
    p.shown[0]!.answer({ allow: true, target: 'personal' });
    assert.deepEqual(await answer, { allow: true, target: 'personal' });
    assert.deepEqual(b.list(), []);
  });

  test('a provider may deny', async (t) => {
    const b = broker(t);
    const p = recorder();
    b.addProvider(p);
    const answer = b.ask(question);
    p.shown[0]!.answer({ allow: false });
    assert.deepEqual(await answer, { allow: false });
  });

  test('list() shows each pending ask with id, source, service, argument, targets, defaultTarget, expiresIn', async (t) => {
    const b = broker(t);
    const p = recorder();
    b.addProvider(p);
    const a1 = b.ask(question);
    const a2 = b.ask({ source: 'sys-usb', service: 'qubes.InputMouse', argument: '+sys-usb', targets: ['dom0'], defaultTarget: null });
    const list = b.list();
    assert.equal(list.length, 2);
    assert.equal(typeof list[0]!.id, 'string');
    assert.ok(list[0]!.id.length > 0);
    assert.notEqual(list[0]!.id, list[1]!.id);
    assert.deepEqual({ ...list[0]!, targets: [...list[0]!.targets] }, {
      id: list[0]!.id,
      source: 'work',
      service: 'qubes.Filecopy',
      argument: '+',
      targets: ['vault', 'personal'],
      defaultTarget: 'vault',
      expiresIn: 60,
    });
    assert.deepEqual({ ...list[1]!, targets: [...list[1]!.targets] }, {
      id: list[1]!.id,
      source: 'sys-usb',
      service: 'qubes.InputMouse',
      argument: '+sys-usb',
      targets: ['dom0'],
      defaultTarget: null,
      expiresIn: 60,
    });
    // The providers were shown the same view (same ids).
    assert.deepEqual(p.shown.map((s) => s.ask.id), list.map((a) => a.id));
    b.answer(list[1]!.id, { allow: true, target: 'dom0' });
    assert.deepEqual(await a2, { allow: true, target: 'dom0' });
    assert.deepEqual(b.list().map((a) => a.id), [list[0]!.id]);
    b.answer(list[0]!.id, { allow: false });
    assert.deepEqual(await a1, { allow: false });
    assert.deepEqual(b.list(), []);
  });

  test('expiresIn counts whole seconds, rounded up', (t) => {
    const b = broker(t, 1500);
    void b.ask(question);
    assert.equal(b.list()[0]!.expiresIn, 2);
  });

  test('answer() with an unknown id throws QubesValueError', (t) => {
    const b = broker(t);
    void b.ask(question);
    assert.throws(() => { b.answer('nope', { allow: false }); }, isValueError);
    assert.throws(() => { b.answer('', { allow: true, target: 'vault' }); }, isValueError);
    assert.equal(b.list().length, 1);
  });

  test('answer() with a target not offered throws QubesValueError and leaves the ask pending', async (t) => {
    const b = broker(t);
    const p = recorder();
    b.addProvider(p);
    const answer = b.ask(question);
    const id = b.list()[0]!.id;
    for (const target of ['dom0', 'Vault', '', 'vault ', '@default']) {
      assert.throws(() => { b.answer(id, { allow: true, target }); }, isValueError, target);
    }
    assert.deepEqual(b.list().map((a) => a.id), [id]);
    assert.equal(await state(answer), 'pending');
    assert.deepEqual(p.dismissed, []);
    b.answer(id, { allow: true, target: 'vault' });
    assert.deepEqual(await answer, { allow: true, target: 'vault' });
  });

  test('an answered id is gone: answering it again throws', async (t) => {
    const b = broker(t);
    const answer = b.ask(question);
    const id = b.list()[0]!.id;
    b.answer(id, { allow: false });
    assert.deepEqual(await answer, { allow: false });
    assert.throws(() => { b.answer(id, { allow: true, target: 'vault' }); }, isValueError);
  });

  test('a provider answering a target not offered is ignored; the ask stays pending', async (t) => {
    const b = broker(t);
    const p = recorder();
    b.addProvider(p);
    const answer = b.ask(question);
    assert.doesNotThrow(() => { p.shown[0]!.answer({ allow: true, target: 'dom0' }); });
    assert.equal(await state(answer), 'pending');
    assert.equal(b.list().length, 1);
    p.shown[0]!.answer({ allow: true, target: 'vault' });
    assert.deepEqual(await answer, { allow: true, target: 'vault' });
    // A second answer through the same callback is ignored too.
    assert.doesNotThrow(() => { p.shown[0]!.answer({ allow: false }); });
  });

  test('an unanswered ask is denied after the timeout and dismissed', async (t) => {
    const b = broker(t, 50);
    const p = recorder();
    b.addProvider(p);
    const started = Date.now();
    const answer = b.ask(question);
    const id = b.list()[0]!.id;
    assert.deepEqual(await answer, { allow: false });
    assert.ok(Date.now() - started >= 40, `denied after ${Date.now() - started} ms`);
    assert.deepEqual(b.list(), []);
    assert.deepEqual(p.dismissed, [id]);
    assert.throws(() => { b.answer(id, { allow: true, target: 'vault' }); }, isValueError);
  });

  test('a fifth pending ask from one source is denied at once, unseen; other sources still ask', async (t) => {
    const b = broker(t);
    const p = recorder();
    b.addProvider(p);
    const four = [1, 2, 3, 4].map(() => b.ask(question));
    assert.equal(p.shown.length, 4);
    assert.deepEqual(await b.ask(question), { allow: false });
    assert.equal(p.shown.length, 4);
    assert.equal(b.list().length, 4);
    const other = b.ask({ ...question, source: 'personal' });
    assert.equal(p.shown.length, 5);
    assert.equal(await state(other), 'pending');
    // Answering one of the four makes room for one more from that source.
    p.shown[0]!.answer({ allow: false });
    assert.deepEqual(await four[0], { allow: false });
    const again = b.ask(question);
    assert.equal(p.shown.length, 6);
    assert.equal(await state(again), 'pending');
    assert.deepEqual(await b.ask(question), { allow: false });
    for (const a of four.slice(1)) assert.equal(await state(a), 'pending');
  });

  test('a 65th pending ask in all is denied at once, unseen', async (t) => {
    const b = broker(t);
    const p = recorder();
    b.addProvider(p);
    const all: Promise<AskAnswer>[] = [];
    for (let s = 0; s < 16; s++) {
      for (let i = 0; i < 4; i++) all.push(b.ask({ ...question, source: `q${s}` }));
    }
    assert.equal(b.list().length, 64);
    assert.equal(p.shown.length, 64);
    assert.deepEqual(await b.ask({ ...question, source: 'fresh' }), { allow: false });
    assert.equal(p.shown.length, 64);
    assert.equal(b.list().length, 64);
    b.answer(b.list()[10]!.id, { allow: false });
    const more = b.ask({ ...question, source: 'fresh' });
    assert.equal(p.shown.length, 65);
    assert.equal(await state(more), 'pending');
    b.close();
    for (const a of [...all, more]) assert.deepEqual(await a, { allow: false });
  });

  test('close() denies every pending ask and dismisses them', async (t) => {
    const b = broker(t);
    const p = recorder();
    b.addProvider(p);
    const answers = [b.ask(question), b.ask({ ...question, source: 'personal' }), b.ask({ ...question, source: 'sys-usb' })];
    const ids = b.list().map((a) => a.id);
    b.close();
    for (const a of answers) assert.deepEqual(await a, { allow: false });
    assert.deepEqual(b.list(), []);
    assert.deepEqual([...p.dismissed].sort(), [...ids].sort());
  });

  test('every provider is shown the ask; all their dismiss functions run once when it is settled', async (t) => {
    const b = broker(t);
    const p1 = recorder();
    const p2 = recorder();
    b.addProvider(p1);
    b.addProvider(p2);
    const answer = b.ask(question);
    const id = b.list()[0]!.id;
    assert.equal(p1.shown.length, 1);
    assert.equal(p2.shown.length, 1);
    p2.shown[0]!.answer({ allow: true, target: 'personal' });
    assert.deepEqual(await answer, { allow: true, target: 'personal' });
    assert.deepEqual(p1.dismissed, [id]);
    assert.deepEqual(p2.dismissed, [id]);
    // A late answer through the other provider changes nothing and dismisses nothing again.
    p1.shown[0]!.answer({ allow: false });
    assert.deepEqual(p1.dismissed, [id]);
  });

  test('a removed provider is not shown later asks', (t) => {
    const b = broker(t);
    const p = recorder();
    const remove = b.addProvider(p);
    void b.ask(question);
    remove();
    void b.ask({ ...question, source: 'personal' });
    assert.equal(p.shown.length, 1);
  });

  test('a provider that throws does not break ask(); the others still show and answer it', async (t) => {
    const b = broker(t);
    b.addProvider({ present() { throw new Error('no display'); } });
    const p = recorder();
    b.addProvider(p);
    let answer!: Promise<AskAnswer>;
    assert.doesNotThrow(() => { answer = b.ask(question); });
    assert.equal(p.shown.length, 1);
    assert.equal(b.list().length, 1);
    p.shown[0]!.answer({ allow: true, target: 'vault' });
    assert.deepEqual(await answer, { allow: true, target: 'vault' });
  });

  test('a dismiss function that throws does not stop the others or the answer', async (t) => {
    const b = broker(t);
    b.addProvider({ present() { return () => { throw new Error('gone'); }; } });
    const p = recorder();
    b.addProvider(p);
    const answer = b.ask(question);
    const id = b.list()[0]!.id;
    b.answer(id, { allow: false });
    assert.deepEqual(await answer, { allow: false });
    assert.deepEqual(p.dismissed, [id]);
  });

  test('with no provider the ask waits for answer() by id', async (t) => {
    const b = broker(t);
    const answer = b.ask(question);
    assert.equal(await state(answer), 'pending');
    b.answer(b.list()[0]!.id, { allow: true, target: 'personal' });
    assert.deepEqual(await answer, { allow: true, target: 'personal' });
  });
});

describe('AskBroker: a provider that answers at once', () => {
  test('the ask resolves; no other provider is left showing a settled ask', async (t) => {
    const b = broker(t);
    b.addProvider({
      present(_ask, answer) {
        answer({ allow: true, target: 'vault' });
        return () => { /* nothing shown */ };
      },
    });
    const p = recorder();
    b.addProvider(p);
    assert.deepEqual(await b.ask(question), { allow: true, target: 'vault' });
    assert.deepEqual(b.list(), []);
    // Either the second provider never saw the ask, or it was told to take it back.
    for (const s of p.shown) assert.ok(p.dismissed.includes(s.ask.id), `provider still shows ask ${s.ask.id}`);
  });
});
