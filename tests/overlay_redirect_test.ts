/**
 * A hostile EROFS layer carrying overlayfs's own xattrs cannot make the overlay show other
 * paths: a top-layer directory with `trusted.overlay.redirect` "/secret" showed the lower
 * layer's /secret/file inside it (this host's overlay module has redirect_always_follow=Y, and
 * no option said otherwise), read-only and writable alike; now the kernel refuses it (EPERM).
 * A file marked `trusted.overlay.metacopy` is refused, whatever the module's metacopy default.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires, root } from "./_support/requires.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { type MountSandbox, mountSandbox, mountsBelow } from "./_support/mounts.ts";
import { writeOciLayout } from "./_support/oci_layout_writer.ts";
import { EROFS_MEDIA_TYPE } from "./_support/oci_fixtures.ts";
import { runOk } from "./_support/erofs_tree.ts";
import { readMountInfo } from "../lib/sys/mountinfo.ts";

/** An EROFS image of `tree` by mkfs.erofs (keeps trusted.* xattrs, as a hostile image may). */
async function mkfs(tree: string, image: string): Promise<Uint8Array> {
  await runOk(`${PEER_BIN}/mkfs.erofs`, [image, tree]);
  return await Deno.readFile(image);
}

/** Bottom: /secret/file. Top: /d (redirected to /secret) holding `own`, /m a metacopy file. */
async function hostileLayout(base: string): Promise<string> {
  const lower = `${base}/lower`;
  await Deno.mkdir(`${lower}/secret`, { recursive: true });
  await Deno.writeTextFile(`${lower}/secret/file`, "secret\n");
  await Deno.writeTextFile(`${lower}/m`, "data of the lower m\n");
  const top = `${base}/top`;
  await Deno.mkdir(`${top}/d`, { recursive: true });
  await Deno.writeTextFile(`${top}/d/own`, "own\n");
  await runOk("setfattr", ["-n", "trusted.overlay.redirect", "-v", "/secret", `${top}/d`]);
  await Deno.writeTextFile(`${top}/m`, "");
  await runOk("setfattr", ["-n", "trusted.overlay.metacopy", `${top}/m`]);
  await runOk("setfattr", ["-n", "trusted.overlay.redirect", "-v", "/secret/file", `${top}/m`]);
  const layers = [await mkfs(lower, `${base}/lower.erofs`), await mkfs(top, `${base}/top.erofs`)];
  const layout = `${base}/layout`;
  await writeOciLayout(layout, layers.map((bytes) => ({ bytes, mediaType: EROFS_MEDIA_TYPE })));
  return layout;
}

function tryOr(fn: () => unknown): unknown {
  try {
    return fn();
  } catch (error) {
    return (error as Error).name;
  }
}

async function assertNothingRedirected(sandbox: MountSandbox, args: string[]) {
  const mounted = await runCli(["mount", ...args, sandbox.target, "--backend", "fuse"], {
    env: sandbox.env,
    timeoutMs: 120_000,
  });
  assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
  try {
    const target = sandbox.target;
    // The kernel refuses a redirected directory (EPERM) rather than show what it points at.
    const listD = () => [...Deno.readDirSync(`${target}/d`)].map((e) => e.name).sort();
    assert.throws(listD, Deno.errors.PermissionDenied, `d lists ${tryOr(listD)}`);
    assert.throws(() => Deno.readTextFileSync(`${target}/d/file`), Deno.errors.PermissionDenied);
    assert.equal(await Deno.readTextFile(`${target}/secret/file`), "secret\n", "still there");
    const metacopy = tryOr(() => Deno.readTextFileSync(`${target}/m`));
    assert.equal(metacopy, "PermissionDenied", "a metacopy file is refused, not read elsewhere");
    const overlay = readMountInfo().find((m) => m.mountPoint === target && m.fsType === "overlay");
    // The kernel shows an option only where it differs from the module's default.
    assert.match(overlay?.superOptions ?? "", /,redirect_dir=nofollow(,|$)/);
    if (Deno.readTextFileSync("/sys/module/overlay/parameters/metacopy").trim() === "Y") {
      assert.match(overlay?.superOptions ?? "", /,metacopy=off(,|$)/);
    }
  } finally {
    assertSuccess(await runCli(["umount", sandbox.target], { env: sandbox.env }));
  }
  assert.deepEqual(mountsBelow(sandbox.target), []);
}

Deno.test({
  name: "overlay: a layer's trusted.overlay.redirect/metacopy show nothing else, ro and writable",
  ignore: requires(root(), path("/dev/fuse"), path(`${PEER_BIN}/mkfs.erofs`), command("setfattr")),
  async fn() {
    const sandbox = await mountSandbox();
    const base = sandbox.target.replace(/\/mnt$/, "");
    try {
      const image = `oci:${await hostileLayout(base)}:v1`;
      await assertNothingRedirected(sandbox, [image]);
      for (const dir of ["up", "wk"]) await Deno.mkdir(`${base}/${dir}`, { mode: 0o700 });
      await assertNothingRedirected(sandbox, [
        image,
        "--upper",
        `${base}/up`,
        "--work",
        `${base}/wk`,
      ]);
    } finally {
      await sandbox.cleanup();
    }
  },
});
