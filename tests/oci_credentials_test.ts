/**
 * Credentials from Docker's config.json (`auths`, `credHelpers`, `credsStore` with a real helper
 * program on PATH) against a real registry with Basic and token auth, and the precedence of
 * command-line credentials over the file.
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import { assertCliError, assertSuccess, describe, runCli } from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";

const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));
const HELPER_NAME = "erofsocitest";

async function registryWithImage(auth: "basic" | "token"): Promise<TestRegistry> {
  const registry = await startRegistry({ auth });
  try {
    const fixture = await loadFixture("layer2.erofs");
    await pushImage(registry, "creds/app", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    return registry;
  } catch (error) {
    await registry.stop();
    throw error;
  }
}

/** A DOCKER_CONFIG directory with `config`, and a bin dir holding a credential helper. */
async function dockerConfig(config: unknown, helperSecret?: { username: string; secret: string }) {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-docker-config-" });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  const bin = `${dir}/bin`;
  await Deno.mkdir(bin);
  if (helperSecret) {
    // Records the server name it was asked about, answers like docker-credential-* helpers.
    await Deno.writeTextFile(
      `${bin}/docker-credential-${HELPER_NAME}`,
      `#!/bin/sh
[ "$1" = get ] || exit 1
read -r server
printf '%s\\n' "$server" >> "${dir}/helper-asked"
printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}\\n' "$server" '${helperSecret.username}' '${helperSecret.secret}'
`,
      { mode: 0o755 },
    );
  }
  return {
    env: { DOCKER_CONFIG: dir, PATH: `${bin}:${Deno.env.get("PATH") ?? ""}` },
    helperAsked: async () => {
      try {
        return (await Deno.readTextFile(`${dir}/helper-asked`)).trim().split("\n");
      } catch {
        return [];
      }
    },
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

const base64 = (text: string) => btoa(text);

for (const auth of ["basic", "token"] as const) {
  Deno.test({
    name: `oci credentials: config.json auths, credHelpers and credsStore work (${auth})`,
    ignore,
    fn: async () => {
      await using registry = await registryWithImage(auth);
      const image = `${registry.host}/creds/app:v1`;
      const secret = { username: registry.username, secret: registry.password };

      {
        await using config = await dockerConfig({
          auths: { [registry.host]: { auth: base64(`${registry.username}:${registry.password}`) } },
        });
        assertSuccess(await runCli(["inspect", image, "--plain-http"], { env: config.env }));
      }
      {
        await using config = await dockerConfig({
          auths: { [`http://${registry.host}/v2/`]: { auth: base64(`${registry.username}:x`) } },
          credHelpers: { [registry.host]: HELPER_NAME },
        }, secret);
        const result = await runCli(["inspect", image, "--plain-http"], { env: config.env });
        assertSuccess(result);
        assert.deepEqual(await config.helperAsked(), [registry.host], describe(result));
      }
      {
        await using config = await dockerConfig({ credsStore: HELPER_NAME }, secret);
        const result = await runCli(["inspect", image, "--plain-http"], { env: config.env });
        assertSuccess(result);
        assert.ok((await config.helperAsked()).includes(registry.host), describe(result));
      }
    },
  });
}

Deno.test({
  name: "oci credentials: command-line credentials win over config.json; bad ones fail once",
  ignore,
  fn: async () => {
    await using registry = await registryWithImage("basic");
    const image = `${registry.host}/creds/app:v1`;
    await using config = await dockerConfig({
      auths: { [registry.host]: { auth: base64(`${registry.username}:stale-password`) } },
    });
    assertCliError(await runCli(["inspect", image, "--plain-http"], { env: config.env }), 1);
    const explicit = await runCli(
      ["inspect", image, "--plain-http", "--username", registry.username, "--password-stdin"],
      { env: config.env, stdin: registry.password },
    );
    assertSuccess(explicit);
  },
});
