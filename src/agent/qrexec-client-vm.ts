// Entry of qrexec-client-vm inside a qube (bin/qrexec-client-vm of the agent bundle runs it with
// the admin domain's node). Everything else is in client-vm.ts.
import { clientMain } from './client-vm.js';

process.exitCode = await clientMain(process.argv.slice(2));
