/**
 * scripts/host_tests.ts: every test file in a process of its own (what one sets in its process
 * no other sees), a report per file, and a file that dies without a failing test counted failed.
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./_support/requires.ts";
import { withTempDir } from "./_support/temp_dir.ts";

Deno.test("host test runner: a process per file, a report per file, a crash counted", async () => {
  await withTempDir("host-tests", async (dir) => {
    Deno.mkdirSync(`${dir}/t/sub`, { recursive: true });
    Deno.mkdirSync(`${dir}/results`);
    // Two files run side by side (the two largest start first): in one process, b would see
    // what a set in its environment.
    const waitFor = (file: string) =>
      `for (let i = 0; ; i++) {
        try { Deno.statSync("${dir}/${file}"); break; } catch { /* not yet */ }
        if (i > 400) throw new Error("${file} never came: the files did not run side by side");
        await new Promise((r) => setTimeout(r, 50));
      }`;
    Deno.writeTextFileSync(
      `${dir}/t/a_test.ts`,
      `Deno.test("a sets a variable, then waits for b", async () => {
        Deno.env.set("HOST_TESTS_MARK", "a");
        Deno.writeTextFileSync("${dir}/a.ready", "");
        ${waitFor("b.done")}
      });`,
    );
    Deno.writeTextFileSync(
      `${dir}/t/sub/b_test.ts`,
      `Deno.test("b does not see it", async () => {
        ${waitFor("a.ready")}
        if (Deno.env.get("HOST_TESTS_MARK") !== undefined) throw new Error("one process");
        Deno.writeTextFileSync("${dir}/b.done", "");
      });`,
    );
    Deno.writeTextFileSync(`${dir}/t/c_test.ts`, `Deno.test("c fails", () => { throw 1; });`);
    Deno.writeTextFileSync(`${dir}/t/d_test.ts`, `Deno.exit(7);`);
    Deno.writeTextFileSync(`${dir}/t/helper.ts`, `throw new Error("not a test file");`);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${REPO_ROOT}/scripts/host_tests.ts`, `${dir}/results`, "t"],
      cwd: dir,
      env: { HOST_TEST_JOBS: "2" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 1, stdout);
    assert.match(stdout, /^4 test files, 2 at a time/m);
    assert.match(stdout, /FAILED: t\/d_test\.ts: deno test exited with code [1-9]\d*/);
    assert.match(stdout, /host test files: 2 ok, 2 failed/);
    const summary = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", `${REPO_ROOT}/scripts/junit-summary.ts`]
        .concat([...Deno.readDirSync(`${dir}/results`)].map((e) => `${dir}/results/${e.name}`)),
      stdout: "piped",
    }).output();
    const lines = new TextDecoder().decode(summary.stdout).trimEnd().split("\n");
    assert.equal(lines.at(-1), "2 passed, 2 failed", lines.join("\n"));
    assert.ok(lines.some((line) => /d_test\.ts > the whole file: deno test exited/.test(line)));
    assert.ok(lines.some((line) => /c_test\.ts > c fails/.test(line)));
    // Timed for the next run's order.
    const times = JSON.parse(Deno.readTextFileSync(`${dir}/.cache/host-test-times.json`));
    assert.deepEqual(Object.keys(times).sort(), [
      "t/a_test.ts",
      "t/c_test.ts",
      "t/d_test.ts",
      "t/sub/b_test.ts",
    ]);
  });
});
