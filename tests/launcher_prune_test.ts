/**
 * The launcher's first run of a version removes the unpacked runtimes of other versions, but
 * never one whose launcher is starting: such a launcher is still /bin/sh (no /proc/PID/exe in the
 * runtime) between its checks and its exec. "Another version" here is the built file with another
 * runtime id in its header: the same payload, unpacked into a directory of its own.
 */
import assert from "node:assert/strict";
import { findInPath } from "./_support/requires.ts";
import { build, copiedAlone, launcherBuilt, run } from "./_support/launcher_build.ts";
import { exists, sleep, waitFor } from "./_support/wait.ts";
import { VERSION } from "../lib/version.ts";

const OTHER_ID = "0123456789abcdef0123456789abcdef";

/** A copy of the built launcher that unpacks into `OTHER_ID` (same length: offsets stay). */
async function otherVersion(base: string): Promise<{ program: string; ownId: string }> {
  const bytes = await Deno.readFile(`${base}/bin/erofs-oci`);
  const header = new TextDecoder().decode(bytes.subarray(0, 16384));
  const id = header.match(/^runtime_id=([0-9a-f]{32})$/m)?.[1];
  assert.ok(id, "the launcher's header names its runtime id");
  const at = header.indexOf(`runtime_id=${id}`) + "runtime_id=".length;
  bytes.set(new TextEncoder().encode(OTHER_ID), at);
  const program = `${base}/bin/erofs-oci-other`;
  await Deno.writeFile(program, bytes, { mode: 0o755 });
  return { program, ownId: id };
}

/** Makes a runtime look idle for two minutes: its mark and Deno's -shm files. */
async function age(runtime: string, id: string) {
  const then = new Date(Date.now() - 120_000);
  const paths = [`${runtime}/.started-${id}`];
  for (const entry of Deno.readDirSync(`${runtime}/${id}/deno-dir`)) {
    if (entry.name.endsWith("-shm")) paths.push(`${runtime}/${id}/deno-dir/${entry.name}`);
  }
  for (const p of paths.filter(exists)) await Deno.utime(p, then, then);
}

async function removeRuntime(runtime: string, id: string) {
  await run("chmod", ["-R", "u+w", `${runtime}/${id}`]);
  await Deno.remove(`${runtime}/${id}`, { recursive: true });
}

Deno.test("launcher: a prune never removes the runtime of a launcher that is starting", async () => {
  const result = await build();
  assert.equal(result.code, 0, result.stderr);
  if (!launcherBuilt(result, "launcher prune while starting")) return; // a compiled binary has no runtime cache
  const copy = await copiedAlone();
  const runtime = copy.env.EROFS_OCI_RUNTIME_CACHE;
  try {
    const other = await otherVersion(copy.base);
    const version = `erofs-oci ${VERSION}\n`;
    assert.equal((await run(other.program, ["--version"], copy.env)).stdout, version);
    await age(runtime, OTHER_ID);

    // The other version's launcher stops inside its trust check (a `stat` first on PATH that
    // waits once its real stat has run): past its look at the runtime, before its exec.
    const stub = `${copy.base}/stub`;
    await Deno.mkdir(stub);
    await Deno.writeTextFile(
      `${stub}/stat`,
      `#!/bin/sh\n${findInPath("stat")} "$@"\nstatus=$?\n` +
        `if [ ! -e ${stub}/paused ]; then : >${stub}/paused\n` +
        `  while [ ! -e ${stub}/resume ]; do sleep 0.05; done\nfi\nexit $status\n`,
      { mode: 0o755 },
    );
    const starting = new Deno.Command(other.program, {
      args: ["--version"],
      env: { ...copy.env, PATH: `${stub}:${Deno.env.get("PATH")}` },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    await waitFor("the other launcher to stop", () => exists(`${stub}/paused`));
    // This version's first run prunes the idle-looking runtime under it.
    assert.equal((await copy.run(["--version"])).stdout, version);
    assert.ok(!exists(`${runtime}/${OTHER_ID}`), "the idle runtime of the other version is pruned");
    await Deno.writeTextFile(`${stub}/resume`, "");
    const out = await starting.output();
    const decode = (b: Uint8Array) => new TextDecoder().decode(b);
    assert.equal(out.code, 0, decode(out.stderr));
    assert.equal(decode(out.stdout), version, "the starting launcher unpacked its runtime again");

    // A runtime started within the last minute is kept by a first run (its launcher may be
    // between its mark and its exec); a later start tries again once it is idle.
    await removeRuntime(runtime, other.ownId);
    assert.equal((await copy.run(["--version"])).code, 0);
    assert.ok(exists(`${runtime}/${OTHER_ID}`), "a runtime started just now is kept");
    assert.ok(exists(`${runtime}/.prune-pending-${other.ownId}`));
    await age(runtime, OTHER_ID);
    assert.equal((await copy.run(["--version"])).code, 0);
    const left = [...Deno.readDirSync(runtime)].map((e) => e.name).sort();
    assert.deepEqual(
      left,
      [`.started-${other.ownId}`, other.ownId],
      "idle now: pruned, mark and all",
    );
  } finally {
    await copy.cleanup();
  }
});

Deno.test("launcher: a start waits while a prune holds its runtime, not for a dead one", async () => {
  const result = await build();
  assert.equal(result.code, 0, result.stderr);
  if (!launcherBuilt(result, "launcher start during a prune")) return;
  const copy = await copiedAlone();
  const runtime = copy.env.EROFS_OCI_RUNTIME_CACHE;
  try {
    assert.equal((await copy.run(["--version"])).code, 0);
    const id = [...Deno.readDirSync(runtime)].find((e) => /^[0-9a-f]{32}$/.test(e.name))!.name;
    const claim = `${runtime}/.pruning-${id}`;
    // A claim whose process is gone (a prune that died) holds nothing up.
    const gone = new Deno.Command("true").spawn();
    await gone.status;
    await Deno.writeTextFile(claim, `${gone.pid}\n`);
    assert.equal((await copy.run(["--version"])).code, 0);
    // A live one (this test's pid) holds the start until it is let go.
    await Deno.writeTextFile(claim, `${Deno.pid}\n`);
    const waiting = copy.run(["--version"]);
    let ended = false;
    waiting.then(() => ended = true);
    await sleep(1500);
    assert.ok(!ended, "the start waits for the prune");
    await Deno.remove(claim);
    const out = await waiting;
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, `erofs-oci ${VERSION}\n`);
  } finally {
    await copy.cleanup();
  }
});
