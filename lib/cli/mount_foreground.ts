import { info } from "../log.ts";
import { type MountState, serverOf } from "../state/mount_record.ts";
import { serverAlive } from "../state/server_liveness.ts";
import { onInterrupt } from "./interrupt.ts";
import { sleep } from "../timers.ts";

/**
 * `mount --foreground` after the mount: waits while the server runs; Ctrl-C, SIGTERM or a
 * hangup unmount DIR and stop the server (umount), as stopping a foreground mount means. Before,
 * the server stopped on the terminal's Ctrl-C by itself and left DIR mounted on a FUSE file
 * nobody served. Watches from the call; the function it returns waits.
 */
export function watchForeground(state: MountState, caught?: AbortSignal): () => Promise<void> {
  let unmounting: Promise<void> | undefined;
  const unmount = () => {
    unmounting ??= (async () => {
      const { umountCommand } = await import("./umount.ts");
      try {
        await umountCommand.run([state.target]);
      } catch (error) {
        // Busy (a reader inside): detached now, gone once the last user leaves.
        info(`${(error as Error).message}; detaching it (--lazy)`);
        await umountCommand.run([state.target, "--lazy"]);
      }
    })();
  };
  const stopWatching = onInterrupt(unmount);
  return async () => {
    try {
      if (caught?.aborted) unmount();
      while (!unmounting && serverAlive(serverOf(state))) {
        await sleep(200);
      }
      await unmounting;
    } finally {
      stopWatching();
    }
  };
}
