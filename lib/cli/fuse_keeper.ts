import type { Command } from "./command.ts";
import { KEEPER_COMMAND, runKeeper } from "../fuse/keeper.ts";

/** Holds a FUSE mount's /dev/fuse descriptors across server crashes (lib/fuse/keeper.ts). */
export const fuseKeeperCommand: Command = {
  name: KEEPER_COMMAND,
  summary: "internal: keeps a FUSE mount's connection alive",
  help: "internal command started by the mount server of a FUSE mount",
  run: (args) => Promise.resolve(runKeeper(args)),
};
