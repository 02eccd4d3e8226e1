/**
 * What a lazy tar.gz mount fetches (FUSE, real docker-registry behind a counting proxy, no disk
 * cache): one file in the middle of a 23 MB layer costs about the compressed bytes from its
 * checkpoint, not the whole layer (the blob cache's 2 MiB chunks with readahead growing to
 * 8 MiB fetched 20-60 % of it for one file).
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, describe, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { mountSandbox } from "./_support/mounts.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";

const LONG = { timeoutMs: 120_000 };
const FILES = 80;
const FILE_BYTES = 512 << 10;

/** 80 files of random hex text (~2:1 under gzip) as one tar.gz, with the files' bytes. */
async function layer(work: string): Promise<{ gz: Uint8Array<ArrayBuffer>; files: string[] }> {
  const tree = `${work}/tree`;
  Deno.mkdirSync(tree);
  const files: string[] = [];
  for (let i = 0; i < FILES; i++) {
    const raw = new Uint8Array(FILE_BYTES / 2);
    for (let at = 0; at < raw.length; at += 65536) {
      crypto.getRandomValues(raw.subarray(at, at + 65536));
    }
    const hex = Array.from(raw, (b) => b.toString(16).padStart(2, "0")).join("");
    const name = `f${String(i).padStart(2, "0")}.txt`;
    Deno.writeTextFileSync(`${tree}/${name}`, hex);
    files.push(name);
  }
  const out = await new Deno.Command("sh", {
    args: ["-c", `tar -C '${tree}' --sort=name -cf - . | gzip -6 > '${work}/layer.tar.gz'`],
  }).output();
  assert.ok(out.success);
  return { gz: Deno.readFileSync(`${work}/layer.tar.gz`), files };
}

Deno.test({
  name: "mount tar.gz: one file in the middle fetches < 20 % of the layer (was 35 %)",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry"), command("gzip")),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-gzip-fetch-" });
    try {
      await using registry = await startRegistry({ auth: "none" });
      const { gz, files } = await layer(work);
      const pushed = await pushImage(registry, "gz/fetch", "v1", [
        { bytes: gz, mediaType: "application/vnd.oci.image.layer.v1.tar+gzip" },
      ]);
      assertSuccess(
        await runCli(
          ["index", `${registry.host}/gz/fetch:v1`, "--push", "--span", "1048576"],
          LONG,
        ),
      );
      await using proxy = await startFaultProxy(registry.host, []);
      const sandbox = await mountSandbox();
      const env = { ...sandbox.env, EROFS_OCI_STATE_DIR: `${work}/state` };
      try {
        const mounted = await runCli(
          [
            "mount",
            "--backend",
            "fuse",
            "--no-disk-cache",
            `${proxy.host}/gz/fetch:v1`,
            sandbox.target,
          ],
          { env, ...LONG },
        );
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
        const middle = files[FILES / 2];
        const mark = proxy.requests.length;
        // Async: the proxy answering the server runs in this process.
        const text = await Deno.readTextFile(`${sandbox.target}/${middle}`);
        assert.equal(text, Deno.readTextFileSync(`${work}/tree/${middle}`));
        const isLayer = isBlobGetOf(pushed.layers[0].digest);
        let fetched = 0;
        for (const r of proxy.requests.slice(mark)) {
          if (!isLayer({ method: r.method, path: r.path, headers: new Headers() })) continue;
          const m = /^bytes=(\d+)-(\d+)/.exec(r.range ?? "");
          fetched += m ? Number(m[2]) - Number(m[1]) + 1 : gz.length;
        }
        const share = fetched / gz.length;
        console.log(`one file: ${fetched} of ${gz.length} bytes (${(100 * share).toFixed(1)} %)`);
        assert.ok(share < 0.2, `fetched ${(100 * share).toFixed(1)} % of the layer`);
        assertSuccess(await runCli(["umount", sandbox.target], { env }));
      } finally {
        await sandbox.cleanup();
      }
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
