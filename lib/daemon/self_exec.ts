/**
 * How to start this same program again (the detached mount server is a re-exec of the CLI).
 * Works for `deno run main.ts`, the bundled `erofs-oci.js` launcher and a `deno compile`
 * binary; the child gets exactly the permissions this process holds, so the permission list
 * stays in one place (scripts/permissions).
 */
const PERMISSIONS = ["net", "read", "write", "env", "run", "ffi", "sys"] as const;

function isCompiled(): boolean {
  // deno compile serves the embedded main module from a virtual path under deno-compile-*.
  return Deno.mainModule.includes("/deno-compile-");
}

/** argv (program first) that runs `erofs-oci <args…>` with this process's permissions. */
export function selfCommand(args: string[]): string[] {
  if (isCompiled()) return [Deno.execPath(), ...args];
  const flags = PERMISSIONS
    .filter((name) => Deno.permissions.querySync({ name }).state === "granted")
    .map((name) => `--allow-${name}`);
  return [Deno.execPath(), "run", "-q", "--no-prompt", ...flags, Deno.mainModule, ...args];
}
