// TtyPrompt: the terminal prompt provider, driven through PassThrough streams.
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, test, type TestContext } from 'node:test';
import { AskBroker } from './ask.js';
import { silentLogger } from './log.js';
import type { AskAnswer, PendingAsk } from './methods.js';
import { TtyPrompt } from './tty-prompt.js';

function ask(id: string, over: Partial<PendingAsk> = {}): PendingAsk {
  return {
    id,
    source: 'work',
    service: 'qubes.Filecopy',
    argument: '+',
    targets: ['vault', 'personal'],
    defaultTarget: 'vault',
    expiresIn: 60,
    ...over,
  };
}

/** Lets readline see what was written to its input and the prompt write its output. */
async function tick(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((r) => { setImmediate(r); });
}

function tty(t: TestContext, guardMs = 0): { prompt: TtyPrompt; out: () => string; type: (line: string) => Promise<void> } {
  const input = new PassThrough();
  const output = new PassThrough();
  let text = '';
  output.on('data', (c: Buffer) => { text += c.toString(); });
  const prompt = new TtyPrompt(input, output, guardMs);
  t.after(() => { prompt.close(); });
  return {
    prompt,
    out: () => text,
    type: async (line) => {
      input.write(`${line}\n`);
      await tick();
    },
  };
}

/** An answer callback that records what it got. */
function answers(): { got: AskAnswer[]; answer: (a: AskAnswer) => void } {
  const got: AskAnswer[] = [];
  return { got, answer: (a) => { got.push(a); } };
}

const ELSEWHERE = /answered elsewhere/g;

describe('TtyPrompt', () => {
  test('a line typed just as a question appears is ignored: an answer meant for an expired question never answers the next', async (t) => {
    const p = tty(t, 60_000);
    const a = answers();
    p.prompt.present(ask('aaaa1111', { source: 'work', service: 'qubes.Filecopy' }), a.answer);
    await tick();
    await p.type('deny');
    assert.deepEqual(a.got, []);
    assert.match(p.out(), /ignored: typed before this question was shown/);
  });

  test('shows one ask at a time, in order; typing an offered target allows it', async (t) => {
    const p = tty(t);
    const a = answers();
    const b = answers();
    p.prompt.present(ask('aaaa1111', { source: 'work', service: 'qubes.Filecopy' }), a.answer);
    p.prompt.present(ask('bbbb2222', { source: 'sys-usb', service: 'qubes.InputMouse', targets: ['dom0'], defaultTarget: null }), b.answer);
    await tick();
    assert.match(p.out(), /aaaa1111/);
    assert.match(p.out(), /work/);
    assert.match(p.out(), /qubes\.Filecopy/);
    assert.match(p.out(), /vault/);
    assert.match(p.out(), /personal/);
    assert.doesNotMatch(p.out(), /bbbb2222/);
    await p.type('personal');
    assert.deepEqual(a.got, [{ allow: true, target: 'personal' }]);
    assert.deepEqual(b.got, []);
    const second = p.out().slice(p.out().indexOf('bbbb2222'));
    assert.ok(p.out().indexOf('bbbb2222') > p.out().indexOf('aaaa1111'));
    assert.match(second, /sys-usb/);
    assert.match(second, /qubes\.InputMouse/);
    assert.match(second, /dom0/);
    await p.type('dom0');
    assert.deepEqual(b.got, [{ allow: true, target: 'dom0' }]);
    assert.deepEqual(a.got, [{ allow: true, target: 'personal' }]);
  });

  test('the argument is shown when there is one', async (t) => {
    const p = tty(t);
    p.prompt.present(ask('cccc3333', { argument: '+my-arg.x' }), answers().answer);
    await tick();
    assert.match(p.out(), /my-arg\.x/);
  });

  test('`deny` denies', async (t) => {
    const p = tty(t);
    const a = answers();
    p.prompt.present(ask('dddd4444'), a.answer);
    await p.type('deny');
    assert.deepEqual(a.got, [{ allow: false }]);
  });

  test('an empty line picks the default target', async (t) => {
    const p = tty(t);
    const a = answers();
    p.prompt.present(ask('eeee5555', { defaultTarget: 'personal' }), a.answer);
    await p.type('');
    assert.deepEqual(a.got, [{ allow: true, target: 'personal' }]);
  });

  test('an empty line without a default target asks again', async (t) => {
    const p = tty(t);
    const a = answers();
    p.prompt.present(ask('ffff6666', { defaultTarget: null }), a.answer);
    await tick();
    const before = p.out().length;
    await p.type('');
    assert.deepEqual(a.got, []);
    assert.ok(p.out().length > before, 'nothing printed after an empty line without default');
    await p.type('vault');
    assert.deepEqual(a.got, [{ allow: true, target: 'vault' }]);
  });

  test('a target that was not offered asks again', async (t) => {
    const p = tty(t);
    const a = answers();
    p.prompt.present(ask('0000aaaa'), a.answer);
    await tick();
    for (const bad of ['dom0', 'Vault', 'vault,personal', '@default']) {
      const before = p.out().length;
      await p.type(bad);
      assert.deepEqual(a.got, [], bad);
      assert.ok(p.out().length > before, `nothing printed after ${bad}`);
    }
    await p.type('vault');
    assert.deepEqual(a.got, [{ allow: true, target: 'vault' }]);
  });

  test('a line while nothing is pending is ignored and does not answer a later ask', async (t) => {
    const p = tty(t);
    await p.type('vault');
    const a = answers();
    p.prompt.present(ask('1111bbbb'), a.answer);
    await tick();
    assert.deepEqual(a.got, []);
    await p.type('deny');
    assert.deepEqual(a.got, [{ allow: false }]);
  });

  test('dismissing the current ask says it was answered elsewhere and moves to the next', async (t) => {
    const p = tty(t);
    const a = answers();
    const b = answers();
    const dismissA = p.prompt.present(ask('2222cccc'), a.answer);
    p.prompt.present(ask('3333dddd'), b.answer);
    await tick();
    assert.doesNotMatch(p.out(), /3333dddd/);
    dismissA();
    await tick();
    const out = p.out();
    assert.equal(out.match(ELSEWHERE)?.length, 1);
    const elsewhere = out.search(ELSEWHERE);
    assert.ok(out.lastIndexOf('2222cccc', elsewhere) >= 0, 'the message names the dismissed ask');
    assert.ok(out.indexOf('3333dddd') > elsewhere, 'the next ask is shown after the message');
    await p.type('personal');
    assert.deepEqual(a.got, []);
    assert.deepEqual(b.got, [{ allow: true, target: 'personal' }]);
  });

  test('dismissing a queued ask drops it silently', async (t) => {
    const p = tty(t);
    const a = answers();
    const b = answers();
    const c = answers();
    p.prompt.present(ask('4444eeee'), a.answer);
    const dismissB = p.prompt.present(ask('5555ffff'), b.answer);
    p.prompt.present(ask('6666aaaa'), c.answer);
    dismissB();
    await tick();
    assert.doesNotMatch(p.out(), ELSEWHERE);
    await p.type('deny');
    assert.match(p.out(), /6666aaaa/);
    assert.doesNotMatch(p.out(), /5555ffff/);
    await p.type('vault');
    assert.deepEqual(a.got, [{ allow: false }]);
    assert.deepEqual(b.got, []);
    assert.deepEqual(c.got, [{ allow: true, target: 'vault' }]);
  });

  test('answering through the prompt, then the dismiss that follows, prints no "answered elsewhere"', async (t) => {
    const p = tty(t);
    const got: AskAnswer[] = [];
    // As the broker does: the answer settles the ask, which calls every dismiss function.
    const dismiss = p.prompt.present(ask('7777bbbb'), (answer) => {
      got.push(answer);
      dismiss();
    });
    const b = answers();
    p.prompt.present(ask('8888cccc'), b.answer);
    await p.type('vault');
    assert.deepEqual(got, [{ allow: true, target: 'vault' }]);
    dismiss();
    await tick();
    assert.doesNotMatch(p.out(), ELSEWHERE);
    assert.match(p.out(), /8888cccc/);
    await p.type('deny');
    assert.deepEqual(b.got, [{ allow: false }]);
  });

  test('with the broker: a typed answer resolves the ask; an expired one gives way to the next', async (t) => {
    const broker = new AskBroker(silentLogger(), 400);
    t.after(() => { broker.close(); });
    const p = tty(t);
    broker.addProvider(p.prompt);
    const q = { source: 'work', service: 'qubes.Filecopy', argument: '+', targets: ['vault'], defaultTarget: null };
    const first = broker.ask(q);
    // The second ask expires 250 ms after the first.
    await new Promise((r) => setTimeout(r, 250));
    const second = broker.ask({ ...q, source: 'personal' });
    const [id1, id2] = broker.list().map((a) => a.id);
    await tick();
    assert.match(p.out(), new RegExp(id1!));
    assert.doesNotMatch(p.out(), new RegExp(id2!));
    assert.deepEqual(await first, { allow: false }); // not answered within 400 ms
    await tick();
    assert.equal(p.out().match(ELSEWHERE)?.length, 1);
    assert.match(p.out(), new RegExp(id2!));
    await p.type('vault');
    assert.deepEqual(await second, { allow: true, target: 'vault' });
    assert.equal(p.out().match(ELSEWHERE)?.length, 1);
  });
});
