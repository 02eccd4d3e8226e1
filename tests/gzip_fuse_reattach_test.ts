/**
 * Crash recovery of a tar.gz layer mounted through its index (FUSE on this host; the VM's 6.1
 * kernel cannot mount 512-byte-block tar-index images over NBD): the server is killed with
 * SIGKILL while a 48 MiB read waits for it; `erofs-oci reattach DIR` brings it back from the
 * kept index files and the reader finishes with the exact sha256; umount leaves nothing.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { manifestOf, mountSandbox, mountsBelow, serverPids } from "./_support/mounts.ts";
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
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-gzip-layout-" });
    const sandbox = await mountSandbox();
    const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
    let keepers: number[] = [];
    try {
      const big = await bigTarGz(work, 4 << 20);
      const mounted = await runCli(
        ["mount", "--backend", "fuse", "--index-missing", `${work}/big.tar.gz`, sandbox.target],
        { env: { ...env, EROFS_OCI_TAR_LAYOUT: "4k" }, ...LONG },
      );
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      keepers = keeperPids(sandbox.runtimeDir);
      const [server] = serverPids(sandbox.runtimeDir);
      Deno.kill(server, "SIGKILL");
      while (isAlive(server)) await new Promise((resolve) => setTimeout(resolve, 20));
      // As `reattach --watch` or a later shell would run it: without the variable.
      const reattached = await runCli(["reattach", sandbox.target], { env, ...LONG });
      assert.equal(reattached.code, 0, `${describe(reattached)}\n${sandbox.serverLogs()}`);
      // Not read before the kill: every byte comes from the new server.
      const got = await sha256File(`${sandbox.target}/big.bin`);
      assert.equal(got, big.sha, "big.bin read through the reattached server");
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

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

Deno.test({
  name:
    "gzip fuse reattach of a --tarindex mount refuses a meta or zinfo file changed since the mount, serves them put back",
  ignore: requires(root(), path("/dev/fuse"), path(`${FIXTURES}/layer.meta.erofs`, "fixtures")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-gzip-tarindex-" });
    const sandbox = await mountSandbox();
    const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
    let keepers: number[] = [];
    try {
      const meta = `${work}/layer.meta.erofs`;
      await Deno.copyFile(`${FIXTURES}/layer.meta.erofs`, meta);
      await Deno.copyFile(`${FIXTURES}/layer.zinfo`, `${work}/layer.zinfo`);
      const original = await Deno.readFile(meta);
      const mounted = await runCli([
        "mount",
        "--backend",
        "fuse",
        "--tarindex",
        meta,
        "--zinfo",
        `${work}/layer.zinfo`,
        `${FIXTURES}/layer.tar.gz`,
        sandbox.target,
      ], { env, ...LONG });
      assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      keepers = keeperPids(sandbox.runtimeDir);
      const [server] = serverPids(sandbox.runtimeDir);
      Deno.kill(server, "SIGKILL");
      while (isAlive(server)) await new Promise((resolve) => setTimeout(resolve, 20));
      // Changed in place (what `cp` over it does) while no server runs.
      const changed = original.slice();
      changed[20_000] ^= 0xff;
      await Deno.writeFile(meta, changed);
      const refused = await runCli(["reattach", sandbox.target], { env, ...LONG });
      assert.notEqual(refused.code, 0, describe(refused));
      assert.match(
        `${refused.stderr}\n${sandbox.serverLogs()}`,
        /layer\.meta\.erofs changed since the mount/,
      );
      await Deno.writeFile(meta, original);
      // The zinfo likewise (one byte of a checkpoint's window).
      const zinfo = await Deno.readFile(`${work}/layer.zinfo`);
      const changedZinfo = zinfo.slice();
      changedZinfo[12 + 17 + 1000] ^= 0xff;
      await Deno.writeFile(`${work}/layer.zinfo`, changedZinfo);
      const refusedZinfo = await runCli(["reattach", sandbox.target], { env, ...LONG });
      assert.notEqual(refusedZinfo.code, 0, describe(refusedZinfo));
      assert.match(
        `${refusedZinfo.stderr}\n${sandbox.serverLogs()}`,
        /layer\.zinfo changed since the mount/,
      );
      await Deno.writeFile(`${work}/layer.zinfo`, zinfo);
      const reattached = await runCli(["reattach", sandbox.target], { env, ...LONG });
      assert.equal(reattached.code, 0, `${describe(reattached)}\n${sandbox.serverLogs()}`);
      assert.equal(
        await manifestOf(sandbox.target),
        Deno.readTextFileSync(`${FIXTURES}/expected/layer.meta.txt`),
      );
      assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
