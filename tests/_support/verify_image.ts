/**
 * An EROFS image with a small file and a 3 MiB file (made by mkfs.erofs 1.9.3) in a real
 * docker-registry, and a fault-proxy rule that flips a byte of big.bin in layer replies: the
 * shared setup of the verified-read tests (host FUSE, serve, VM NBD).
 */
import assert from "node:assert/strict";
import { PEER_BIN } from "./requires.ts";
import { startRegistry, type TestRegistry } from "./registry.ts";
import { type FaultRule, isBlobGetOf } from "./fault_proxy.ts";
import { getManifest } from "./oci_raw.ts";
import { patternBytes } from "./memory_source.ts";
import { assertSuccess, runCli } from "./cli.ts";

export const MKFS = `${PEER_BIN}/mkfs.erofs`;
const BIG_BYTES = 3 * 1024 * 1024 + 12345;
export const SMALL_TEXT = "verified small file\n";

export interface VerifySetup {
  registry: TestRegistry;
  work: string;
  image: Uint8Array<ArrayBuffer>;
  big: Uint8Array;
  /** Blob offset of a byte of big.bin past the first MiB (found by searching the image). */
  flipOffset: number;
  [Symbol.asyncDispose](): Promise<void>;
}

export async function setup(): Promise<VerifySetup> {
  const registry = await startRegistry({ auth: "none" });
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-verify-" });
  try {
    Deno.mkdirSync(`${work}/src`);
    const big = patternBytes(BIG_BYTES, 12);
    Deno.writeFileSync(`${work}/src/big.bin`, big);
    Deno.writeTextFileSync(`${work}/src/small.txt`, SMALL_TEXT);
    const out = await new Deno.Command(MKFS, {
      args: ["--quiet", "-T0", `${work}/image.erofs`, `${work}/src`],
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const image = Deno.readFileSync(`${work}/image.erofs`);
    // big.bin is stored uncompressed and contiguous: find where its 2 MiB mark lies.
    const probe = big.subarray(2 << 20, (2 << 20) + 64);
    let flipOffset = -1;
    for (let i = 0; i + 64 <= image.length && flipOffset < 0; i++) {
      if (image[i] === probe[0] && image.subarray(i, i + 64).every((b, k) => b === probe[k])) {
        flipOffset = i;
      }
    }
    assert(flipOffset >= 1 << 20, `big.bin's 2 MiB mark at ${flipOffset}`);
    return {
      registry,
      work,
      image,
      big,
      flipOffset,
      async [Symbol.asyncDispose]() {
        await registry.stop();
        await Deno.remove(work, { recursive: true });
      },
    };
  } catch (error) {
    await registry.stop();
    await Deno.remove(work, { recursive: true });
    throw error;
  }
}

/** Flips the byte at `offset` of `layer` in matching replies (`times`: how many). */
export function flipRule(layer: string, offset: number, times?: number): FaultRule {
  return {
    name: "flip",
    match: (r) => {
      if (!isBlobGetOf(layer)(r)) return false;
      const m = /bytes=(\d+)-(\d+)/.exec(r.headers.get("range") ?? "");
      return !m || (Number(m[1]) <= offset && offset <= Number(m[2]));
    },
    fault: { kind: "corrupt", blobOffset: offset },
    times,
  };
}

export async function layerDigestOf(registry: TestRegistry, repo: string) {
  const manifest = (await getManifest(registry, repo, "v1")).json as { layers: unknown[] };
  return manifest.layers[0] as { digest: string; annotations?: Record<string, string> };
}

/**
 * Pushes the setup's image as `repo:v1` with `erofs-oci push` (its chunk-digest table and
 * metadata list beside it) and returns the layer's descriptor.
 */
export async function pushWithTables(s: VerifySetup, repo: string, timeoutMs = 180_000) {
  assertSuccess(
    await runCli(
      ["push", `${s.registry.host}/${repo}:v1`, `${s.work}/image.erofs`, "--plain-http"],
      { timeoutMs },
    ),
  );
  return await layerDigestOf(s.registry, repo);
}

/** Async reads only: the fault proxy runs in this process's event loop. */
export async function readError(file: string): Promise<string | undefined> {
  try {
    await Deno.readFile(file);
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}
