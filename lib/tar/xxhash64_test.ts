import { equal } from "node:assert/strict";
import { command, requires } from "../../tests/_support/requires.ts";
import { Xxh64 } from "./xxhash64.ts";

/** zstd --check stores the low 32 bits of XXH64 of the content as the frame's last 4 bytes. */
async function zstdChecksum(data: Uint8Array): Promise<number> {
  const child = new Deno.Command("zstd", {
    args: ["-q", "-c", "--check"],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  const [out] = await Promise.all([child.output(), writer.write(data).then(() => writer.close())]);
  return new DataView(out.stdout.buffer, out.stdout.byteOffset).getUint32(
    out.stdout.length - 4,
    true,
  );
}

Deno.test({
  name: "Xxh64 low 32 bits equal zstd's frame checksums at every tail length and split",
  ignore: requires(command("zstd")),
  async fn() {
    for (const len of [0, 1, 3, 4, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 1000, 65_531]) {
      const data = crypto.getRandomValues(new Uint8Array(len));
      const whole = new Xxh64();
      whole.update(data);
      const pieces = new Xxh64();
      for (let i = 0; i < len; i += 13) pieces.update(data.subarray(i, i + 13));
      const want = await zstdChecksum(data);
      equal(whole.digestLow32(), want, `length ${len}`);
      equal(pieces.digestLow32(), want, `length ${len} in 13-byte pieces`);
    }
  },
});
