/**
 * What the host benchmarks (bench_host.ts, bench_trace.ts, bench/python_ab.ts) share: a cold
 * page cache before each step, the python start they time, and the layer digest whose GETs they
 * count in the registry's access log.
 */
import { writeSmallFile } from "../../ffi/libc.ts";
import { digestOfAsync } from "../../lib/oci/digest.ts";

/** The stdlib modules bench_host.ts and python_ab.ts import (bench_trace.ts uses fewer). */
export const PYTHON_IMPORTS =
  "import json, decimal, email.parser, argparse, asyncio, http.client, logging, csv, typing";

/** Written-back and dropped: the next step reads the disk, as after a boot. */
export function dropCaches(): void {
  new Deno.Command("sync").outputSync();
  writeSmallFile("/proc/sys/vm/drop_caches", "3");
}

/** The host's python3.11 with the mounted stdlib first on sys.path (C modules stay the host's). */
export function pythonArgs(dir: string, imports = PYTHON_IMPORTS): string[] {
  const lib = `${dir}/usr/lib/python3.11`;
  return [
    "-B",
    "-c",
    `import sys; sys.path.insert(0, ${JSON.stringify(lib)}); ${imports}; ` +
    `assert json.__file__.startswith(${JSON.stringify(lib)}), json.__file__`,
  ];
}

/** `sha256:<hex>` of a file: the layer digest of an image pushed as one layer. */
export async function fileDigest(path: string): Promise<string> {
  return digestOfAsync(await Deno.readFile(path));
}
