import assert from "node:assert/strict";
import {
  CREATED_ANNOTATION,
  listReferrers,
  newestFirst,
  nextPage,
  type ReferrerDescriptor,
} from "./referrers.ts";
import { RegistryClient } from "./client.ts";

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

Deno.test('nextPage: the Link header\'s rel="next", on this registry only', () => {
  const path = "/v2/app/referrers/sha256:aa?artifactType=t";
  const subject = "sha256:aa";
  assert.equal(nextPage(null, path, "r:5000", subject), undefined);
  assert.equal(nextPage('</x?n=1>; rel="prev"', path, "r:5000", subject), undefined);
  assert.equal(
    nextPage('</v2/app/referrers/sha256:aa?n=2>; rel="next"', path, "r:5000", subject),
    "/v2/app/referrers/sha256:aa?n=2",
  );
  // Relative to the page, several links, absolute on the same host (any scheme: only the path
  // and query are used).
  assert.equal(
    nextPage("<?n=3>; rel=next", path, "r:5000", subject),
    "/v2/app/referrers/sha256:aa?n=3",
  );
  assert.equal(
    nextPage(
      '<https://r:5000/a?n=4>; rel="prev", <https://r:5000/b?n=5>; rel="next"',
      path,
      "r:5000",
      subject,
    ),
    "/b?n=5",
  );
  for (const elsewhere of ["http://evil.example/v2/x", "file:///etc/passwd", "//evil:5000/x"]) {
    assert.throws(
      () => nextPage(`<${elsewhere}>; rel="next"`, path, "r:5000", subject),
      /next page of the referrers of sha256:aa is on another host/,
      elsewhere,
    );
  }
});

Deno.test("listReferrers: follows the pages of the referrers API (a table behind a page of signatures)", async () => {
  const subject = `sha256:${"c".repeat(64)}`;
  const sig = { ...referrer("d"), artifactType: "application/vnd.dev.cosign.artifact.sig.v1+json" };
  const table: ReferrerDescriptor = {
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: `sha256:${"e".repeat(64)}`,
    size: 100,
    artifactType: "application/x-table",
  };
  const pages: string[] = [];
  let loop = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/v2/") return new Response("{}");
    pages.push(url.search);
    const page = Number(url.searchParams.get("page") ?? 1);
    const headers = new Headers({ "content-type": "application/vnd.oci.image.index.v1+json" });
    // Page 1 links to 2; page 2 to 3 (or, looping, back to 1); page 3 ends the list.
    if (page < 3) headers.set("link", `<?page=${loop && page === 2 ? 1 : page + 1}>; rel="next"`);
    const manifests = page === 3 ? [table] : [sig];
    return new Response(JSON.stringify({ schemaVersion: 2, manifests }), { headers });
  });
  const client = new RegistryClient(`127.0.0.1:${server.addr.port}`, { plainHttp: true });
  try {
    assert.deepEqual(await listReferrers(client, "app", subject, "application/x-table"), [table]);
    assert.deepEqual(pages.map((p) => new URLSearchParams(p).get("page")), [null, "2", "3"]);
    loop = true;
    pages.length = 0;
    assert.deepEqual(await listReferrers(client, "app", subject, "application/x-table"), []);
    assert.equal(pages.length, 3, "page 1, page 2, then the link back to page 1 is not followed");
  } finally {
    client.close();
    await server.shutdown();
  }
});
