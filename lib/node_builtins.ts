/**
 * The Node built-ins the program uses, loaded on first use instead of at start-up. A static
 * `import … from "node:crypto"` (or zlib) loads Deno's Node compatibility layer before
 * the first line of main runs, in every process, whatever the command: ~25 ms of each start on
 * the host and 1.2-1.5 s in the QEMU TCG guest of the benchmark, and `deno bundle` hoists all
 * of them to the top of dist's single file. `process.getBuiltinModule` loads a module
 * synchronously at its first call, so callers keep their synchronous code. Types only come
 * from the static imports below (erased when compiled).
 */
import type * as NodeCrypto from "node:crypto";
import type * as NodeZlib from "node:zlib";
import { mark } from "./timing.ts";

export type { Hash } from "node:crypto";

type BuiltinName = "node:crypto" | "node:zlib";

let cryptoModule: typeof NodeCrypto | undefined;
let zlibModule: typeof NodeZlib | undefined;

function load<T>(name: BuiltinName): T {
  mark(`${name} loading`);
  const module = process.getBuiltinModule(name) as T;
  mark(`${name} loaded`);
  return module;
}

/** Whether node:crypto is loaded (its first use boots Deno's Node layer, ~22 ms on the host). */
export function nodeCryptoLoaded(): boolean {
  return cryptoModule !== undefined;
}

/** Loads node:crypto now, unless it is loaded: for a moment when the process is idle. */
export function loadNodeCrypto(): void {
  cryptoModule ??= load<typeof NodeCrypto>("node:crypto");
}

/** node:crypto's createHash (sha256, sha512: OpenSSL speed, and it streams). */
export function createHash(algorithm: string): NodeCrypto.Hash {
  cryptoModule ??= load<typeof NodeCrypto>("node:crypto");
  return cryptoModule.createHash(algorithm);
}

/** node:zlib's createGunzip. */
export function createGunzip(options?: NodeZlib.ZlibOptions): NodeZlib.Gunzip {
  zlibModule ??= load<typeof NodeZlib>("node:zlib");
  return zlibModule.createGunzip(options);
}
