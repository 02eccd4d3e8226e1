/**
 * A reference written as a URL (`http://host:port/app:v1`) or with skopeo's `docker://` is
 * refused with what to drop; it said "registry port '' is not a number in 1..65535".
 */
import assert from "node:assert/strict";
import { parseReference } from "../lib/oci/reference.ts";
import { assertCliError, runCli } from "./_support/cli.ts";

Deno.test("parseReference: a scheme is named, with what to do", () => {
  assert.throws(
    () => parseReference("http://127.0.0.1:5000/app:v1"),
    /invalid image reference .*: a reference has no scheme: drop 'http:\/\/' \(and pass --plain-http\)/,
  );
  assert.throws(
    () => parseReference("docker://docker.io/library/alpine:3.20"),
    /a reference has no scheme: drop 'docker:\/\/'$/,
  );
  assert.equal(parseReference("127.0.0.1:5000/app:v1").repository, "app");
});

Deno.test("inspect http://HOST/app:v1: usage error naming the scheme", async () => {
  assertCliError(
    await runCli(["inspect", "http://127.0.0.1:1/app:v1"]),
    2,
    /no scheme: drop 'http:\/\/'/,
  );
});
