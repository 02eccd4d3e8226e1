/**
 * EROFS_OCI_BACKGROUND_WINDOWS=0 against the default, on a lazy FUSE mount of a mkfs.erofs
 * 1.9.3 image (metadata spread between file data, ~60 MB) in a real docker-registry: by default
 * the server fetches most of the image around its metadata in the idle time after ready; with
 * the windows off it fetches what is read (a few MiB with the metadata) and nothing while idle.
 * Counted by the server (`list --json` bytesFetched): the registry logs a GET after its response,
 * too late to tell the mount's own GETs from those after it.
 */
import assert from "node:assert/strict";
import { startRegistry } from "./_support/registry.ts";
import { assertSuccess, runCli } from "./_support/cli.ts";
import { mountSandbox } from "./_support/mounts.ts";
import {
  ignoreWithoutScatteredImageTools as ignore,
  makeScatteredTree,
  pushMkfsErofsImage,
} from "./_support/scattered_tree.ts";
import { sleep, waitFor } from "./_support/wait.ts";

/** Long enough for the windows to start (50 ms of quiet after ready) and fetch some. */
const IDLE_MS = 2_000;
const WINDOWS_START = /background windows start/;

/** The mount's layer bytes fetched so far, as the server counts them. */
async function bytesFetched(env: Record<string, string>): Promise<number> {
  const list = await runCli(["list", "--json"], { env });
  assertSuccess(list);
  const fetched = JSON.parse(list.stdout)[0]?.bytesFetched;
  assert.equal(typeof fetched, "number", list.stdout);
  return fetched;
}

/**
 * Mounts `image` (FUSE, its own disk cache) with `env` and runs `check` on the mount with what
 * the server said so far: its log and its timing marks (the windows' start is one of them).
 */
async function withMount(
  image: string,
  env: Record<string, string>,
  check: (target: string, env: Record<string, string>, said: () => string) => Promise<void>,
): Promise<void> {
  const sandbox = await mountSandbox();
  const marks = `${sandbox.runtimeDir}-timing.txt`;
  const said = () => {
    let timing = "";
    try {
      timing = Deno.readTextFileSync(marks);
    } catch { /* no mark yet */ }
    return `${sandbox.serverLogs()}\n${timing}`;
  };
  const allEnv = { ...sandbox.env, EROFS_OCI_TIMING: marks, ...env };
  try {
    assertSuccess(
      await runCli(["mount", image, sandbox.target, "--backend", "fuse"], {
        env: allEnv,
        timeoutMs: 60_000,
      }),
    );
    await check(sandbox.target, allEnv, said);
  } finally {
    await sandbox.cleanup();
  }
}

Deno.test({
  name:
    "EROFS_OCI_BACKGROUND_WINDOWS=0: nothing fetched while the mount is idle; by default the windows fill it",
  ignore,
  async fn() {
    await using registry = await startRegistry({ auth: "none" });
    const work = await Deno.makeTempDir({ prefix: "erofs-oci-windows-off-" });
    try {
      const src = `${work}/src`;
      await makeScatteredTree(src);
      const image = await pushMkfsErofsImage(
        src,
        `${work}/peer.erofs`,
        `${registry.host}/windows/peer:v1`,
      );
      const file = "d042/s0/f05.bin";
      const expected = await Deno.readFile(`${src}/${file}`);

      const imageBytes = Deno.statSync(`${work}/peer.erofs`).size;

      await withMount(image, {}, async (_target, env, said) => {
        await waitFor("the windows' start", () => WINDOWS_START.test(said())).catch((error) => {
          throw new Error(`${error.message}\n${said()}`);
        });
        const deadline = Date.now() + 30_000;
        while ((await bytesFetched(env)) < imageBytes / 2) {
          assert.ok(Date.now() < deadline, `windows fetched too little while idle\n${said()}`);
          await sleep(100);
        }
      });

      await withMount(image, { EROFS_OCI_BACKGROUND_WINDOWS: "0" }, async (target, env, said) => {
        await sleep(IDLE_MS);
        const idle = await bytesFetched(env);
        assert.deepEqual(await Deno.readFile(`${target}/${file}`), expected);
        const read = await bytesFetched(env);
        assert.ok(read > idle, `the read fetched its bytes (${idle} → ${read})`);
        await sleep(IDLE_MS);
        assert.equal(await bytesFetched(env), read, `fetched after the read\n${said()}`);
        // The listed metadata (~0.85 MB), the image head and the file's own chunk.
        assert.ok(read < 8 << 20, `${read} bytes fetched of ${imageBytes}\n${said()}`);
        assert.doesNotMatch(said(), WINDOWS_START);
      });
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
