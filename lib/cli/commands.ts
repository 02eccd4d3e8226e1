import type { Command } from "./command.ts";

/**
 * Commands listed in `erofs-oci --help`, in that order. A command is added here only once it
 * works end to end.
 */
export const COMMANDS: Command[] = [];

/** Internal entry points (daemon re-exec); callable but never listed. */
export const HIDDEN_COMMANDS: Command[] = [];
