import {
  describeErrno,
  hostRefusal,
  plainOsErrors,
  refusedSpecialPath,
  UsageError,
  UserError,
} from "../errors.ts";
import { VERSION } from "../version.ts";
import { nonUtf8Environment, refuseNonUtf8Arguments } from "./command_line.ts";
import { COMMANDS, HIDDEN_COMMANDS } from "./commands.ts";
import { logFormat, logRecord, setDebug, setLogFormat } from "../log.ts";
import { printable } from "./table.ts";
import { endOpenProgressLine } from "./progress.ts";
import { capped } from "../text.ts";
import { eventLoopTurn } from "../event_loop.ts";
import { mark, markHeldEventLoop } from "../timing.ts";

const EXIT_CODES = `Exit codes:
    0  success; also a service stopped by Ctrl-C, SIGTERM or SIGHUP (serve, metrics
       --listen, reattach --watch, mount --foreground: it stops cleanly)
    1  runtime failure (registry, kernel, file system)
    2  usage error (bad command line)
  129  hung up (SIGHUP): what it had to undo was undone, as for 130 (build, push:
       ended at once, no partial output)
  130  interrupted by Ctrl-C, or by SIGTERM while it had something to undo (a mount
       starting, a download, a conversion): that was undone
  143  ended by SIGTERM with nothing to undo (build, push: no partial output)`;

async function mainHelp(): Promise<string> {
  const commands = await Promise.all(COMMANDS.map((c) => c.load()));
  const width = Math.max(...commands.map((c) => c.name.length));
  const list = commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join("\n");
  return `erofs-oci ${VERSION} — mount EROFS images from OCI registries without pulling them

Usage: erofs-oci <command> [options]

Commands:
${list}

Global options:
  -h, --help     show help (also \`erofs-oci <command> --help\`)
  -V, --version  print the version
      --debug    print stack traces and debug logs on errors
      --log-format text|json
                 diagnostics on stderr as text (default) or one JSON object per line

${EXIT_CODES}`;
}

/** Parses the global options, dispatches to a command and maps errors to exit codes. */
export async function runCli(args: string[]): Promise<number> {
  mark("cli: main");
  markHeldEventLoop("cli");
  // What follows `--` is another program's command line (`trace … -- CMD ARGS`): its
  // --debug, -h or --help are its own.
  const dashes = args.indexOf("--");
  const ours = dashes === -1 ? args : args.slice(0, dashes);
  const debug = ours.includes("--debug");
  setDebug(debug);
  let argv = [...ours.filter((a) => a !== "--debug"), ...(dashes === -1 ? [] : args.slice(dashes))];
  let writesWhere: string | undefined;
  try {
    refuseNonUtf8Arguments(args);
    argv = takeLogFormat(argv);
    const [first, ...rest] = argv;
    if (first === undefined || first === "-h" || first === "--help" || first === "help") {
      // `help list`, `-h list`: that command's help.
      if (first !== undefined && rest[0] && !rest[0].startsWith("-")) {
        return await runCli([rest[0], "--help"]);
      }
      // No command at all is a usage error: the help goes where errors go.
      if (first === undefined) console.error(await mainHelp());
      else console.log(await mainHelp());
      return first === undefined ? 2 : 0;
    }
    if (first === "-V" || first === "--version") {
      if (rest.length > 0) {
        throw new UsageError(
          `${first} takes no argument (got '${rest[0]}')`,
          "see `erofs-oci --help`",
        );
      }
      console.log(`erofs-oci ${VERSION}`);
      return 0;
    }
    const entry = COMMANDS.find((c) => c.name === first) ??
      HIDDEN_COMMANDS.find((c) => c.name === first);
    if (!entry) {
      throw new UsageError(`unknown command '${first}'`, "see `erofs-oci --help`");
    }
    // mount's server starts while mount's modules load (lib/cli/mount_ahead.ts).
    const ahead = first === "mount" ? import("./mount_ahead.ts") : undefined;
    try {
      const aheadModule = await ahead;
      if (aheadModule) mark("cli: mount_ahead loaded");
      aheadModule?.spawnMountServerAhead(rest);
      // One turn of the event loop: the manifest GET started ahead goes out now, not after
      // mount's own checks (each of its steps is a microtask queued behind them). Its first
      // fetch() costs ~20 ms of this thread on the host, ~0.4 s under QEMU TCG (Deno's fetch
      // code runs for the first time), and the registry's answer then overlaps mount's checks.
      // (eventLoopTurn, not a zero timer: Deno's timers are Node's, whose first use loads
      // Node's layer.)
      if (aheadModule) await eventLoopTurn();
      const command = await entry.load();
      mark(`cli: ${first} loaded`);
      const options = rest.includes("--") ? rest.slice(0, rest.indexOf("--")) : rest;
      if (options.includes("--help") || options.includes("-h")) {
        console.log(command.help);
        return 0;
      }
      writesWhere = command.writesWhere;
      return await command.run(rest);
    } finally {
      if (ahead) {
        await (await import("../daemon/server_process.ts")).discardServerSpawnedAhead();
        (await import("./interrupt.ts")).takeInterruptsAhead()?.close();
      }
    }
  } catch (error) {
    return reportError(error, debug, writesWhere);
  }
}

/** Removes `--log-format F` / `--log-format=F` (before the command's own options) and applies it. */
function takeLogFormat(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    let value: string | undefined;
    if (arg === "--log-format") value = argv[++i] ?? "";
    else if (arg.startsWith("--log-format=")) value = arg.slice("--log-format=".length);
    else {
      out.push(arg);
      continue;
    }
    if (value !== "text" && value !== "json") {
      throw new UsageError(`--log-format must be text or json, not '${value}'`);
    }
    setLogFormat(value);
  }
  return out;
}

/**
 * Prints one line (plus hint) for user errors; a stack only with --debug or for bugs. Deno's
 * OS error texts read as ours ("(os error 2)" left out); --debug names the errno.
 */
export function reportError(thrown: unknown, debug: boolean, writesWhere?: string): number {
  const error = refusedSpecialPath(thrown) ?? hostRefusal(thrown, writesWhere) ??
    nonUtf8Environment(thrown) ?? thrown;
  const { text: plain, errnos } = plainOsErrors(
    error instanceof Error ? error.message : String(error),
  );
  // One line, whatever a registry or image put into it (a 3 MiB annotation made a 3 MiB line).
  const message = debug ? plain : capped(plain);
  if (logFormat() === "json") {
    if (error instanceof Deno.errors.BrokenPipe) return 1;
    const user = error instanceof UserError;
    logRecord("error", message, {
      ...(user && error.hint ? { hint: error.hint } : {}),
      ...(user ? { exitCode: error.exitCode } : { internal: true }),
      ...(debug && errnos.length > 0 ? { errno: errnos.map(describeErrno) } : {}),
      ...(debug && error instanceof Error ? { stack: error.stack } : {}),
    });
    return user ? error.exitCode : 1;
  }
  endOpenProgressLine(); // a failure in the middle of the work: its message on a line of its own
  const printDebug = () => {
    for (const errno of errnos) console.error(`  errno: ${describeErrno(errno)}`);
    console.error(error instanceof Error ? error.stack : error);
  };
  if (error instanceof UserError) {
    // Messages quote registry and image data: no raw control characters reach the terminal.
    console.error(`erofs-oci: ${printable(message)}`);
    if (error.hint) console.error(`  hint: ${printable(error.hint)}`);
    if (debug) printDebug();
    return error.exitCode;
  }
  if (error instanceof Deno.errors.BrokenPipe) return 1;
  console.error(`erofs-oci: internal error: ${printable(message)}`);
  if (debug) printDebug();
  else console.error("  hint: run again with --debug for details and report it");
  return 1;
}
