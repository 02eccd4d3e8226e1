/**
 * Helpers for kernel tests in tests/vm/, which run only inside the QEMU VM
 * (scripts/vm/run-tests.sh; the guest's /init sets EROFS_OCI_IN_VM=1). The host suite leaves
 * tests/vm/ out (`--ignore=tests/vm` in scripts/test.sh); `ignore: NOT_IN_VM` is the second
 * guard for a direct `deno test tests/vm/` on the host.
 */
export const IN_VM = Deno.env.get("EROFS_OCI_IN_VM") === "1";

/** `ignore` flag for every VM test. */
export const NOT_IN_VM = !IN_VM;

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (stdin closed) and returns its exit code and output. */
export async function runCommand(cmd: string, args: string[]): Promise<CommandResult> {
  const output = await new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder();
  return {
    code: output.code,
    stdout: text.decode(output.stdout),
    stderr: text.decode(output.stderr),
  };
}

/** Like runCommand, but throws with the command line and stderr when it exits non-zero. */
export async function runChecked(cmd: string, args: string[]): Promise<string> {
  const result = await runCommand(cmd, args);
  if (result.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${result.code}: ${result.stderr.trim()}`);
  }
  return result.stdout;
}

/** Drops the page cache (nbd/loop/erofs pages) before a "cold" read. */
export async function dropCaches(): Promise<void> {
  await runChecked("sync", []);
  await Deno.writeTextFile("/proc/sys/vm/drop_caches", "3");
}
