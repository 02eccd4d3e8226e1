/** A server's own memory, for `list --json` and the metrics (an operator's view of its bound). */
import { readSmallFile } from "../../ffi/files.ts";
import type { ServerMemory } from "./layer_stats.ts";

/** This process's VmRSS and VmHWM (/proc/self/status, through libc: Deno's APIs refuse /proc). */
export function ownMemory(): ServerMemory | undefined {
  const status = readSmallFile("/proc/self/status", 8192) ?? "";
  const kib = (field: string) =>
    Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status)?.[1]);
  const resident = kib("VmRSS"), peak = kib("VmHWM");
  if (!Number.isFinite(resident) || !Number.isFinite(peak)) return undefined;
  return { residentBytes: resident * 1024, peakResidentBytes: peak * 1024 };
}
