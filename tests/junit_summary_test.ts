/**
 * scripts/junit-summary.ts: the last line CI reads, and the failed tests named just above it
 * (CI shows only the end of the log).
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./_support/requires.ts";
import { withTempDir } from "./_support/temp_dir.ts";

async function summary(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", `${REPO_ROOT}/scripts/junit-summary.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, lines: new TextDecoder().decode(out.stdout).trimEnd().split("\n") };
}

Deno.test("junit summary: counts, and names each failed test above the final line", async () => {
  await withTempDir("junit-summary", async (dir) => {
    const report = `${dir}/host.xml`;
    Deno.writeTextFileSync(
      report,
      `<testsuites><testsuite name="a">
      <testcase name="passes" classname="./tests/a_test.ts"></testcase>
      <testcase name="skips" classname="./tests/a_test.ts"><skipped/></testcase>
      <testcase name="x &gt; y &amp; z" classname="./tests/b_test.ts">
        <failure message="Uncaught AssertionError: 1 !== 2&#10;&#10;more">trace</failure>
      </testcase>
      <testcase name="empty" classname="./tests/c_test.ts"/>
    </testsuite></testsuites>`,
    );
    const failing = await summary("--passed=4", "--failed=1", report, `${dir}/vm.xml`);
    assert.equal(failing.code, 1);
    assert.deepEqual(failing.lines.slice(-5), [
      "failed (3):",
      `  ${report}: ./tests/b_test.ts > x > y & z: Uncaught AssertionError: 1 !== 2`,
      `  ${dir}/vm.xml: report missing`,
      "  1 static check(s): see FAILED: above",
      "6 passed, 3 failed, 1 skipped",
    ]);

    const passing = await summary("--passed=4", "--failed=0", report.replace("host", "none"));
    assert.equal(passing.code, 1, "a missing report is a failure");
    Deno.writeTextFileSync(report, `<testsuites><testcase name="ok" classname="c"/></testsuites>`);
    const clean = await summary("--passed=4", "--failed=0", report);
    assert.deepEqual([clean.code, clean.lines], [0, ["5 passed, 0 failed"]]);
  });
});
