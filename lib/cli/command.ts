import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError } from "../errors.ts";

/** One `erofs-oci <name>` subcommand. */
export interface Command {
  name: string;
  /** One line for the command list in `erofs-oci --help`. */
  summary: string;
  /** Full `erofs-oci <name> --help` text. */
  help: string;
  /** Runs the command; returns the exit code. Throws UserError for failures the user can fix. */
  run(argv: string[]): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/**
 * `node:util` parseArgs with usage errors turned into UsageError (exit code 2) and `--help`
 * handled by the caller. Unknown options and missing values are reported by name.
 */
export function parseCommandArgs<O extends Options>(
  command: string,
  argv: string[],
  options: O,
  allowPositionals = true,
) {
  try {
    return parseArgs({
      args: argv,
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals,
      strict: true,
    });
  } catch (error) {
    const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
    throw new UsageError(
      `${command}: ${message.replace(/^Unknown option/, "unknown option")}`,
      `see \`erofs-oci ${command} --help\``,
    );
  }
}

/** Throws a usage error unless exactly `count` positional arguments were given. */
export function expectPositionals(
  command: string,
  positionals: string[],
  names: string[],
): string[] {
  if (positionals.length < names.length) {
    throw new UsageError(
      `${command}: missing ${names.slice(positionals.length).join(" ")}`,
      `usage: erofs-oci ${command} ${names.join(" ")} [options]`,
    );
  }
  if (positionals.length > names.length) {
    throw new UsageError(
      `${command}: unexpected argument '${positionals[names.length]}'`,
      `usage: erofs-oci ${command} ${names.join(" ")} [options]`,
    );
  }
  return positionals;
}

/** `--layer N` of any command: a layer index (0, 1, ...) of at most 9 digits, or undefined. */
export function parseLayerIndex(command: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^[0-9]{1,9}$/.test(text)) {
    throw new UsageError(`${command}: --layer takes a layer index (0, 1, ...), not '${text}'`);
  }
  return Number(text);
}
