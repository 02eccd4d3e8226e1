/**
 * Ordinary tar+gzip layers over kernel NBD, in the VM: a layer indexed with `index --push` and
 * mounted from the registry equals the fixture's expected tree; the server of such a mount
 * killed with SIGKILL mid-read is brought back by `erofs-oci reattach` from its
 * TARINDEX_OCI_BLOB recovery line, and the reader finishes with the exact bytes.
 *
 * Tar-index images have 512-byte blocks, which EROFS mounts only from Linux 6.4 on: on older
 * kernels (the VM's Debian 6.1) the layer is served re-laid out with 4 KiB blocks
 * (lib/gzip/aligned_tar.ts), and its companion file says "4k" so reattach serves that again.
 * The third test checks that forcing [meta][tar] there is refused in one line, leaving nothing.
 */
import assert from "node:assert/strict";
import { FIXTURES } from "../_support/requires.ts";
import { startRegistry } from "../_support/registry.ts";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import { manifestOf, mountSandbox, mountsBelow, pidAlive, serverPids } from "../_support/mounts.ts";
import { dropCaches, NOT_IN_VM } from "../_support/vm.ts";
import { isBlobGet, startFaultProxy } from "../_support/fault_proxy.ts";
import { pushImage } from "../_support/oci_raw.ts";
import { bigTarGz } from "../_support/kill_mid_read.ts";
import { RECOVERY_DIR } from "../_support/peer_nbd.ts";
import { withTempDir } from "../_support/temp_dir.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
const LONG = { timeoutMs: 300_000 };
const BIG_FILE_BYTES = 32 << 20;

function kernelHasSubpageBlocks(): boolean {
  const match = /^(\d+)\.(\d+)/.exec(Deno.readTextFileSync("/proc/sys/kernel/osrelease"));
  const [major, minor] = [Number(match?.[1] ?? 0), Number(match?.[2] ?? 0)];
  return major > 6 || (major === 6 && minor >= 4);
}
const SUBPAGE = !NOT_IN_VM && kernelHasSubpageBlocks();

/** The tarIndex.layout of the one companion file ("4k" or absent). */
function recordedLayout(): string | undefined {
  const companions = [...Deno.readDirSync(RECOVERY_DIR)].filter((e) =>
    /^mountnbd_.*\.json$/.test(e.name)
  );
  assert.equal(companions.length, 1);
  const extra = JSON.parse(Deno.readTextFileSync(`${RECOVERY_DIR}/${companions[0].name}`));
  return extra.tarIndex?.layout;
}

function recoveryLines(): string[] {
  try {
    return [...Deno.readDirSync(RECOVERY_DIR)]
      .filter((e) => /^mountnbd_/.test(e.name) && !e.name.endsWith(".json"))
      .map((e) => Deno.readTextFileSync(`${RECOVERY_DIR}/${e.name}`));
  } catch {
    return [];
  }
}

function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  return withTempDir("erofs-oci-vm-gzip-", fn);
}

Deno.test({
  name: "vm gzip: a tar.gz layer mounted over NBD through its pushed index equals the tree",
  ignore: NOT_IN_VM,
  fn: () =>
    withWork(async (work) => {
      await using registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
      const gz = await Deno.readFile(`${FIXTURES}/big.tar.gz`);
      await pushImage(registry, "gz/app", "v1", [{ bytes: gz, mediaType: GZIP_LAYER }]);
      const ref = `${registry.host}/gz/app:v1`;
      assertSuccess(await runCli(["index", ref, "--push", "--timestamp", "1700000000"], LONG));
      const sandbox = await mountSandbox();
      const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
      try {
        const mounted = await runCli(["mount", "--backend", "nbd", ref, sandbox.target], {
          env,
          ...LONG,
        });
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
        const lines = recoveryLines();
        assert.equal(lines.length, 1);
        assert.match(
          lines[0],
          /^TARINDEX_OCI_BLOB \S+gz\/app:v1 linux\/amd64 sha256:[0-9a-f]{64} /,
        );
        assert.ok(lines[0].includes(`${work}/state/index/`), `durable index paths: ${lines[0]}`);
        assert.equal(recordedLayout(), SUBPAGE ? undefined : "4k");
        await dropCaches();
        // The writer gives tar roots 0755 where mkfs.erofs gives 0777 (build_tar_test.ts).
        const want = Deno.readTextFileSync(`${FIXTURES}/expected/big.meta.txt`)
          .replace(/^\.\td\t0777\t/, ".\td\t0755\t");
        assert.equal(await manifestOf(sandbox.target), want);
        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
        assert.deepEqual(recoveryLines(), []);
        assert.deepEqual(mountsBelow(sandbox.target), []);
      } finally {
        await sandbox.cleanup();
      }
    }),
});

/** Range GETs from here on are held while `holding`, so the kill lands mid-read. */
const HOLD_FROM_BYTES = 12 << 20;

Deno.test({
  name: "vm gzip: kill -9 of a tar.gz mount's server mid-read, reattach, reader gets exact bytes",
  ignore: NOT_IN_VM,
  fn: () =>
    withWork(async (work) => {
      await using registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
      let holding = false;
      await using proxy = await startFaultProxy(registry.host, [{
        name: "hold",
        match: (request) => {
          const range = /^bytes=(\d+)-/.exec(request.headers.get("range") ?? "");
          return holding && isBlobGet(request) && Number(range?.[1] ?? 0) >= HOLD_FROM_BYTES;
        },
        fault: { kind: "delay", ms: 30_000 },
      }]);
      const big = await bigTarGz(work, BIG_FILE_BYTES);
      await pushImage(registry, "gz/big", "v1", [{ bytes: big.bytes, mediaType: GZIP_LAYER }]);
      assertSuccess(await runCli(["index", `${registry.host}/gz/big:v1`, "--push"], LONG));
      const sandbox = await mountSandbox();
      // No disk cache: the new server must fetch what the dead one had, through the gate.
      const env = {
        ...sandbox.env,
        EROFS_OCI_STATE_DIR: `${work}/state`,
        EROFS_OCI_CACHE_DIR: `${work}/cache`,
      };
      try {
        const mounted = await runCli(
          [
            "mount",
            "--backend",
            "nbd",
            "--no-disk-cache",
            `${proxy.host}/gz/big:v1`,
            sandbox.target,
          ],
          { env, ...LONG },
        );
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
        assert.match(recoveryLines()[0] ?? "", /^TARINDEX_OCI_BLOB /);
        assert.equal(recordedLayout(), SUBPAGE ? undefined : "4k");

        await dropCaches();
        holding = true;
        const reader = new Deno.Command("sha256sum", {
          args: [`${sandbox.target}/big.bin`],
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        let readerDone = false;
        const readerOutput = reader.output().finally(() => readerDone = true);
        const deadline = Date.now() + 240_000;
        while (proxy.hits(0) === 0 && !readerDone && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.ok(proxy.hits(0) > 0, "the reader never reached the held part of the layer");
        assert.ok(!readerDone, "the reader finished before the kill");
        const [pid] = serverPids(sandbox.runtimeDir);
        Deno.kill(pid, "SIGKILL");
        while (pidAlive(pid)) await new Promise((r) => setTimeout(r, 50));
        holding = false;

        const reattached = await runCli(["reattach", sandbox.target], { env, ...LONG });
        assert.equal(reattached.code, 0, `${describe(reattached)}\n${sandbox.serverLogs()}`);
        assert.match(reattached.stdout, /reattached/);
        const result = await readerOutput;
        assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
        assert.equal(new TextDecoder().decode(result.stdout).split(" ")[0], big.sha);

        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 60_000 }));
        assert.deepEqual(recoveryLines(), []);
        assert.deepEqual(mountsBelow(sandbox.target), []);
      } finally {
        holding = false;
        await sandbox.cleanup();
      }
    }),
});

Deno.test({
  name:
    "vm gzip: a kernel before 6.4 — mount with EROFS_OCI_TAR_LAYOUT=512 is one line, leaves nothing",
  ignore: NOT_IN_VM || SUBPAGE,
  fn: () =>
    withWork(async (work) => {
      await using registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
      const gz = await Deno.readFile(`${FIXTURES}/layer.tar.gz`);
      await pushImage(registry, "gz/old", "v1", [{ bytes: gz, mediaType: GZIP_LAYER }]);
      const ref = `${registry.host}/gz/old:v1`;
      assertSuccess(await runCli(["index", ref, "--push"], LONG));
      const sandbox = await mountSandbox();
      const env = {
        ...sandbox.env,
        EROFS_OCI_STATE_DIR: `${work}/state`,
        EROFS_OCI_TAR_LAYOUT: "512",
      };
      try {
        const mounted = await runCli(["mount", "--backend", "nbd", ref, sandbox.target], {
          env,
          ...LONG,
        });
        assert.equal(mounted.code, 1, describe(mounted));
        assert.match(mounted.stderr, /EROFS takes 512-byte blocks from Linux 6\.4 on/);
        assert.match(mounted.stderr, /unset EROFS_OCI_TAR_LAYOUT/);
        assert.doesNotMatch(mounted.stderr, /^\s+at /m);
        assert.deepEqual(recoveryLines(), []);
        assert.deepEqual(mountsBelow(sandbox.target), []);
        assert.deepEqual(serverPids(sandbox.runtimeDir).filter(pidAlive), []);
      } finally {
        await sandbox.cleanup();
      }
    }),
});
