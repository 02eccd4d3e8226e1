import type { Command } from "./command.ts";
import { SERVER_COMMAND } from "../state/server_liveness.ts";
import { runMountServer } from "../daemon/mount_server.ts";

/** The detached per-mount server (`mount` re-executes the program with this command). */
export const mountServerCommand: Command = {
  name: SERVER_COMMAND,
  summary: "internal: the server behind one mount",
  help: "internal command started by `erofs-oci mount`; reads the mount spec on stdin",
  run: () => runMountServer(),
};
