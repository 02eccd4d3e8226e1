// CLI entry only: everything else lives in lib/.
import { runCli } from "./lib/cli/main.ts";
import { mark } from "./lib/timing.ts";

/**
 * Resolves after one turn of Deno's event loop. Deno writes V8's code cache of a module it
 * compiled in such a turn, so a command that ends without one (`--version`, `list`) would
 * compile the ~1 MB bundle at every start (~20 ms on the host, ~0.5 s in the QEMU TCG guest).
 * A MessageChannel, not a timer: setTimeout loads Deno's Node timers and their dependencies.
 */
function eventLoopTurn(): Promise<void> {
  const { port1, port2 } = new MessageChannel();
  return new Promise((resolve) => {
    port1.onmessage = () => {
      port1.close();
      resolve();
    };
    port2.postMessage(null);
  });
}

if (import.meta.main) {
  const code = await runCli(Deno.args);
  mark("cli: exit");
  // The command is done: whatever else runs in that turn (a leftover timer, a promise rejected
  // unhandled) must not change its exit code or print anything, as with Deno.exit at once.
  addEventListener("error", (event) => event.preventDefault());
  addEventListener("unhandledrejection", (event) => event.preventDefault());
  await eventLoopTurn();
  // Exit now rather than when the event loop runs dry: a command is done when runCli returns
  // (what it leaves behind, like a keep-alive registry socket, dies with the process), and a
  // natural end tears the V8 heap and the runtime down first, which took 0.35 s of a mount's
  // 0.43 s between its last line and its return in the QEMU TCG guest (0.08 s with exit).
  // The unload event still runs.
  Deno.exit(code);
}
