/**
 * `erofs-oci convert` against a registry that breaks layer downloads (fault proxy in front of a
 * real registry): a body reset mid-way is resumed with a Range request, even when the server
 * then ignores the range and resends from byte 0; a flipped byte aborts without a tag.
 */
import assert from "node:assert/strict";
import { command, REPO_ROOT, requires, root } from "./_support/requires.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { getManifest } from "./_support/oci_raw.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { copyToRegistry, withUmociRegistry } from "./_support/umoci_image.ts";

const ignore = requires(root(), command("docker-registry"), command("umoci"), command("skopeo"));
const LONG = { timeoutMs: 120_000 };

Deno.test({
  name:
    "convert: a layer body reset mid-way resumes (also when the range is ignored); a flipped byte aborts",
  ignore,
  fn: () =>
    withUmociRegistry("erofs-oci-convert-faults-", async (image, registry) => {
      await copyToRegistry(image, registry, "src/app:v1");
      const manifest = (await getManifest(registry, "src/app", "v1")).json as {
        layers: { digest: string; size: number }[];
      };
      const big = manifest.layers[0];
      assert.ok(big.size > 600_000, `layer 0 is only ${big.size} bytes`);

      {
        await using proxy = await startFaultProxy(registry.host, [
          {
            match: isBlobGetOf(big.digest),
            fault: { kind: "reset", afterBytes: 300_000 },
            times: 1,
          },
          { match: isBlobGetOf(big.digest), fault: { kind: "ignore-range" }, times: 1 },
        ]);
        const result = await runCli(
          ["convert", `${proxy.host}/src/app:v1`, `${registry.host}/dst/app:v1`],
          LONG,
        );
        assertSuccess(result);
        const gets = proxy.requests.filter((r) =>
          r.method === "GET" && r.path.endsWith(big.digest)
        );
        assert.equal(gets.length, 2, describe(result));
        assert.equal(gets[0].range, null);
        assert.match(gets[1].range ?? "", /^bytes=\d+-$/, "the second GET resumes");
      }
      {
        await using proxy = await startFaultProxy(registry.host, [
          { match: isBlobGetOf(big.digest), fault: { kind: "corrupt" } },
        ]);
        const result = await runCli(
          ["convert", "--no-reuse", `${proxy.host}/src/app:v1`, `${registry.host}/dst/app:v2`],
          LONG,
        );
        assertCliError(result, 1);
        assert.equal((await getManifest(registry, "dst/app", "v2")).status, 404);
      }
    }),
});

// A hangup (a closed terminal or ssh session) too: it used to leave the work files.
for (const [signal, code] of [["SIGINT", 130], ["SIGHUP", 129]] as const) {
  Deno.test({
    name: `convert: ${signal} while a layer downloads removes the work directory and tags nothing`,
    ignore,
    fn: () =>
      withUmociRegistry("erofs-oci-convert-faults-", async (image, registry, work) => {
        await copyToRegistry(image, registry, "src/app:v1");
        const manifest = (await getManifest(registry, "src/app", "v1")).json as {
          layers: { digest: string }[];
        };
        // Layer 1 converts and uploads; layer 2's download hangs until the signal.
        await using proxy = await startFaultProxy(registry.host, [
          { match: isBlobGetOf(manifest.layers[1].digest), fault: { kind: "delay", ms: 60_000 } },
        ]);
        const tmp = `${work}/tmp`;
        Deno.mkdirSync(tmp);
        const child = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
          args: [
            "convert",
            `${proxy.host}/src/app:v1`,
            `${registry.host}/dst/app:v1`,
            "--tmpdir",
            tmp,
          ],
          env: { DOCKER_CONFIG: "/nonexistent" },
          stdout: "null",
          stderr: "piped",
        }).spawn();
        try {
          const deadline = Date.now() + 60_000;
          while (!proxy.requests.some((r) => r.path.endsWith(manifest.layers[1].digest))) {
            assert.ok(Date.now() < deadline, "layer 2 was never requested");
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
          assert.equal([...Deno.readDirSync(tmp)].length, 1, "the work directory exists meanwhile");
          child.kill(signal);
          const [status, stderr] = await Promise.all([
            child.status,
            new Response(child.stderr).text(),
          ]);
          assert.equal(status.code, code);
          // One line says what happened (the exit alone said nothing).
          assert.match(stderr, /^erofs-oci: convert interrupted: nothing was tagged/m, stderr);
        } finally {
          try {
            child.kill("SIGKILL");
          } catch { /* exited */ }
          await child.stderr.cancel().catch(() => {});
        }
        assert.deepEqual([...Deno.readDirSync(tmp)], []);
        assert.equal((await getManifest(registry, "dst/app", "v1")).status, 404);
      }),
  });
}

Deno.test({
  name: "convert: SIGINT while a layer uploads cancels its upload session on the registry",
  ignore,
  fn: () =>
    withUmociRegistry("erofs-oci-convert-faults-", async (image, registry, work) => {
      await copyToRegistry(image, registry, "src/app:v1");
      // The destination's first closing PUT of an upload hangs at the proxy until the signal.
      await using proxy = await startFaultProxy(registry.host, [{
        match: (r) => r.method === "PUT" && r.path.includes("/blobs/uploads/"),
        fault: { kind: "delay", ms: 60_000 },
        times: 1,
      }]);
      const tmp = `${work}/tmp`;
      Deno.mkdirSync(tmp);
      const uploads = `${registry.storageDir}/docker/registry/v2/repositories/dst/app/_uploads`;
      // Sessions holding bytes or open (a cancelled one keeps only its hashstates/).
      const openSessions = () => {
        try {
          return [...Deno.readDirSync(uploads)].filter((e) =>
            [...Deno.readDirSync(`${uploads}/${e.name}`)].some((f) =>
              f.name === "data" || f.name === "startedat"
            )
          ).length;
        } catch {
          return 0;
        }
      };
      const child = new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
        args: [
          "convert",
          `${registry.host}/src/app:v1`,
          `${proxy.host}/dst/app:v1`,
          "--tmpdir",
          tmp,
        ],
        env: { DOCKER_CONFIG: "/nonexistent" },
        stdout: "null",
        stderr: "piped",
      }).spawn();
      try {
        const deadline = Date.now() + 60_000;
        while (proxy.hits(0) === 0) {
          assert.ok(Date.now() < deadline, "no upload was completed");
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        assert.equal(openSessions(), 1, "an upload session is open meanwhile");
        child.kill("SIGINT");
        const [status, stderr] = await Promise.all([
          child.status,
          new Response(child.stderr).text(),
        ]);
        assert.equal(openSessions(), 0, `no upload session left\n${stderr}`);
        assert.equal(status.code, 130, stderr);
        assert.match(stderr, /^erofs-oci: convert interrupted: nothing was tagged/m, stderr);
        assert.ok(proxy.requests.some((r) => r.method === "DELETE"), "the session was cancelled");
      } finally {
        try {
          child.kill("SIGKILL");
        } catch { /* exited */ }
        await child.stderr.cancel().catch(() => {});
      }
      assert.deepEqual([...Deno.readDirSync(tmp)], []);
      assert.equal((await getManifest(registry, "dst/app", "v1")).status, 404);
    }),
});
