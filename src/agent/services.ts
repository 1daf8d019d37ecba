// Qubes RPC services inside a qube: where a service is found, what kind it is, its per-service
// options (rpc-config) and the environment it runs with.
//
// Lookup order (as qrexec's own documentation lists it): SERVICE+ARG in every directory first,
// then SERVICE in every directory:
//   1. /usr/local/etc/qubes-rpc/SERVICE+ARG   2. /etc/qubes-rpc/SERVICE+ARG
//   3. /usr/local/etc/qubes-rpc/SERVICE       4. /etc/qubes-rpc/SERVICE
// A call without an argument looks for `SERVICE+` first (an empty argument), then SERVICE. The
// first path that exists (lstat) ends the search, whatever it is: a link that leads nowhere, a
// directory or a FIFO is found, and then fails to run (125) rather than letting a later entry
// answer. A lookup error other than "does not exist" also fails the call (125).
import fs from 'node:fs';
import path from 'node:path';
import { splitServiceAndArg, type ServiceCall } from '../protocol/qrexec.js';

export const SERVICE_DIRS: readonly string[] = ['/usr/local/etc/qubes-rpc', '/etc/qubes-rpc'];
export const RPC_CONFIG_DIR = '/etc/qubes/rpc-config';
/** Longest file name Linux accepts (NAME_MAX): a longer `SERVICE+ARG` has no file of its own. */
const NAME_MAX = 255;
/** One strict decoder for every text read here (it keeps no state between whole-buffer decodes). */
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });
/** Largest rpc-config file read; a bigger one is malformed. */
export const MAX_RPC_CONFIG_BYTES = 16 * 1024;
/** Largest non-executable service file run as a shell command line. */
export const MAX_SHELL_SERVICE_BYTES = 64 * 1024;

export type ServiceLookup =
  | { readonly kind: 'not-found' }
  /** Found, but it cannot be run: qrexec's 125. */
  | { readonly kind: 'unusable'; readonly path: string; readonly reason: string }
  | { readonly kind: 'executable' | 'file' | 'socket'; readonly path: string };

/** The file names tried for a call, most specific first. */
export function serviceFileNames(serviceAndArg: string): string[] {
  const { service, arg } = splitServiceAndArg(serviceAndArg);
  const withArg = `${service}+${arg}`;
  return Buffer.byteLength(withArg) > NAME_MAX ? [service] : [withArg, service];
}

/** Finds a service (see the order at the top). `dirs` is a parameter for tests only. */
export function findService(serviceAndArg: string, dirs: readonly string[] = SERVICE_DIRS): ServiceLookup {
  for (const name of serviceFileNames(serviceAndArg)) {
    if (name === '' || name === '.' || name === '..' || name.includes('/')) continue;
    for (const dir of dirs) {
      const candidate = path.join(dir, name);
      try {
        fs.lstatSync(candidate);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        return { kind: 'unusable', path: candidate, reason: `cannot look it up: ${(err as Error).message}` };
      }
      let st: fs.Stats;
      try {
        st = fs.statSync(candidate);
      } catch (err) {
        return { kind: 'unusable', path: candidate, reason: `cannot follow it: ${(err as Error).message}` };
      }
      if (st.isSocket()) return { kind: 'socket', path: candidate };
      if (st.isFile()) return { kind: (st.mode & 0o111) !== 0 ? 'executable' : 'file', path: candidate };
      return { kind: 'unusable', path: candidate, reason: 'neither a file nor a socket' };
    }
  }
  return { kind: 'not-found' };
}

// --- rpc-config ------------------------------------------------------------------------------

export interface RpcConfig {
  /** Wait for the user's GUI session before running the service (no GUI session exists yet: nothing to wait for). */
  readonly waitForSession: boolean;
  /** A socket service gets the call's data without the `SERVICE+ARG SOURCE\0` descriptor first. */
  readonly skipServiceDescriptor: boolean;
}

export const DEFAULT_RPC_CONFIG: RpcConfig = { waitForSession: false, skipServiceDescriptor: false };

export type RpcConfigParse =
  | { readonly ok: true; readonly config: RpcConfig; readonly ignored: readonly string[] }
  | { readonly ok: false; readonly error: string };

const KEY_RE = /^[A-Za-z0-9_-]{1,64}$/;

function parseBool(value: string): boolean | undefined {
  if (value === '1' || value === 'true') return true;
  if (value === '0' || value === 'false') return false;
  return undefined;
}

/**
 * Parses an rpc-config file: `key=value` lines (spaces around both allowed), `#` comment lines,
 * blank lines. Known keys: `wait-for-session` and `skip-service-descriptor`, each 0, 1, false or
 * true. Unknown keys are returned in `ignored`. A line without `=`, a bad key, a bad value of a
 * known key or a key given twice makes the whole file malformed. Never throws.
 */
export function parseRpcConfig(text: string): RpcConfigParse {
  let waitForSession = DEFAULT_RPC_CONFIG.waitForSession;
  let skipServiceDescriptor = DEFAULT_RPC_CONFIG.skipServiceDescriptor;
  const ignored: string[] = [];
  const seen = new Set<string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    const where = `line ${i + 1}`;
    if (eq < 0) return { ok: false, error: `${where}: expected key=value` };
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    if (!KEY_RE.test(key)) return { ok: false, error: `${where}: invalid key` };
    if (seen.has(key)) return { ok: false, error: `${where}: ${key} given twice` };
    seen.add(key);
    if (key === 'wait-for-session' || key === 'skip-service-descriptor') {
      const b = parseBool(value);
      if (b === undefined) return { ok: false, error: `${where}: ${key} must be 0, 1, false or true` };
      if (key === 'wait-for-session') waitForSession = b;
      else skipServiceDescriptor = b;
    } else {
      ignored.push(key);
    }
  }
  return { ok: true, config: { waitForSession, skipServiceDescriptor }, ignored };
}

/** Reads at most `max` bytes of a regular file; undefined if it does not exist. Never blocks on a FIFO. */
function readSmallFile(file: string, max: number): Buffer | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > max) throw new Error(`larger than ${max} bytes`);
    const buf = Buffer.alloc(max + 1);
    let n = 0;
    for (;;) {
      const r = fs.readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) break;
      n += r;
      if (n > max) throw new Error(`larger than ${max} bytes`);
    }
    return buf.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The options of a service: `DIR/SERVICE+ARG`, else `DIR/SERVICE` (the first that exists, not a
 * merge). Anything wrong with the file is logged and the defaults apply.
 */
export function readRpcConfig(serviceAndArg: string, log: (message: string) => void, dir: string = RPC_CONFIG_DIR): RpcConfig {
  for (const name of serviceFileNames(serviceAndArg)) {
    const file = path.join(dir, name);
    let bytes: Buffer | undefined;
    try {
      bytes = readSmallFile(file, MAX_RPC_CONFIG_BYTES);
    } catch (err) {
      log(`${file}: ${(err as Error).message}; using the defaults`);
      return DEFAULT_RPC_CONFIG;
    }
    if (bytes === undefined) continue;
    let text: string;
    try {
      text = STRICT_UTF8.decode(bytes);
    } catch {
      log(`${file}: not UTF-8; using the defaults`);
      return DEFAULT_RPC_CONFIG;
    }
    const parsed = parseRpcConfig(text);
    if (!parsed.ok) {
      log(`${file}: ${parsed.error}; using the defaults`);
      return DEFAULT_RPC_CONFIG;
    }
    for (const key of parsed.ignored) log(`${file}: unknown key ${key} ignored`);
    return parsed.config;
  }
  return DEFAULT_RPC_CONFIG;
}

/**
 * The text of a non-executable service file, run as a shell command line. Throws (the call then
 * fails with 125) when it is too big, not UTF-8 or holds a NUL byte.
 */
export function readShellService(file: string): string {
  const bytes = readSmallFile(file, MAX_SHELL_SERVICE_BYTES);
  if (bytes === undefined) throw new Error('it disappeared');
  if (bytes.includes(0)) throw new Error('it holds a NUL byte');
  try {
    return STRICT_UTF8.decode(bytes);
  } catch {
    throw new Error('it is not UTF-8');
  }
}

/** The QREXEC_* variables of a service call (added to the account's base environment). */
export function serviceEnv(call: Omit<ServiceCall, 'user'>): Record<string, string> {
  const { arg } = splitServiceAndArg(call.serviceAndArg);
  const env: Record<string, string> = {
    QREXEC_REMOTE_DOMAIN: call.source,
    QREXEC_SERVICE_FULL_NAME: call.serviceAndArg,
    QREXEC_REQUESTED_TARGET_TYPE: call.requestedTarget.type,
  };
  if (arg !== '') env.QREXEC_SERVICE_ARGUMENT = arg;
  if (call.requestedTarget.type === 'name') env.QREXEC_REQUESTED_TARGET = call.requestedTarget.value;
  else env.QREXEC_REQUESTED_TARGET_KEYWORD = call.requestedTarget.value;
  return env;
}

/** The descriptor a socket service receives first: `SERVICE+ARG SOURCE` and a NUL. */
export function serviceDescriptor(call: Omit<ServiceCall, 'user'>): Buffer {
  return Buffer.from(`${call.serviceAndArg} ${call.source}\0`, 'utf8');
}
