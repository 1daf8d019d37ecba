// qubes.VMExec: the service argument is a whole argv, encoded so that it fits in a qrexec service
// argument (letters, digits, `.`, `_`, `-`, `+`):
//   - argv elements are separated by `+`;
//   - `-` followed by two upper-case hex digits stands for that byte;
//   - `--` stands for `-` itself;
//   - letters, digits, `_` and `.` stand for themselves; nothing else may appear.
// Decoding is strict: any other use of `-`, or any other character, is an error. A NUL byte is
// refused too (no argv element can hold one), and so is an empty program name.

export class VmExecDecodeError extends Error {
  override readonly name = 'VmExecDecodeError';
}

const PLAIN = /^[A-Za-z0-9_.]$/;
const HEX = /^[0-9A-F]{2}$/;

/** Decodes one argv element. Throws VmExecDecodeError. */
export function decodeVmExecPart(part: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < part.length; i++) {
    const c = part[i] ?? '';
    if (PLAIN.test(c)) {
      out.push(c.charCodeAt(0));
      continue;
    }
    if (c !== '-') throw new VmExecDecodeError(`character ${JSON.stringify(c)} is not allowed`);
    if (part[i + 1] === '-') {
      out.push(0x2d);
      i += 1;
      continue;
    }
    const hex = part.slice(i + 1, i + 3);
    if (!HEX.test(hex)) throw new VmExecDecodeError("'-' may only start '--' or '-HH' (two upper-case hex digits)");
    const byte = parseInt(hex, 16);
    if (byte === 0) throw new VmExecDecodeError('a NUL byte cannot be part of an argument');
    out.push(byte);
    i += 2;
  }
  return Buffer.from(out);
}

/** Decodes a qubes.VMExec argument into argv (each element as bytes). Throws VmExecDecodeError. */
export function decodeVmExecArgument(arg: string): Buffer[] {
  const argv = arg.split('+').map(decodeVmExecPart);
  if (argv[0] === undefined || argv[0].length === 0) throw new VmExecDecodeError('the program name is empty');
  return argv;
}

/** One byte string as a POSIX shell word: single quotes, a quote itself as '\''. Byte-exact. */
export function shellQuoteBytes(word: Buffer): Buffer {
  const parts: Buffer[] = [Buffer.from("'")];
  let start = 0;
  for (let i = 0; i < word.length; i++) {
    if (word[i] === 0x27) {
      parts.push(word.subarray(start, i), Buffer.from("'\\''"));
      start = i + 1;
    }
  }
  parts.push(word.subarray(start), Buffer.from("'"));
  return Buffer.concat(parts);
}

/** The argv as shell words separated by spaces (what the qubes.VMExec script runs with exec). */
export function vmExecShellWords(arg: string): Buffer {
  const words: Buffer[] = [];
  for (const w of decodeVmExecArgument(arg)) {
    if (words.length > 0) words.push(Buffer.from(' '));
    words.push(shellQuoteBytes(w));
  }
  return Buffer.concat(words);
}
