/**
 * The VM harness works from any checkout path. The guest covers /tmp and /run with fresh tmpfs,
 * which used to hide a checkout cloned there (`cd: No such file or directory`); scripts/vm/run.sh
 * now has those directories bound back. One boot, with the harness copied into a checkout under
 * /tmp whose path holds spaces and shell characters, plus extra directories under /run, /var/run
 * (a symlink to /run) and /var/tmp passed in VM_HOST_PATHS.
 */
import assert from "node:assert/strict";
import { command, REPO_ROOT, requires, root } from "./_support/requires.ts";

const SCRIPTS = ["run.sh", "build.sh", "init.sh", "kernel.sh"];

/** Makes a directory under `parent` whose name has a space, a quote and a dollar sign. */
async function oddDir(parent: string): Promise<string> {
  const dir = await Deno.makeTempDir({ dir: parent, prefix: "erofs-oci vm 'x' $HOME " });
  await Deno.writeTextFile(`${dir}/marker`, `marker of ${dir}\n`);
  return dir;
}

Deno.test({
  name: "vm harness: a checkout under /tmp (path with spaces) and host dirs under /run are seen",
  ignore: requires(command("qemu-system-x86_64"), root()),
  fn: async () => {
    const dirs: string[] = [];
    try {
      const checkout = await oddDir("/tmp");
      dirs.push(checkout);
      await Deno.mkdir(`${checkout}/scripts/vm`, { recursive: true });
      for (const name of SCRIPTS) {
        await Deno.copyFile(`${REPO_ROOT}/scripts/vm/${name}`, `${checkout}/scripts/vm/${name}`);
        await Deno.chmod(`${checkout}/scripts/vm/${name}`, 0o755);
      }
      // The checkout builds its own kernel + initramfs (build.sh once broke on a cache path
      // with spaces); the kernel package already downloaded for this checkout is reused.
      const cache = `${checkout}/.cache/vm`;
      await Deno.mkdir(`${cache}/dl`, { recursive: true });
      // The real checkout's build downloads the kernel package once (a fresh clone has none yet).
      const built = await new Deno.Command(`${REPO_ROOT}/scripts/vm/build.sh`, {
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(built.code, 0, new TextDecoder().decode(built.stderr));
      const downloaded = `${REPO_ROOT}/.cache/vm/dl`;
      const debs = await Array.fromAsync(Deno.readDir(downloaded)).catch(() => []);
      for (const { name } of debs.filter((entry) => entry.name.endsWith(".deb"))) {
        await Deno.symlink(`${downloaded}/${name}`, `${cache}/dl/${name}`);
      }
      const underRun = await oddDir("/run");
      const underVarRun = await oddDir("/var/run");
      const underVarTmp = await oddDir("/var/tmp");
      dirs.push(underRun, underVarRun, underVarTmp);

      const guest = `${checkout}/guest.sh`;
      await Deno.writeTextFile(
        guest,
        [
          "set -eu",
          'cd "$CHECKOUT"',
          "cat marker",
          'for d in "$UNDER_RUN" "$UNDER_VAR_RUN" "$UNDER_VAR_TMP"; do cat "$d/marker"; done',
          // Bound back from the RAM-backed root: writable, and the host copy stays untouched.
          "echo from-guest >written-in-guest && cat written-in-guest",
          'echo "tmp is $(awk \'$2 == "/tmp" {print $3}\' /proc/mounts)"',
          "echo guest-done",
        ].join("\n") + "\n",
      );
      const run = await new Deno.Command(`${checkout}/scripts/vm/run.sh`, {
        args: [guest, "240"],
        env: {
          VM_HOST_PATHS: [underRun, underVarRun, underVarTmp].join("\n"),
          VM_ENV: "CHECKOUT UNDER_RUN UNDER_VAR_RUN UNDER_VAR_TMP",
          CHECKOUT: checkout,
          UNDER_RUN: underRun,
          UNDER_VAR_RUN: underVarRun,
          UNDER_VAR_TMP: underVarTmp,
        },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const console = new TextDecoder().decode(run.stdout);
      const log = new TextDecoder().decode(run.stderr);
      assert.equal(run.code, 0, `run.sh exited ${run.code}\n${console}\n${log}`);
      for (const dir of [checkout, underRun, underVarRun, underVarTmp]) {
        assert.ok(console.includes(`marker of ${dir}`), `guest read ${dir}/marker:\n${console}`);
      }
      assert.match(console, /^from-guest$/m);
      assert.match(console, /^tmp is tmpfs$/m, "the guest's /tmp is still its own tmpfs");
      assert.match(console, /^guest-done$/m);
      await assert.rejects(Deno.stat(`${checkout}/written-in-guest`), Deno.errors.NotFound);
    } finally {
      for (const dir of dirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
