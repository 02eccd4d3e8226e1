/** Mount scenarios through the FUSE backend on this host (it has no nbd module). */
import { command, path, requires, root } from "./_support/requires.ts";
import { registerMountScenarios } from "./_support/mount_scenarios.ts";

registerMountScenarios(
  "fuse",
  "fuse",
  requires(root(), path("/dev/fuse"), command("docker-registry"), command("python3")),
);
