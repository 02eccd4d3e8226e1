import type { Command } from "./command.ts";
import { expectPositionals, parseCommandArgs } from "./command.ts";
import { unmountImage } from "../daemon/unmount_image.ts";
import { checkRoot } from "../mount/target_dir.ts";

export const umountCommand: Command = {
  name: "umount",
  summary: "unmount an image mounted by erofs-oci and stop its server",
  help: `Usage: erofs-oci umount DIR [--lazy]

Unmounts the overlay and every layer mount of DIR, disconnects the devices, stops the
server and removes its runtime files (/run/erofs-oci/mounts/ID).

Options:
  --lazy   detach the mounts even while files in DIR are open (MNT_DETACH); the
           data behind them becomes unreadable once the server stops
  -h, --help`,
  async run(argv) {
    const { values, positionals } = parseCommandArgs("umount", argv, {
      lazy: { type: "boolean" },
    });
    const [dir] = expectPositionals("umount", positionals, ["DIR"]);
    checkRoot("unmounting");
    const state = await unmountImage(dir, values.lazy ?? false);
    console.error(`unmounted ${state.target} (${state.image})`);
    return 0;
  },
};
