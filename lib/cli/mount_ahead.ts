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
import { discardLauncherServer, takeLauncherServer } from "../daemon/launcher_server.ts";

/** The launcher's server being ended, when this mount does not want it. */
export let discardingLauncherServer: Promise<void> | undefined;

/** Spawns the mount server for `argv` (mount's arguments) when a mount is likely to run. */
export function spawnMountServerAhead(argv: string[]): void {
  const launched = takeLauncherServer();
  const backend = aheadBackend(argv);
  if (!backend) {
    // main.ts waits for it before this process ends (discardServerSpawnedAhead).
    if (launched) discardingLauncherServer = discardLauncherServer(launched).catch(() => {});
    return;
  }
  // From here on there is a server to end: a Ctrl-C is caught and mount undoes its work.
  catchInterruptsAhead("mount interrupted: nothing is left mounted");
  spawnServerAhead(false, backend, launched);
  // Then the image's manifest GET, once its few modules are there (a subset of mount's).
  import("./manifest_ahead.ts").then((m) => m.startManifestAhead(argv)).catch(() => {});
}

/** The backend of a mount likely to run with a server spawned ahead; undefined: none. */
function aheadBackend(argv: string[]): "nbd" | "fuse" | undefined {
  // Not root: the mount is refused before it needs a server. --foreground: rare, left alone.
  if (Deno.uid() !== 0) return undefined;
  let requested = "auto";
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") break;
    if (arg === "--help" || arg === "-h" || arg === "--foreground") return undefined;
    if (arg === "--backend") requested = argv[++i] ?? "";
    else if (arg.startsWith("--backend=")) requested = arg.slice("--backend=".length);
  }
  try {
    return chooseBackend(requested).backend;
  } catch {
    return undefined; // mount.ts reports it
  }
}
