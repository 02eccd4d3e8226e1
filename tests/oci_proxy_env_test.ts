/**
 * HTTP_PROXY and friends, as a machine-wide setting leaves them: a registry on loopback
 * (127.0.0.1, localhost, [::1]) is reached directly, by the CLI and by the mount server's lazy
 * reads, as Go's tools (docker, containerd, skopeo) do; other hosts still go through the proxy,
 * and when the proxy cannot be reached the error names it. Before, Deno's fetch sent loopback
 * requests to the proxy too: with a dead proxy, "cannot reach registry 127.0.0.1:P: Connection
 * refused" and the hint "nothing is listening there" while the registry listened.
 */
import assert from "node:assert/strict";
import { command, FIXTURES, path, requires, root } from "./_support/requires.ts";
import { freePort, startRegistry } from "./_support/registry.ts";
import { startFaultProxy } from "./_support/fault_proxy.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { expectedManifest, manifestOf, mountSandbox } from "./_support/mounts.ts";

const ignore = requires(command("docker-registry"));

/** A registry holding basic.erofs as `px/app:v1`, pushed by the CLI. */
async function registryWithImage() {
  const registry = await startRegistry({ auth: "none" });
  assertSuccess(
    await runCli(
      ["push", `${registry.host}/px/app:v1`, `${FIXTURES}/basic.erofs`, "--plain-http"],
      {
        timeoutMs: 60_000,
      },
    ),
  );
  return registry;
}

/** A proxy address nobody listens on: whatever is sent through it fails. */
function deadProxy(): string {
  return `http://127.0.0.1:${freePort()}`;
}

Deno.test({
  name: "proxy env: a loopback registry is reached directly whatever HTTP(S)_PROXY says",
  ignore,
  async fn() {
    await using registry = await registryWithImage();
    const port = registry.host.split(":")[1];
    // [::1]: a loopback proxy on ::1 in front of the registry (which listens on 127.0.0.1).
    await using v6 = await startFaultProxy(registry.host, [], { hostname: "::1" });
    const dead = deadProxy();
    const cases: [string, Record<string, string>][] = [
      [registry.host, { HTTP_PROXY: dead, HTTPS_PROXY: dead }],
      [`localhost:${port}`, { http_proxy: dead, NO_PROXY: "example.com" }],
      [v6.host, { ALL_PROXY: dead, no_proxy: "10.0.0.0/8" }],
    ];
    for (const [host, env] of cases) {
      const result = await runCli(["inspect", `${host}/px/app:v1`, "--plain-http"], { env });
      assertSuccess(result);
      assert.match(result.stdout, /application\/vnd\.erofs/, describe(result));
    }
    assert(
      v6.requests.some((r) => r.method === "GET" && r.path.includes("/manifests/")),
      "the [::1] inspect asked the proxy on ::1",
    );
  },
});

Deno.test({
  name: "proxy env: other hosts still go through the proxy, and a dead proxy is named",
  ignore,
  async fn() {
    await using registry = await registryWithImage();
    // The fault proxy takes absolute-form requests as a forward proxy does, and passes them on to
    // the registry: `registry.test` resolves nowhere, so only the proxy can have answered.
    await using forward = await startFaultProxy(registry.host, []);
    const through = await runCli(["inspect", "registry.test:5000/px/app:v1", "--plain-http"], {
      env: { HTTP_PROXY: `http://${forward.host}`, NO_PROXY: "" },
    });
    assertSuccess(through);
    assert(
      forward.requests.some((r) => r.method === "GET" && r.path.includes("/manifests/")),
      "the manifest GET went through the proxy",
    );

    const dead = deadProxy().replace("http://", "http://alice:s3cret@");
    const failed = await runCli(["inspect", "registry.test:5000/px/app:v1", "--plain-http"], {
      env: { HTTP_PROXY: dead },
    });
    const port = new URL(dead).port;
    assertCliError(
      failed,
      1,
      new RegExp(
        `cannot reach registry registry\\.test:5000 through proxy http://127\\.0\\.0\\.1:${port} ` +
          `\\(HTTP_PROXY\\): .*refused`,
      ),
    );
    assert.match(failed.stderr, /hint: check the proxy, or list the registry in NO_PROXY/);
    assert.doesNotMatch(failed.stderr, /s3cret|nothing is listening/, describe(failed));
  },
});

Deno.test({
  name: "proxy env: a mount of a loopback registry reads through its server, not the proxy",
  ignore: requires(root(), path("/dev/fuse"), command("docker-registry")),
  async fn() {
    await using registry = await registryWithImage();
    const sandbox = await mountSandbox();
    const dead = deadProxy();
    const env = { ...sandbox.env, HTTP_PROXY: dead, HTTPS_PROXY: dead };
    try {
      assertSuccess(
        await runCli(
          [
            "mount",
            `${registry.host}/px/app:v1`,
            sandbox.target,
            "--plain-http",
            "--backend",
            "fuse",
          ],
          { env, timeoutMs: 60_000 },
        ),
      );
      try {
        // Read by the mount server, lazily: it inherited the proxy variables.
        assert.equal(await manifestOf(sandbox.target), expectedManifest("basic.txt"));
      } finally {
        assertSuccess(await runCli(["umount", sandbox.target], { env, timeoutMs: 30_000 }));
      }
    } finally {
      await sandbox.cleanup();
    }
  },
});
