/**
 * Helpers for the lazy mounts of ordinary tar / tar+gzip images through an index (FUSE backend,
 * tests/gzip_mount_registry_test.ts, tests/gzip_plain_tar_mount_test.ts): a registry, a mount
 * sandbox and a durable state dir for the index files, all removed afterwards.
 */
import assert from "node:assert/strict";
import { FIXTURES } from "./requires.ts";
import { startRegistry, type TestRegistry } from "./registry.ts";
import { type CliResult, describe, runCli } from "./cli.ts";
import { type MountSandbox, mountSandbox } from "./mounts.ts";
import { withTempDir } from "./temp_dir.ts";

export interface IndexMountRig {
  registry: TestRegistry;
  sandbox: MountSandbox;
  /** Scratch directory of the test (index files written with `-o` go here). */
  work: string;
  /** EROFS_OCI_STATE_DIR alone (for CLI calls that do not mount). */
  stateEnv: Record<string, string>;
  /** The sandbox's environment with EROFS_OCI_STATE_DIR: for `mount` and `umount`. */
  env: Record<string, string>;
}

/** Runs `fn` with a fresh registry (no auth), sandbox and state dir; cleans all of them up. */
export function withIndexMountRig(
  prefix: string,
  fn: (rig: IndexMountRig) => Promise<void>,
): Promise<void> {
  return withTempDir(prefix, async (work) => {
    await using registry = await startRegistry({ auth: "none" });
    const stateEnv = { EROFS_OCI_STATE_DIR: `${work}/state` };
    const sandbox = await mountSandbox();
    try {
      await fn({ registry, sandbox, work, stateEnv, env: { ...sandbox.env, ...stateEnv } });
    } finally {
      await sandbox.cleanup();
    }
  });
}

/** `erofs-oci mount --backend fuse ARGS… TARGET` that must succeed (server logs on failure). */
export async function mountFuseOk(rig: IndexMountRig, args: string[]): Promise<CliResult> {
  const mounted = await runCli(["mount", "--backend", "fuse", ...args, rig.sandbox.target], {
    env: rig.env,
    timeoutMs: 120_000,
  });
  assert.equal(mounted.code, 0, `${describe(mounted)}\n${rig.sandbox.serverLogs()}`);
  return mounted;
}

/**
 * A fixtures' expected listing of a tar layer as this writer builds it: it gives tar roots
 * 0755 where mkfs.erofs gives 0777 (tests/build_tar_test.ts).
 */
export function expectedTarListing(name: string): string {
  return Deno.readTextFileSync(`${FIXTURES}/expected/${name}`)
    .replace(/^\.\td\t0777\t/, ".\td\t0755\t");
}
