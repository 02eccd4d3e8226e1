/**
 * EROFS_OCI_TIMING (lib/timing.ts): start-up marks go to the named file, one parseable line
 * each, from every process that inherits the setting; unset, nothing is written.
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./_support/requires.ts";

/** stderr of `deno eval CODE` run with `env` (which must succeed). */
async function evalStderr(code: string, env: Record<string, string>): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "-q", code],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stderr);
}

function markIn(env: Record<string, string>, labels: string[]): Promise<string> {
  const code = `import { mark } from "${REPO_ROOT}/lib/timing.ts";\n` +
    labels.map((label) => `mark(${JSON.stringify(label)});`).join("\n");
  return evalStderr(code, env);
}

Deno.test("timing marks: appended to the EROFS_OCI_TIMING file by each process, in order", async () => {
  const dir = await Deno.makeTempDir({ prefix: "timing-marks-" });
  try {
    const file = `${dir}/marks`;
    const before = Date.now();
    await markIn({ EROFS_OCI_TIMING: file }, ["cli: main", "cli: mount loaded"]);
    await markIn({ EROFS_OCI_TIMING: file }, ["server: main"]);
    const after = Date.now();
    const lines = Deno.readTextFileSync(file).trimEnd().split("\n");
    assert.equal(lines.length, 3, lines.join("\n"));
    const parsed = lines.map((line) => {
      const match = /^timing (\d+) (.+) (\d+\.\d) \+(\d+\.\d)$/.exec(line);
      assert(match, `unparseable: ${line}`);
      return { pid: Number(match[1]), label: match[2], epochMs: Number(match[3]) };
    });
    assert.deepEqual(parsed.map((m) => m.label), [
      "cli: main",
      "cli: mount loaded",
      "server: main",
    ]);
    assert.equal(parsed[0].pid, parsed[1].pid);
    assert.notEqual(parsed[1].pid, parsed[2].pid);
    for (const { epochMs } of parsed) assert(epochMs >= before - 1 && epochMs <= after + 1);
    assert(parsed[0].epochMs <= parsed[1].epochMs && parsed[1].epochMs <= parsed[2].epochMs);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("timing marks: nothing written when EROFS_OCI_TIMING is unset or 0", async () => {
  const settings: Record<string, string>[] = [{}, { EROFS_OCI_TIMING: "0" }];
  for (const env of settings) {
    const stderr = await markIn(env, ["cli: main"]);
    assert.equal(stderr, "");
  }
  assert.match(await markIn({ EROFS_OCI_TIMING: "1" }, ["cli: main"]), /^timing \d+ cli: main /);
});

Deno.test("timing marks: a held event loop is marked once per hold, under the latest name", async () => {
  // A busy wait of 150 ms holds the loop: the watcher's next tick comes that late. Renamed
  // first ("server", as runMountServer does in a process that began as the CLI): one watcher.
  const code = `import { markHeldEventLoop } from "${REPO_ROOT}/lib/timing.ts";
markHeldEventLoop("cli");
markHeldEventLoop("server");
await new Promise((resolve) => setTimeout(resolve, 30));
const end = performance.now() + 150;
while (performance.now() < end) { /* held */ }
await new Promise((resolve) => setTimeout(resolve, 30));`;
  const run = async (env: Record<string, string>) =>
    (await evalStderr(code, env)).trimEnd().split("\n").filter(Boolean);
  const lines = await run({ EROFS_OCI_TIMING: "1" });
  const held = lines.map((line) => /^timing \d+ (\w+): event loop held (\d+) ms /.exec(line));
  assert(held.every(Boolean), lines.join("\n"));
  const long = held.filter((m) => Number(m![2]) >= 140);
  assert.equal(long.length, 1, lines.join("\n"));
  assert.equal(long[0]![1], "server");
  assert.deepEqual(await run({}), []);
});
