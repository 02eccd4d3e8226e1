/**
 * The open files an NBD mount server holds, against what `mount` and `reattach` count it to
 * need (lib/daemon/open_file_budget.ts): images of 1, 10 and 40 distinct layers, counted at
 * ready, after a file of every layer was read, and at the most seen while the mounts ran; then
 * a reattach under a limit one short of the count is refused before a server starts.
 */
import assert from "node:assert/strict";
import { assertSuccess, describe, runCli } from "../_support/cli.ts";
import { mountSandbox, mountServersOf, pidAlive } from "../_support/mounts.ts";
import { pushImage } from "../_support/oci_raw.ts";
import { startRegistry } from "../_support/registry.ts";
import { distinctLayers } from "../_support/distinct_layers.ts";
import { waitFor } from "../_support/wait.ts";
import { NOT_IN_VM } from "../_support/vm.ts";
import { nbdServerDescriptors } from "../../lib/daemon/open_file_budget.ts";

const COUNTS = [1, 10, 40];

/** Open descriptors of `pid` (0 once it is gone). */
function openDescriptors(pid: number): number {
  try {
    return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
  } catch {
    return 0;
  }
}

/** What the descriptors of `pid` are, counted by kind (cache files by suffix), for the log. */
function descriptorKinds(pid: number): string {
  const kinds = new Map<string, number>();
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    let kind = "(closed meanwhile)";
    try {
      kind = Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`)
        .replace(/:\[\d+\]$/, "").replace(/^\/.*\/disk-cache\/.*\./, "cache .").replace(
          /\d+/g,
          "N",
        );
    } catch { /* closed */ }
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return [...kinds].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${n} ${k}`).join(", ");
}

/** The server pid the state of the mount at `target` names. */
function serverOf(runtimeDir: string, target: string): number {
  for (const entry of Deno.readDirSync(`${runtimeDir}/mounts`)) {
    try {
      const state = JSON.parse(
        Deno.readTextFileSync(`${runtimeDir}/mounts/${entry.name}/state.json`),
      );
      if (state.target === target) return state.serverPid;
    } catch { /* no state */ }
  }
  throw new Error(`no mount state for ${target}`);
}

Deno.test({
  name: "nbd mount server: open files stay within the counted need (1, 10, 40 layers)",
  ignore: NOT_IN_VM,
  async fn() {
    const started = Date.now();
    const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
    const registry = await startRegistry({ auth: "none" });
    const sandbox = await mountSandbox();
    try {
      const work = `${sandbox.runtimeDir}.layers`; // removed with the sandbox
      Deno.mkdirSync(work);
      const layers = await distinctLayers(work, Math.max(...COUNTS));
      await Promise.all(
        COUNTS.map((count) => pushImage(registry, "fds/nbd", `l${count}`, layers.slice(0, count))),
      );
      console.log(`layers built and pushed: ${elapsed()}`);

      // All three at once (a third of the time under TCG); the most each server held meanwhile.
      const peaks = new Map<number, number>();
      let mounting = true;
      const sampling = (async () => {
        while (mounting) {
          for (const pid of mountServersOf(sandbox.runtimeDir)) {
            peaks.set(pid, Math.max(peaks.get(pid) ?? 0, openDescriptors(pid)));
          }
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      })();
      const target = (count: number) => `${sandbox.target}-${count}`;
      const mounts = await Promise.all(COUNTS.map((count) => {
        Deno.mkdirSync(target(count));
        return runCli(
          ["mount", `${registry.host}/fds/nbd:l${count}`, target(count), "--backend", "nbd"],
          // 40 devices attached under TCG took over 240 s on a loaded host (load 9).
          { env: sandbox.env, timeoutMs: 480_000 },
        );
      })).finally(() => mounting = false);
      await sampling;
      for (const mounted of mounts) {
        assert.equal(mounted.code, 0, `${describe(mounted)}\n${sandbox.serverLogs()}`);
      }
      console.log(`mounted: ${elapsed()}`);

      const figures: string[] = [];
      for (const count of COUNTS) {
        const pid = serverOf(sandbox.runtimeDir, target(count));
        const ready = openDescriptors(pid);
        const kinds = descriptorKinds(pid);
        for (let i = 0; i < count; i++) {
          assert.equal(Deno.readTextFileSync(`${target(count)}/file${i}`), `layer ${i}\n`);
        }
        const read = openDescriptors(pid);
        const peak = peaks.get(pid) ?? 0;
        const budget = nbdServerDescriptors(count);
        const figure = `${count} layers: ${ready} at ready (${kinds}), ${read} after reads, ` +
          `${peak} at most while mounting; counted ${budget}`;
        figures.push(figure);
        assert.ok(Math.max(ready, read, peak) <= budget, figure);
      }
      console.log(figures.join("\n"));

      // Reattach of the 10-layer mount: refused one short of the count, no server started.
      const dead = serverOf(sandbox.runtimeDir, target(10));
      Deno.kill(dead, "SIGKILL");
      await waitFor("the server to end", () => !pidAlive(dead));
      const needed = nbdServerDescriptors(10);
      const refused = await runCli(["reattach", target(10)], {
        env: sandbox.env,
        openFileLimit: needed - 1,
        timeoutMs: 240_000,
      });
      assert.equal(refused.code, 1, describe(refused));
      // Said once for the mount, naming its 10 devices (it was said once per device).
      assert.match(
        refused.stderr,
        new RegExp(
          `^erofs-oci: \\S+-10 \\((nbd\\d+, ){9}nbd\\d+\\): this mount's 10 layers need ` +
            `about ${needed} open files; the limit is ${needed - 1}: raise it ` +
            `\\(ulimit -n ${needed}\\)$`,
          "m",
        ),
        describe(refused),
      );
      assert.equal(refused.stderr.match(/open files/g)?.length, 1, describe(refused));
      assert.doesNotMatch(refused.stdout, /open files/, "the table says it no more");
      assert.equal(mountServersOf(sandbox.runtimeDir).length, 2, "no server started");
      console.log(`reattach refused: ${elapsed()}`);

      assertSuccess(
        await runCli(["reattach", target(10)], { env: sandbox.env, timeoutMs: 240_000 }),
      );
      const reattached = serverOf(sandbox.runtimeDir, target(10));
      const afterReattach = openDescriptors(reattached);
      console.log(`10 layers reattached: ${afterReattach} open files (${elapsed()})`);
      assert.ok(afterReattach <= needed, `${afterReattach} open files after reattach`);
      assert.equal(Deno.readTextFileSync(`${target(10)}/file9`), "layer 9\n");

      assertSuccess(
        await runCli(["umount", "--all"], { env: sandbox.env, timeoutMs: 240_000 }),
      );
      console.log(`unmounted: ${elapsed()}`);
    } finally {
      await sandbox.cleanup();
      await registry.stop();
    }
  },
});
