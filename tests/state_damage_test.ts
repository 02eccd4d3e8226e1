/**
 * Damaged records in the runtime dir (a state.json of the wrong shape, one that is a FIFO): the
 * others are still listed and unmounted, the damaged ones named once. Before, one wrong shape
 * made list and umount fail for every mount ("internal error: Cannot read properties of
 * undefined"), and a FIFO made them hang.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, requires, root } from "./_support/requires.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { mountSandbox, mountsBelow } from "./_support/mounts.ts";

Deno.test({
  name: "damaged mount records: list and umount --all go on with the others, naming them",
  ignore: requires(root(), path("/dev/fuse"), path("/usr/bin/mkfifo")),
  async fn() {
    const sandbox = await mountSandbox();
    try {
      Deno.mkdirSync(sandbox.target, { recursive: true });
      assertSuccess(
        await runCli(["mount", `${FIXTURES}/basic.erofs`, sandbox.target], {
          env: sandbox.env,
          timeoutMs: 60_000,
        }),
      );
      const mounts = `${sandbox.runtimeDir}/mounts`;
      // Copies of the real record damaged in one field each: a reader used those fields as
      // they were (list: "r.options?.join is not a function"; metrics: backend undefined).
      const [realId] = [...Deno.readDirSync(mounts)].map((e) => e.name);
      const real = JSON.parse(Deno.readTextFileSync(`${mounts}/${realId}/state.json`));
      const damagedCopies: Record<string, Record<string, unknown>> = {
        "0ptions0": { ...real, id: "0ptions0", options: "x" },
        "n0backend": { ...real, id: "n0backend", backend: undefined },
        "1ayers00": { ...real, id: "1ayers00", layers: [{ blockPath: 7 }] },
      };
      for (const [id, record] of Object.entries(damagedCopies)) {
        Deno.mkdirSync(`${mounts}/${id}`);
        Deno.writeTextFileSync(`${mounts}/${id}/state.json`, JSON.stringify(record));
      }
      Deno.mkdirSync(`${mounts}/deadbeef`);
      Deno.writeTextFileSync(`${mounts}/deadbeef/state.json`, '{"target": 1}');
      Deno.mkdirSync(`${mounts}/feedface`);
      const fifo = await new Deno.Command("mkfifo", { args: [`${mounts}/feedface/state.json`] })
        .output();
      assert.ok(fifo.success);
      const listed = await runCli(["list"], { env: sandbox.env, timeoutMs: 20_000 });
      assert.equal(listed.code, 0, describe(listed));
      assert.match(listed.stdout, new RegExp(sandbox.target.replaceAll("/", "\\/")));
      assert.match(listed.stderr, /deadbeef\/state\.json is damaged \(not a mount record\)/);
      assert.match(listed.stderr, /feedface\/state\.json is damaged \(.*not a regular file\)/);
      for (const id of Object.keys(damagedCopies)) {
        assert.match(
          listed.stderr,
          new RegExp(`${id}/state\\.json is damaged \\(not a mount record\\)`),
        );
      }
      const json = await runCli(["list", "--json"], { env: sandbox.env, timeoutMs: 20_000 });
      assert.equal(JSON.parse(json.stdout).length, 1, describe(json));
      const metrics = await runCli(["metrics"], { env: sandbox.env, timeoutMs: 20_000 });
      assert.equal(metrics.code, 0, describe(metrics));
      assert.doesNotMatch(metrics.stderr, /internal error/);
      const all = await runCli(["umount", "--all"], { env: sandbox.env, timeoutMs: 60_000 });
      assert.equal(all.code, 0, describe(all));
      assert.deepEqual(mountsBelow(sandbox.target), []);
    } finally {
      // The sandbox's own clean-up reads every record: the damaged ones go first.
      for (const id of ["deadbeef", "feedface", "0ptions0", "n0backend", "1ayers00"]) {
        try {
          Deno.removeSync(`${sandbox.runtimeDir}/mounts/${id}`, { recursive: true });
        } catch { /* not made */ }
      }
      await sandbox.cleanup();
    }
  },
});
