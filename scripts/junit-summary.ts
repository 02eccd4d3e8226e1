// Sums JUnit XML files (from `deno test --junit-path` and the VM run) into the final
// `N passed, N failed, N skipped` line that CI reads.
// Failed tests are named just above that line too: CI shows only the end of the log.
let passed = 0, failed = 0, skipped = 0;
const failures: string[] = [];
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
      failures.push(`${arg}: report missing`);
      continue;
    }
    for (const m of xml.matchAll(/<testcase\b([^>]*?)(\/>|>([\s\S]*?)<\/testcase>)/g)) {
      const body = m[3] ?? "";
      if (/<failure\b|<error\b/.test(body)) {
        failed++;
        failures.push(`${arg}: ${describe(m[1], body)}`);
      } else if (/<skipped\b/.test(body)) skipped++;
      else passed++;
    }
  }
}
if (extra.failed) failures.push(`${extra.failed} static check(s): see FAILED: above`);
if (failures.length) {
  console.log(`failed (${failures.length}):`);
  for (const line of failures) console.log(`  ${line}`);
}
passed += extra.passed;
failed += extra.failed;
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
Deno.exit(failed ? 1 : 0);

/** `classname > name: first line of the failure message`, entities decoded. */
function describe(attributes: string, body: string): string {
  const attribute = (key: string) =>
    decode(new RegExp(`\\b${key}="([^"]*)"`).exec(attributes)?.[1] ?? "?");
  const message = /<(?:failure|error)\b[^>]*?message="([^"]*)"/.exec(body)?.[1] ?? "";
  const first = decode(message).split("\n").find((line) => line.trim()) ?? "";
  return `${attribute("classname")} > ${attribute("name")}: ${first.slice(0, 200)}`;
}

function decode(text: string): string {
  return text.replace(/&(lt|gt|quot|apos|amp|#(\d+)|#x([0-9a-f]+));/gi, (all, name, dec, hex) => {
    if (dec) return String.fromCodePoint(Number(dec));
    if (hex) return String.fromCodePoint(parseInt(hex, 16));
    return { lt: "<", gt: ">", quot: '"', apos: "'", amp: "&" }[name as string] ?? all;
  });
}
