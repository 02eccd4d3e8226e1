/**
 * EROFS mounted by the real kernel on a FUSE blob served by this process: fixture trees
 * compared byte for byte with the expected manifests, big and concurrent reads, source
 * failures, refused images, the loop fallback, extra devices and an overlay of three layers.
 */
import assert from "node:assert/strict";
import { FormatError, MountError } from "../lib/errors.ts";
import { mountErofsFile } from "../lib/mount/erofs_file.ts";
import type { Source } from "../lib/source/source.ts";
import {
  expected,
  manifest,
  openTracked,
  overlayOfFixtureLayers,
  sha256,
  withFuseStack,
} from "./_support/fuse_stack.ts";
import { patternBytes } from "./_support/memory_source.ts";
import { command, FIXTURES, path, PEER_BIN, requires, root } from "./_support/requires.ts";

const ignore = requires(root(), path("/dev/fuse"), command("python3"));

for (const image of ["basic", "basic-lz4", "layer1"]) {
  Deno.test({
    name: `fuse+erofs: ${image}.erofs served over FUSE mounts with the expected tree`,
    ignore,
    async fn() {
      await withFuseStack(async (stack, sources) => {
        const blob = await stack.blob(
          await openTracked(sources, `${FIXTURES}/${image}.erofs`),
          "fuse",
        );
        const { superblock, loopDevices } = await stack.erofs(blob.filePath, "mnt");
        assert.equal(superblock.blockSizeBytes, 4096);
        assert.deepEqual(loopDevices, [], "file-backed mount, no loop device");
        const mnt = `${stack.root}/mnt`;
        const entry = stack.mounts();
        assert.deepEqual(entry, [`${stack.root}/fuse`, mnt]);
        assert.equal(await manifest(mnt), await expected(`${image}.txt`));
        assert.ok(blob.stats().reads > 0);
      });
    },
  });
}

/** A temp EROFS image with one big and several mid-size random files (mkfs.erofs). */
async function buildBigImage(dir: string): Promise<{ image: string; sums: Map<string, string> }> {
  const tree = `${dir}/tree`;
  await Deno.mkdir(tree, { recursive: true });
  const sums = new Map<string, string>();
  const files: [string, number][] = [
    ["big.bin", 40 << 20],
    ...[1, 2, 3, 4].map((i) => [`mid-${i}.bin`, (3 << 20) + i * 4099] as [string, number]),
  ];
  for (const [i, [name, size]] of files.entries()) {
    const bytes = patternBytes(size, 100 + i) as Uint8Array<ArrayBuffer>;
    await Deno.writeFile(`${tree}/${name}`, bytes);
    sums.set(name, await sha256(bytes));
  }
  const image = `${dir}/big.erofs`;
  const mkfs = (() => {
    try {
      Deno.statSync(`${PEER_BIN}/mkfs.erofs`);
      return `${PEER_BIN}/mkfs.erofs`;
    } catch {
      return "mkfs.erofs";
    }
  })();
  const out = await new Deno.Command(mkfs, { args: [image, tree], stdout: "null", stderr: "piped" })
    .output();
  assert.ok(out.success, `mkfs.erofs failed: ${new TextDecoder().decode(out.stderr)}`);
  return { image, sums };
}

async function sha256sum(files: string[]): Promise<Map<string, string>> {
  const out = await new Deno.Command("sha256sum", { args: files, stdout: "piped" }).output();
  assert.ok(out.success, "sha256sum failed");
  const sums = new Map<string, string>();
  for (const line of new TextDecoder().decode(out.stdout).trim().split("\n")) {
    const [sum, file] = line.split(/\s+/);
    sums.set(file.slice(file.lastIndexOf("/") + 1), sum);
  }
  return sums;
}

Deno.test({
  name: "fuse+erofs: a 40 MiB file and concurrent readers of several files read back exactly",
  ignore: ignore || requires(command("mkfs.erofs"), command("sha256sum")),
  async fn() {
    await withFuseStack(async (stack, sources) => {
      const { image, sums } = await buildBigImage(await stack.dir("build"));
      const blob = await stack.blob(await openTracked(sources, image), "fuse");
      await stack.erofs(blob.filePath, "mnt");
      const mnt = `${stack.root}/mnt`;
      const big = await Deno.readFile(`${mnt}/big.bin`);
      assert.equal(await sha256(big), sums.get("big.bin"));
      // Cold again for the concurrent part: a second mount of the file has its own (empty)
      // page cache.
      await stack.erofs(blob.filePath, "mnt2");
      const names = [...sums.keys()];
      const results = await Promise.all(
        names.map((name) => sha256sum([`${stack.root}/mnt2/${name}`])),
      );
      for (const [i, name] of names.entries()) assert.equal(results[i].get(name), sums.get(name));
    });
  },
});

Deno.test({
  name: "fuse+erofs: a failing source gives EIO to the reader, not zeros; unmount still works",
  ignore: ignore || requires(command("mkfs.erofs")),
  async fn() {
    await withFuseStack(async (stack, sources) => {
      const { image } = await buildBigImage(await stack.dir("build"));
      const file = await openTracked(sources, image);
      // The upper half of the image is file data only (big.bin is 40 of ~52 MiB).
      const failFrom = Math.floor(file.size / 2);
      const failing: Source = {
        size: file.size,
        read: (offset, length, signal) =>
          offset + length > failFrom
            ? Promise.reject(new Error("registry went away"))
            : file.read(offset, length, signal),
      };
      const blob = await stack.blob(failing, "fuse");
      await stack.erofs(blob.filePath, "mnt");
      const names = [];
      for await (const entry of Deno.readDir(`${stack.root}/mnt`)) names.push(entry.name);
      assert.ok(names.includes("big.bin"));
      await assert.rejects(() => Deno.readFile(`${stack.root}/mnt/big.bin`), /Input\/output error/);
      // cleanup() (unmount EROFS, then FUSE) must succeed without a lazy fallback.
    });
  },
});

Deno.test({
  name: "fuse+erofs: a non-EROFS file is a FormatError before anything is mounted",
  ignore,
  async fn() {
    await withFuseStack(async (stack, sources) => {
      const blob = await stack.blob(await openTracked(sources, `${FIXTURES}/layer1.tar`), "fuse");
      const target = await stack.dir("mnt");
      await assert.rejects(
        () => mountErofsFile(blob.filePath, target),
        (error) => error instanceof FormatError && /not an EROFS image/.test(error.message),
      );
      await assert.rejects(
        () => mountErofsFile(`${FIXTURES}/layer.tar.gz`, target),
        (error) => error instanceof FormatError && /not an EROFS image/.test(error.message),
      );
      assert.deepEqual(stack.mounts(), [`${stack.root}/fuse`], "only the FUSE blob is mounted");
      await assert.rejects(() => mountErofsFile(`${stack.root}/missing`, target), MountError);
    });
  },
});

Deno.test({
  name: "fuse+erofs: closing the blob under a mounted EROFS is refused and keeps serving",
  ignore,
  async fn() {
    await withFuseStack(async (stack, sources) => {
      const blob = await stack.blob(await openTracked(sources, `${FIXTURES}/basic.erofs`), "fuse");
      await stack.erofs(blob.filePath, "mnt");
      await assert.rejects(
        () => blob.close(),
        (error) => error instanceof MountError && /busy/.test(error.message),
      );
      assert.equal(await manifest(`${stack.root}/mnt`), await expected("basic.txt"));
    });
  },
});

Deno.test({
  name: "fuse+erofs: the loop-device fallback mounts the same tree and frees the device",
  ignore: ignore || requires(path("/dev/loop-control")),
  async fn() {
    await withFuseStack(async (stack, sources) => {
      const blob = await stack.blob(await openTracked(sources, `${FIXTURES}/basic.erofs`), "fuse");
      const { loopDevices } = await stack.erofs(blob.filePath, "mnt", { via: "loop" });
      assert.equal(loopDevices.length, 1);
      const name = loopDevices[0].replace("/dev/", "");
      const backing = await Deno.readTextFile(`/sys/block/${name}/loop/backing_file`);
      assert.equal(backing.trim(), blob.filePath);
      assert.equal((await Deno.readTextFile(`/sys/block/${name}/ro`)).trim(), "1");
      assert.equal(await manifest(`${stack.root}/mnt`), await expected("basic.txt"));
      await stack.cleanup(); // unmount: autoclear detaches the device
      let attached = true;
      for (let i = 0; i < 40 && attached; i++) {
        try {
          await Deno.stat(`/sys/block/${name}/loop/backing_file`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        } catch {
          attached = false;
        }
      }
      assert.ok(!attached, `${loopDevices[0]} still attached after unmount`);
    });
  },
});

Deno.test({
  name: "fuse+erofs: tar-index meta image with the tar as a FUSE extra device",
  ignore,
  async fn() {
    await withFuseStack(async (stack, sources) => {
      const tar = await stack.blob(await openTracked(sources, `${FIXTURES}/layer.tar`), "fuse-tar");
      const meta = `${FIXTURES}/layer.meta.erofs`;
      const target = await stack.dir("refused");
      await assert.rejects(
        () => mountErofsFile(meta, target),
        (error) => error instanceof MountError && /needs 1 extra device/.test(error.message),
      );
      const { superblock } = await stack.erofs(meta, "mnt", { extraDevices: [tar.filePath] });
      assert.equal(superblock.extraDevices, 1);
      assert.equal(superblock.blockSizeBytes, 512);
      assert.equal(await manifest(`${stack.root}/mnt`), await expected("layer.meta.txt"));
    });
  },
});

Deno.test({
  name: "fuse+erofs: three FUSE layers under a read-only overlay equal the merged tree",
  ignore,
  async fn() {
    await withFuseStack(async (stack, sources) => {
      const merged = await overlayOfFixtureLayers(stack, sources);
      assert.equal(await manifest(merged), await expected("merged.txt"));
    });
  },
});

Deno.test({
  name: "fuse+erofs: a signal to a reader whose read waits on a slow source (SIGALRM, a " +
    "handler) does not fail its read (was EIO/EINTR: the READ was given up)",
  ignore,
  async fn() {
    await withFuseStack(async (stack) => {
      const bytes = Deno.readFileSync(`${FIXTURES}/basic.erofs`);
      let slowMs = 0;
      const source: Source = {
        size: bytes.length,
        read: (offset, length, signal) =>
          new Promise((resolve, reject) => {
            const timer = setTimeout(() => resolve(bytes.slice(offset, offset + length)), slowMs);
            signal?.addEventListener("abort", () => {
              clearTimeout(timer);
              reject(new Error("aborted"));
            }, { once: true });
          }),
      };
      // Direct I/O (no page cache of the FUSE file): EROFS's reads wait in the reader.
      const blob = await stack.blob(source, "fuse", { pageCache: false });
      await stack.erofs(blob.filePath, "mnt");
      slowMs = 1500;
      const reader = `
import hashlib, os, signal, sys
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.3)
try:
    print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())
except OSError as e:
    print("ERR", e.errno, e.strerror)
`;
      const out = await new Deno.Command("python3", {
        args: ["-c", reader, `${stack.root}/mnt/big-1m3.bin`],
      }).output();
      slowMs = 0;
      assert.equal(
        new TextDecoder().decode(out.stdout).trim(),
        "c5c1ae9ba8a184cdeb822b182ee2054a404340ade9d67f91858b60197e9131f3",
        new TextDecoder().decode(out.stderr),
      );
    });
  },
});
