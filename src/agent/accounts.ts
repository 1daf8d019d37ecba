// The qube's users as the agent sees them (/etc/passwd), how a command runs as one of them, and
// the environment every command and service starts with.
import fs from 'node:fs';

/** Where the agent bundle is bound inside every qube (read-only). */
export const AGENT_BUNDLE_DIR = '/run/bulkhead/agent';
/** The bundle's commands (qrexec-client-vm): on the PATH of everything the agent runs. */
export const AGENT_BIN_DIR = `${AGENT_BUNDLE_DIR}/bin`;
/** PATH of every command and service the agent runs. */
export const COMMAND_PATH = `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${AGENT_BIN_DIR}`;

export interface Account {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  readonly home: string;
  readonly shell: string;
}

export function lookupUser(name: string, passwdFile = '/etc/passwd'): Account | undefined {
  let passwd: string;
  try {
    passwd = fs.readFileSync(passwdFile, 'utf8');
  } catch {
    return undefined;
  }
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 7) {
      // Digits only: Number('') is 0, and an empty uid field must never mean root.
      if (!/^\d{1,10}$/.test(f[2] ?? '') || !/^\d{1,10}$/.test(f[3] ?? '')) return undefined;
      const uid = Number(f[2]);
      const gid = Number(f[3]);
      return { name, uid, gid, home: f[5] ?? '/', shell: f[6] ?? '/bin/sh' };
    }
  }
  return undefined;
}

const SETPRIV = '/usr/bin/setpriv';

/** Whether /etc/group lists the account in a group other than its primary one (true when unreadable). */
export function hasOtherGroups(account: Account, groupFile = '/etc/group'): boolean {
  let text: string;
  try {
    text = fs.readFileSync(groupFile, 'utf8');
  } catch {
    return true;
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || Number(f[2]) === account.gid) continue;
    if ((f[3] ?? '').split(',').includes(account.name)) return true;
  }
  return false;
}

export interface SpawnPlan {
  readonly file: string;
  readonly args: string[];
  readonly ids: { uid?: number; gid?: number };
}

/**
 * How to run `argv` as the account. Node's own uid/gid switch drops every supplementary group,
 * so for a user with groups besides its own, where the qube has setpriv (util-linux), setpriv
 * switches ids and sets the user's groups from /etc/group; root's commands run directly.
 */
export function asUser(account: Account, argv: readonly [string, ...string[]], groupFile = '/etc/group'): SpawnPlan {
  const [file, ...rest] = argv;
  if (account.uid === 0 && account.gid === 0) return { file, args: rest, ids: {} };
  // A user in no group but its own needs no setpriv (an exec and an /etc/group read less).
  if (fs.existsSync(SETPRIV) && hasOtherGroups(account, groupFile)) {
    return { file: SETPRIV, args: [`--reuid=${account.uid}`, `--regid=${account.gid}`, '--init-groups', '--', ...argv], ids: {} };
  }
  return { file, args: rest, ids: { uid: account.uid, gid: account.gid } };
}

/** The environment every command starts with; QREXEC_* variables are added by the caller. */
export function baseEnv(account: Account): Record<string, string> {
  return { PATH: COMMAND_PATH, HOME: account.home, USER: account.name, LOGNAME: account.name, SHELL: account.shell };
}

/** The working directory of the account's commands: its home, or / when it has none. */
export function workDir(account: Account): string {
  return fs.existsSync(account.home) ? account.home : '/';
}
