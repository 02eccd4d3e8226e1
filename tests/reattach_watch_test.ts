/**
 * `erofs-oci reattach --watch` on this host (FUSE): the server of a mount is killed with
 * SIGKILL while a 48 MiB read has a request in flight; the watcher notices within 2 s (pidfd),
 * starts a server that takes the connection over, and the reader finishes with the exact
 * sha256 with nobody running `reattach`. A clean `umount` is not undone by the watcher. With the
 * registry down the watcher retries with backoff and takes over once it answers.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { startWatcher, type Watcher } from "./_support/watcher.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { loadFixture } from "./_support/oci_fixtures.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import {
  expectedManifest,
  manifestOf,
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  pidAlive,
  serverPids,
} from "./_support/mounts.ts";
import {
  keeperPids,
  killKeepers,
  killMidRead,
  type ReadGate,
  withBigImage,
} from "./_support/kill_mid_read.ts";

/**
 * Pushes the big image as `repository`, mounts it over FUSE through the read gate while a
 * watcher runs, and runs `body` once the watcher has had a scan to pick the server up. The
 * watcher, the mount and its keepers are cleaned up whatever happens.
 */
async function withWatchedMount(
  registry: TestRegistry,
  image: string,
  gate: ReadGate,
  repository: string,
  mountArgs: string[],
  body: (sandbox: MountSandbox, watcher: Watcher, keepers: number[]) => Promise<void>,
): Promise<void> {
  assertSuccess(
    await runCli(["push", `${registry.host}/${repository}`, image], { timeoutMs: 120_000 }),
  );
  const sandbox = await mountSandbox();
  let keepers: number[] = [];
  const watcher = startWatcher(sandbox.env);
  try {
    await watcher.waitFor(/watching/, 60_000);
    assertSuccess(
      await runCli(
        [
          "mount",
          `${gate.proxy.host}/${repository}`,
          sandbox.target,
          "--backend",
          "fuse",
          ...mountArgs,
        ],
        { env: sandbox.env, timeoutMs: 60_000 },
      ),
    );
    keepers = keeperPids(sandbox.runtimeDir);
    // Give the watcher a scan to pick the new server up.
    await new Promise((r) => setTimeout(r, 1_500));
    await body(sandbox, watcher, keepers);
  } finally {
    await watcher.stop();
    await sandbox.cleanup();
    killKeepers(keepers);
  }
}

Deno.test({
  name:
    "reattach --watch (FUSE): kill -9 mid-read, the reader finishes with exact bytes unattended",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await withBigImage(async (registry, image, sha256, gate) => {
      await withWatchedMount(
        registry,
        image,
        gate,
        "watch/big:v1",
        [],
        async (sandbox, watcher, keepers) => {
          const { killedPid, killedAtMs, recoveredMs } = await killMidRead(
            sandbox.runtimeDir,
            gate,
            `${sandbox.target}/big.bin`,
            sha256,
            () => Promise.resolve(), // nobody reattaches: the watcher must
            // On the disk cache the FUSE file is read through the page cache: the reader
            // waits for a page a readahead READ in the dead server's hands fills.
            { readerWaitsIn: "folio_wait_bit_common" },
          );
          const noticed = await watcher.waitFor(new RegExp(`server ${killedPid} is gone`));
          const reactionMs = noticed.atMs - killedAtMs;
          console.log(`noticed in ${reactionMs} ms, reader done ${recoveredMs} ms after the kill`);
          assert.ok(reactionMs < 2_000, `the watcher took ${reactionMs} ms to notice`);
          await watcher.waitFor(/reattached: new server pid/);
          const [serverPid] = serverPids(sandbox.runtimeDir);
          assert.notEqual(serverPid, killedPid);
          assert.ok(pidAlive(serverPid));
          await new Promise((r) => setTimeout(r, 1_500)); // the watcher picks it up
          watcher.clear();

          assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
          await new Promise((r) => setTimeout(r, 2_500));
          assert.deepEqual(mountsBelow(sandbox.target), [], "the watcher did not revive the mount");
          assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
          assert.ok(!watcher.lines.some((l) => /reattaching/.test(l)), watcher.lines.join("\n"));
          assert.ok(!keepers.some(pidAlive), "keeper gone");
          // The server the watcher started is its child: reaped once it ended, not a zombie.
          let reaped = false;
          for (let waited = 0; waited < 5_000 && !reaped; waited += 100) {
            try {
              Deno.statSync(`/proc/${serverPid}`);
              await new Promise((r) => setTimeout(r, 100));
            } catch {
              reaped = true;
            }
          }
          assert.ok(reaped, `server ${serverPid} left a zombie under the watcher`);
        },
      );
    });
  },
});

Deno.test({
  name: "reattach --watch (FUSE): registry down at the crash, retries with backoff, then recovers",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const registryState = { down: false };
    await withBigImage(async (registry, image, sha256, gate) => {
      await withWatchedMount(
        registry,
        image,
        gate,
        "watch/down:v1",
        // The new server must need the registry: nothing on disk to fall back to.
        ["--no-disk-cache"],
        async (sandbox, watcher) => {
          await killMidRead(
            sandbox.runtimeDir,
            gate,
            `${sandbox.target}/big.bin`,
            sha256,
            async () => {
              registryState.down = true;
              await watcher.waitFor(/retrying in 1 s/, 60_000);
              await watcher.waitFor(/retrying in 2 s/, 60_000);
              assert.ok(!watcher.lines.some((l) => /reattached/.test(l)), watcher.lines.join("\n"));
              registryState.down = false;
            },
            { readerWaitsIn: "request_wait_answer" },
          );
          await watcher.waitFor(/reattached: new server pid/);
          assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
          assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
        },
      );
    }, [{
      name: "down",
      match: (request) => registryState.down && request.path.includes("/blobs/"),
      fault: { kind: "status", status: 404 },
    }]);
  },
});

Deno.test({
  name: "reattach --watch (FUSE): a mount whose registry hangs keeps no other mount dead",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const fixture = await loadFixture("basic.erofs");
    assertSuccess(await runCli(["push", `${registry.host}/watch/hang:v1`, fixture.path]));
    const hang = { on: false };
    await using proxy = await startFaultProxy(registry.host, [{
      match: () => hang.on,
      fault: { kind: "delay", ms: 20_000 },
    }]);
    const sandbox = await mountSandbox();
    const local = `${sandbox.target}/../local`;
    const localImage = `${sandbox.target}/../basic.erofs`;
    Deno.mkdirSync(local);
    Deno.copyFileSync(fixture.path, localImage);
    const env = { ...sandbox.env, EROFS_OCI_REGISTRY_STALL_S: "5" };
    const watcher = startWatcher(env);
    try {
      await watcher.waitFor(/watching/, 60_000);
      for (
        const [image, target] of [[`${proxy.host}/watch/hang:v1`, sandbox.target], [
          localImage,
          local,
        ]]
      ) {
        assertSuccess(
          await runCli(["mount", image, target, "--backend", "fuse", "--no-disk-cache"], {
            env,
            timeoutMs: 60_000,
          }),
        );
      }
      await new Promise((r) => setTimeout(r, 1_500)); // the watcher picks both servers up
      hang.on = true;
      const killedAtMs = Date.now();
      for (const pid of serverPids(sandbox.runtimeDir)) Deno.kill(pid, "SIGKILL");
      // The local image's mount comes back while the other's reattach waits on its registry.
      const back = await watcher.waitFor(/\/local: reattached: new server pid/, 30_000);
      assert.ok(
        back.atMs - killedAtMs < 10_000,
        `the local mount came back after ${back.atMs - killedAtMs} ms:\n${
          watcher.lines.join("\n")
        }`,
      );
      assert.ok(!watcher.lines.some((l) => /\/mnt: reattached/.test(l)), watcher.lines.join("\n"));
      assert.equal(await manifestOf(local), expectedManifest("basic.txt"));
      hang.on = false;
      await watcher.waitFor(/\/mnt: reattached: new server pid/, 120_000);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      for (const target of [sandbox.target, local]) {
        assertSuccess(await runCli(["umount", target], { env, timeoutMs: 60_000 }));
      }
    } finally {
      hang.on = false;
      await watcher.stop();
      await sandbox.cleanup();
    }
  },
});
