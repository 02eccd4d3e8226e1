/**
 * Ctrl-C (SIGINT) while `index IMAGE -o DIR` writes a layer's index: what this run added goes
 * (its temporary files, and DIR itself when the run made it; what DIR held before stays),
 * exit 130 with one line. Before, the signal ended index at once and left NAME.zinfo.XXXX.tmp
 * (and the directory it had made) behind. SIGTERM and SIGHUP alike, and every directory of
 * `-o a/b/c` the run made (mkdir -p), not only the last one.
 */
import assert from "node:assert/strict";
import {
  assertCliError,
  assertSuccess,
  type CliResult,
  runCli,
  startCli,
  stopCli,
} from "./_support/cli.ts";
import { command, FIXTURES, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGet, type ProxyRecord, startFaultProxy } from "./_support/fault_proxy.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { waitFor } from "./_support/wait.ts";
import { HoldPoint } from "./_support/hold.ts";

function names(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

async function interruptedIndex(
  image: string,
  dir: string,
  proxy: { requests: readonly ProxyRecord[] },
  layerDigest: string,
  meanwhile?: () => Promise<void>,
): Promise<CliResult> {
  const seen = proxy.requests.length;
  const indexing = startCli(["index", image, "-o", dir, "--plain-http"]);
  try {
    // Interrupted while the layer's bytes are held by the proxy.
    await waitFor(
      "the layer's GET",
      () =>
        proxy.requests.slice(seen).some((r) =>
          r.method === "GET" && r.path.endsWith(`/blobs/${layerDigest}`)
        ),
    );
    await meanwhile?.();
    indexing.child.kill("SIGINT");
    return await indexing.result;
  } finally {
    await stopCli(indexing);
  }
}

Deno.test({
  name: "SIGINT during index -o DIR: this run's files (and a DIR it made) removed, exit 130",
  ignore: requires(command("docker-registry"), root()),
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const repository = "index-interrupt/app";
    const { layers: [layer] } = await pushImage(registry, repository, "v1", [{
      bytes: await Deno.readFile(`${FIXTURES}/layer.tar.gz`),
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    }]);
    // Blob GETs wait 5 s: index sits with its temporary zinfo open, waiting for the layer.
    await using proxy = await startFaultProxy(registry.host, [
      { match: isBlobGet, fault: { kind: "delay", ms: 5_000 } },
    ]);
    const image = `${proxy.host}/${repository}:v1`;
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-interrupt-" });
    try {
      const made = `${work}/new`;
      assertCliError(
        await interruptedIndex(image, made, proxy, layer.digest),
        130,
        /index interrupted/,
      );
      assert.deepEqual(names(work), [], "the directory index made is gone");

      const existing = `${work}/existing`;
      await Deno.mkdir(existing);
      await Deno.writeTextFile(`${existing}/mine.txt`, "kept");
      assertCliError(
        await interruptedIndex(image, existing, proxy, layer.digest),
        130,
        /index interrupted/,
      );
      assert.deepEqual(names(existing), ["mine.txt"], "only what was there before stays");

      // A shared directory: a file another user adds while index runs is theirs, and stays.
      const shared = `${work}/shared`;
      await Deno.mkdir(shared);
      await Deno.chmod(shared, 0o1777);
      const theirs = async () => {
        await Deno.writeTextFile(`${shared}/theirs.txt`, "not index's");
        await Deno.chown(`${shared}/theirs.txt`, 65534, 65534);
        // Root's too: every new file of index's own user went, another run's index with it.
        await Deno.writeTextFile(`${shared}/other-run.index.json`, "another process's");
      };
      assertCliError(
        await interruptedIndex(image, shared, proxy, layer.digest, theirs),
        130,
        /index interrupted/,
      );
      assert.deepEqual(
        names(shared),
        ["other-run.index.json", "theirs.txt"],
        "files others added stay",
      );
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});

Deno.test("SIGTERM, SIGINT, SIGHUP during index -o a/b/c: every directory the run made is gone, one there before stays", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-interrupt-" });
  try {
    await Deno.mkdir(`${work}/old`);
    await Deno.writeTextFile(`${work}/old/mine.txt`, "kept");
    const signals = [["SIGTERM", 130], ["SIGINT", 130], ["SIGHUP", 129]] as const;
    for (const [signal, code] of signals) {
      for (const out of [`${work}/new/a/b`, `${work}/old/a/b`]) {
        // Held once -o DIR is made (with the directories above it) and the interrupt is caught.
        using hold = new HoldPoint("index-output-dir", `${work}.hold`);
        const indexing = startCli(["index", `${FIXTURES}/layer.tar.gz`, "-o", out], hold.env);
        try {
          await hold.reached("index at its hold");
          assert.deepEqual(names(`${out}/..`), ["b"], "index made -o DIR");
          indexing.child.kill(signal);
          assertCliError(await indexing.result, code, /index interrupted/);
        } finally {
          await stopCli(indexing);
        }
        assert.deepEqual(names(work), ["old"], `${signal}: the directories index made are gone`);
        assert.deepEqual(names(`${work}/old`), ["mine.txt"], "what was there before stays");
      }
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("an interrupted re-index into -o DIR leaves the index there whole (the old one)", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-index-interrupt-" });
  try {
    const out = `${work}/out`;
    assertSuccess(await runCli(["index", `${FIXTURES}/layer.tar.gz`, "-o", out]));
    const before = await digestsIn(out);
    assert.deepEqual(Object.keys(before), [
      "layer.index.json",
      "layer.meta.erofs",
      "layer.pieces",
      "layer.zinfo",
    ]);
    // Another layer under the same name: its files are all written when the signal comes.
    await Deno.mkdir(`${work}/in`);
    await Deno.copyFile(`${FIXTURES}/big.tar.gz`, `${work}/in/layer.tar.gz`);
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      using hold = new HoldPoint("index-written", `${work}.hold`);
      const indexing = startCli(["index", `${work}/in/layer.tar.gz`, "-o", out], hold.env);
      try {
        await hold.reached("index with every file written");
        assert.deepEqual(await digestsIn(out), before, "nothing in DIR replaced before the end");
        indexing.child.kill(signal);
        assertCliError(await indexing.result, 130, /index interrupted/);
      } finally {
        await stopCli(indexing);
      }
      assert.deepEqual(await digestsIn(out), before, `${signal}: the old index stays whole`);
      assert.deepEqual(names(out), Object.keys(before), "its work directory is gone");
    }
    // Not interrupted: the new files replace the old ones, all four.
    assertSuccess(await runCli(["index", `${work}/in/layer.tar.gz`, "-o", out]));
    const after = await digestsIn(out);
    assert.deepEqual(Object.keys(after), Object.keys(before));
    for (const name of Object.keys(after)) assert.notEqual(after[name], before[name], name);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

/** sha256 of every file in `dir`, by name (sorted; the work directory of a run left out). */
async function digestsIn(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of names(dir)) {
    if (Deno.statSync(`${dir}/${name}`).isDirectory) continue;
    const bytes = await Deno.readFile(`${dir}/${name}`);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    out[name] = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  return out;
}
