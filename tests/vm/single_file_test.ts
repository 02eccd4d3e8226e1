/**
 * The product promise: copy one file to a host and use it. dist/erofs-oci (made on the host by
 * `deno task build`; tests/build_test.ts runs first in scripts/test.sh) is copied alone into an
 * empty directory of the fresh guest, which has never unpacked it (/var/cache/erofs-oci is
 * guest RAM, emptied here); it pushes an image to the guest's registry, mounts it through
 * kernel NBD (its detached server is the same file's runtime), reads it back exactly and
 * unmounts. Start-up times are printed for the record.
 */
import assert from "node:assert/strict";
import { FIXTURES, path, REPO_ROOT, requires } from "../_support/requires.ts";
import { startRegistry } from "../_support/registry.ts";
import { expectedManifest, manifestOf, mountSandbox } from "../_support/mounts.ts";
import { NOT_IN_VM, runCommand } from "../_support/vm.ts";

const DIST = `${REPO_ROOT}/dist/erofs-oci`;
const DEFAULT_RUNTIME_CACHE = "/var/cache/erofs-oci";

async function timed(program: string, args: string[]) {
  const started = performance.now();
  const result = await runCommand(program, args);
  return { ...result, seconds: ((performance.now() - started) / 1000).toFixed(2) };
}

Deno.test({
  name: "vm single file: dist/erofs-oci copied alone runs --version, push, mount (nbd), umount",
  ignore: NOT_IN_VM || requires(path(DIST, "dist/erofs-oci (deno task build)")),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-single-" });
    const registry = await startRegistry({ auth: "none", startTimeoutMs: 60_000 });
    const sandbox = await mountSandbox();
    const program = `${dir}/erofs-oci`;
    try {
      // A fresh machine: nothing unpacked yet (the guest's root is a RAM overlay).
      await Deno.remove(DEFAULT_RUNTIME_CACHE, { recursive: true }).catch(() => {});
      await Deno.copyFile(DIST, program);
      await Deno.chmod(program, 0o755);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["erofs-oci"]);

      const first = await timed(program, ["--version"]);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /^erofs-oci \d+\.\d+\.\d+/);
      const warm = await timed(program, ["--version"]);
      assert.equal(warm.code, 0, warm.stderr);
      console.log(`start-up in the guest: first run ${first.seconds} s, warm ${warm.seconds} s`);

      const image = `${registry.host}/single/basic:v1`;
      const pushed = await runCommand(program, ["push", image, `${FIXTURES}/basic.erofs`]);
      assert.equal(pushed.code, 0, pushed.stderr);
      const env = Object.entries(sandbox.env).map(([k, v]) => `${k}=${v}`);
      const mounted = await timed("env", [
        ...env,
        program,
        "mount",
        image,
        sandbox.target,
        "--backend",
        "nbd",
      ]);
      assert.equal(mounted.code, 0, `${mounted.stderr}\n${sandbox.serverLogs()}`);
      assert.match(mounted.stdout, /nbd: \S*nbd\d+/);
      console.log(`mount took ${mounted.seconds} s`);
      assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      const unmounted = await runCommand("env", [...env, program, "umount", sandbox.target]);
      assert.equal(unmounted.code, 0, unmounted.stderr);
      const mountinfo = await Deno.readTextFile("/proc/self/mountinfo");
      assert.ok(!mountinfo.includes(` ${sandbox.target} `), "still mounted after umount");
    } finally {
      await sandbox.cleanup();
      await registry.stop();
      await runCommand("chmod", ["-R", "u+w", DEFAULT_RUNTIME_CACHE]);
      await Deno.remove(DEFAULT_RUNTIME_CACHE, { recursive: true }).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
