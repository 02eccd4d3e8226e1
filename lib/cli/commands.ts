import type { Command } from "./command.ts";
import { SERVER_COMMAND } from "../state/server_liveness.ts";

/**
 * A command by name; its module is imported only when that command is run (or for `--help`):
 * importing all of them cost every command ~55 ms of CPU and ~14 MB of RSS at start-up, a
 * tenth of a build of the 136 MB benchmark tree. `deno compile` and `deno bundle` both follow
 * these literal dynamic imports.
 */
export interface CommandEntry {
  name: string;
  load(): Promise<Command>;
}

/**
 * Commands listed in `erofs-oci --help`, in that order. A command is added here only once it
 * works end to end.
 */
export const COMMANDS: CommandEntry[] = [
  { name: "mount", load: async () => (await import("./mount.ts")).mountCommand },
  { name: "umount", load: async () => (await import("./umount.ts")).umountCommand },
  { name: "list", load: async () => (await import("./list.ts")).listCommand },
  { name: "metrics", load: async () => (await import("./metrics.ts")).metricsCommand },
  { name: "reattach", load: async () => (await import("./reattach.ts")).reattachCommand },
  { name: "inspect", load: async () => (await import("./inspect.ts")).inspectCommand },
  { name: "pull", load: async () => (await import("./pull.ts")).pullCommand },
  { name: "push", load: async () => (await import("./push.ts")).pushCommand },
  { name: "serve", load: async () => (await import("./serve.ts")).serveCommand },
  { name: "build", load: async () => (await import("./build.ts")).buildCommand },
  { name: "convert", load: async () => (await import("./convert.ts")).convertCommand },
  { name: "index", load: async () => (await import("./index.ts")).indexCommand },
  { name: "checksums", load: async () => (await import("./checksums.ts")).checksumsCommand },
  { name: "trace", load: async () => (await import("./trace.ts")).traceCommand },
  { name: "cache", load: async () => (await import("./cache.ts")).cacheCommand },
];

/** Internal entry points (daemon re-exec); callable but never listed. */
export const HIDDEN_COMMANDS: CommandEntry[] = [
  {
    name: SERVER_COMMAND,
    load: async () => (await import("./mount_server.ts")).mountServerCommand,
  },
];
