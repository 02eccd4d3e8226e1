import assert from "node:assert/strict";
import { CREATED_ANNOTATION, newestFirst, type ReferrerDescriptor } from "./referrers.ts";

const referrer = (digit: string, created?: string): ReferrerDescriptor => ({
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  digest: `sha256:${digit.repeat(64)}`,
  size: 100,
  annotations: created === undefined ? undefined : { [CREATED_ANNOTATION]: created },
});

Deno.test("newestFirst: by the created annotation, whatever order the registry lists", () => {
  // A referrers API listing by digest: the newest trace is not last.
  const older = referrer("a", "2026-12-01T10:00:00.000Z");
  const newest = referrer("b", "2026-12-06T02:00:00.000Z");
  const middle = referrer("c", "2026-12-03T00:00:00Z");
  assert.deepEqual(newestFirst([newest, older, middle]), [newest, middle, older]);
});

Deno.test("newestFirst: undated (or badly dated) ones after the dated, the last listed first", () => {
  const undatedFirst = referrer("1"), undatedLast = referrer("2");
  const bad = referrer("3", "yesterday");
  const dated = referrer("4", "2026-12-06T02:00:00Z");
  assert.deepEqual(
    newestFirst([undatedFirst, dated, bad, undatedLast]),
    [dated, undatedLast, bad, undatedFirst],
  );
});
