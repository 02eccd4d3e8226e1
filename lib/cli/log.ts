/** Diagnostics on stderr; stdout stays for data so `--json` output can be piped. */
import { printable } from "./table.ts";
let debugEnabled = false;

export function setDebug(on: boolean): void {
  debugEnabled = on;
}

export function isDebug(): boolean {
  return debugEnabled;
}

export function debug(...parts: unknown[]): void {
  if (debugEnabled) console.error("debug:", ...parts);
}

export function warn(message: string): void {
  console.error(`erofs-oci: warning: ${printable(message)}`);
}

export function info(message: string): void {
  console.error(message);
}
