/**
 * Runs the host test files, each in a `deno test` process of its own, a few at a time
 * (`HOST_TEST_JOBS`, default one per CPU), longest first as the last run timed them.
 *
 * Not `deno test --parallel`: that runs every file in one process (a thread each), so what a
 * process has once — its environment, working directory, descriptor numbers, umask, signal
 * handlers — was every file's at once. A test that closed a number it no longer owned closed
 * another file's cache file; a variable set for one test reached the clients and child
 * processes other files started meanwhile. Those failures showed up as flaky tests elsewhere.
 *
 * Usage: deno run -A scripts/host_tests.ts RESULTS_DIR [--filter TEXT] DIR...
 * Writes RESULTS_DIR/host-NNN.xml per file (JUnit, as --junit-path writes it); a file whose
 * process failed without a failing test in its report (a crash, a hang past the limit) gets a
 * report with one failure saying so. Exits 1 when any file failed.
 */

const [resultsDir, ...rest] = Deno.args;
if (!resultsDir) {
  console.error("usage: host_tests.ts RESULTS_DIR [--filter TEXT] DIR...");
  Deno.exit(2);
}
let filter: string | undefined;
const dirs: string[] = [];
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--filter") filter = rest[++i];
  else dirs.push(rest[i].replace(/\/+$/, ""));
}

/** A file still running after this long is stopped and counted as failed (CI must end). */
const FILE_LIMIT_MS = 20 * 60_000;
const TIMES_FILE = ".cache/host-test-times.json";

const files = dirs.flatMap((dir) => testFiles(dir)).filter((f) => !f.startsWith("tests/vm/"));
const lastTimes = readTimes();
// Longest first, so that no long file starts last; unknown ones (never timed) by size.
const weight = new Map(files.map((f) => [f, lastTimes[f] ?? Deno.statSync(f).size / 1000]));
files.sort((a, b) => weight.get(b)! - weight.get(a)! || a.localeCompare(b));

const jobs = Math.max(1, Number(Deno.env.get("HOST_TEST_JOBS")) || navigator.hardwareConcurrency);
const times: Record<string, number> = { ...lastTimes };
let next = 0;
let failedFiles = 0;
const startedMs = Date.now();
console.log(`${files.length} test files, ${jobs} at a time, each in a process of its own`);
await Promise.all(Array.from({ length: jobs }, async () => {
  while (next < files.length) {
    const index = next++;
    if (!await runFile(files[index], index)) failedFiles++;
  }
}));
try {
  Deno.mkdirSync(".cache", { recursive: true });
  Deno.writeTextFileSync(TIMES_FILE, JSON.stringify(times, null, 1) + "\n");
} catch { /* timings are a hint only */ }
const tookS = Math.round((Date.now() - startedMs) / 1000);
console.log(
  `host test files: ${files.length - failedFiles} ok, ${failedFiles} failed (${tookS} s)`,
);
Deno.exit(failedFiles ? 1 : 0);

/** Runs one file; prints its whole output when it ends (two files' lines never interleave). */
async function runFile(file: string, index: number): Promise<boolean> {
  const report = `${resultsDir}/host-${String(index).padStart(3, "0")}.xml`;
  const args = ["test", "-A", "--no-check", `--junit-path=${report}`, file];
  if (filter !== undefined) args.push("--filter", filter);
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const limit = AbortSignal.timeout(FILE_LIMIT_MS);
  const onLimit = () => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
  };
  limit.addEventListener("abort", onLimit, { once: true });
  const began = Date.now();
  const output = await child.output();
  limit.removeEventListener("abort", onLimit);
  times[file] = Math.round((Date.now() - began) / 100) / 10;
  // stdout then stderr: deno test writes its results to stdout, what tests print to either.
  await Deno.stdout.write(output.stdout);
  await Deno.stdout.write(output.stderr);
  if (output.success) return true;
  let reported = "";
  try {
    reported = Deno.readTextFileSync(report);
  } catch { /* none written */ }
  if (/<failure\b|<error\b/.test(reported)) return false;
  const why = timedOut
    ? `still running after ${FILE_LIMIT_MS / 60_000} minutes: stopped`
    : `deno test exited with code ${output.code}${
      output.signal ? ` (${output.signal})` : ""
    } and reported no failing test`;
  console.log(`FAILED: ${file}: ${why}`);
  Deno.writeTextFileSync(report, failureReport(file, why));
  return false;
}

function testFiles(dir: string): string[] {
  const found: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) found.push(...testFiles(path));
    else if (entry.isFile && /_test\.ts$/.test(entry.name)) found.push(path);
  }
  return found;
}

function readTimes(): Record<string, number> {
  try {
    const parsed = JSON.parse(Deno.readTextFileSync(TIMES_FILE));
    return typeof parsed === "object" && parsed !== null ? parsed : {};
  } catch {
    return {};
  }
}

function failureReport(file: string, why: string): string {
  const escape = (text: string) =>
    text.replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]!);
  return `<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="deno test" tests="1" failures="1" errors="0">
  <testsuite name="./${escape(file)}" tests="1" failures="1">
    <testcase name="the whole file" classname="./${escape(file)}">
      <failure message="${escape(why)}"/>
    </testcase>
  </testsuite>
</testsuites>
`;
}
