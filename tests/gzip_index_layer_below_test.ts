/**
 * `index IMAGE --layer N` alone: a directory layer N only implies (umoci leaves unchanged
 * parents out) takes the mode and mtime the layers below give it, as `index IMAGE` does for
 * every layer, so the stacked mount shows the same directory either way.
 */
import assert from "node:assert/strict";
import { command, path, PEER_BIN, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";

const GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";

async function sh(script: string): Promise<void> {
  const out = await new Deno.Command("sh", { args: ["-c", script], stderr: "piped" }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
}

/** `dump.erofs --path=PATH` of the meta image: access mode and timestamp lines. */
async function dumpDir(meta: string, path: string): Promise<string> {
  const out = await new Deno.Command(`${PEER_BIN}/dump.erofs`, {
    args: [`--path=${path}`, meta],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout);
}

Deno.test({
  name: "index IMAGE --layer 1: an implied directory takes the mode and mtime of layer 0",
  ignore: requires(command("docker-registry"), command("gzip"), path(`${PEER_BIN}/dump.erofs`)),
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-below-" });
    try {
      await using registry = await startRegistry({ auth: "none" });
      // Layer 0 lists a/ as 0700 at 2020-09-13; layer 1 holds only a/y, implying a/.
      await sh(`cd '${work}' && mkdir -p l0/a l1/a && echo x > l0/a/x && echo y > l1/a/y &&
        chmod 0700 l0/a && touch -d @1600000000 l0/a &&
        tar -C l0 --owner=0 --group=0 --no-recursion -cf - a a/x | gzip -n > l0.tar.gz &&
        tar -C l1 --owner=0 --group=0 -cf - a/y | gzip -n > l1.tar.gz`);
      await pushImage(registry, "gz/below", "v1", [
        { bytes: Deno.readFileSync(`${work}/l0.tar.gz`), mediaType: GZIP_LAYER },
        { bytes: Deno.readFileSync(`${work}/l1.tar.gz`), mediaType: GZIP_LAYER },
      ]);
      const ref = `${registry.host}/gz/below:v1`;
      const args = ["--timestamp", "1700000000"];
      assertSuccess(await runCli(["index", ref, "--layer", "1", "-o", `${work}/one`, ...args]));
      assertSuccess(await runCli(["index", ref, "-o", `${work}/all`, ...args]));
      const metaOf = (dir: string, index: number) => {
        const names = [...Deno.readDirSync(dir)].map((e) => e.name);
        const records = names.filter((n) => n.endsWith(".index.json")).map((n) =>
          JSON.parse(Deno.readTextFileSync(`${dir}/${n}`))
        );
        const l1 = Deno.readFileSync(`${work}/l${index}.tar.gz`).length;
        return `${dir}/${records.find((r) => r.layer.size === l1).meta.file}`;
      };
      const alone = await dumpDir(metaOf(`${work}/one`, 1), "/a");
      assert.match(alone, /Access: 0700\//, alone);
      assert.match(alone, /Timestamp: 2020-09-13/, alone);
      const stacked = await dumpDir(metaOf(`${work}/all`, 1), "/a");
      assert.equal(
        alone.split("\n").filter((l) => /Access|Timestamp/.test(l)).join("\n"),
        stacked.split("\n").filter((l) => /Access|Timestamp/.test(l)).join("\n"),
      );
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
