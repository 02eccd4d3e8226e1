/**
 * Paths under /dev, /proc and /sys, which Deno's file APIs refuse to a program without every
 * permission (erofs-oci asks for fewer, scripts/permissions): an output in /dev/shm, a common
 * tmpfs, was an internal error quoting Deno's advice to run with --allow-all. Now one line
 * naming the path and what to do instead.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { FIXTURES } from "./_support/requires.ts";

Deno.test("index -o under /dev/shm: one line naming the path, no internal error", async () => {
  const output = `/dev/shm/erofs-oci-special-path-test-${crypto.randomUUID()}`;
  try {
    const message = assertCliError(
      await runCli(["index", `${FIXTURES}/layer.tar`, "-o", output]),
      1,
      /cannot use \/dev\/shm\/erofs-oci-special-path-test-.*: erofs-oci does not open files under \/dev, \/proc or \/sys/,
    );
    assert.ok(!/--allow-all/.test(message), message);
  } finally {
    await Deno.remove(output, { recursive: true }).catch(() => {});
  }
});

Deno.test("build from or into /dev/shm: one line naming the path, nothing written", async () => {
  const base = `/dev/shm/erofs-oci-special-path-test-${crypto.randomUUID()}`;
  try {
    Deno.mkdirSync(`${base}-src`);
    Deno.writeTextFileSync(`${base}-src/a`, "a");
    // The output's directory is named (it is looked at first), or the source itself.
    const special =
      /cannot use \/dev\/shm\S*: erofs-oci does not open files under \/dev, \/proc or \/sys/;
    assertCliError(await runCli(["build", `${base}-src`, "-o", `${base}.erofs`]), 1, special);
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-special-path-" });
    try {
      assertCliError(await runCli(["build", `${base}-src`, "-o", `${work}/x.erofs`]), 1, special);
      assertCliError(await runCli(["build", work, "-o", `${base}.erofs`]), 1, special);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
    assert.throws(() => Deno.statSync(`${base}.erofs`), Deno.errors.NotFound);
  } finally {
    for (const path of [`${base}-src`, `${base}.erofs`]) {
      await Deno.remove(path, { recursive: true }).catch(() => {});
    }
  }
});
