/**
 * What `mount` starts before its own modules load (lib/cli/main.ts imports this next to
 * mount.ts): the server, a second Deno whose start-up is the longest step of a mount, and then
 * the image's manifest GET (manifest_ahead.ts). Only a quick look at the command line; mount.ts
 * takes the server only when its real parse agrees (takeServerSpawnedAhead), and main.ts
 * discards one nobody took; the manifest GET likewise (takeManifestAhead, mount's run ends
 * one it did not take).
 */
import { chooseBackend } from "../mount/backend_choice.ts";
import { spawnServerAhead } from "../daemon/server_spawn.ts";
import { catchInterruptsAhead } from "./interrupt.ts";

/** Spawns the mount server for `argv` (mount's arguments) when a mount is likely to run. */
export function spawnMountServerAhead(argv: string[]): void {
  // Not root: the mount is refused before it needs a server. --foreground: rare, left alone.
  if (Deno.uid() !== 0) return;
  let requested = "auto";
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") break;
    if (arg === "--help" || arg === "-h" || arg === "--foreground") return;
    if (arg === "--backend") requested = argv[++i] ?? "";
    else if (arg.startsWith("--backend=")) requested = arg.slice("--backend=".length);
  }
  let backend: "nbd" | "fuse";
  try {
    backend = chooseBackend(requested).backend;
  } catch {
    return; // mount.ts reports it
  }
  // From here on there is a server to end: a Ctrl-C is caught and mount undoes its work.
  catchInterruptsAhead("mount interrupted: nothing is left mounted");
  spawnServerAhead(false, backend);
  // Then the image's manifest GET, once its few modules are there (a subset of mount's).
  import("./manifest_ahead.ts").then((m) => m.startManifestAhead(argv)).catch(() => {});
}
