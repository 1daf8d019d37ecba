// Reading a process's identity from /proc: a pid alone can be reused, its start time cannot.
import fs from 'node:fs';

/** State (field 3) and start time (field 22) of a process, from /proc/PID/stat. */
export function procStat(pid: number): { state: string; start: string } | undefined {
  if (pid <= 0) return undefined;
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: fields count from its last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0] ?? '', start: fields[19] ?? '' };
}
