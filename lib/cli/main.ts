import { UsageError, UserError } from "../errors.ts";
import { VERSION } from "../version.ts";
import { COMMANDS, HIDDEN_COMMANDS } from "./commands.ts";
import { setDebug } from "./log.ts";
import { printable } from "./table.ts";

const EXIT_CODES = `Exit codes:
  0  success
  1  runtime failure (registry, kernel, file system)
  2  usage error (bad command line)`;

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  const list = COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join("\n");
  return `erofs-oci ${VERSION} — mount EROFS images from OCI registries without pulling them

Usage: erofs-oci <command> [options]

Commands:
${list}

Global options:
  -h, --help     show help (also \`erofs-oci <command> --help\`)
  -V, --version  print the version
      --debug    print stack traces and debug logs on errors

${EXIT_CODES}`;
}

/** Parses the global options, dispatches to a command and maps errors to exit codes. */
export async function runCli(args: string[]): Promise<number> {
  const debug = args.includes("--debug");
  setDebug(debug);
  const argv = args.filter((a) => a !== "--debug");
  try {
    const [first, ...rest] = argv;
    if (first === undefined || first === "-h" || first === "--help" || first === "help") {
      if (first === "help" && rest[0]) return await runCli([rest[0], "--help"]);
      console.log(mainHelp());
      return first === undefined ? 2 : 0;
    }
    if (first === "-V" || first === "--version") {
      console.log(`erofs-oci ${VERSION}`);
      return 0;
    }
    const command = COMMANDS.find((c) => c.name === first) ??
      HIDDEN_COMMANDS.find((c) => c.name === first);
    if (!command) {
      throw new UsageError(`unknown command '${first}'`, "see `erofs-oci --help`");
    }
    if (rest.includes("--help") || rest.includes("-h")) {
      console.log(command.help);
      return 0;
    }
    return await command.run(rest);
  } catch (error) {
    return reportError(error, debug);
  }
}

/** Prints one line (plus hint) for user errors; a stack only with --debug or for bugs. */
export function reportError(error: unknown, debug: boolean): number {
  if (error instanceof UserError) {
    // Messages quote registry and image data: no raw control characters reach the terminal.
    console.error(`erofs-oci: ${printable(error.message)}`);
    if (error.hint) console.error(`  hint: ${printable(error.hint)}`);
    if (debug) console.error(error.stack);
    return error.exitCode;
  }
  if (error instanceof Deno.errors.BrokenPipe) return 1;
  const message = error instanceof Error ? error.message : String(error);
  console.error(`erofs-oci: internal error: ${printable(message)}`);
  if (debug) console.error(error instanceof Error ? error.stack : error);
  else console.error("  hint: run again with --debug for details and report it");
  return 1;
}
