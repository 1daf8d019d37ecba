// Qubes name rules. A qube name is 1–31 characters, starts with a letter, uses
// [a-zA-Z0-9_.-], is not a reserved word and does not end in "-dm".
import { valueError } from './errors.js';

const NAME_RE = /^[a-zA-Z][a-zA-Z0-9_.-]*$/;
const RESERVED = new Set(['none', 'default', 'Domain-0']);
export const MAX_NAME_LENGTH = 31;

/** Returns the reason a name is invalid, or undefined when it is valid. */
export function qubeNameProblem(untrustedName: string): string | undefined {
  if (untrustedName.length === 0) return 'VM name cannot be empty';
  if (untrustedName.length > MAX_NAME_LENGTH) return `VM name longer than ${MAX_NAME_LENGTH} characters`;
  if (!NAME_RE.test(untrustedName)) {
    return 'VM name contains illegal characters (must start with a letter, then letters, digits, _ . -)';
  }
  if (RESERVED.has(untrustedName)) return `VM name cannot be '${untrustedName}'`;
  if (untrustedName.endsWith('-dm')) return "VM name cannot end with '-dm'";
  return undefined;
}

export function assertValidQubeName(untrustedName: string): void {
  const problem = qubeNameProblem(untrustedName);
  if (problem !== undefined) throw valueError(problem);
}

const FEATURE_RE = /^[A-Za-z0-9_.-]+$/;
const TAG_RE = /^[A-Za-z0-9_-]+$/;

export function isValidFeatureName(untrusted: string): boolean {
  return untrusted.length <= 255 && FEATURE_RE.test(untrusted);
}

export function isValidTag(untrusted: string): boolean {
  return untrusted.length <= 255 && TAG_RE.test(untrusted);
}

/** Feature values: printable ASCII only (0x20–0x7e), as qubesd requires. */
export function isValidFeatureValue(untrusted: string): boolean {
  return untrusted.length <= 4096 && /^[\x20-\x7e]*$/.test(untrusted);
}

const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;

/** A user name inside a qube (`qvm-run -u`, `default_user`): what useradd accepts, no `:`. */
export function isValidUserName(untrusted: string): boolean {
  return USER_RE.test(untrusted);
}
