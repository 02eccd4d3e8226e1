/**
 * Crash recovery of a tar.gz layer mounted through its index (FUSE on this host; the VM's 6.1
 * kernel cannot mount 512-byte-block tar-index images over NBD): the server is killed with
 * SIGKILL while a 48 MiB read waits for it; `erofs-oci reattach DIR` brings it back from the
 * kept index files and the reader finishes with the exact sha256; umount leaves nothing.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import {
  manifestOf,
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  serverPids,
} from "./_support/mounts.ts";
import {
  bigTarGz,
  keeperPids,
  killKeepers,
  killMidRead,
  startReadGate,
} from "./_support/kill_mid_read.ts";
import { startRegistry } from "./_support/registry.ts";
import { pushImage } from "./_support/oci_raw.ts";

const LONG = { timeoutMs: 120_000 };

Deno.test({
  name: "gzip fuse reattach: kill -9 mid-read of a tar.gz layer, reattach DIR, exact bytes",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), command("gzip")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-gzip-crash-" });
    const registry = await startRegistry({ auth: "none" });
    const gate = await startReadGate(registry.host);
    const sandbox = await mountSandbox();
    const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
    let keepers: number[] = [];
    try {
      const big = await bigTarGz(work);
      await pushImage(registry, "gz/crash", "v1", [
        { bytes: big.bytes, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" },
      ]);
      assertSuccess(await runCli(["index", `${registry.host}/gz/crash:v1`, "--push"], LONG));
      const mounted = await runCli(
        [
          "mount",
          "--backend",
          "fuse",
          "--no-disk-cache",
          `${gate.proxy.host}/gz/crash:v1`,
          sandbox.target,
        ],
        { env, ...LONG },
      );
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      keepers = keeperPids(sandbox.runtimeDir);

      await killMidRead(
        sandbox.runtimeDir,
        gate,
        `${sandbox.target}/big.bin`,
        big.sha,
        async () => {
          const reattached = await runCli(["reattach", sandbox.target], { env, ...LONG });
          assert.equal(reattached.code, 0, `${describe(reattached)}\n${sandbox.serverLogs()}`);
          assert.match(reattached.stdout, /reattached/);
        },
        // Tar layers' FUSE file is read through the page cache (lib/fuse/blob.ts, pageCache):
        // the reader waits for a page that a readahead READ in the dead server's hands fills.
        { readerWaitsIn: "folio_wait_bit_common" },
      );

      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
      assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
      await gate.proxy.stop();
      await registry.stop();
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name:
    "gzip fuse reattach serves the layout the mount chose (4 KiB at mount, nothing said at reattach)",
  ignore: requires(root(), path("/dev/fuse"), command("gzip")),
  fn: () =>
    afterServerKilled("erofs-oci-gzip-layout-", async (work) => {
      const big = await bigTarGz(work, 4 << 20);
      return {
        args: ["--index-missing", `${work}/big.tar.gz`],
        mountEnv: { EROFS_OCI_TAR_LAYOUT: "4k" },
        big,
      };
    }, async ({ sandbox, env, prepared }) => {
      // As `reattach --watch` or a later shell would run it: without the variable.
      const reattached = await runCli(["reattach", sandbox.target], { env, ...LONG });
      assert.equal(reattached.code, 0, `${describe(reattached)}\n${sandbox.serverLogs()}`);
      // Not read before the kill: every byte comes from the new server.
      const got = await sha256File(`${sandbox.target}/big.bin`);
      assert.equal(got, prepared.big?.sha, "big.bin read through the reattached server");
    }),
});

Deno.test({
  name:
    "gzip fuse reattach of a --tarindex mount refuses a meta or zinfo file changed since the mount, serves them put back",
  ignore: requires(root(), path("/dev/fuse"), path(`${FIXTURES}/layer.meta.erofs`, "fixtures")),
  fn: () =>
    afterServerKilled("erofs-oci-gzip-tarindex-", async (work) => {
      await Deno.copyFile(`${FIXTURES}/layer.meta.erofs`, `${work}/layer.meta.erofs`);
      await Deno.copyFile(`${FIXTURES}/layer.zinfo`, `${work}/layer.zinfo`);
      return {
        args: [
          "--tarindex",
          `${work}/layer.meta.erofs`,
          "--zinfo",
          `${work}/layer.zinfo`,
          `${FIXTURES}/layer.tar.gz`,
        ],
      };
    }, async ({ work, sandbox, env }) => {
      // Each file changed in place (what `cp` over it does) while no server runs: refused;
      // put back: served.
      for (
        const [file, at] of [["layer.meta.erofs", 20_000], ["layer.zinfo", 12 + 17 + 1000]] as const
      ) {
        const original = await Deno.readFile(`${work}/${file}`);
        const changed = original.slice();
        changed[at] ^= 0xff;
        await Deno.writeFile(`${work}/${file}`, changed);
        const refused = await runCli(["reattach", sandbox.target], { env, ...LONG });
        assert.notEqual(refused.code, 0, describe(refused));
        assert.match(
          `${refused.stderr}\n${sandbox.serverLogs()}`,
          new RegExp(`${file.replaceAll(".", "\\.")} changed since the mount`),
        );
        await Deno.writeFile(`${work}/${file}`, original);
      }
      const reattached = await runCli(["reattach", sandbox.target], { env, ...LONG });
      assert.equal(reattached.code, 0, `${describe(reattached)}\n${sandbox.serverLogs()}`);
      assert.equal(
        await manifestOf(sandbox.target),
        Deno.readTextFileSync(`${FIXTURES}/expected/layer.meta.txt`),
      );
    }),
});

/**
 * A FUSE mount of what `prepare` gives (in a sandbox of its own, the state dir under `work`),
 * its server killed with SIGKILL; `fn` reattaches it; then it is unmounted and all removed.
 */
async function afterServerKilled<P extends { args: string[]; mountEnv?: Record<string, string> }>(
  prefix: string,
  prepare: (work: string) => Promise<P>,
  fn: (
    rig: { work: string; sandbox: MountSandbox; env: Record<string, string>; prepared: P },
  ) => Promise<void>,
): Promise<void> {
  const work = await Deno.makeTempDir({ prefix });
  const sandbox = await mountSandbox();
  const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
  let keepers: number[] = [];
  try {
    const prepared = await prepare(work);
    const mounted = await runCli(
      ["mount", "--backend", "fuse", ...prepared.args, sandbox.target],
      { env: { ...env, ...prepared.mountEnv }, ...LONG },
    );
    assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
    keepers = keeperPids(sandbox.runtimeDir);
    const [server] = serverPids(sandbox.runtimeDir);
    Deno.kill(server, "SIGKILL");
    while (isAlive(server)) await new Promise((resolve) => setTimeout(resolve, 20));
    await fn({ work, sandbox, env, prepared });
    assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
    assert.deepEqual(mountsBelow(sandbox.target), []);
  } finally {
    await sandbox.cleanup();
    killKeepers(keepers);
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

function isAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return !Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]?.startsWith("Z");
  } catch {
    return false;
  }
}

async function sha256File(file: string): Promise<string> {
  const out = await new Deno.Command("sha256sum", { args: [file], stdout: "piped" }).output();
  assert.equal(out.code, 0, `sha256sum ${file}`);
  return new TextDecoder().decode(out.stdout).split(" ")[0];
}
