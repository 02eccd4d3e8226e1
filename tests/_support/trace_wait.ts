/** Waits for a mount's trace prefetch, as `list --json` shows it. */
import { assertSuccess, runCli } from "./cli.ts";

export interface TracedLayer {
  tracePrefetch?: { state: string; bytesTotal: number; bytesDone: number };
}

/**
 * Layer 0 of the first mount `list --json` shows, once its trace prefetch no longer runs (or
 * after 10 s: the caller checks the state).
 */
export async function layerAfterTracePrefetch<T extends TracedLayer>(
  env: Record<string, string>,
): Promise<T> {
  let layer = {} as T;
  for (let i = 0; i < 100; i++) {
    const list = await runCli(["list", "--json"], { env });
    assertSuccess(list);
    layer = JSON.parse(list.stdout)[0].layers[0];
    if (!layer.tracePrefetch || layer.tracePrefetch.state !== "running") break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return layer;
}
