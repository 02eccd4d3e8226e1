/**
 * A registry on a port web clients refuse (the Fetch standard's "bad ports": 6000, 6666, 10080,
 * …): Deno's HTTP client refuses it before connecting, so the error says so and what to do. It
 * said only "Requests to port 6666 are blocked", with no hint, while curl reached the registry.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";

Deno.test("a registry on a port web clients refuse: one line saying so, with what to do", async () => {
  for (const port of [6666, 10080]) {
    const result = await runCli(["inspect", `127.0.0.1:${port}/app:v1`, "--plain-http"]);
    assertCliError(result, 1, new RegExp(`cannot reach registry 127\\.0\\.0\\.1:${port}`));
    assert.match(
      result.stderr,
      new RegExp(
        `hint: port ${port} is one web clients refuse .*serve the registry on another port`,
      ),
    );
  }
});
