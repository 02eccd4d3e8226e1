import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { killServer } from "./server_liveness.ts";

Deno.test("killServer: a pid that now names a thread is no server, and nothing is signalled", () => {
  // Another thread of this process (V8's and the runtime's): pidfd_open refuses a thread id
  // (ENOENT on newer kernels, EINVAL on 6.1), which umount took for a failure to stop.
  const thread = [...Deno.readDirSync("/proc/self/task")].map((e) => Number(e.name))
    .find((tid) => tid !== Deno.pid);
  assertEquals(typeof thread, "number", "this process has another thread");
  assertEquals(killServer({ pid: thread! }), false);
});
