/**
 * What `mount` starts before its own modules load (lib/cli/main.ts imports this next to
 * mount.ts): the image's manifest GET (manifest_ahead.ts), then the server, a second Deno whose
 * start-up overlaps the CLI's chain manifest -> chunk table -> listed metadata. Only a quick look at the command line; mount.ts
 * takes the server only when its real parse agrees (takeServerSpawnedAhead), and main.ts
 * discards one nobody took; the manifest GET likewise (takeManifestAhead, mount's run ends
 * one it did not take).
 */
import { chooseBackend } from "../mount/backend_choice.ts";
import { spawnServerAhead } from "../daemon/server_spawn.ts";
import { catchInterruptsAhead } from "./interrupt.ts";

/** Spawns the mount server for `argv` (mount's arguments) when a mount is likely to run. */
export async function spawnMountServerAhead(argv: string[]): Promise<void> {
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
  // The manifest GET first (its few modules are a subset of mount's): its round trip runs while
  // the spawn holds this thread (0.3-0.7 s in the QEMU TCG guest, where the GET came after it,
  // and the CLI's chain to the server's metadata, not the server's start, was what ready
  // waited for).
  await import("./manifest_ahead.ts").then((m) => m.startManifestAhead(argv)).catch(() => {});
  spawnServerAhead(false, backend);
}
