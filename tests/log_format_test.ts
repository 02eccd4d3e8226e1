/**
 * `--log-format json`: diagnostics on stderr become one JSON object per line (warnings and the
 * final error with its hint), stdout is untouched; a bad value is a usage error.
 */
import assert from "node:assert/strict";
import { runCli } from "./_support/cli.ts";
import { freePort } from "./_support/registry.ts";

Deno.test("--log-format json: warnings and errors are JSON lines on stderr", async () => {
  const unreachable = `127.0.0.1:${freePort()}/app:v1`;
  const result = await runCli([
    "--log-format",
    "json",
    "inspect",
    unreachable,
    "--username",
    "u",
    "--password",
    "p",
  ]);
  assert.equal(result.code, 1, result.stderr);
  assert.equal(result.stdout, "");
  const lines = result.stderr.trim().split("\n").map((line) => JSON.parse(line));
  assert.equal(lines.length, 2, result.stderr);
  assert.equal(lines[0].level, "warning");
  assert.match(lines[0].msg, /--password on the command line/);
  assert.equal(lines[1].level, "error");
  assert.match(lines[1].msg, /cannot reach registry/);
  assert.equal(lines[1].exitCode, 1);
  for (const line of lines) assert(!Number.isNaN(Date.parse(line.time)), JSON.stringify(line));

  const text = await runCli(["inspect", unreachable]);
  assert.match(text.stderr, /^erofs-oci: cannot reach registry/);

  const usage = await runCli(["--log-format=yaml", "list"]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /--log-format must be text or json/);
});
