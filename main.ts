// CLI entry only: everything else lives in lib/.
import { runCli } from "./lib/cli/main.ts";
import { mark } from "./lib/timing.ts";
import { eventLoopTurn } from "./lib/event_loop.ts";

if (import.meta.main) {
  const code = await runCli(Deno.args);
  mark("cli: exit");
  // The command is done: whatever else runs in that turn (a leftover timer, a promise rejected
  // unhandled) must not change its exit code or print anything, as with Deno.exit at once.
  addEventListener("error", (event) => event.preventDefault());
  addEventListener("unhandledrejection", (event) => event.preventDefault());
  // One turn first: Deno writes V8's code cache of a module it compiled in such a turn, so a
  // command that ends without one (`--version`, `list`) would compile the ~1 MB bundle at every
  // start (~20 ms on the host, ~0.5 s in the QEMU TCG guest).
  await eventLoopTurn();
  // Exit now rather than when the event loop runs dry: a command is done when runCli returns
  // (what it leaves behind, like a keep-alive registry socket, dies with the process), and a
  // natural end tears the V8 heap and the runtime down first, which took 0.35 s of a mount's
  // 0.43 s between its last line and its return in the QEMU TCG guest (0.08 s with exit).
  // The unload event still runs.
  Deno.exit(code);
}
