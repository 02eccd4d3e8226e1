/**
 * `umount --all` with real mounts (FUSE, the host kernel's EROFS): every mount of the runtime
 * dir goes with its server; a busy one is reported while the others still go, and exits 1.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import {
  assertCliError,
  assertSuccess,
  describe,
  runCli,
  startCli,
  stopCli,
} from "./_support/cli.ts";
import { HoldPoint } from "./_support/hold.ts";
import {
  type MountSandbox,
  mountSandbox,
  mountsBelow,
  pidAlive,
  serverPids,
} from "./_support/mounts.ts";

const ignore = requires(root(), path("/dev/fuse"));

Deno.test({
  name: "umount --all: every mount and its server go; a busy one is named and the rest still go",
  ignore,
  async fn() {
    const sandbox = await mountSandbox();
    const second = `${sandbox.target}-2`;
    const third = `${sandbox.target}-3`;
    let open: Deno.FsFile | undefined;
    try {
      for (
        const [image, dir] of [["basic", sandbox.target], ["layer1", second], ["basic", third]]
      ) {
        Deno.mkdirSync(dir, { recursive: true });
        const mounted = await runCli(["mount", `${FIXTURES}/${image}.erofs`, dir], {
          env: sandbox.env,
          timeoutMs: 60_000,
        });
        assertSuccess(mounted);
      }
      const servers = serverPids(sandbox.runtimeDir);
      assert.equal(servers.length, 3, sandbox.serverLogs());

      // A file held open in the second mount: umount --all names it and unmounts the others.
      const name = [...Deno.readDirSync(second)].find((entry) => entry.isFile)!.name;
      open = await Deno.open(`${second}/${name}`);
      const busy = await runCli(["umount", "--all"], { env: sandbox.env, timeoutMs: 90_000 });
      assert.equal(busy.code, 1, describe(busy));
      assert.match(busy.stderr, /^erofs-oci: 1 of 3 mounts stay mounted: .*-2$/m, describe(busy));
      assert.match(busy.stderr, /^erofs-oci: warning: .*-2 is busy: files are open/m);
      assert.doesNotMatch(busy.stderr, /\n\s+at /, "no stack trace");
      assert.match(busy.stderr, new RegExp(`unmounted ${sandbox.target} `), describe(busy));
      assert.match(busy.stderr, new RegExp(`unmounted ${third} `), describe(busy));
      assert.deepEqual(mountsBelow(sandbox.target).filter((p) => p !== second), []);
      assert.equal(serverPids(sandbox.runtimeDir).length, 1);

      open.close();
      open = undefined;
      const rest = await runCli(["umount", "--all"], { env: sandbox.env, timeoutMs: 90_000 });
      assertSuccess(rest);
      assert.match(rest.stderr, new RegExp(`unmounted ${second} `), describe(rest));
      assert.deepEqual(mountsBelow(sandbox.target), []);
      for (const pid of servers) assert.ok(!pidAlive(pid), `server ${pid} stopped`);

      const none = await runCli(["umount", "--all"], { env: sandbox.env });
      assertSuccess(none);
      assert.match(none.stderr, /no erofs-oci mounts/);
      assertCliError(
        await runCli(["umount", "--all", second], { env: sandbox.env }),
        2,
        /give DIR or --all, not both/,
      );
    } finally {
      open?.close();
      await detachThenCleanup(sandbox, [second, third]);
    }
  },
});

Deno.test({
  name: "umount [--lazy] of a mount with another inside it: refused naming it; a detached path",
  ignore,
  async fn() {
    const sandbox = await mountSandbox();
    const inner = `${sandbox.target}/emptydir`;
    try {
      await mountNested(sandbox, inner);
      for (const lazy of [[], ["--lazy"]]) {
        const refused = await runCli(["umount", ...lazy, sandbox.target], { env: sandbox.env });
        assertCliError(
          refused,
          1,
          new RegExp(`has 1 erofs-oci mount\\(s\\) inside it: ${inner}$`),
        );
        assert.equal(mountsBelow(sandbox.target).length, 2, "both stay mounted");
      }
      // The outer one detached by someone else: the inner one's relative path no longer
      // resolves, and still names its record.
      const detached = await new Deno.Command("umount", { args: ["-l", sandbox.target] }).output();
      assert.ok(detached.success);
      const parent = sandbox.target.replace(/\/[^/]+$/, "");
      const relative = `${sandbox.target.slice(parent.length + 1)}/emptydir`;
      assertSuccess(await runCli(["umount", relative], { env: sandbox.env, cwd: parent }));
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
    } finally {
      await detachThenCleanup(sandbox, [inner, sandbox.target]);
    }
  },
});

Deno.test({
  name: "umount of a mount whose inner record is stale (detached by another tool): not refused",
  ignore,
  async fn() {
    const sandbox = await mountSandbox();
    const inner = `${sandbox.target}/emptydir`;
    try {
      await mountNested(sandbox, inner);
      // The inner mount goes by other means; its record stays.
      assert.ok((await new Deno.Command("umount", { args: ["-l", inner] }).output()).success);
      assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
      assertSuccess(await runCli(["umount", inner], { env: sandbox.env }));
      assert.deepEqual(mountsBelow(sandbox.target), []);
    } finally {
      await detachThenCleanup(sandbox, [inner, sandbox.target]);
    }
  },
});

Deno.test({
  name: "umount --all of a record whose mount went, its target now holding something else",
  ignore,
  async fn() {
    const sandbox = await mountSandbox();
    try {
      await mountBasicOn(sandbox, [sandbox.target]);
      // Unmounted by another tool, and a tmpfs of someone else's mounted there since.
      assert.ok(
        (await new Deno.Command("umount", { args: ["-l", sandbox.target] }).output()).success,
      );
      const tmpfs = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", "size=1m", "other", sandbox.target],
      }).output();
      assert.ok(tmpfs.success);
      const result = await runCli(["umount", "--all"], { env: sandbox.env });
      assertSuccess(result);
      assert.match(
        result.stderr,
        new RegExp(
          `${sandbox.target} \\(.*basic\\.erofs\\) was no longer mounted: its record is cleared`,
        ),
      );
      assert.doesNotMatch(result.stderr, /unmounted /, describe(result));
      const left = mountsBelow(sandbox.target);
      assert.equal(left.length, 1, `the tmpfs stays: ${JSON.stringify(left)}`);
      assert.deepEqual(
        (await runCli(["list", "--json"], { env: sandbox.env })).stdout.trim(),
        "[]",
      );
    } finally {
      await detachThenCleanup(sandbox, [sandbox.target]);
    }
  },
});

/** basic.erofs mounted on each of `dirs` (made first). */
async function mountBasicOn(sandbox: MountSandbox, dirs: string[]): Promise<void> {
  for (const dir of dirs) {
    Deno.mkdirSync(dir, { recursive: true });
    assertSuccess(
      await runCli(["mount", `${FIXTURES}/basic.erofs`, dir], {
        env: sandbox.env,
        timeoutMs: 60_000,
      }),
    );
  }
}

/** basic.erofs at the sandbox's target, layer1.erofs on `inner` (a directory inside it). */
async function mountNested(sandbox: MountSandbox, inner: string): Promise<void> {
  Deno.mkdirSync(sandbox.target, { recursive: true });
  for (const [image, dir] of [["basic", sandbox.target], ["layer1", inner]]) {
    assertSuccess(
      await runCli(["mount", `${FIXTURES}/${image}.erofs`, dir], {
        env: sandbox.env,
        timeoutMs: 60_000,
      }),
    );
  }
}

/**
 * For a finally block: `dirs` lazily unmounted, in order (whatever the test left mounted there),
 * then the sandbox cleaned up.
 */
async function detachThenCleanup(sandbox: MountSandbox, dirs: string[]): Promise<void> {
  for (const dir of dirs) {
    await new Deno.Command("umount", { args: ["-l", dir], stderr: "null" }).output();
  }
  await sandbox.cleanup();
}

Deno.test({
  name: "umount --all twice at once: both succeed, mounts the other took are not 'staying'",
  ignore,
  async fn() {
    const sandbox = await mountSandbox();
    const dirs = [0, 1, 2, 3].map((i) => `${sandbox.target}-${i}`);
    try {
      for (let round = 0; round < 2; round++) {
        await mountBasicOn(sandbox, dirs);
        // Each lists the four, then finds some gone once it has waited for their locks: it said
        // "N of 4 mounts stay mounted" and exited 1 with nothing mounted.
        const [first, second] = await Promise.all([
          runCli(["umount", "--all"], { env: sandbox.env, timeoutMs: 60_000 }),
          runCli(["umount", "--all"], { env: sandbox.env, timeoutMs: 60_000 }),
        ]);
        assert.equal(first.code, 0, describe(first));
        assert.equal(second.code, 0, describe(second));
        for (const dir of dirs) assert.deepEqual(mountsBelow(dir), [], dir);
        assert.deepEqual(serverPids(sandbox.runtimeDir), [], sandbox.serverLogs());
      }
    } finally {
      await sandbox.cleanup();
    }
  },
});

Deno.test({
  name: "umount --all: a mount another command unmounted after the listing is counted as such",
  ignore,
  async fn() {
    const sandbox = await mountSandbox();
    const dirs = [0, 1, 2].map((i) => `${sandbox.target}-${i}`);
    let all: ReturnType<typeof startCli> | undefined;
    try {
      await mountBasicOn(sandbox, dirs);
      using hold = new HoldPoint("umount-all-listed", `${sandbox.target}.hold`);
      all = startCli(["umount", "--all"], { ...sandbox.env, ...hold.env });
      await hold.reached("umount --all to list the mounts", 30_000);
      assertSuccess(await runCli(["umount", dirs[1]], { env: sandbox.env, timeoutMs: 60_000 }));
      hold.release();
      const result = await all.result;
      assert.equal(result.code, 0, describe(result));
      assert.match(
        result.stderr,
        new RegExp(`^${dirs[1]} was unmounted meanwhile by another `, "m"),
      );
      // The summary counts it (it said nothing of it; interrupted, it called it "left").
      assert.match(
        result.stderr,
        /^umount --all: 2 of 3 mounts unmounted, 1 already unmounted by another command$/m,
        describe(result),
      );
      for (const dir of dirs) assert.deepEqual(mountsBelow(dir), [], dir);
      assert.deepEqual(serverPids(sandbox.runtimeDir), [], sandbox.serverLogs());
    } finally {
      await stopCli(all);
      await detachThenCleanup(sandbox, dirs);
    }
  },
});
