/**
 * `erofs-oci build` from tar layers: plain, gzip, zstd and standard input give the same image;
 * OCI whiteouts become overlayfs whiteouts, so three per-layer images stacked by overlayfs show
 * what the fixtures' merged tree holds; sparse members keep their holes; hostile archives fail
 * with one line and leave nothing behind.
 *
 * Root directory: tar layers rarely list it, and this builder makes it 0755 where mkfs.erofs
 * 1.9.3 makes it 0777, so the fixtures' expected root line is adjusted; mkfs's empty
 * `trusted.overlay.origin` on directories holding whiteouts is not written (overlayfs does not
 * need it for a read-only lower layer).
 */
import assert from "node:assert/strict";
import {
  command,
  FIXTURES,
  path,
  PEER_BIN,
  REPO_ROOT,
  requires,
  root,
} from "./_support/requires.ts";
import { runCli } from "./_support/cli.ts";
import {
  assertOneLineError,
  fsckImage,
  run,
  runOk,
  sparseTar,
  withMountedImage,
  withOverlayMount,
} from "./_support/erofs_tree.ts";
import { withTempDir } from "./_support/temp_dir.ts";
import { encodeTar } from "./_support/tar_encode.ts";

const ignore = requires(
  root(),
  command("python3"),
  command("tar"),
  path(`${PEER_BIN}/fsck.erofs`, "fsck.erofs 1.9.3"),
  path(`${FIXTURES}/layer1.tar`, "fixtures"),
);
const UUID = ["--uuid", "00000000-0000-4000-8000-0000000000aa", "--timestamp", "1700000000"];

async function fixtureManifest(dir: string): Promise<string[]> {
  return (await runOk("python3", [`${FIXTURES}/manifest.py`, dir])).trimEnd().split("\n");
}

function expected(name: string): string[] {
  return Deno.readTextFileSync(`${FIXTURES}/expected/${name}`).trimEnd().split("\n")
    .map((line) => line.startsWith(".\td\t0777\t") ? line.replace("\t0777\t", "\t0755\t") : line)
    .map((line) => line.replace(/\ttrusted\.overlay\.origin=$/, "\t-"));
}

function withWork(fn: (work: string) => Promise<void>): Promise<void> {
  return withTempDir("erofs-oci-build-tar-", fn);
}

async function build(source: string, out: string, extra: string[] = [], stdin?: string) {
  const result = stdin === undefined
    ? await runCli(["build", source, "-o", out, ...UUID, ...extra], { timeoutMs: 120_000 })
    : await run("sh", [
      "-c",
      `"$0" build - -o "$1" ${UUID.join(" ")} < "$2"`,
      `${Deno.cwd()}/scripts/erofs-oci-dev`,
      out,
      stdin,
    ]);
  assert.equal(result.code, 0, result.stderr);
}

Deno.test({
  name: "build tar: three OCI layers with whiteouts stack in overlayfs to the expected tree",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const lowers: string[] = [];
      try {
        for (const i of [1, 2, 3]) {
          const image = `${work}/layer${i}.erofs`;
          await build(`${FIXTURES}/layer${i}.tar`, image);
          await fsckImage(image);
          const dir = `${work}/l${i}`;
          Deno.mkdirSync(dir);
          await runOk("mount", ["-t", "erofs", "-o", "ro,loop", image, dir]);
          lowers.unshift(dir);
          assert.deepEqual(await fixtureManifest(dir), expected(`layer${i}.txt`));
        }
        await withOverlayMount(lowers, `${work}/merged`, async (merged) => {
          assert.deepEqual(await fixtureManifest(merged), expected("merged.txt"));
        });
      } finally {
        for (const dir of lowers) await run("umount", [dir]);
      }
    });
  },
});

Deno.test({
  name: "build tar: tar, tar.gz, tar.zst and stdin give the same bytes and the source tree",
  ignore: ignore || requires(command("zstd")),
  async fn() {
    await withWork(async (work) => {
      await runOk("zstd", ["-q", "-19", `${FIXTURES}/layer.tar`, "-o", `${work}/layer.tar.zst`]);
      await build(`${FIXTURES}/layer.tar`, `${work}/plain.erofs`);
      await build(`${FIXTURES}/layer.tar.gz`, `${work}/gz.erofs`);
      await build(`${work}/layer.tar.zst`, `${work}/zst.erofs`);
      await build("-", `${work}/stdin.erofs`, [], `${FIXTURES}/layer.tar.gz`);
      const plain = Deno.readFileSync(`${work}/plain.erofs`);
      for (const name of ["gz", "zst", "stdin"]) {
        assert.deepEqual(Deno.readFileSync(`${work}/${name}.erofs`), plain, name);
      }
      await fsckImage(`${work}/plain.erofs`);
      const listing = await withMountedImage(`${work}/plain.erofs`, fixtureManifest);
      assert.deepEqual(listing, expected("layer.meta.txt"));
      // No spool file or temporary image is left next to the output.
      assert.deepEqual(
        [...Deno.readDirSync(work)].map((e) => e.name).sort(),
        ["gz.erofs", "layer.tar.zst", "plain.erofs", "stdin.erofs", "zst.erofs"],
      );
    });
  },
});

Deno.test({
  name: "build tar: sparse members keep holes; hostile archives fail in one line, nothing left",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const src = await sparseTar(
        work,
        64 << 20,
        40 << 20,
        new TextEncoder().encode("in the middle"),
      );
      await runOk("gzip", ["-k", `${work}/sparse.tar`]);
      await build(`${work}/sparse.tar.gz`, `${work}/sparse.erofs`);
      const du = Number((await runOk("du", ["-k", `${work}/sparse.erofs`])).split("\t")[0]);
      assert.ok(du < 1024, `image uses ${du} KiB`);
      const sums = await withMountedImage(
        `${work}/sparse.erofs`,
        async (dir) => (await runOk("sha256sum", [`${dir}/sparse`])).split(" ")[0],
      );
      assert.equal(sums, (await runOk("sha256sum", [`${src}/sparse`])).split(" ")[0]);
      // Stored as 64 MiB of real zeros (no --sparse): the spooled zero blocks still stay holes.
      await runOk("sh", [
        "-c",
        `tar -C "$0" -cf - sparse | gzip -1 > "$1"`,
        src,
        `${work}/dense.tar.gz`,
      ]);
      await build(`${work}/dense.tar.gz`, `${work}/dense.erofs`);
      const denseDu = Number((await runOk("du", ["-k", `${work}/dense.erofs`])).split("\t")[0]);
      assert.ok(denseDu < 1024, `image of the dense tar uses ${denseDu} KiB`);
      const denseSum = await withMountedImage(
        `${work}/dense.erofs`,
        async (dir) => (await runOk("sha256sum", [`${dir}/sparse`])).split(" ")[0],
      );
      assert.equal(denseSum, sums);

      // A member below a regular file: refused, no image, no spool.
      const evil = `${work}/evil`;
      Deno.mkdirSync(`${evil}/x`, { recursive: true });
      Deno.writeTextFileSync(`${evil}/a`, "file");
      Deno.writeTextFileSync(`${evil}/x/b`, "below");
      await runOk("tar", [
        "-C",
        evil,
        "-cf",
        `${work}/evil.tar`,
        "a",
        "--transform=s,^x,a,",
        "x/b",
      ]);
      const out = await runCli(["build", `${work}/evil.tar`, "-o", `${work}/out/evil.erofs`]);
      Deno.mkdirSync(`${work}/out`);
      const again = await runCli(["build", `${work}/evil.tar`, "-o", `${work}/out/evil.erofs`]);
      assert.equal(out.code, 2, "no out/ yet: said before the build");
      assert.equal(again.code, 1);
      assert.match(again.stderr, /^erofs-oci: tar member "a\/b": "a" is not a directory\n/);
      assertOneLineError(again.stderr);
      assert.deepEqual([...Deno.readDirSync(`${work}/out`)], []);

      // Not a tar at all.
      Deno.writeTextFileSync(`${work}/junk`, "x".repeat(2000));
      const junk = await runCli(["build", `${work}/junk`, "-o", `${work}/out/junk.erofs`]);
      assert.equal(junk.code, 1);
      assertOneLineError(junk.stderr);
      assert.deepEqual([...Deno.readDirSync(`${work}/out`)], []);
    });
  },
});

Deno.test({
  name: "build tar: a build killed half-way (stdin still open) leaves no file behind",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const out = `${work}/out`;
      Deno.mkdirSync(out);
      // The tar's members arrive, its end never does: the build is spooling when killed.
      const child = new Deno.Command(`${Deno.cwd()}/scripts/erofs-oci-dev`, {
        args: ["build", "-", "-o", `${out}/x.erofs`],
        stdin: "piped",
        stdout: "null",
        stderr: "null",
      }).spawn();
      const writer = child.stdin.getWriter();
      try {
        await writer.write(Deno.readFileSync(`${FIXTURES}/layer.tar`).subarray(0, 1 << 20));
        await new Promise((resolve) => setTimeout(resolve, 3000));
      } finally {
        child.kill("SIGKILL");
        await child.status;
        await writer.close().catch(() => {});
      }
      assert.deepEqual([...Deno.readDirSync(out)], []);
    });
  },
});

Deno.test({
  name: "build tar: hostile members — 2,000 nested dirs build; oversized symlink/device refused",
  ignore,
  async fn() {
    await withWork(async (work) => {
      const make = async (name: string, script: string) => {
        await runOk("python3", [
          "-c",
          `import tarfile, io, sys
t = tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT)
def add(name, **kw):
    info = tarfile.TarInfo(name)
    for k, v in kw.items(): setattr(info, k, v)
    t.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
${script}
t.close()`,
          `${work}/${name}`,
        ]);
        return `${work}/${name}`;
      };
      const deep = await make("deep.tar", `add("/".join(["a"] * 2000) + "/leaf", size=1)`);
      await build(deep, `${work}/deep.erofs`);
      // fsck.erofs 1.9.3 itself crashes (SIGSEGV) on this depth, on mkfs.erofs's image too:
      // the kernel is the judge here.
      const seen = await withMountedImage(`${work}/deep.erofs`, async (dir) => {
        const entries = (await runOk("find", [dir])).trim().split("\n").length;
        const leaf = await Deno.readTextFile(`${dir}/${Array(2000).fill("a").join("/")}/leaf`);
        return [entries, leaf];
      });
      assert.deepEqual(seen, [2002, "x"]);
      for (
        const [name, script, message] of [
          [
            "link.tar",
            `add("l", type=tarfile.SYMTYPE, linkname="x" * 5000)`,
            /symlink target of 5000 bytes|longer than PATH_MAX/,
          ],
          [
            "dev.tar",
            `add("d", type=tarfile.CHRTYPE, devmajor=4096, devminor=0)`,
            /device 4096:0 too large/,
          ],
        ] as const
      ) {
        const out = await runCli(["build", await make(name, script), "-o", `${work}/x.erofs`]);
        assert.equal(out.code, 1, out.stderr);
        assert.match(out.stderr, message);
        assertOneLineError(out.stderr);
      }
      assert.ok(!(await Deno.stat(`${work}/x.erofs`).catch(() => undefined)));
    });
  },
});

Deno.test({
  name: "build - with a terminal as standard input: refused at once (it waited, silent)",
  ignore: requires(command("script")),
  fn: () =>
    withTempDir("erofs-oci-build-tty-", async (dir) => {
      // script(1) gives the command a pseudo-terminal as its standard input.
      const quoted = (text: string) => `'${text.replaceAll("'", "'\\''")}'`;
      const cli = `${quoted(`${REPO_ROOT}/scripts/erofs-oci-dev`)} build - -o ${
        quoted(`${dir}/x.erofs`)
      }; echo "rc=$?"`;
      const run = await new Deno.Command("timeout", {
        args: ["60", "script", "-qec", cli, "/dev/null"],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(run.stdout);
      assert.match(text, /build: SOURCE - reads a tar from standard input, which is a terminal/);
      assert.match(text, /rc=2/);
      await assert.rejects(Deno.stat(`${dir}/x.erofs`));
    }),
});

Deno.test({
  name: "build tar: a symlink's mode is 0777 whatever its member says, as an extraction leaves it",
  ignore: requires(root()),
  fn: () =>
    withTempDir("erofs-oci-tar-symlink-mode-", async (work) => {
      Deno.writeFileSync(
        `${work}/links.tar`,
        encodeTar([
          { name: "target", mode: 0o600, data: new TextEncoder().encode("t\n") },
          { name: "link", type: "2", linkname: "target", mode: 0o644 },
        ]),
      );
      const built = await runCli(["build", `${work}/links.tar`, "-o", `${work}/links.erofs`]);
      assert.equal(built.code, 0, built.stderr);
      const modes = await withMountedImage(`${work}/links.erofs`, (dir) =>
        Promise.resolve({
          link: (Deno.lstatSync(`${dir}/link`).mode! & 0o7777).toString(8),
          target: (Deno.statSync(`${dir}/target`).mode! & 0o7777).toString(8),
        }));
      assert.deepEqual(modes, { link: "777", target: "600" });
    }),
});

Deno.test({
  name:
    "build tar: a layer's own character device 0:0 is kept but said to be a whiteout to overlayfs",
  ignore: requires(root()),
  fn: () =>
    withTempDir("erofs-oci-tar-chardev-00-", async (work) => {
      Deno.writeFileSync(
        `${work}/devices.tar`,
        encodeTar([
          { name: "dev/", type: "5", mode: 0o755 },
          { name: "dev/zero-zero", type: "3", mode: 0o644, devMajor: 0, devMinor: 0 },
          { name: "dev/null", type: "3", mode: 0o666, devMajor: 1, devMinor: 3 },
          // An OCI whiteout becomes a 0:0 device too: it is what the layer means, no warning.
          { name: "dev/.wh.gone", mode: 0o644 },
        ]),
      );
      const built = await runCli(["build", `${work}/devices.tar`, "-o", `${work}/layer.erofs`]);
      assert.equal(built.code, 0, built.stderr);
      const warnings = built.stderr.split("\n").filter((line) => line.includes("0:0"));
      assert.equal(warnings.length, 1, built.stderr);
      assert.match(warnings[0], /"dev\/zero-zero" is a character device 0:0.*whiteout/);
      const rdev = await withMountedImage(`${work}/layer.erofs`, (dir) =>
        Promise.resolve(Deno.lstatSync(`${dir}/dev/zero-zero`).rdev));
      assert.equal(rdev, 0);
      // Kept as the tar says with --literal-whiteouts (not a layer): nothing to say.
      const literal = await runCli([
        "build",
        `${work}/devices.tar`,
        "--literal-whiteouts",
        "-o",
        `${work}/literal.erofs`,
      ]);
      assert.equal(literal.code, 0, literal.stderr);
      assert.doesNotMatch(literal.stderr, /0:0/);
    }),
});

Deno.test({
  name:
    "build tar: a sparse member past what an EROFS file holds is refused by name, before its data",
  ignore: requires(root(), command("tar")),
  fn: async () => {
    // tmpfs takes a 17 TiB sparse file where ext4 (16 TiB at most) would not.
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-tar-huge-" });
    await runOk("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", work]);
    try {
      await sparseTar(work, 17 * 2 ** 40, 2 ** 40, new TextEncoder().encode("x"));
      const built = await runCli(["build", `${work}/sparse.tar`, "-o", `${work}/out.erofs`]);
      // Before: "ftruncate (spool): File too large" with the spool on ext4.
      assert.equal(built.code, 1, built.stderr);
      assert.match(
        built.stderr,
        /tar member "sparse" is 18691697672192 bytes: more than an EROFS file of 4096-byte blocks/,
      );
      assertOneLineError(built.stderr);
      assert.throws(() => Deno.statSync(`${work}/out.erofs`), Deno.errors.NotFound);
    } finally {
      await runOk("umount", [work]);
      await Deno.remove(work, { recursive: true });
    }
  },
});
