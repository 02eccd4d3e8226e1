import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { type Unmounted, unmountImage } from "../daemon/unmount_image.ts";
import { checkRoot } from "../mount/target_dir.ts";
import { MountError, UsageError, UserError } from "../errors.ts";
import { NotMountedError, readStates } from "../state/mount_record.ts";
import { info, warn } from "../log.ts";

export const umountCommand: Command = {
  name: "umount",
  summary: "unmount an image mounted by erofs-oci and stop its server",
  help: `Usage: erofs-oci umount DIR [--lazy]
       erofs-oci umount --all [--lazy]

Unmounts the overlay and every layer mount of DIR, disconnects the devices, stops the
server and removes its runtime files (/run/erofs-oci/mounts/ID).

Options:
  --all    every mount erofs-oci made on this host (\`erofs-oci list\`), nested ones
           first; a mount that cannot go is reported and the others still go
  --lazy   detach the mounts even while files in DIR are open (MNT_DETACH); the
           data behind them becomes unreadable once the server stops
  -h, --help`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("umount", argv, {
      all: { type: "boolean" },
      lazy: { type: "boolean" },
    });
    const lazy = values.lazy ?? false;
    if (values.all) {
      if (positionals.length) {
        throw new UsageError(
          "umount: give DIR or --all, not both",
          "see `erofs-oci umount --help`",
        );
      }
      checkRoot("unmounting");
      return await unmountAll(lazy);
    }
    const [dir] = expectPositionals("umount", positionals, ["DIR"]);
    checkRoot("unmounting");
    reportUnmounted(await unmountImage(dir, lazy));
    return 0;
  },
};

function reportUnmounted({ state, wasMounted }: Unmounted): void {
  info(
    wasMounted
      ? `unmounted ${state.target} (${state.image})`
      // An umount killed half-way, or the mount unmounted by another tool: what else is there
      // now (a mount of something else) is left alone.
      : `${state.target} (${state.image}) was no longer mounted: its record is cleared`,
  );
}

/**
 * Every recorded mount, deepest target first (a mount inside another's writable overlay goes
 * before it). A failure is reported as a warning and the rest go on; then one error sums up.
 */
async function unmountAll(lazy: boolean): Promise<number> {
  const states = readStates().sort((a, b) => b.target.length - a.target.length);
  if (states.length === 0) {
    info("no erofs-oci mounts");
    return 0;
  }
  const left: string[] = [];
  for (const state of states) {
    try {
      reportUnmounted(await unmountImage(state.target, lazy));
    } catch (error) {
      // Unmounted meanwhile by another command (umount DIR, a second umount --all): done.
      if (error instanceof NotMountedError) {
        info(`${state.target} was unmounted meanwhile by another command`);
        continue;
      }
      if (!(error instanceof UserError)) throw error;
      warn(
        error.message.includes(state.target)
          ? error.message
          : `${state.target} stays mounted: ${error.message}`,
      );
      left.push(state.target);
    }
  }
  if (left.length) {
    throw new MountError(
      `${left.length} of ${states.length} mounts stay mounted: ${left.join(", ")}`,
      "see the warnings above; close what uses them, or `erofs-oci umount --all --lazy`",
    );
  }
  return 0;
}
