/**
 * Run with `--v8-flags=--expose-gc`: a download from a registry whose body stops after its
 * first bytes (the connection held open), with garbage collections while it waits — under
 * which fetch's own abort of a body being read did not work (Deno 2.9). Argument "stall": the
 * stall watch must give the body up and resume; "interrupt": an abort of the caller's signal
 * must end the download. Prints one JSON line: what happened and when.
 */
import { RegistryClient } from "../../lib/oci/client.ts";
import { digestOf } from "../../lib/oci/digest.ts";
import { serveStallingBlob } from "./stalling_blob_server.ts";

const mode = Deno.args[0];
const BLOB = new Uint8Array(200_000).map((_, i) => (i * 7 + (i >> 8)) & 0xff);
const DIGEST = digestOf(BLOB);
const gc = (globalThis as unknown as { gc: () => void }).gc;

const { host, ranges, release, server } = serveStallingBlob(BLOB);
const startedMs = Date.now();
const collections = setInterval(gc, 50);
// What the bug did: wait for the peer to hang up, which this one never does.
const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ outcome: "hung", ranges, ms: Date.now() - startedMs }));
  Deno.exit(0);
}, 15_000);
const interrupt = new AbortController();
if (mode === "interrupt") setTimeout(() => interrupt.abort(new Error("interrupted")), 500);
const dir = await Deno.makeTempDir({ prefix: "erofs-oci-stall-gc-" });
let outcome: string;
try {
  const client = new RegistryClient(host, { deadlineMs: 20_000, plainHttp: true });
  await client.downloadBlob("app", DIGEST, `${dir}/out`, { signal: interrupt.signal });
  const same = (await Deno.readFile(`${dir}/out`)).every((b, i) => b === BLOB[i]);
  outcome = same ? "complete" : "wrong bytes";
} catch (error) {
  outcome = `failed: ${(error as Error).message}`;
}
console.log(JSON.stringify({ outcome, ranges, ms: Date.now() - startedMs }));
clearTimeout(watchdog);
clearInterval(collections);
release();
await server.shutdown();
await Deno.remove(dir, { recursive: true });
