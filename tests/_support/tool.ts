/**
 * Runs a helper program (openssl, htpasswd, nbdinfo, nbdcopy …) with a deadline; its stdout.
 * Throws, with its stderr, when it fails or is killed at the deadline.
 */
export async function runTool(
  program: string,
  args: string[],
  timeoutMs = 20_000,
  env?: Record<string, string>,
): Promise<string> {
  const child = new Deno.Command(program, {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  }, timeoutMs);
  try {
    const output = await child.output();
    if (!output.success) {
      throw new Error(
        `${program} ${args.join(" ")} failed (${output.signal ?? output.code}): ${
          new TextDecoder().decode(output.stderr).trim()
        }`,
      );
    }
    return new TextDecoder().decode(output.stdout);
  } finally {
    clearTimeout(timer);
  }
}
