/**
 * Helpers for the lazy mounts of ordinary tar / tar+gzip images through an index (FUSE backend):
 * through the CLI (tests/gzip_mount_registry_test.ts, tests/gzip_plain_tar_mount_test.ts: a
 * registry, a mount sandbox and a durable state dir for the index files, all removed
 * afterwards), and a local index's files mounted in-process (withIndexFilesMounted).
 */
import assert from "node:assert/strict";
import { FIXTURES } from "./requires.ts";
import { startRegistry, type TestRegistry } from "./registry.ts";
import { type CliResult, describe, runCli } from "./cli.ts";
import { type MountSandbox, mountSandbox } from "./mounts.ts";
import { withTempDir } from "./temp_dir.ts";
import { FuseStack } from "./fuse_stack.ts";
import { HybridTarSource } from "../../lib/gzip/hybrid_tar.ts";
import { parseIndexRecord } from "../../lib/gzip/index_record.ts";
import { LocalFile } from "../../lib/source/local_file.ts";

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

/**
 * The files `erofs-oci index LAYER -o DIR` wrote for `name` (DIR/NAME.meta.erofs, .zinfo,
 * .index.json, .pieces) served in this process as [meta][tar] over a FUSE blob, every inflated
 * piece checked against NAME.pieces, and mounted (file-backed) by the kernel; `use` gets the mount
 * point. Everything is unmounted and closed afterwards.
 */
export async function withIndexFilesMounted<T>(
  layer: string,
  dir: string,
  name: string,
  use: (mnt: string) => Promise<T>,
): Promise<T> {
  const blob = await LocalFile.open(layer);
  const zinfo = await LocalFile.open(`${dir}/${name}.zinfo`);
  let source: HybridTarSource | undefined;
  let stack: FuseStack | undefined;
  let mnt: string | undefined;
  try {
    const record = parseIndexRecord(await Deno.readFile(`${dir}/${name}.index.json`));
    source = await HybridTarSource.openGzip(
      await Deno.readFile(`${dir}/${name}.meta.erofs`),
      blob,
      zinfo,
      {
        pieceDigests: {
          bytes: await Deno.readFile(`${dir}/${name}.pieces`),
          pieceBytes: record.pieces!.pieceBytes,
          totalBytes: record.tarBytes,
        },
      },
    );
    stack = await FuseStack.create();
    const file = await stack.blob(source, "fuse");
    const target = await stack.dir("mnt");
    // A child process: this thread serves the FUSE blob the kernel reads while mounting.
    const mounted = await new Deno.Command("mount", {
      args: ["-t", "erofs", "-o", "ro", file.filePath, target],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(mounted.code, 0, new TextDecoder().decode(mounted.stderr));
    mnt = target;
    return await use(mnt);
  } finally {
    try {
      if (mnt) {
        const out = await new Deno.Command("umount", { args: [mnt], stderr: "piped" }).output();
        assert.equal(out.code, 0, `umount ${mnt}: ${new TextDecoder().decode(out.stderr)}`);
      }
    } finally {
      await stack?.cleanup();
      await source?.close();
      await blob.close();
      await zinfo.close();
    }
  }
}
