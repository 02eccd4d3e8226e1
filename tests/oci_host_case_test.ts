/**
 * Host names are case-insensitive: a registry written `LOCALHOST:PORT` is loopback (plain HTTP
 * by default), and a redirect to the same origin keeps its Authorization — fetch spells the
 * target `localhost:PORT`, which a comparison of strings took for another host (the blob GET
 * then went without credentials and got a 401).
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { assertSuccess, describe, loginOptions, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { withTempDir } from "./_support/temp_dir.ts";

for (const extra of [[], ["--plain-http"]]) {
  Deno.test({
    name: `host case: LOCALHOST:PORT ${
      extra.length ? "(--plain-http)" : "is loopback and"
    } keeps credentials over a same-origin 307`,
    ignore: requires(command("docker-registry"), command("htpasswd")),
    fn: () =>
      withTempDir("erofs-oci-host-case-", async (dir) => {
        await using registry = await startRegistry({ auth: "basic" });
        const fixture = await loadFixture("basic.erofs");
        const pushed = await pushImage(registry, "case/app", "v1", [
          { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
        ]);
        const layer = pushed.layers[0].digest;
        await using proxy = await startFaultProxy(registry.host, [{
          match: isBlobGetOf(layer),
          fault: { kind: "redirect-here" },
          times: 1,
        }]);
        const upper = proxy.host.replace("127.0.0.1", "LOCALHOST");
        const login = loginOptions(registry, "stdin");
        const out = `${dir}/layer.erofs`;
        // Without --plain-http LOCALHOST must be taken for loopback, as localhost is.
        const result = await runCli(
          ["pull", `${upper}/case/app:v1`, "--layer", "0", "-o", out, ...login.args, ...extra],
          { stdin: login.stdin },
        );
        assertSuccess(result);
        assert.deepEqual(await Deno.readFile(out), fixture.bytes);
        const gets = proxy.requests.filter((r) => r.method === "GET" && r.path.includes(layer));
        assert.equal(gets.length, 2, describe(result));
        assert.ok(gets[0].hasAuthorization && gets[0].status === 307, JSON.stringify(gets));
        assert.ok(gets[1].path.endsWith("?r=1") && gets[1].hasAuthorization, JSON.stringify(gets));
        assert.equal(gets[1].status, 200);
      }),
  });
}
