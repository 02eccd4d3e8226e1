import { UsageError } from "../errors.ts";
import { validateDigest } from "../oci/reference.ts";
import { ArgvError, type OptionSpecs, parseArgv, type ParsedArgv } from "./argv.ts";

/** One `erofs-oci <name>` subcommand. */
export interface Command {
  name: string;
  /** One line for the command list in `erofs-oci --help`. */
  summary: string;
  /** Full `erofs-oci <name> --help` text. */
  help: string;
  /** Runs the command; returns the exit code. Throws UserError for failures the user can fix. */
  run(argv: string[]): Promise<number>;
  /** Its options that choose where it writes ("-o, --tmpdir"), for a full disk's hint. */
  writesWhere?: string;
}

const HELP_OPTION = { help: { type: "boolean", short: "h" } } as const;

/**
 * The command line parsed (./argv.ts, node:util parseArgs' rules), with usage errors turned
 * into UsageError (exit code 2) and `--help` handled by the caller. Unknown options and
 * missing values are reported by name.
 */
export function parseCommandArgs<O extends OptionSpecs>(
  command: string,
  argv: string[],
  options: O,
  allowPositionals = true,
): ParsedArgv<O & typeof HELP_OPTION> {
  try {
    const parsed = parseArgv(argv, { ...options, ...HELP_OPTION }, allowPositionals);
    refuseEmptyValues(command, parsed.values as Record<string, unknown>);
    return parsed;
  } catch (error) {
    if (!(error instanceof ArgvError)) throw error;
    const message = error.message.split("\n")[0];
    const help = `see \`erofs-oci ${command} --help\``;
    // "--layer -1": the parser takes -1 for an option; its fix is on a later line of its message.
    const dashed = /^Option '([^']+)' argument is ambiguous/.exec(message)?.[1];
    const long = dashed?.startsWith("--") ? dashed : Object.entries(options)
      .find(([, spec]) => dashed !== undefined && spec.short === dashed.slice(1))?.[0];
    // A negative number ("--layer -1", "--disk-cache-size -5G"): taken as the option's value,
    // so its own check says what it wants (the hint to write --layer=-1 led to that anyway).
    const valueAt = dashed === undefined
      ? -1
      : argv.findIndex((arg, i) => arg === dashed && /^-[0-9.]/.test(argv[i + 1] ?? ""));
    if (valueAt >= 0) {
      const joined = [
        ...argv.slice(0, valueAt),
        `${long === undefined || long.startsWith("--") ? long ?? dashed : `--${long}`}=${
          argv[valueAt + 1]
        }`,
        ...argv.slice(valueAt + 2),
      ];
      return parseCommandArgs(command, joined, options, allowPositionals);
    }
    const unknown = /^Unknown option '([^']+)'/.exec(message)?.[1];
    if (unknown) {
      const near = nearestOption(unknown.replace(/^-+/, ""), Object.keys(options));
      throw new UsageError(
        `${command}: unknown option '${unknown}'` +
          (near
            ? ` (did you mean --${near}?)`
            : allowPositionals && !unknown.startsWith("--")
            ? `; an argument that starts with '-' goes after '--' (… -- ${unknown})`
            : ""),
        help,
      );
    }
    throw new UsageError(
      `${command}: ${message}`,
      dashed
        ? `a value starting with '-' is written ${
          long?.startsWith("--") ? long : `--${long ?? "OPTION"}`
        }=-VALUE (or give the missing value); ${help}`
        : help,
    );
  }
}

/**
 * Options whose empty value means something: the default export's name, an empty password, and
 * `--timestamp "$SOURCE_DATE_EPOCH"` with the variable unset (no timestamp, as the variable's
 * own convention has it).
 */
const EMPTY_ALLOWED = new Set(["export-name", "password", "options", "timestamp"]);

/**
 * `--push ''`, `--index ''`, `-u ''`: a value left empty (an unset shell variable) was taken as
 * no option at all (build did not push, mount ignored --index) or failed far from its cause.
 */
function refuseEmptyValues(command: string, values: Record<string, unknown>): void {
  for (const [name, value] of Object.entries(values)) {
    if (EMPTY_ALLOWED.has(name)) continue;
    if (value === "" || (Array.isArray(value) && value.includes(""))) {
      throw new UsageError(
        `${command}: --${name} was given an empty value`,
        `give it one, or leave --${name} out; see \`erofs-oci ${command} --help\``,
      );
    }
  }
}

/**
 * The option (or action) `name` was probably meant as: one edit away, or a prefix of it (or it
 * of `name`).
 */
export function nearestOption(name: string, known: string[]): string | undefined {
  if (name.length < 2) return undefined;
  return known.find((option) => editDistance(name, option) <= 1) ??
    known.find((option) => option.startsWith(name) || name.startsWith(option));
}

/** Edits (insert, delete, replace, swap two neighbours) from `a` to `b`; 2 means "2 or more". */
function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 1) return 2;
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array(b.length).fill(0)]);
  for (let j = 0; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(
        d[i - 1][j] + 1,
        d[i][j - 1] + 1,
        d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return Math.min(d[a.length][b.length], 2);
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
  // An unset shell variable: it failed later as a path ("cannot use mount point : …").
  const empty = positionals.indexOf("");
  if (empty >= 0) {
    throw new UsageError(
      `${command}: ${names[empty]} is empty`,
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

/**
 * `--blob DIGEST` of any command, checked before anything is fetched (it was checked once the
 * registry had answered: a login or an unreachable registry hid the usage error).
 */
export function parseBlobDigest(command: string, text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  try {
    return validateDigest(text, "--blob digest");
  } catch (error) {
    throw new UsageError(`${command}: ${(error as Error).message}`);
  }
}

/**
 * `--timestamp SECS` (or SOURCE_DATE_EPOCH when it is not given) of a command that builds
 * images: whole seconds since 1970, undefined when neither is set.
 */
export function parseBuildTimestamp(
  command: string,
  option: string | undefined,
): number | undefined {
  const fromEnv = option === undefined;
  const text = option ?? Deno.env.get("SOURCE_DATE_EPOCH");
  if (text === undefined || text === "") return undefined;
  if (!/^[0-9]{1,12}$/.test(text)) {
    throw new UsageError(
      `${command}: ${fromEnv ? "SOURCE_DATE_EPOCH" : "--timestamp"} wants whole seconds since ` +
        `1970 (0 or more), not '${text}'`,
    );
  }
  return Number(text);
}
