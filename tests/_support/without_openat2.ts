/**
 * `build` of a directory with openat2(2) failing ENOSYS (refuse_syscall.py: Linux before 5.6,
 * or a container profile that denies it) must write the same image as with it: both builds are
 * made reproducible (fixed timestamp and UUID) and compared byte for byte.
 */
import assert from "node:assert/strict";
import { command, REPO_ROOT, requires } from "./requires.ts";
import { assertSuccess, runCli } from "./cli.ts";

/** For a test's `ignore`: the filter script checks for x86_64 system call numbers. */
export function withoutOpenat2Ignored(): boolean {
  return requires(command("python3")) || Deno.build.arch !== "x86_64";
}

/** `build src -o out` with a fixed timestamp and UUID: the same tree gives the same bytes. */
function reproducibleBuildArgs(src: string, out: string): string[] {
  return [
    "build",
    src,
    "-o",
    out,
    "--timestamp",
    "0",
    "--uuid",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
  ];
}

/**
 * Builds `src` into `work`/with.erofs as usual and into `work`/without.erofs without openat2,
 * and asserts both succeed with the same bytes. `timeoutMs`: the first build's deadline.
 */
export async function assertSameImageWithoutOpenat2(
  src: string,
  work: string,
  timeoutMs?: number,
): Promise<void> {
  const withImage = `${work}/with.erofs`;
  const withoutImage = `${work}/without.erofs`;
  assertSuccess(await runCli(reproducibleBuildArgs(src, withImage), { timeoutMs }));
  const without = await new Deno.Command("python3", {
    args: [
      `${REPO_ROOT}/tests/_support/refuse_syscall.py`,
      "openat2",
      `${REPO_ROOT}/scripts/erofs-oci-dev`,
      ...reproducibleBuildArgs(src, withoutImage),
    ],
  }).output();
  assert(without.success, new TextDecoder().decode(without.stderr));
  assert.deepEqual(Deno.readFileSync(withoutImage), Deno.readFileSync(withImage));
}
