/**
 * acceptEach with connections their clients reset while they waited in the backlog (accept
 * fails with ENOTCONN for each): it must go on at once, not pause as for a lack of descriptors.
 * ~30 such connections (one burst of a client anyone can run) kept every client of `serve` out
 * for ~27 s and closed quiet clients "to make room".
 */
import assert from "node:assert/strict";
import { acceptEach } from "./accept_loop.ts";

/** `count` TCP connections to `port`, each reset (SO_LINGER 0) right after its handshake. */
async function resetConnections(port: number, count: number): Promise<void> {
  const script = "import socket, struct, sys\n" +
    "for _ in range(int(sys.argv[2])):\n" +
    "    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n" +
    "    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n" +
    "    s.close()\n";
  const done = await new Deno.Command("python3", {
    args: ["-c", script, String(port), String(count)],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(done.code, 0, new TextDecoder().decode(done.stderr));
}

Deno.test("acceptEach: connections reset in the backlog are skipped, not waited out", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const stop = new AbortController();
  const failures: string[] = [];
  const accepted: Deno.Conn[] = [];
  let served: () => void = () => {};
  const firstGood = new Promise<void>((resolve) => served = resolve);
  try {
    // Queued before the loop runs: each accept of them fails.
    await resetConnections((listener.addr as Deno.NetAddr).port, 30);
    const loop = acceptEach(listener, (conn) => {
      accepted.push(conn);
      served();
    }, { stop: stop.signal, onFailure: (reason) => failures.push(reason) });
    const good = await Deno.connect({
      hostname: "127.0.0.1",
      port: (listener.addr as Deno.NetAddr).port,
    });
    try {
      await firstGood;
    } finally {
      good.close();
    }
    assert.deepEqual(failures, [], "no accept failure reported (each paused the loop)");
    stop.abort();
    listener.close();
    await loop;
  } finally {
    stop.abort();
    try {
      listener.close();
    } catch { /* closed */ }
    for (const conn of accepted) conn.close();
  }
});
