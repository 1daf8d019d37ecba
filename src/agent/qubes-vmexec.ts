// Entry of the qubes.VMExec decoder (run by /etc/qubes-rpc/qubes.VMExec with the service
// argument as its one argument): prints the decoded argv as shell words, or a message on stderr
// and exit code 1.
import { vmExecShellWords } from './vmexec.js';

const args = process.argv.slice(2);
if (args.length !== 1 || args[0] === undefined) {
  process.stderr.write('qubes.VMExec: the service needs exactly one argument (the encoded command)\n');
  process.exitCode = 1;
} else {
  try {
    process.stdout.write(vmExecShellWords(args[0]));
  } catch (err) {
    process.stderr.write(`qubes.VMExec: cannot decode the command: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}
