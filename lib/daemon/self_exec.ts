/**
 * How to start this same program again (the detached mount server is a re-exec of the CLI).
 * Works for `deno run main.ts`, the bundled `erofs-oci.js` launcher and a `deno compile`
 * binary; the child gets exactly the permissions this process holds, so the permission list
 * stays in one place (scripts/permissions).
 */
const PERMISSIONS = ["net", "read", "write", "env", "run", "ffi", "sys"] as const;

/**
 * V8 flags of every run of the shipped program (scripts/build.sh passes them to `deno compile`
 * and to the launcher; the server gets them here). Source positions compiled with the code
 * instead of on demand: the first Error created while a frame of the bundle's top-level function
 * is on the stack (an fs call that throws NotFound during module evaluation, or any error while
 * main's top-level await waits) made V8 re-parse the whole 0.49 MB bundle for that one frame:
 * 18-20 ms of each process's start on the host (`cli: main` 33 -> 15 ms after the runtime's
 * time origin), ~10x that under QEMU TCG. Stack traces are unchanged.
 */
export const V8_FLAGS = ["--no-enable-lazy-source-positions"] as const;

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
  return [
    Deno.execPath(),
    "run",
    "-q",
    "--no-prompt",
    `--v8-flags=${V8_FLAGS.join(",")}`,
    ...flags,
    Deno.mainModule,
    ...args,
  ];
}
