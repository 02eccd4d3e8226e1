/**
 * `deno task build` makes a runnable dist/erofs-oci — a compiled binary when a denort runtime
 * is available, else the bundle + launcher — and says which; both answer --version and --help.
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./_support/requires.ts";
import { VERSION } from "../lib/version.ts";

async function run(cmd: string, args: string[] = []) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

Deno.test("build: dist/erofs-oci is made, says what it is, and runs --version and --help", async () => {
  const built = await run(`${REPO_ROOT}/scripts/build.sh`);
  assert.equal(built.code, 0, built.stderr);
  assert.match(built.stdout, /built dist\/erofs-oci: (single executable|bundled single file)/);
  if (/bundled/.test(built.stdout)) assert.match(built.stderr, /deno compile unavailable: \S/);

  const version = await run(`${REPO_ROOT}/dist/erofs-oci`, ["--version"]);
  assert.equal(version.code, 0, version.stderr);
  assert.equal(version.stdout.trim(), `erofs-oci ${VERSION}`);
  const help = await run(`${REPO_ROOT}/dist/erofs-oci`, ["--help"]);
  assert.equal(help.code, 0);
  for (
    const command of ["mount", "umount", "list", "reattach", "inspect", "pull", "push", "serve"]
  ) {
    assert.match(help.stdout, new RegExp(`^  ${command} `, "m"), `--help lists ${command}`);
  }
  const usage = await run(`${REPO_ROOT}/dist/erofs-oci`, ["mount"]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /^erofs-oci: mount: missing IMAGE DIR/);
});
