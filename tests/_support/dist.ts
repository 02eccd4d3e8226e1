/**
 * dist/erofs-oci as a user has it: built once per test file run, then copied alone into an
 * empty directory with its own runtime cache beside it.
 */
import { REPO_ROOT } from "./requires.ts";

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
): Promise<Run> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: cwd ?? REPO_ROOT,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

let built: Promise<Run> | undefined;
/** One build per test file run. */
export function build(): Promise<Run> {
  return built ??= run(`${REPO_ROOT}/scripts/build.sh`, []);
}

/** An empty directory holding only a copy of dist/erofs-oci, and a runtime cache beside it. */
export async function copiedAlone(runtimeCache?: (base: string) => string) {
  const base = await Deno.makeTempDir({ prefix: "erofs-oci-copied-" });
  await Deno.mkdir(`${base}/bin`);
  await Deno.mkdir(`${base}/empty`);
  await Deno.copyFile(`${REPO_ROOT}/dist/erofs-oci`, `${base}/bin/erofs-oci`);
  const program = `${base}/bin/erofs-oci`;
  const env = { EROFS_OCI_RUNTIME_CACHE: runtimeCache?.(base) ?? `${base}/cache/runtime` };
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

/** True when the build made the launcher (no denort runtime to compile with). */
export function isLauncher(buildOutput: Run): boolean {
  return /one file: launcher/.test(buildOutput.stdout);
}
