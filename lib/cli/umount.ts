import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { type Unmounted, unmountImage } from "../daemon/unmount_image.ts";
import { checkRoot } from "../mount/target_dir.ts";
import { MountError, UsageError, UserError } from "../errors.ts";
import { NotMountedError, readStates } from "../state/mount_record.ts";
import { info, warn } from "../log.ts";
import { exitInterrupted, Interrupted, onInterrupt } from "./interrupt.ts";
import { testHold } from "../test_pause.ts";
import type { OrphanedMount } from "../state/pending_mount.ts";
import { realPathTrusted } from "../../ffi/path_resolve.ts";
import { printable } from "../text.ts";

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
    using interrupts = new UmountInterrupts(`umount interrupted: ${dir} was left as it was`);
    let unmounted: Unmounted;
    try {
      unmounted = await unmountImage(dir, lazy, interrupts.changing);
    } catch (error) {
      if (!(error instanceof NotMountedError)) throw error;
      // Not recorded: the leftovers of a mount killed with its server before it recorded.
      interrupts.changing();
      const cleared = await clearOrphans((orphan) => sameDir(orphan.target, dir));
      if (!cleared.length) throw error;
      interrupts.settled(`umount interrupted: it finished first, ${dir} is cleared`);
      return 0;
    }
    reportUnmounted(unmounted);
    interrupts.settled(`umount interrupted: it finished first, ${dir} is unmounted`);
    return 0;
  },
};

/**
 * SIGINT, SIGTERM or SIGHUP during `umount`. Before an unmount starts changing things (waiting
 * for a lock, say) the command ends at once with one line. Once it has (the mounts going, the
 * server stopping), it finishes first: dying half-way left the record of a mount that was
 * gone, which `mount DIR` then took for a mount. It then ends with the signal's exit code.
 */
class UmountInterrupts implements Disposable {
  #changing = false;
  #caught: Deno.Signal | undefined;
  #said: string;
  readonly #stop: () => void;

  /** `said`: the line of a signal before any change. */
  constructor(said: string) {
    this.#said = said;
    this.#stop = onInterrupt((signal) => {
      if (!this.#changing) exitInterrupted(this.#said, signal);
      if (this.#caught) return;
      this.#caught = signal;
      info(`umount: ${signal}: finishing the unmount under way first`);
    });
  }

  /** For unmountImage: the changes start. */
  readonly changing = (): void => {
    this.#changing = true;
  };

  /**
   * One unmount is done: throws Interrupted(`message`) if a signal came meanwhile; else a
   * signal ends the command at once again, with the line `next` (default: as before).
   */
  settled(message: string, next?: string): void {
    if (this.#caught) throw new Interrupted(message, this.#caught);
    this.#changing = false;
    if (next !== undefined) this.#said = next;
  }

  [Symbol.dispose](): void {
    this.#stop();
  }
}

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
 * Mounts another command unmounted between the listing and their turn are counted apart: the
 * summary said nothing of them (and an interrupted one called them "left").
 */
async function unmountAll(lazy: boolean): Promise<number> {
  const states = readStates().sort((a, b) => b.target.length - a.target.length);
  if (states.length === 0) {
    if ((await clearOrphans()).length === 0) info("no erofs-oci mounts");
    return 0;
  }
  // Tests: listed, none unmounted yet (another command may unmount some meanwhile).
  await testHold("umount-all-listed");
  const left: string[] = [];
  let done = 0;
  let gone = 0;
  const tally = () =>
    [
      `${done} of ${states.length} mounts unmounted`,
      ...(gone ? [`${gone} already unmounted by another command`] : []),
    ].join(", ");
  const stopped = () => `umount --all interrupted: ${tally()}, the others left`;
  using interrupts = new UmountInterrupts(stopped());
  for (const state of states) {
    try {
      reportUnmounted(await unmountImage(state.target, lazy, interrupts.changing));
      done++;
    } catch (error) {
      // Unmounted meanwhile by another command (umount DIR, a second umount --all): done.
      if (error instanceof NotMountedError) {
        info(`${state.target} was unmounted meanwhile by another command`);
        gone++;
      } else {
        if (!(error instanceof UserError)) throw error;
        warn(
          error.message.includes(state.target)
            ? error.message
            : `${state.target} stays mounted: ${error.message}`,
        );
        left.push(state.target);
      }
    }
    // A signal during that one: the rest stay.
    interrupts.settled(stopped(), stopped());
  }
  await clearOrphans();
  if (left.length) {
    throw new MountError(
      `${left.length} of ${states.length} mounts stay mounted: ${left.join(", ")}`,
      "see the warnings above; close what uses them, or `erofs-oci umount --all --lazy`",
    );
  }
  if (gone) info(`umount --all: ${tally()}`);
  return 0;
}

/** Clears the leftovers of mounts killed with their server before they recorded, saying so. */
async function clearOrphans(
  wanted?: (orphan: OrphanedMount) => boolean,
): Promise<OrphanedMount[]> {
  const { clearOrphanedMounts } = await import("../daemon/orphaned_mounts.ts");
  const cleared = await clearOrphanedMounts(wanted);
  for (const orphan of cleared) {
    info(
      `cleared ${printable(orphan.target)}: what a mount left there when it was killed with ` +
        "its server before it recorded the mount",
    );
  }
  return cleared;
}

/** Whether `recorded` (a mount's target as given to it) is the directory `given` names. */
function sameDir(recorded: string, given: string): boolean {
  if (recorded === given) return true;
  try {
    return realPathTrusted(given) === recorded;
  } catch {
    return false;
  }
}
