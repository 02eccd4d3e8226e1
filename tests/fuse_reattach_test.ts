/**
 * Crash recovery of a FUSE mount on this host (no nbd here): the server is killed with
 * SIGKILL while a 48 MiB read has a request in flight; `erofs-oci reattach DIR` starts a server
 * that takes the /dev/fuse descriptor over from the keeper and answers the requests the dead
 * one had taken (FUSE_NOTIFY_RESEND); the reader finishes with the exact sha256. `list` shows
 * the new server, and `umount` leaves nothing: no mount, no server, no keeper.
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import {
  expectedManifest,
  manifestOf,
  mountSandbox,
  mountsBelow,
  mountServersOf,
  pidAlive,
} from "./_support/mounts.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGet, startFaultProxy } from "./_support/fault_proxy.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { startWatcher } from "./_support/watcher.ts";
import {
  keeperPids,
  killKeepers,
  killMidRead,
  killServer,
  withBigImage,
} from "./_support/kill_mid_read.ts";
import { MKFS, pushWithTables, setup, SMALL_TEXT } from "./_support/verify_image.ts";

Deno.test({
  name: "fuse reattach: kill -9 mid-read of 48 MiB, reattach DIR, reader gets exact bytes",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await withBigImage(async (registry, image, sha256, gate) => {
      assertSuccess(
        await runCli(["push", `${registry.host}/crash/big:v1`, image], { timeoutMs: 120_000 }),
      );
      const sandbox = await mountSandbox();
      let keepers: number[] = [];
      try {
        assertSuccess(
          await runCli(
            ["mount", `${gate.proxy.host}/crash/big:v1`, sandbox.target, "--backend", "fuse"],
            { env: sandbox.env, timeoutMs: 60_000 },
          ),
        );
        keepers = keeperPids(sandbox.runtimeDir);
        assert.equal(keepers.length, 1, `one keeper: ${sandbox.serverLogs()}`);
        const recordDir = `${sandbox.runtimeDir}/mounts`;
        const [id] = [...Deno.readDirSync(recordDir)].map((e) => e.name);
        assert.equal(Deno.statSync(`${recordDir}/${id}/fuse-recovery.json`).mode! & 0o777, 0o600);

        const { killedPid } = await killMidRead(
          sandbox.runtimeDir,
          gate,
          `${sandbox.target}/big.bin`,
          sha256,
          async () => {
            const listed = await runCli(["list", "--json"], { env: sandbox.env });
            assertSuccess(listed);
            assert.equal(JSON.parse(listed.stdout)[0].state, "dead", describe(listed));
            assert.ok(pidAlive(keepers[0]), "the keeper outlives the server");
            const reattached = await runCli(["reattach", sandbox.target], {
              env: sandbox.env,
              timeoutMs: 60_000,
            });
            assertSuccess(reattached);
            assert.match(reattached.stdout, /reattached/, sandbox.serverLogs());
          },
          // On the disk cache an EROFS layer's FUSE file is read through the page cache
          // (lib/daemon/mount_server.ts, fusePageCache): the reader waits for a page that a
          // readahead READ in the dead server's hands fills.
          { readerWaitsIn: "folio_wait_bit_common" },
        );

        const after = JSON.parse((await runCli(["list", "--json"], { env: sandbox.env })).stdout);
        assert.equal(after[0].state, "serving");
        assert.ok(after[0].reattachedAt, "list shows when it was reattached");
        assert.notEqual(after[0].serverPid, killedPid);
        const state = JSON.parse(Deno.readTextFileSync(`${recordDir}/${id}/state.json`));
        assert.deepEqual(state.serverStart?.pid, after[0].serverPid, "start time recorded");

        const again = await runCli(["reattach", sandbox.target], { env: sandbox.env });
        assertSuccess(again);
        assert.match(again.stdout, /alive/);

        const unmounted = await runCli(["umount", sandbox.target], {
          env: sandbox.env,
          timeoutMs: 60_000,
        });
        assertSuccess(unmounted);
        assert.deepEqual(mountsBelow(sandbox.target), []);
        assert.deepEqual(mountsBelow(sandbox.runtimeDir), [], "no FUSE mount left");
        const deadline = Date.now() + 10_000;
        while (pidAlive(keepers[0]) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.ok(!pidAlive(keepers[0]), "the keeper exits once the FUSE mount is gone");
      } finally {
        await sandbox.cleanup();
        killKeepers(keepers);
      }
    });
  },
});

Deno.test({
  name: "fuse reattach: a mount whose keeper is gone is refused in one line, and unmounts",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await withBigImage(async (registry, image, _sha256, _gate) => {
      assertSuccess(await runCli(["push", `${registry.host}/crash/k:v1`, image]));
      const sandbox = await mountSandbox();
      let keepers: number[] = [];
      try {
        assertSuccess(
          await runCli([
            "mount",
            `${registry.host}/crash/k:v1`,
            sandbox.target,
            "--backend",
            "fuse",
          ], {
            env: sandbox.env,
            timeoutMs: 60_000,
          }),
        );
        keepers = keeperPids(sandbox.runtimeDir);
        killKeepers(keepers);
        await killServer(sandbox.runtimeDir);
        const refused = await runCli(["reattach", sandbox.target], { env: sandbox.env });
        assertCliError(refused, 1, /no keeper/);
        // Said once: on stderr, not in the table too.
        assert.match(refused.stdout, /^\/\S+\s+failed\s+see below$/m, describe(refused));
        assert.doesNotMatch(refused.stdout, /no keeper/, describe(refused));
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
        assert.deepEqual(mountsBelow(sandbox.runtimeDir), []);
      } finally {
        await sandbox.cleanup();
        killKeepers(keepers);
      }
    });
  },
});

Deno.test({
  name:
    "fuse reattach: an oci: layout mounted by a relative path is reattached from another directory",
  ignore: requires(root(), path("/dev/fuse"), command("python3")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    let keepers: number[] = [];
    try {
      const fixture = await loadFixture("basic.erofs");
      await writeOciLayout(`${base}/out lay`, [
        { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
      ]);
      // From the directory holding the layout, by a relative path, as a user types it.
      assertSuccess(
        await runCli(["mount", "oci:out lay:v1", "mnt", "--backend", "fuse"], {
          env: sandbox.env,
          cwd: base,
          timeoutMs: 60_000,
        }),
      );
      keepers = keeperPids(sandbox.runtimeDir);
      await killServer(sandbox.runtimeDir);
      // reattach --watch runs from /: the layer's blob must not be looked up from there.
      const reattached = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        cwd: "/",
        timeoutMs: 60_000,
      });
      assertSuccess(reattached);
      assert.match(reattached.stdout, /reattached/, sandbox.serverLogs());
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

/** A FUSE mount of the basic fixture from an OCI layout (no registry), its server killed. */
async function deadFuseMount(sandbox: Awaited<ReturnType<typeof mountSandbox>>) {
  const base = sandbox.target.replace(/\/mnt$/, "");
  const fixture = await loadFixture("basic.erofs");
  await writeOciLayout(`${base}/layout`, [{ bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE }]);
  assertSuccess(
    await runCli(["mount", `oci:${base}/layout:v1`, sandbox.target, "--backend", "fuse"], {
      env: sandbox.env,
      timeoutMs: 60_000,
    }),
  );
  const keepers = keeperPids(sandbox.runtimeDir);
  await killServer(sandbox.runtimeDir);
  return keepers;
}

Deno.test({
  name: "fuse reattach: three reattaches of one dead server at once start one server",
  ignore: requires(root(), path("/dev/fuse"), command("python3")),
  async fn() {
    const sandbox = await mountSandbox();
    let keepers: number[] = [];
    try {
      keepers = await deadFuseMount(sandbox);
      const runs = await Promise.all(
        [["reattach", sandbox.target], ["reattach", sandbox.target], ["reattach", "--all"]]
          .map((args) => runCli(args, { env: sandbox.env, timeoutMs: 60_000 })),
      );
      for (const run of runs) assertSuccess(run);
      const said = runs.map((run) => /reattached/.test(run.stdout) ? "reattached" : "other");
      assert.deepEqual(
        said.filter((s) => s === "reattached").length,
        1,
        runs.map(describe).join("\n"),
      );
      // The others found it alive, or busy (claimed by the one reattaching it, which they
      // leave alone without waiting).
      assert.equal(runs.filter((run) => /alive|busy/.test(run.stdout)).length, 2);
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 1, "one server runs");
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      assert.deepEqual(mountServersOf(sandbox.runtimeDir), [], "no server left after umount");
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
      for (const pid of mountServersOf(sandbox.runtimeDir)) Deno.kill(pid, "SIGKILL");
    }
  },
});

Deno.test({
  name: "fuse umount refused (busy) while its server is dead keeps crash recovery",
  ignore: requires(root(), path("/dev/fuse"), command("python3")),
  async fn() {
    const sandbox = await mountSandbox();
    let keepers: number[] = [];
    let inside: Deno.ChildProcess | undefined;
    try {
      keepers = await deadFuseMount(sandbox);
      // A shell's working directory inside the mount: busy, with no request of the dead server.
      inside = new Deno.Command("sleep", { args: ["60"], cwd: sandbox.target }).spawn();
      const refused = await runCli(["umount", sandbox.target], { env: sandbox.env });
      assertCliError(refused, 1, /is busy/);
      const reattached = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assertSuccess(reattached);
      assert.match(reattached.stdout, /reattached/, sandbox.serverLogs());
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      inside.kill("SIGKILL");
      await inside.status;
      inside = undefined;
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      if (inside) {
        inside.kill("SIGKILL");
        await inside.status;
      }
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

Deno.test({
  name: "fuse: a keeper that dies is shown by list and said by reattach --watch",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    let keepers: number[] = [];
    const watcher = startWatcher(sandbox.env);
    try {
      await watcher.waitFor(/watching/, 60_000);
      const fixture = await loadFixture("basic.erofs");
      await writeOciLayout(`${base}/layout`, [
        { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
      ]);
      assertSuccess(
        await runCli(["mount", `oci:${base}/layout:v1`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      const listed = async () =>
        JSON.parse((await runCli(["list", "--json"], { env: sandbox.env })).stdout)[0];
      assert.equal((await listed()).crashRecovery, true);
      keepers = keeperPids(sandbox.runtimeDir);
      killKeepers(keepers);
      await watcher.waitFor(/its FUSE keeper is gone: it cannot be reattached/, 15_000);
      const after = await listed();
      assert.equal(after.crashRecovery, false);
      assert.equal(after.state, "serving");
      const table = await runCli(["list"], { env: sandbox.env });
      assert.match(table.stdout, /serving, no keeper/);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await watcher.stop();
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

Deno.test({
  name: "fuse umount while readers wait on the dead server: refused, reattach then finishes them",
  ignore: requires(root(), path("/dev/fuse")),
  async fn() {
    await withBigImage(async (registry, image, sha256, gate) => {
      assertSuccess(
        await runCli(["push", `${registry.host}/crash/wait:v1`, image], { timeoutMs: 120_000 }),
      );
      const sandbox = await mountSandbox();
      let keepers: number[] = [];
      try {
        assertSuccess(
          await runCli(
            ["mount", `${gate.proxy.host}/crash/wait:v1`, sandbox.target, "--backend", "fuse"],
            { env: sandbox.env, timeoutMs: 60_000 },
          ),
        );
        keepers = keeperPids(sandbox.runtimeDir);
        await killMidRead(
          sandbox.runtimeDir,
          gate,
          `${sandbox.target}/big.bin`,
          sha256,
          async () => {
            // The reader holds the file open in a request of the dead server: busy.
            const refused = await runCli(["umount", sandbox.target], { env: sandbox.env });
            assertCliError(refused, 1, /is busy: .*readers may wait on its dead server/);
            assert.match(
              refused.stderr,
              /reattach DIR. lets waiting readers finish.*umount --lazy/,
            );
            assert.ok(keepers.every(pidAlive), "the keeper (crash recovery) is kept");
            const reattached = await runCli(["reattach", sandbox.target], {
              env: sandbox.env,
              timeoutMs: 60_000,
            });
            assertSuccess(reattached);
          },
          { readerWaitsIn: "folio_wait_bit_common" },
        );
        assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      } finally {
        await sandbox.cleanup();
        killKeepers(keepers);
      }
    });
  },
});

Deno.test({
  name: "fuse reattach: a kept chunk table damaged while the server was dead is fetched again",
  ignore: requires(root(), path("/dev/fuse"), path(MKFS, "mkfs.erofs 1.9.3")),
  async fn() {
    await using s = await setup();
    const layer = await pushWithTables(s, "crash/table", 60_000);
    const tableDigest = layer.annotations!["io.github.erofs-oci.chunk-digests"];
    const sandbox = await mountSandbox();
    let keepers: number[] = [];
    try {
      assertSuccess(
        await runCli(
          ["mount", `${s.registry.host}/crash/table:v1`, sandbox.target, "--backend", "fuse"],
          { env: sandbox.env, timeoutMs: 60_000 },
        ),
      );
      keepers = keeperPids(sandbox.runtimeDir);
      await killServer(sandbox.runtimeDir);
      const kept = `${sandbox.env.EROFS_OCI_STATE_DIR}/tables/${
        tableDigest.replace(":", "-")
      }.json`;
      const original = Deno.readFileSync(kept);
      const damaged = original.slice();
      damaged[damaged.length >> 1] ^= 1;
      Deno.writeFileSync(kept, damaged);

      const reattached = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assertSuccess(reattached);
      assert.match(reattached.stdout, /reattached/, sandbox.serverLogs());
      assert.match(
        sandbox.serverLogs(),
        /no longer matches .*; fetched it again from the registry/,
      );
      assert.deepEqual(Deno.readFileSync(kept), original, "kept again, whole");
      assert.equal(await Deno.readTextFile(`${sandbox.target}/small.txt`), SMALL_TEXT);
      assert.deepEqual(await Deno.readFile(`${sandbox.target}/big.bin`), s.big);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

Deno.test({
  name: "fuse reattach: a local image replaced by another of its size is refused, not served",
  ignore: requires(root(), path("/dev/fuse"), path(MKFS, "mkfs.erofs 1.9.3")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    let keepers: number[] = [];
    try {
      // Two images of one size: the same tree shape, other bytes and UUIDs.
      await oneFileImage(
        base,
        "one",
        "the mounted image\n",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
      );
      await oneFileImage(
        base,
        "two",
        "another image, same\n",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
      );
      assert.equal(
        Deno.statSync(`${base}/one.erofs`).size,
        Deno.statSync(`${base}/two.erofs`).size,
      );
      assertSuccess(
        await runCli(["mount", `${base}/one.erofs`, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      keepers = keeperPids(sandbox.runtimeDir);
      await killServer(sandbox.runtimeDir);
      Deno.renameSync(`${base}/two.erofs`, `${base}/one.erofs`);

      const reattach = () =>
        runCli(["reattach", sandbox.target], { env: sandbox.env, timeoutMs: 60_000 });
      // The record names the file as it was served: another inode now.
      assertCliError(await reattach(), 1, /one\.erofs is not the file the mount was served from/);
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 0, "no server serves it");
      // A record without that (written before it was kept): the superblock identity decides.
      const recordDir = `${sandbox.runtimeDir}/mounts`;
      const [id] = [...Deno.readDirSync(recordDir)].map((e) => e.name);
      const recordPath = `${recordDir}/${id}/fuse-recovery.json`;
      const record = JSON.parse(Deno.readTextFileSync(recordPath));
      // A damaged record, whatever JSON value is left there, is said to be malformed.
      for (
        const damaged of [
          null,
          7,
          { ...record, localFiles: "x" },
          { ...record, localFiles: [1] },
          { ...record, fileMtimesSec: ["a"] },
        ]
      ) {
        Deno.writeTextFileSync(recordPath, JSON.stringify(damaged), { mode: 0o600 });
        assertCliError(await reattach(), 1, /fuse-recovery\.json is malformed/);
      }
      // Without the file's identity in the record, the server's own open refuses it (it is not
      // the file mount checked); without that too, the new server's check of what the kernel
      // has mounted does.
      delete record.localFiles;
      Deno.writeTextFileSync(recordPath, JSON.stringify(record), { mode: 0o600 });
      assertCliError(await reattach(), 1, /one\.erofs is not the file the mount checked/);
      delete record.spec.layers[0].fileId;
      Deno.writeTextFileSync(recordPath, JSON.stringify(record), { mode: 0o600 });
      assertCliError(await reattach(), 1, /layer 0 is not the image mounted from it \(UUID/);
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 0, "no server serves it");
      // The operator's explicit choice: served, whatever the files then read.
      const accepted = await runCli(
        ["reattach", sandbox.target, "--accept-changed-image"],
        { env: sandbox.env, timeoutMs: 60_000 },
      );
      assertSuccess(accepted);
      assert.match(accepted.stdout, /reattached/);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

Deno.test({
  name: "fuse reattach: a password changed since the mount — refused with the way out, given, kept",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "token", tokenTtlSeconds: 2 });
    const image = `${registry.host}/auth/app:v1`;
    const login = ["--username", registry.username, "--password-stdin"];
    const fixture = await loadFixture("basic.erofs");
    assertSuccess(
      await runCli(["push", image, fixture.path, "--plain-http", ...login], {
        stdin: registry.password,
      }),
    );
    const sandbox = await mountSandbox();
    try {
      const env = { ...sandbox.env, EROFS_OCI_CACHE_DIR: `${sandbox.runtimeDir}-cache` };
      const cli = (args: string[], stdin?: string) =>
        runCli(args, { env, stdin, timeoutMs: 60_000 });
      assertSuccess(
        await cli([
          "mount",
          image,
          sandbox.target,
          "--backend",
          "fuse",
          "--no-disk-cache",
          ...login,
        ], registry.password),
      );
      const expected = expectedManifest("basic.txt");
      await killServer(sandbox.runtimeDir);
      const rotated = `${registry.password}-rotated`;
      registry.tokenServer!.setPassword(rotated);
      await new Promise((r) => setTimeout(r, 2500)); // tokens issued before have expired

      const refused = await cli(["reattach", sandbox.target]);
      assert.equal(refused.code, 1, describe(refused));
      assert.match(
        refused.stderr,
        /rejected the given credentials \(401\).*: give the current ones/,
      );
      assert.match(refused.stderr, /erofs-oci reattach DIR --username USER --password-stdin/);

      const given = await cli(["reattach", sandbox.target, ...login], rotated);
      assertSuccess(given);
      assert.match(given.stdout, /reattached/, sandbox.serverLogs());
      assert.equal(await manifestOf(sandbox.target), expected);

      // Kept for the next time: a reattach without them works.
      await killServer(sandbox.runtimeDir);
      const again = await cli(["reattach", sandbox.target]);
      assertSuccess(again);
      assert.equal(await manifestOf(sandbox.target), expected);
      assertSuccess(await cli(["umount", sandbox.target]));
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name:
    "fuse reattach: a record whose registry layer was edited into a local file of another image is refused",
  ignore: requires(
    root(),
    path("/dev/fuse"),
    command("docker-registry"),
    path(MKFS, "mkfs.erofs 1.9.3"),
  ),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    await using registry = await startRegistry({ auth: "none" });
    let keepers: number[] = [];
    try {
      // The same tree shape, UUID and build time, other bytes: one superblock for both.
      const uuid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
      await oneFileImage(base, "real", "the pushed image\n", uuid);
      await oneFileImage(base, "fake", "a forged image!!\n", uuid);
      const image = `${registry.host}/edited/app:v1`;
      assertSuccess(await runCli(["push", image, `${base}/real.erofs`], { timeoutMs: 60_000 }));
      assertSuccess(
        await runCli(["mount", image, sandbox.target, "--backend", "fuse"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      keepers = keeperPids(sandbox.runtimeDir);
      await killServer(sandbox.runtimeDir);
      const recordDir = `${sandbox.runtimeDir}/mounts`;
      const [id] = [...Deno.readDirSync(recordDir)].map((e) => e.name);
      const recordPath = `${recordDir}/${id}/fuse-recovery.json`;
      const record = JSON.parse(Deno.readTextFileSync(recordPath));
      const sizeBytes = Deno.statSync(`${base}/fake.erofs`).size;
      record.spec.layers[0] = { kind: "local", path: `${base}/fake.erofs`, sizeBytes };
      Deno.writeTextFileSync(recordPath, JSON.stringify(record), { mode: 0o600 });
      // It passed (the digest was compared for registry layers only) and served the fake bytes.
      assertCliError(
        await runCli(["reattach", sandbox.target], { env: sandbox.env, timeoutMs: 60_000 }),
        1,
        /names another layer 0 than the mount's/,
      );
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 0, "no server serves it");
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

Deno.test({
  name: "fuse reattach: a layer the registry no longer has (404) says so, not 'once it answers'",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    const sandbox = await mountSandbox();
    await using registry = await startRegistry({ auth: "none" });
    let gone = false;
    await using proxy = await startFaultProxy(registry.host, [{
      match: (request) => gone && isBlobGet(request),
      fault: { kind: "status", status: 404 },
    }]);
    let keepers: number[] = [];
    try {
      const { bytes } = await loadFixture("basic.erofs");
      await pushImage(registry, "gone/app", "v1", [{ bytes, mediaType: EROFS_MEDIA_TYPE }]);
      const image = `${proxy.host}/gone/app:v1`;
      assertSuccess(
        await runCli(["mount", image, sandbox.target, "--backend", "fuse", "--no-disk-cache"], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      keepers = keeperPids(sandbox.runtimeDir);
      await killServer(sandbox.runtimeDir);
      gone = true;
      const failed = await runCli(["reattach", sandbox.target], {
        env: sandbox.env,
        timeoutMs: 60_000,
      });
      assert.equal(failed.code, 1, describe(failed));
      const said = failed.stdout + failed.stderr;
      assert.match(said, /blob not found: .* \(404\)/, describe(failed));
      assert.match(said, /the registry no longer has the layer: push the image again/);
      assert.doesNotMatch(said, /once the registry answers/);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
    } finally {
      await sandbox.cleanup();
      killKeepers(keepers);
    }
  },
});

/** `base`/NAME.erofs made by mkfs.erofs 1.9.3 (build time 0, `uuid`) of one file holding `text`. */
async function oneFileImage(base: string, name: string, text: string, uuid: string) {
  Deno.mkdirSync(`${base}/${name}`);
  Deno.writeTextFileSync(`${base}/${name}/file.txt`, text);
  const out = await new Deno.Command(MKFS, {
    args: ["--quiet", "-T0", "-U", uuid, `${base}/${name}.erofs`, `${base}/${name}`],
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
}
