// Sums JUnit XML files (from `deno test --junit-path` and the VM run) into the final
// `N passed, N failed, N skipped` line that CI reads.
let passed = 0, failed = 0, skipped = 0;
const extra = { passed: 0, failed: 0 };
for (const arg of Deno.args) {
  if (arg.startsWith("--passed=")) extra.passed += Number(arg.slice(9));
  else if (arg.startsWith("--failed=")) extra.failed += Number(arg.slice(9));
  else {
    let xml: string;
    try {
      xml = Deno.readTextFileSync(arg);
    } catch {
      console.error(`missing test report ${arg}: counted as one failure`);
      failed++;
      continue;
    }
    for (const m of xml.matchAll(/<testcase\b[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g)) {
      const body = m[2] ?? "";
      if (/<failure\b|<error\b/.test(body)) failed++;
      else if (/<skipped\b/.test(body)) skipped++;
      else passed++;
    }
  }
}
passed += extra.passed;
failed += extra.failed;
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
Deno.exit(failed ? 1 : 0);
