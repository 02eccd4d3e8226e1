/**
 * A registry address nobody listens on (wrong port, registry down): the error says what failed
 * (the connection was refused) and what to check. It said only "fetch failed" (the fetch
 * error's own message; the reason is in its cause).
 */
import assert from "node:assert/strict";
import { assertCliError, describe, runCli } from "./_support/cli.ts";

Deno.test("inspect on a port nobody listens on: 'Connection refused' and a hint to check it", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close(); // free now: connections to it are refused
  const result = await runCli(["inspect", `127.0.0.1:${port}/app:v1`, "--plain-http"]);
  assertCliError(result, 1, new RegExp(`cannot reach registry 127\\.0\\.0\\.1:${port}: .*refused`));
  assert.match(result.stderr, /hint: check the registry's address and port/, describe(result));
});
