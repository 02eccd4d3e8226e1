/**
 * A long download outlives one operation's deadline: an attempt that brought a MiB or more
 * earns the resume a fresh one (pull of a layer whose body broke off after the deadline failed
 * with no resume GET: "broke off at … bytes").
 */
import assert from "node:assert/strict";
import { command, requires } from "./_support/requires.ts";
import { startRegistry } from "./_support/registry.ts";
import { isBlobGetOf, startFaultProxy } from "./_support/fault_proxy.ts";
import { uploadBlob } from "./_support/oci_raw.ts";
import { patternBytes } from "./_support/memory_source.ts";
import { RegistryClient } from "../lib/oci/client.ts";
import { withTempDir } from "./_support/temp_dir.ts";

Deno.test({
  name: "download: a body that broke off after the deadline, with a MiB in, is resumed",
  ignore: requires(command("docker-registry")),
  fn: () =>
    withTempDir("erofs-oci-deadline-", async (dir) => {
      const bytes = new Uint8Array(patternBytes(3 << 20, 3));
      await using registry = await startRegistry({ auth: "none" });
      const blob = await uploadBlob(registry, "slow/blob", bytes, "application/octet-stream");
      // 1.5 MiB, then the body stalls past the 1 s deadline and breaks.
      await using proxy = await startFaultProxy(registry.host, [{
        match: isBlobGetOf(blob.digest),
        fault: { kind: "reset", afterBytes: 1536 << 10, stallMs: 1500 },
        times: 1,
      }]);
      const client = new RegistryClient(proxy.host, { plainHttp: true, deadlineMs: 1000 });
      try {
        await client.downloadBlob("slow/blob", blob.digest, `${dir}/blob`, {
          expectedSizeBytes: bytes.length,
        });
      } finally {
        await client.close();
      }
      assert.deepEqual(await Deno.readFile(`${dir}/blob`), bytes);
      const gets = proxy.requests.filter((r) => r.method === "GET" && r.path.endsWith(blob.digest));
      assert.equal(gets.length, 2, "the whole blob, then the rest");
      assert.match(gets[1].range ?? "", /^bytes=\d+-$/);
    }),
});
