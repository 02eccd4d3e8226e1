/**
 * Child of fuse_keeper_errno_test.ts: fills this process's descriptor table, then asks
 * endKeeper to end the process named by argv[0] and prints what happened ("returned" or the
 * error's message).
 */
import { endKeeper } from "../../lib/daemon/fuse_recovery.ts";
import { closeFd } from "../../ffi/libc.ts";
import { pidfdOpen } from "../../ffi/process.ts";

const pid = Number(Deno.args[0]);
// The syscall stub is bound before the table is full (binding it opens nothing later).
closeFd(pidfdOpen(Deno.pid));
const held: Deno.FsFile[] = [];
try {
  for (;;) held.push(Deno.openSync(import.meta.filename!));
} catch { /* full */ }
let outcome: string;
try {
  await endKeeper({ pid }, () => true);
  outcome = "returned";
} catch (error) {
  outcome = (error as Error).message;
}
for (const file of held) file.close();
console.log(outcome);
