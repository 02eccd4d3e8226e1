/**
 * A convert or index --push killed by SIGKILL (the OOM killer, kill -9) runs no clean-up: its
 * work directory in --tmpdir stays, layer images and all. The next run of the same command in
 * the same place removes it — but never one a live run holds, another user's, or a symlink
 * with the prefix's name (anyone can make those in /tmp). Before, each killed run's directory
 * stayed for good.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, requires, root } from "./_support/requires.ts";
import {
  assertSuccess,
  describe,
  runCli,
  startCli,
  type StartedCli,
  stopCli,
} from "./_support/cli.ts";
import { makeUmociImage } from "./_support/umoci_image.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { HoldPoint } from "./_support/hold.ts";
import { exists } from "./_support/wait.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { listReferrers } from "../lib/oci/referrers.ts";
import { TAR_INDEX_ARTIFACT_TYPE } from "../lib/mount/tar_index_artifact.ts";

function workDirsIn(dir: string, prefix: string): string[] {
  return [...Deno.readDirSync(dir)].filter((e) => e.isDirectory && e.name.startsWith(prefix))
    .map((e) => e.name).sort();
}

/** Starts `args` held at `hold` once its work directory exists; returns it and that dir. */
async function startHeld(
  args: string[],
  hold: HoldPoint,
  tmpdir: string,
  prefix: string,
): Promise<{ run: StartedCli; workDir: string }> {
  const before = new Set(workDirsIn(tmpdir, prefix));
  const run = startCli(args, hold.env);
  try {
    await hold.reached(`${args[0]} to make its work directory`);
  } catch (error) {
    await stopCli(run);
    throw error;
  }
  const made = workDirsIn(tmpdir, prefix).filter((n) => !before.has(n));
  assert.equal(made.length, 1, `one new work directory: ${made}`);
  return { run, workDir: `${tmpdir}/${made[0]}` };
}

async function killed(run: StartedCli): Promise<void> {
  run.child.kill("SIGKILL");
  await run.result;
}

/**
 * Kills one run of `args` mid-way (its work directory made, a "layer image" in it) and plants
 * another user's directory, a symlink and a file with a work directory's name; a second run
 * (held once its own work directory exists) must have removed the killed one's directory only,
 * and a third, run meanwhile, must leave the held one's.
 */
async function checkSweep(
  args: string[],
  point: string,
  tmpdir: string,
  prefix: string,
  scratch: string,
): Promise<void> {
  let live: StartedCli | undefined;
  try {
    using deadHold = new HoldPoint(point, `${scratch}/hold-dead`);
    const dead = await startHeld(args, deadHold, tmpdir, prefix);
    Deno.writeFileSync(`${dead.workDir}/layer-0.erofs`, new Uint8Array(1 << 20));
    await killed(dead.run);
    assert.ok(exists(`${dead.workDir}/layer-0.erofs`), "SIGKILL runs no clean-up");

    const foreign = `${tmpdir}/${prefix}0123456789ab`;
    Deno.mkdirSync(foreign);
    Deno.writeTextFileSync(`${foreign}/theirs`, "");
    Deno.chownSync(`${foreign}/theirs`, 65534, 65534);
    Deno.chownSync(foreign, 65534, 65534);
    const victim = `${scratch}/victim`;
    Deno.mkdirSync(victim);
    Deno.writeTextFileSync(`${victim}/precious`, "");
    const link = `${tmpdir}/${prefix}1123456789ab`;
    Deno.symlinkSync(victim, link);
    const file = `${tmpdir}/${prefix}2123456789ab`;
    Deno.writeTextFileSync(file, "");
    // A directory of root's that only starts with the prefix is not a work directory.
    const lookalike = `${tmpdir}/${prefix}layout-0123456789ab`;
    Deno.mkdirSync(lookalike);

    using liveHold = new HoldPoint(point, `${scratch}/hold-live`);
    const held = await startHeld(args, liveHold, tmpdir, prefix);
    live = held.run;
    assert.ok(!exists(dead.workDir), "the killed run's work directory is removed");
    assert.ok(exists(`${foreign}/theirs`), "another user's directory stays");
    assert.ok(Deno.lstatSync(link).isSymlink, "the symlink stays");
    assert.ok(exists(`${victim}/precious`), "nothing is removed through the symlink");
    assert.ok(exists(file), "a file with a work directory's name stays");
    assert.ok(exists(lookalike), "a directory that only starts with the prefix stays");

    const beside = await runCli(args, { timeoutMs: 120_000 });
    assertSuccess(beside);
    assert.ok(exists(held.workDir), "a live run's work directory stays");
    assert.doesNotMatch(beside.stderr, /removed .* work director/);

    liveHold.release();
    const finished = await live.result;
    live = undefined;
    assertSuccess(finished);
    assert.match(
      finished.stderr,
      /removed 1 work directory left in .* by killed erofs-oci commands: /,
      describe(finished),
    );
    assert.ok(!exists(held.workDir), "the held run removes its own work directory at the end");
  } finally {
    await stopCli(live);
  }
}

Deno.test({
  name: "convert killed by SIGKILL: the next convert in --tmpdir removes its work directory only",
  ignore: requires(command("umoci")),
  async fn() {
    const scratch = await Deno.makeTempDir({ prefix: "erofs-oci-work-dir-sweep-" });
    try {
      const image = await makeUmociImage(await Deno.makeTempDir({ dir: scratch }));
      const tmpdir = `${scratch}/tmp`;
      Deno.mkdirSync(tmpdir);
      const args = [
        "convert",
        "--no-reuse",
        `oci:${image.layout}:${image.tag}`,
        `oci:${scratch}/dst:v1`,
        "--tmpdir",
        tmpdir,
      ];
      await checkSweep(args, "convert-work-dir", tmpdir, "erofs-oci-convert-", scratch);
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  },
});

/** layer.tar.gz pushed as the one tar+gzip layer of `repository:v1`. */
function pushTarGzImage(registry: TestRegistry, repository: string) {
  return Deno.readFile(`${FIXTURES}/layer.tar.gz`).then((bytes) =>
    pushImage(registry, repository, "v1", [
      { bytes, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" },
    ])
  );
}

Deno.test({
  name: "index --push killed by SIGKILL: the next index --push removes its work directory only",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const repository = "work-dir-sweep/app";
    await pushTarGzImage(registry, repository);
    const scratch = await Deno.makeTempDir({ prefix: "erofs-oci-work-dir-sweep-" });
    try {
      const tmpdir = `${scratch}/tmp`;
      Deno.mkdirSync(tmpdir);
      const args = [
        "index",
        `${registry.host}/${repository}:v1`,
        "--push",
        "--plain-http",
        "--tmpdir",
        tmpdir,
      ];
      await checkSweep(args, "index-push-dir", tmpdir, "erofs-oci-index-", scratch);
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "index --push as root: a --tmpdir others can change is refused in one line; a sticky one is not",
  ignore: requires(command("docker-registry"), root()),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const repository = "work-dir-trust/app";
    await pushTarGzImage(registry, repository);
    const scratch = await Deno.makeTempDir({ prefix: "erofs-oci-work-dir-trust-" });
    try {
      const index = (tmpdir: string) =>
        runCli(
          [
            "index",
            `${registry.host}/${repository}:v1`,
            "--push",
            "--plain-http",
            "--tmpdir",
            tmpdir,
          ],
          { timeoutMs: 60_000 },
        );
      // Anyone may rename root's work dir away in it and put their own files there.
      const open = `${scratch}/open`;
      Deno.mkdirSync(open);
      Deno.chmodSync(open, 0o777);
      const refused = await index(open);
      assert.equal(refused.code, 1, describe(refused));
      assert.match(
        refused.stderr,
        /^erofs-oci: the temporary directory .*open can be changed by other users/,
      );
      assert.doesNotMatch(refused.stderr, /\n\s+at /, "no stack trace");
      assert.deepEqual([...Deno.readDirSync(open)], [], "nothing made there");

      const sticky = `${scratch}/sticky`;
      Deno.mkdirSync(sticky);
      Deno.chmodSync(sticky, 0o1777);
      assertSuccess(await index(sticky));
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "index --push: an index file changed after it was made is not pushed (one line, no artifact)",
  ignore: requires(command("docker-registry")),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const repository = "work-dir-trust/changed";
    const pushed = await pushTarGzImage(registry, repository);
    const scratch = await Deno.makeTempDir({ prefix: "erofs-oci-index-changed-" });
    using hold = new HoldPoint("index-upload", `${scratch}/hold`);
    let run: StartedCli | undefined;
    try {
      run = startCli(
        [
          "index",
          `${registry.host}/${repository}:v1`,
          "--push",
          "--plain-http",
          "--tmpdir",
          scratch,
        ],
        hold.env,
      );
      await hold.reached("index --push at its upload");
      const [work] = workDirsIn(scratch, "erofs-oci-index-");
      const [meta] = [...Deno.readDirSync(`${scratch}/${work}`)]
        .filter((e) => e.name.endsWith(".meta.erofs"));
      Deno.writeFileSync(`${scratch}/${work}/${meta.name}`, new Uint8Array([1]), { append: true });
      hold.release();
      const result = await run.result;
      run = undefined;
      assert.equal(result.code, 1, describe(result));
      assert.match(result.stderr, /\.meta\.erofs changed after it was made .*: not pushed/);
      const client = new RegistryClient(registry.host, { plainHttp: true });
      try {
        const listed = await listReferrers(
          client,
          repository,
          pushed.manifestDigest,
          TAR_INDEX_ARTIFACT_TYPE,
        );
        assert.deepEqual(listed, [], "no index artifact");
      } finally {
        client.close();
      }
    } finally {
      await stopCli(run);
      await Deno.remove(scratch, { recursive: true });
    }
  },
});
