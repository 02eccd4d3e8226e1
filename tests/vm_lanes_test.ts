/**
 * scripts/vm/run-lanes.sh runs the VM test files in several VMs at once: the 6.1 files from one
 * queue (each taken by exactly one guest), the *_kernel64 files on the backports kernel. Run in
 * a scratch checkout (path with spaces) whose tests/vm/ holds four small files: one per
 * kernel checks the kernel it runs on, one fails on purpose, one takes a few seconds.
 */
import assert from "node:assert/strict";
import { command, REPO_ROOT, requires, root } from "./_support/requires.ts";

const SCRIPTS = [
  "run.sh",
  "run-tests.sh",
  "run-lanes.sh",
  "junit.sh",
  "build.sh",
  "init.sh",
  "kernel.sh",
];

const TEST_FILES: Record<string, string> = {
  "a_test.ts": `Deno.test("a runs on 6.1", () => {
  if (!Deno.osRelease().startsWith("6.1.")) throw new Error("kernel " + Deno.osRelease());
});\n`,
  "b_test.ts":
    `Deno.test("b fails on purpose", () => { throw new Error("b failed on purpose"); });\n`,
  "c_test.ts": `Deno.test("c takes a while", async () => {
  await new Promise((resolve) => setTimeout(resolve, 3000));
});\n`,
  "d_kernel64_test.ts": `Deno.test("d runs on the backports kernel", () => {
  const [major, minor] = Deno.osRelease().split(".").map(Number);
  if (major < 6 || (major === 6 && minor < 4)) throw new Error("kernel " + Deno.osRelease());
});\n`,
};

interface Checkout {
  dir: string;
  results: string;
}

/** A checkout of the VM scripts and TEST_FILES; the VM builds of this one are reused. */
async function scratchCheckout(): Promise<Checkout> {
  for (const kernel of ["6.1", "backports"]) {
    const built = await new Deno.Command(`${REPO_ROOT}/scripts/vm/build.sh`, {
      env: { VM_KERNEL: kernel },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(built.code, 0, new TextDecoder().decode(built.stderr));
  }
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci vm lanes " });
  await Deno.mkdir(`${dir}/scripts/vm`, { recursive: true });
  for (const name of SCRIPTS) {
    await Deno.copyFile(`${REPO_ROOT}/scripts/vm/${name}`, `${dir}/scripts/vm/${name}`);
    await Deno.chmod(`${dir}/scripts/vm/${name}`, 0o755);
  }
  await Deno.mkdir(`${dir}/tools/bin`, { recursive: true });
  // A link, not a symlink: the guest sees only the checkout's own path of a host /tmp.
  await Deno.link(Deno.execPath(), `${dir}/tools/bin/deno`)
    .catch(() => Deno.copyFile(Deno.execPath(), `${dir}/tools/bin/deno`));
  await Deno.mkdir(`${dir}/.cache`);
  await Deno.symlink(`${REPO_ROOT}/.cache/vm`, `${dir}/.cache/vm`);
  await Deno.symlink(`${REPO_ROOT}/.cache/vm-bpo`, `${dir}/.cache/vm-bpo`);
  await Deno.mkdir(`${dir}/tests/vm`, { recursive: true });
  for (const [name, text] of Object.entries(TEST_FILES)) {
    await Deno.writeTextFile(`${dir}/tests/vm/${name}`, text);
  }
  return { dir, results: `${dir}/results` };
}

async function runLanes(checkout: Checkout, env: Record<string, string> = {}) {
  const run = await new Deno.Command(`${checkout.dir}/scripts/vm/run-lanes.sh`, {
    args: [checkout.results],
    // A guest that never ran out of files (a broken queue) ends at the VM's timeout.
    env: { VM_LANES: "3", VM_TEST_TIMEOUT_S: "300", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const output = new TextDecoder().decode(run.stdout) + new TextDecoder().decode(run.stderr);
  const reports = new Map<string, string>();
  for await (const entry of Deno.readDir(checkout.results)) {
    reports.set(entry.name, await Deno.readTextFile(`${checkout.results}/${entry.name}`));
  }
  return { code: run.code, output, reports };
}

/** Names of the reports of test file `name` (e.g. "a_test"), whichever lane wrote them. */
function reportsOf(reports: Map<string, string>, name: string): string[] {
  return [...reports.keys()].filter((report) => report.endsWith(`.${name}.xml`));
}

Deno.test({
  name:
    "vm lanes: guests share the 6.1 files (each run once; a guest left none is no failure), the kernel64 file runs on backports",
  ignore: requires(command("qemu-system-x86_64"), root()),
  fn: async () => {
    const checkout = await scratchCheckout();
    try {
      const { code, output, reports } = await runLanes(checkout);
      const failures = (report: string) => /<failure/.test(reports.get(report)!);
      for (const name of ["a_test", "b_test", "c_test"]) {
        const found = reportsOf(reports, name);
        assert.equal(found.length, 1, `${name}: reports ${found.join(", ")}\n${output}`);
        assert.match(found[0], /^vm[123]\./, output);
        assert.equal(failures(found[0]), name === "b_test", `${found[0]}\n${output}`);
      }
      // Three lanes for three 6.1 files: the third, which boots the backports kernel first,
      // most likely finds the queue empty, which is no failure.
      for (const [report, text] of reports) {
        if (report !== reportsOf(reports, "b_test")[0]) {
          assert.doesNotMatch(text, /<failure/, `${report}\n${output}`);
        }
      }
      assert.deepEqual(reportsOf(reports, "d_kernel64_test"), ["vm-bpo.d_kernel64_test.xml"]);
      assert.equal(failures("vm-bpo.d_kernel64_test.xml"), false, output);
      assert.equal(code, 1, `b failed, so the run fails\n${output}`);
      for (const lane of ["vm1", "vm2", "vm3", "bpo"]) {
        assert.match(output, new RegExp(`^\\[${lane}\\] `, "m"), `lines of ${lane}\n${output}`);
      }
      // The next run's order: every file timed.
      const times = await Deno.readTextFile(`${checkout.dir}/.cache/vm-test-times`);
      for (const name of Object.keys(TEST_FILES)) {
        assert.match(times, new RegExp(`^[0-9.]+ tests/vm/${name}$`, "m"), times);
      }
    } finally {
      await Deno.remove(checkout.dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "vm lanes: files no VM took (every VM stopped first) fail with a report each",
  ignore: requires(command("qemu-system-x86_64"), root()),
  fn: async () => {
    const checkout = await scratchCheckout();
    try {
      // No guest gets as far as its first file in 1 s.
      const { code, output, reports } = await runLanes(checkout, { VM_TEST_TIMEOUT_S: "1" });
      assert.equal(code, 1, output);
      for (const name of ["a_test", "b_test", "c_test"]) {
        const report = reports.get(`vm-lanes.${name}.xml`);
        assert.ok(report, `no report for ${name}: ${[...reports.keys()].join(", ")}\n${output}`);
        assert.match(report, /did not run: every VM stopped before taking it/);
      }
      assert.match(output, /vm-lanes: FAILED: tests\/vm\/a_test\.ts did not run/);
    } finally {
      await Deno.remove(checkout.dir, { recursive: true });
    }
  },
});
