/**
 * A registry that refuses a write (403) and then stalls the body of its refusal: the reason is
 * read for at most about 2 s, then the refusal is reported without it. The bound did nothing
 * (the body, locked to its reader, could not be cancelled from outside): the command waited for
 * the client's stall watch, 30 s, for every refused write.
 */
import assert from "node:assert/strict";
import { assertCliError, runCli } from "./_support/cli.ts";
import { FIXTURES } from "./_support/requires.ts";
import { startRawHttpServer } from "./_support/raw_http_server.ts";

/** Answers HEAD with 404 and anything else with a 403 whose body never comes. */
function startStallingRefuser() {
  const encode = (text: string) => new TextEncoder().encode(text);
  return startRawHttpServer((head) => [
    encode(
      head.startsWith("HEAD ")
        ? "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        : 'HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"errors":',
    ),
  ]);
}

Deno.test("push refused with a stalled body: the refusal is said within seconds, not after the stall watch", async () => {
  await using server = startStallingRefuser();
  const started = Date.now();
  const result = await runCli(["push", `${server.host}/x/app:v1`, `${FIXTURES}/basic.erofs`], {
    timeoutMs: 60_000,
  });
  const tookMs = Date.now() - started;
  assertCliError(result, 1, /answered 403 starting the upload/);
  // The reason's read is bounded at 2 s; the stall watch that ended it before waits 30 s.
  assert.ok(tookMs < 15_000, `took ${tookMs} ms`);
});
