import assert from "node:assert/strict";

const root = Deno.uid() === 0;

Deno.test({
  name:
    "runtime dir through a symlink: the directory checked is the one used, though the link moves between",
  ignore: !root,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-runtime-link-" });
    try {
      Deno.mkdirSync(`${work}/roots`, { mode: 0o700 });
      Deno.mkdirSync(`${work}/theirs`, { mode: 0o700 });
      Deno.chownSync(`${work}/theirs`, 65534, 65534);
      Deno.symlinkSync(`${work}/theirs`, `${work}/link`);
      // Resolved when the module loads (through the link to another user's dir); the link then
      // goes to root's dir before the check, as a user flipping it at the right time would.
      const script = `
        const dirs = await import(${
        JSON.stringify(new URL("./runtime_dirs.ts", import.meta.url).href)
      });
        Deno.symlinkSync(${JSON.stringify(`${work}/roots`)}, ${JSON.stringify(`${work}/link.new`)});
        Deno.renameSync(${JSON.stringify(`${work}/link.new`)}, ${JSON.stringify(`${work}/link`)});
        try {
          dirs.checkRuntimeRoot();
          console.log("checked, uses " + dirs.MOUNTS_DIR);
        } catch (error) {
          console.log("refused: " + error.message);
        }`;
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["eval", "--no-check", script],
        env: { EROFS_OCI_RUNTIME_DIR: `${work}/link` },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const said = new TextDecoder().decode(out.stdout).trim();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      assert.match(said, /^refused: .*theirs.* owned by uid 65534/, said);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test({
  name: "state dir: only listed runtime dirs that are root's alone are read by a prune",
  ignore: !root,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-runtime-dirs-" });
    try {
      const hex = (path: string) =>
        Array.from(new TextEncoder().encode(path), (b) => b.toString(16).padStart(2, "0")).join("");
      Deno.mkdirSync(`${work}/state/runtime-dirs`, { recursive: true, mode: 0o700 });
      Deno.chmodSync(`${work}/state`, 0o700);
      Deno.mkdirSync(`${work}/roots`, { mode: 0o700 });
      // Made again by another user after root's was removed (it was under a sticky dir).
      Deno.mkdirSync(`${work}/theirs`, { mode: 0o700 });
      Deno.chownSync(`${work}/theirs`, 65534, 65534);
      Deno.symlinkSync(`${work}/roots`, `${work}/link`);
      for (const dir of ["roots", "theirs", "link", "gone"]) {
        Deno.writeFileSync(`${work}/state/runtime-dirs/${hex(`${work}/${dir}`)}`, new Uint8Array());
      }
      const script = `
        const dirs = await import(${
        JSON.stringify(new URL("./runtime_dirs.ts", import.meta.url).href)
      });
        console.log(JSON.stringify(dirs.runtimeDirsUsingState()));`;
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["eval", "--no-check", script],
        env: { EROFS_OCI_RUNTIME_DIR: `${work}/own`, EROFS_OCI_STATE_DIR: `${work}/state` },
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      const listed = JSON.parse(new TextDecoder().decode(out.stdout));
      assert.deepEqual(listed.sort(), [`${work}/own`, `${work}/roots`]);
      assert.deepEqual(
        [...Deno.readDirSync(`${work}/state/runtime-dirs`)].map((e) => e.name).sort(),
        ["roots", "theirs"].map((dir) => hex(`${work}/${dir}`)).sort(),
        "a gone one (or a symlink: those listed are resolved paths) is forgotten",
      );
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("records dirs: a variable set but empty is taken as unset, not as the current directory", async () => {
  const script = `
    const dirs = await import(${
    JSON.stringify(new URL("./runtime_dirs.ts", import.meta.url).href)
  });
    console.log(dirs.RUNTIME_SETTING);`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    env: { EROFS_OCI_RUNTIME_DIR: "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  assert.equal(new TextDecoder().decode(out.stdout).trim(), "/run/erofs-oci");
});

Deno.test({
  name: "writeRuntimeFile on a full file system: one line in words with a hint, no part left",
  ignore: !root,
  async fn() {
    const { writeRuntimeFile } = await import("./runtime_dirs.ts");
    const { UserError } = await import("../errors.ts");
    const dir = await Deno.makeTempDir({ prefix: "erofs-oci-runtime-full-" });
    const mounted = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=4k", "tmpfs", dir],
    }).output();
    assert.ok(mounted.success);
    try {
      try {
        Deno.writeFileSync(`${dir}/fill`, new Uint8Array(64 << 10));
      } catch { /* full */ }
      let error: unknown;
      try {
        writeRuntimeFile(`${dir}/state.json`, "x".repeat(8192));
      } catch (thrown) {
        error = thrown;
      }
      assert.ok(error instanceof UserError, String(error));
      // Was "No space left on device (os error 28): writefile '…/state.json.tmp'".
      assert.match(error.message, /state\.json\.tmp'?: No space left on device$/);
      assert.doesNotMatch(error.message, /os error/);
      assert.match(error.hint ?? "", /free space there/);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["fill"]);
    } finally {
      await new Deno.Command("umount", { args: [dir] }).output();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
