/**
 * Run as an unprivileged user by tests/vm/nbd_kernel_test.ts: tries what needs root and prints
 * the errors a user would see, as one JSON line on stdout.
 */
import { connectNbd, nbdStatus } from "../../lib/nbd/kernel.ts";
import { tuneNbdQueue } from "../../lib/nbd/sysfs.ts";
import { socketPair } from "../../ffi/io.ts";
import { UserError } from "../../lib/errors.ts";

function describe(e: unknown) {
  return e instanceof UserError
    ? { name: e.name, message: e.message, hint: e.hint }
    : { name: String(e) };
}

const [kernelEnd] = socketPair();
const result: Record<string, unknown> = {};
try {
  await connectNbd({
    sizeBytes: 4096,
    socketFds: [kernelEnd],
    timeoutS: 5,
    deadConnTimeoutS: 0,
    backendId: "unprivileged",
    readOnly: true,
  });
  result.connect = "succeeded";
} catch (e) {
  result.connect = describe(e);
}
try {
  await tuneNbdQueue(0, { maxSectorsKb: 1024, readAheadKb: 1024 });
  result.tune = "succeeded";
} catch (e) {
  result.tune = describe(e);
}
try {
  result.status = nbdStatus(0);
} catch (e) {
  result.status = describe(e);
}
console.log(JSON.stringify(result));
