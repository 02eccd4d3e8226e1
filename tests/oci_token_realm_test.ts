/**
 * Credentials must not travel in clear text because an HTTPS registry's challenge names a plain
 * HTTP token realm: a registry (or whoever rewrote its 401) could harvest the password that way.
 * The registry runs with TLS under a host name from /etc/hosts that is not loopback-looking, so
 * erofs-oci speaks HTTPS to it; its token server is the plain-HTTP test token server.
 */
import assert from "node:assert/strict";
import { command, type Requirement, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { assertCliError, describe, runCli } from "./_support/cli.ts";
import { isLoopbackRegistry } from "../lib/oci/reference.ts";

/** A name /etc/hosts maps to 127.0.0.1 that erofs-oci does not treat as loopback by its looks. */
function loopbackAlias(): string | undefined {
  let hosts = "";
  try {
    hosts = Deno.readTextFileSync("/etc/hosts");
  } catch {
    return undefined;
  }
  for (const line of hosts.split("\n")) {
    const [address, ...names] = line.replace(/#.*/, "").trim().split(/\s+/);
    if (address !== "127.0.0.1") continue;
    const name = names.find((n) => /^[a-z][a-z0-9-]*$/i.test(n) && !isLoopbackRegistry(n));
    if (name) return name;
  }
  return undefined;
}

const alias = loopbackAlias();
const aliasRequirement: Requirement = {
  missing: () => alias ? undefined : "no non-localhost name for 127.0.0.1 in /etc/hosts",
};
const ignore = requires(command("docker-registry"), command("openssl"), aliasRequirement);

Deno.test({
  name: "oci token realm: an HTTPS registry's plain-HTTP realm gets no credentials",
  ignore,
  fn: async () => {
    await using registry = await startRegistry({ auth: "token", tls: { dnsName: alias! } });
    const port = registry.host.split(":")[1];
    const image = `${alias}:${port}/realm/app:v1`;
    const result = await runCli(
      ["inspect", image, "--username", registry.username, "--password-stdin"],
      { stdin: registry.password, env: { DENO_CERT: registry.certPath! } },
    );
    assertCliError(result, 1, /plain HTTP/);
    assert.deepEqual(
      registry.tokenServer!.requests.map((r) => r.account ?? "(anonymous)"),
      [],
      `the token server must not be asked at all:\n${describe(result)}`,
    );
    // The registry was reached over HTTPS: the refusal came from its real challenge.
    assert.ok(
      (await registry.accessLogOnce((l) => l.includes("/v2/realm/app/manifests/v1"))).length > 0,
      describe(result),
    );
  },
});
