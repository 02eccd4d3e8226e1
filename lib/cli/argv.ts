/**
 * The command-line parser of every command: what node:util's parseArgs does with
 * `strict: true`, which the CLI used before, with the same results and the same error
 * messages (tests/cli_argv_test.ts compares the two). Own code because importing node:util
 * loads Deno's Node compatibility layer first, ~6-25 ms of every start on the host and over a
 * second in the QEMU TCG guest.
 *
 * Syntax: `--name value`, `--name=value`, `-s value`, `-svalue`, grouped short booleans
 * (`-hv`, the last one may take a value: `-vuNAME`), a string option's value may be the next
 * argument whatever it is but one starting with `-` is refused as ambiguous (write
 * `--name=-x`), `--` ends the options, a lone `-` is a positional. Repeating an option keeps
 * the last value, or every value for `multiple`.
 */

/** One option: a string or a boolean, maybe with a one-letter alias, repeatable, defaulted. */
export interface OptionSpec {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
  default?: string | boolean | readonly string[] | readonly boolean[];
}

export type OptionSpecs = Record<string, OptionSpec>;

type Scalar<S extends OptionSpec> = S["type"] extends "string" ? string : boolean;
type ValueOf<S extends OptionSpec> = S extends { multiple: true } ? Scalar<S>[] : Scalar<S>;

/** The parsed values: an option given or defaulted has its value, others are absent. */
export type ParsedValues<O extends OptionSpecs> =
  & { -readonly [K in keyof O as O[K] extends { default: unknown } ? K : never]: ValueOf<O[K]> }
  & { -readonly [K in keyof O as O[K] extends { default: unknown } ? never : K]?: ValueOf<O[K]> };

export interface ParsedArgv<O extends OptionSpecs> {
  values: ParsedValues<O>;
  positionals: string[];
}

/** A command line the options do not allow; the message is one of parseArgs' own. */
export class ArgvError extends Error {
  override name = "ArgvError";
}

function longNameOf(options: OptionSpecs, short: string): string {
  for (const name of Object.keys(options)) {
    if (options[name].short === short) return name;
  }
  return short;
}

function typeOf(options: OptionSpecs, name: string): OptionSpec["type"] | undefined {
  return Object.hasOwn(options, name) ? options[name].type : undefined;
}

/**
 * Parses `argv` against `options`. Throws ArgvError for an unknown option, a string option
 * without its value (or with one that looks like an option), a value given to a boolean, and
 * a positional argument when `allowPositionals` is false.
 */
export function parseArgv<O extends OptionSpecs>(
  argv: readonly string[],
  options: O,
  allowPositionals: boolean,
): ParsedArgv<O> {
  const values: Record<string, unknown> = Object.create(null);
  const positionals: string[] = [];
  const addPositional = (arg: string) => {
    if (!allowPositionals) {
      throw new ArgvError(
        `Unexpected argument '${arg}'. This command does not take positional arguments`,
      );
    }
    positionals.push(arg);
  };
  /** One option occurrence, checked as parseArgs checks it, then stored. */
  const take = (name: string, rawName: string, value: string | undefined, inline: boolean) => {
    if (!Object.hasOwn(options, name)) {
      const hint = allowPositionals
        ? `. To specify a positional argument starting with a '-', place it at the end of the ` +
          `command after '--', as in '-- ${JSON.stringify(rawName)}`
        : "";
      throw new ArgvError(`Unknown option '${rawName}'${hint}`);
    }
    const spec = options[name];
    const shortAndLong = `${spec.short ? `-${spec.short}, ` : ""}--${name}`;
    if (spec.type === "string" && value === undefined) {
      throw new ArgvError(`Option '${shortAndLong} <value>' argument missing`);
    }
    if (spec.type === "boolean" && value !== undefined) {
      throw new ArgvError(`Option '${shortAndLong}' does not take an argument`);
    }
    if (!inline && value !== undefined && value.length > 1 && value[0] === "-") {
      const example = rawName.startsWith("--")
        ? `'${rawName}=-XYZ'`
        : `'--${name}=-XYZ' or '${rawName}-XYZ'`;
      throw new ArgvError(
        `Option '${rawName}' argument is ambiguous.\n` +
          `Did you forget to specify the option argument for '${rawName}'?\n` +
          `To specify an option argument starting with a dash use ${example}.`,
      );
    }
    if (name === "__proto__") return;
    const stored = value ?? true;
    if (spec.multiple) {
      const list = values[name] as unknown[] | undefined;
      if (list) list.push(stored);
      else values[name] = [stored];
    } else {
      values[name] = stored;
    }
  };

  const args = [...argv];
  while (args.length > 0) {
    const arg = args.shift()!;
    if (arg === "--") {
      for (const rest of args) addPositional(rest);
      break;
    }
    if (arg.length < 2 || arg[0] !== "-") {
      addPositional(arg);
      continue;
    }
    if (arg[1] !== "-") {
      const short = arg[1];
      const name = longNameOf(options, short);
      const takesValue = typeOf(options, name) === "string";
      if (arg.length === 2) {
        // `-s`, and its value from the next argument
        take(name, arg, takesValue ? args.shift() : undefined, false);
      } else if (takesValue) {
        // `-sVALUE`
        take(name, `-${short}`, arg.slice(2), true);
      } else {
        // `-abc` is `-a -b -c`; a string option inside takes the rest as its value: `-ab -cvalue`
        const expanded: string[] = [];
        for (let i = 1; i < arg.length; i++) {
          const letter = arg[i];
          if (typeOf(options, longNameOf(options, letter)) !== "string" || i === arg.length - 1) {
            expanded.push(`-${letter}`);
          } else {
            expanded.push(`-${arg.slice(i)}`); // `-uvalue`: a value that may start with `-`
            break;
          }
        }
        args.unshift(...expanded);
      }
      continue;
    }
    // As parseArgs: `--=x` is an option named `=x`, but `--=a=b` is `--` with value `a=b`.
    if (!arg.includes("=", 3)) {
      // `--name`, and for a string option its value from the next argument
      const name = arg.slice(2);
      take(name, arg, typeOf(options, name) === "string" ? args.shift() : undefined, false);
    } else {
      const equals = arg.indexOf("=");
      const name = arg.slice(2, equals);
      take(name, `--${name}`, arg.slice(equals + 1), true);
    }
  }
  for (const [name, spec] of Object.entries(options)) {
    if (spec.default !== undefined && values[name] === undefined) values[name] = spec.default;
  }
  return { values: values as ParsedValues<O>, positionals };
}
