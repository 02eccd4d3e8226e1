/**
 * Host pacing after a 429, through RegistryClient: the probe that may test a long pause, and
 * what the requests waiting behind it do when it fails.
 */
import assert from "node:assert/strict";
import { OciError } from "../errors.ts";
import { RegistryClient } from "./client.ts";
import { noteRateLimited } from "./host_pacing.ts";

/** A loopback port nothing listens on: a request to it fails without an HTTP answer. */
function closedPortHost(): string {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return `127.0.0.1:${port}`;
}

Deno.test("pacing: a probe that gets no answer lets the waiters behind it fail at once", async () => {
  const host = closedPortHost();
  const client = new RegistryClient(host, { deadlineMs: 10_000 });
  const get = (deadlineMs: number) =>
    client.request({
      method: "GET",
      path: "/v2/",
      scope: "",
      policy: { deadlineAtMs: Date.now() + deadlineMs, maxAttempts: 1 },
    });
  // A pause of 10 minutes, then a short one: the long pause holds, a probe may go soon.
  noteRateLimited(host, 10 * 60_000);
  noteRateLimited(host, 0);
  await assert.rejects(get(60_000), (error: OciError) => {
    assert.match(error.message, /cannot reach registry/);
    return true;
  });
  // The next probe is PROBE_AFTER_MS (30 s) away, past this request's deadline, and no probe
  // is out: it fails now, not at its deadline.
  let failure: unknown;
  const waiter = get(20_000).then(() => undefined, (error) => failure = error);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.ok(failure, "a request behind a failed probe slept to its deadline");
  assert.ok(failure instanceof OciError && failure.status === 429, String(failure));
  await waiter;
});
