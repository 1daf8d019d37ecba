// The eight Qubes labels: index, name, colour. Labels mark trust; they are fixed.

export interface Label {
  readonly index: number;
  readonly name: string;
  readonly color: string; // 0xRRGGBB, as admin.label.Get answers
}

export const LABELS: readonly Label[] = [
  { index: 1, name: 'red', color: '0xcc0000' },
  { index: 2, name: 'orange', color: '0xf57900' },
  { index: 3, name: 'yellow', color: '0xedd400' },
  { index: 4, name: 'green', color: '0x73d216' },
  { index: 5, name: 'gray', color: '0x555555' },
  { index: 6, name: 'blue', color: '0x3465a4' },
  { index: 7, name: 'purple', color: '0x75507b' },
  { index: 8, name: 'black', color: '0x000000' },
];

/** Resolves a label given by name, by index, or as `label-N`; undefined if there is none. */
export function findLabel(untrustedSpec: string): Label | undefined {
  const byName = LABELS.find((l) => l.name === untrustedSpec);
  if (byName) return byName;
  const m = /^(?:label-)?([1-9][0-9]?)$/.exec(untrustedSpec);
  if (m?.[1] !== undefined) {
    const index = Number(m[1]);
    return LABELS.find((l) => l.index === index);
  }
  return undefined;
}
