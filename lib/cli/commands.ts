import type { Command } from "./command.ts";
import { inspectCommand } from "./inspect.ts";
import { pullCommand } from "./pull.ts";
import { pushCommand } from "./push.ts";
import { mountCommand } from "./mount.ts";
import { umountCommand } from "./umount.ts";
import { listCommand } from "./list.ts";
import { metricsCommand } from "./metrics.ts";
import { reattachCommand } from "./reattach.ts";
import { mountServerCommand } from "./mount_server.ts";
import { serveCommand } from "./serve.ts";
import { buildCommand } from "./build.ts";
import { convertCommand } from "./convert.ts";
import { indexCommand } from "./index.ts";
import { checksumsCommand } from "./checksums.ts";
import { traceCommand } from "./trace.ts";

/**
 * Commands listed in `erofs-oci --help`, in that order. A command is added here only once it
 * works end to end.
 */
export const COMMANDS: Command[] = [
  mountCommand,
  umountCommand,
  listCommand,
  metricsCommand,
  reattachCommand,
  inspectCommand,
  pullCommand,
  pushCommand,
  serveCommand,
  buildCommand,
  convertCommand,
  indexCommand,
  checksumsCommand,
  traceCommand,
];

/** Internal entry points (daemon re-exec); callable but never listed. */
export const HIDDEN_COMMANDS: Command[] = [mountServerCommand];
