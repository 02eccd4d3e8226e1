/**
 * lib/cli/argv.ts against what the CLI used before it, node:util parseArgs with
 * `strict: true`: the same values, positionals and error messages, on chosen edge cases and
 * on random command lines built from option-like pieces; then parseCommandArgs' UsageError.
 */
import assert from "node:assert/strict";
import { parseArgs } from "node:util";
import fc from "fast-check";
import { ArgvError, type OptionSpecs, parseArgv } from "../lib/cli/argv.ts";
import { expectPositionals, parseCommandArgs } from "../lib/cli/command.ts";
import { UsageError } from "../lib/errors.ts";
import { MOUNT_OPTIONS } from "../lib/cli/mount_option_specs.ts";

const OPTIONS = {
  username: { type: "string", short: "u" },
  json: { type: "boolean" },
  verbose: { type: "boolean", short: "v" },
  options: { type: "string", short: "o", multiple: true },
  flag: { type: "boolean", short: "f", multiple: true },
  backend: { type: "string", default: "auto" },
  help: { type: "boolean", short: "h" },
} as const satisfies OptionSpecs;

type Outcome = { values: Record<string, unknown>; positionals: string[] } | { error: string };

function viaNode(args: string[], options: OptionSpecs, allowPositionals: boolean): Outcome {
  try {
    const { values, positionals } = parseArgs({
      args,
      // deno-lint-ignore no-explicit-any
      options: options as any,
      allowPositionals,
      strict: true,
    });
    return { values: { ...values }, positionals };
  } catch (error) {
    return { error: (error as Error).message };
  }
}

function viaOwn(args: string[], options: OptionSpecs, allowPositionals: boolean): Outcome {
  try {
    const { values, positionals } = parseArgv(args, options, allowPositionals);
    assert.equal(Object.getPrototypeOf(values), null, "values has no prototype, as parseArgs'");
    return { values: { ...values }, positionals };
  } catch (error) {
    assert(error instanceof ArgvError, `not an ArgvError: ${error}`);
    return { error: error.message };
  }
}

function same(args: string[], options: OptionSpecs = OPTIONS): Outcome {
  const own = viaOwn(args, options, true);
  assert.deepEqual(own, viaNode(args, options, true), JSON.stringify(args));
  assert.deepEqual(viaOwn(args, options, false), viaNode(args, options, false));
  return own;
}

Deno.test("argv: edge cases give parseArgs' values and errors", () => {
  const cases: string[][] = [
    [],
    ["a", "b"],
    ["-"],
    ["--"],
    ["--", "--json", "-u"],
    ["a", "--json", "b"],
    ["--json", "--json"],
    ["--json=1"],
    ["--json="],
    ["--username"],
    ["-u"],
    ["--username", "x", "--username", "y"],
    ["--username=--x"],
    ["--username="],
    ["--username", "-"],
    ["--username", "--"],
    ["--username", "--json"],
    ["-u", "-v"],
    ["-u=x"],
    ["-ux"],
    ["-vu"],
    ["-vux"],
    ["-vu", "x"],
    ["-vu-x"],
    ["-hv", "a"],
    ["-vx"],
    ["-xv"],
    ["-x"],
    ["--nope"],
    ["--nope=1"],
    ["---x"],
    ["--=x"],
    ["--="],
    ["--=a=b"],
    ["--json=a=b"],
    ["--username=a=b"],
    ["-="],
    ["--__proto__"],
    ["--toString"],
    ["--constructor=1"],
    ["-o", "a", "--options=b", "-oc", "--options", "d"],
    ["-ff", "--flag"],
    ["--backend", "fuse"],
    ["--backend=nbd", "--backend", "fuse"],
    ["--nope", "-u"],
    ["-u", "--nope"],
    ["a", "--", "--"],
  ];
  for (const args of cases) same(args);
});

Deno.test("argv: random command lines give parseArgs' values and errors", () => {
  const piece = fc.oneof(
    fc.constantFrom(
      "--",
      "-",
      "--json",
      "--json=",
      "--username",
      "--username=",
      "-u",
      "-v",
      "-h",
      "-f",
      "-o",
      "--options",
      "--backend",
      "-x",
      "--nope",
      "-vu",
      "-vf",
      "-fvo",
    ),
    fc.string({ maxLength: 4 }),
    // Dashes, equals signs and option letters: the pieces the syntax is made of.
    fc.stringOf(fc.constantFrom("-", "=", "u", "v", "h", "f", "o", "x", "json", "username"), {
      maxLength: 6,
    }),
    fc.string({ maxLength: 4 }).map((s) => `-${s}`),
    fc.string({ maxLength: 4 }).map((s) => `--${s}`),
  );
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 6 }), (args) => {
      same(args);
    }),
    { numRuns: 3000 },
  );
});

Deno.test("argv: mount's own options parse as parseArgs parses them", () => {
  const options = { ...MOUNT_OPTIONS, help: { type: "boolean", short: "h" } } as const;
  const parsed = same(
    ["reg/img:1", "/mnt", "-o", "ro", "-u", "me", "--plain-http", "--backend=fuse", "-ofoo"],
    options,
  );
  assert.deepEqual(parsed, {
    values: { options: ["ro", "foo"], username: "me", "plain-http": true, backend: "fuse" },
    positionals: ["reg/img:1", "/mnt"],
  });
  same(["reg/img:1", "/mnt", "--layer"], options);
  same(["reg/img:1", "/mnt", "--no-disk-cache=yes"], options);
  same(["--cache-size", "--fetch-all", "reg/img:1", "/mnt"], options);
});

Deno.test("argv: typed values (defaults present, others optional)", () => {
  const { values } = parseArgv(["-o", "a"], OPTIONS, true);
  const backend: string = values.backend;
  const list: string[] | undefined = values.options;
  const json: boolean | undefined = values.json;
  assert.equal(backend, "auto");
  assert.deepEqual(list, ["a"]);
  assert.equal(json, undefined);
});

Deno.test("parseCommandArgs: usage errors are one-line UsageErrors with exit code 2", () => {
  const usage = (argv: string[], allowPositionals = true): UsageError => {
    try {
      parseCommandArgs("demo", argv, { name: { type: "string", short: "n" } }, allowPositionals);
    } catch (error) {
      assert(error instanceof UsageError);
      assert.equal(error.exitCode, 2);
      assert.match(error.hint ?? "", /see `erofs-oci demo --help`$/);
      assert(!error.message.includes("\n"), error.message);
      return error;
    }
    throw new Error(`no usage error for ${JSON.stringify(argv)}`);
  };
  // '-x' may be a file name; '--nope' was meant as an option (mount IMG DIR --bogus).
  assert.equal(
    usage(["-x"]).message,
    "demo: unknown option '-x'; an argument that starts with '-' goes after '--' (… -- -x)",
  );
  assert.equal(usage(["--nope"]).message, "demo: unknown option '--nope'");
  // A typo of a known option: the option it was meant as.
  assert.equal(usage(["--nmae=x"]).message, "demo: unknown option '--nmae' (did you mean --name?)");
  assert.equal(usage(["--names"]).message, "demo: unknown option '--names' (did you mean --name?)");
  assert.equal(usage(["--na"]).message, "demo: unknown option '--na' (did you mean --name?)");
  assert.equal(usage(["-x"], false).message, "demo: unknown option '-x'");
  assert.equal(usage(["--name"]).message, "demo: Option '-n, --name <value>' argument missing");
  assert.equal(usage(["-n", "-h"]).message, "demo: Option '-n' argument is ambiguous.");
  // How to give a value that starts with '-' (the parser's own later lines said it).
  assert.match(usage(["-n", "-h"]).hint!, /^a value starting with '-' is written --name=-VALUE/);
  // A negative number is the option's value, which the command then checks ("--layer -1":
  // the hint above led to --layer=-1 and only then to what --layer wants).
  const name = { name: { type: "string", short: "n" } } as const;
  assert.equal(parseCommandArgs("demo", ["--name", "-1"], name).values.name, "-1");
  assert.equal(parseCommandArgs("demo", ["-n", "-5G", "x"], name).values.name, "-5G");
  assert.equal(usage(["--nope"]).hint, "see `erofs-oci demo --help`");
  assert.equal(usage(["--help=1"]).message, "demo: Option '-h, --help' does not take an argument");
  assert.equal(
    usage(["a"], false).message,
    "demo: Unexpected argument 'a'. This command does not take positional arguments",
  );
  // An empty argument: it failed later as a path ("cannot use mount point : Empty path").
  assert.throws(
    () => expectPositionals("mount", ["img", ""], ["IMAGE", "DIR"]),
    (e: unknown) => e instanceof UsageError && e.message === "mount: DIR is empty",
  );
  // An empty value (an unset shell variable) was taken as no option at all.
  assert.equal(usage(["--name="]).message, "demo: --name was given an empty value");
  assert.equal(usage(["-n", ""]).message, "demo: --name was given an empty value");
  assert.equal(
    parseCommandArgs("demo", ["--password", ""], { password: { type: "string" } }).values.password,
    "",
    "an empty password is a value",
  );
  const { values, positionals } = parseCommandArgs("demo", ["-h", "--name=-x", "--", "-n"], {
    name: { type: "string", short: "n" },
  });
  assert.deepEqual({ ...values }, { help: true, name: "-x" });
  assert.deepEqual(positionals, ["-n"]);
});
