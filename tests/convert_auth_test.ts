/**
 * `erofs-oci convert` credentials: `--username/--password-stdin` authenticate to DST (a real
 * registry with htpasswd auth) and are never sent to SRC, another registry (requests to SRC
 * recorded by a pass-through proxy).
 */
import assert from "node:assert/strict";
import { command, path, requires, root } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertCliError, assertSuccess, describe, loginOptions, runCli } from "./_support/cli.ts";
import { getManifest } from "./_support/oci_raw.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { copyToRegistry, makeUmociImage } from "./_support/umoci_image.ts";

const ignore = requires(
  root(),
  command("docker-registry"),
  command("htpasswd"),
  command("umoci"),
  command("skopeo"),
);

Deno.test({
  name: "convert: credentials go to DST only",
  ignore,
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-convert-auth-" });
    await using source = await startRegistry({ auth: "none" });
    await using target = await startRegistry({ auth: "basic" });
    try {
      const image = await makeUmociImage(work);
      await copyToRegistry(image, source, "src/app:v1");
      await using proxy = await startFaultProxy(source.host, []);
      const dst = `${target.host}/dst/app:v1`;

      const anonymous = await runCli(["convert", `${proxy.host}/src/app:v1`, dst], {
        timeoutMs: 120_000,
      });
      assertCliError(anonymous, 1, /401|unauthori[sz]ed|credentials/i);

      const login = loginOptions(target, "stdin");
      const result = await runCli(["convert", `${proxy.host}/src/app:v1`, dst, ...login.args], {
        stdin: login.stdin,
        timeoutMs: 120_000,
      });
      assertSuccess(result);
      assert.equal((await getManifest(target, "dst/app", "v1")).status, 200, describe(result));
      assert.ok(proxy.requests.length > 0);
      assert.ok(
        proxy.requests.every((r) => !r.hasAuthorization),
        "Authorization was sent to the source registry",
      );
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});

Deno.test({
  name: "convert and trace: a 401 from a registry they read only through Docker's config says so",
  ignore: requires(root(), command("docker-registry"), command("htpasswd"), path("/dev/fuse")),
  fn: async () => {
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-auth-hint-" });
    await using registry = await startRegistry({ auth: "basic" });
    try {
      const hint = new RegExp(
        `hint: log in with \`docker login ${registry.host}\` \\(this command reads the ` +
          "credentials of this registry from Docker's config only\\)",
      );
      const required = /requires authentication \(401\)/;
      const source = `${registry.host}/src/app:v1`;
      const convert = await runCli(["convert", source, `oci:${work}/out:v1`]);
      assertCliError(convert, 1, required);
      assert.match(convert.stderr, hint);
      assert.doesNotMatch(convert.stderr, /--username/);
      const trace = await runCli(["trace", source, "-o", `${work}/t.json`, "--", "true"], {
        env: { EROFS_OCI_RUNTIME_DIR: `${work}/run`, EROFS_OCI_STATE_DIR: `${work}/state` },
      });
      assertCliError(trace, 1, required);
      assert.match(trace.stderr, hint);
      // A command that takes credentials still names them.
      const inspect = await runCli(["inspect", source]);
      assertCliError(inspect, 1, required);
      assert.match(inspect.stderr, /hint: pass --username and --password-stdin, or log in/);
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
