/**
 * dist/erofs-oci as a user meets it, for the tests of the build (tests/build_test.ts) and of the
 * launcher's runtime cache (tests/launcher_prune_test.ts): one build per test file run, and the
 * file copied alone into an empty directory with a private runtime cache.
 */
import { IN_CI, REPO_ROOT } from "./requires.ts";

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export async function run(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
  cwd?: string,
) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: cwd ?? REPO_ROOT,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) } as Run;
}

let built: Promise<Run> | undefined;
/** One build per test file run. */
export function build(): Promise<Run> {
  return built ??= run(`${REPO_ROOT}/scripts/build.sh`, []);
}

/** An empty directory holding only a copy of dist/erofs-oci, and a runtime cache beside it. */
export async function copiedAlone() {
  const base = await Deno.makeTempDir({ prefix: "erofs-oci-copied-" });
  await Deno.mkdir(`${base}/bin`);
  await Deno.mkdir(`${base}/empty`);
  await Deno.copyFile(`${REPO_ROOT}/dist/erofs-oci`, `${base}/bin/erofs-oci`);
  const program = `${base}/bin/erofs-oci`;
  const env = { EROFS_OCI_RUNTIME_CACHE: `${base}/cache/runtime` };
  return {
    base,
    program,
    env,
    run: (args: string[], extraEnv: Record<string, string> = {}) =>
      run(program, args, { ...env, ...extraEnv }, `${base}/empty`),
    async cleanup() {
      // The unpacked runtime is read-only on purpose.
      await run("chmod", ["-R", "u+w", base]);
      await Deno.remove(base, { recursive: true });
    },
  };
}

export function isLauncher(buildOutput: Run): boolean {
  return /one file: launcher/.test(buildOutput.stdout);
}

/**
 * For a test of the launcher alone: true when the build made the launcher. Otherwise (deno
 * compile worked) the test has nothing to check: it says so and passes over it locally, and
 * fails under CI, where a test that ran nothing must not pass (it returned early, "ok").
 */
export function launcherBuilt(buildOutput: Run, test: string): boolean {
  if (isLauncher(buildOutput)) return true;
  const why = `${test}: the build is a compiled binary, not the launcher: nothing to check`;
  if (IN_CI) throw new Error(why);
  console.log(`skipping ${why}`);
  return false;
}
