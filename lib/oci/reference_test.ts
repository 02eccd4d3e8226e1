import assert from "node:assert/strict";
import fc from "fast-check";
import { OciError } from "../errors.ts";
import {
  formatReference,
  type ImageReference,
  isLoopbackRegistry,
  manifestReference,
  parseReference,
  registryApiHost,
} from "./reference.ts";

const D = `sha256:${"ab".repeat(32)}`;

Deno.test("parseReference: valid references", () => {
  const cases: [string, ImageReference][] = [
    ["alpine", { registry: "docker.io", repository: "library/alpine" }],
    ["alpine:3.19", { registry: "docker.io", repository: "library/alpine", tag: "3.19" }],
    ["user/app", { registry: "docker.io", repository: "user/app" }],
    ["docker.io/alpine", { registry: "docker.io", repository: "library/alpine" }],
    ["index.docker.io/alpine:1", { registry: "docker.io", repository: "library/alpine", tag: "1" }],
    ["localhost/app", { registry: "localhost", repository: "app" }],
    ["localhost:5000/app:v1", { registry: "localhost:5000", repository: "app", tag: "v1" }],
    ["127.0.0.1:5000/a/b/c:v1", { registry: "127.0.0.1:5000", repository: "a/b/c", tag: "v1" }],
    ["[::1]:5000/app:v1", { registry: "[::1]:5000", repository: "app", tag: "v1" }],
    ["[::1]/app", { registry: "[::1]", repository: "app" }],
    ["ghcr.io/org/app@" + D, { registry: "ghcr.io", repository: "org/app", digest: D }],
    [
      "ghcr.io/org/app:v1@" + D,
      { registry: "ghcr.io", repository: "org/app", tag: "v1", digest: D },
    ],
    ["reg.example.com/a__b/c-d.e_f:V_1.x-y", {
      registry: "reg.example.com",
      repository: "a__b/c-d.e_f",
      tag: "V_1.x-y",
    }],
    ["My-Registry.example:443/app", { registry: "My-Registry.example:443", repository: "app" }],
  ];
  for (const [text, expected] of cases) {
    assert.deepEqual(parseReference(text), expected, text);
  }
});

Deno.test("parseReference: malformed references are one-line usage errors saying why", () => {
  const cases: [string, RegExp][] = [
    ["", /empty/],
    ["app:", /empty tag/],
    ["app@", /empty digest/],
    ["app@sha256:12", /64/],
    ["app@md5:" + "a".repeat(32), /algorithm/],
    ["app@" + "a".repeat(64), /sha256/],
    ["app@" + D.toUpperCase().replace("SHA256", "sha256"), /hex/],
    ["Upper/Case", /lowercase/],
    ["127.0.0.1:5000/Upper/Case:v1", /lowercase/],
    ["host/app:bad tag", /whitespace/],
    ["app:-v1", /tag/],
    ["app:" + "a".repeat(129), /128/],
    ["a//b", /empty path component/],
    ["localhost:5000/", /missing repository/],
    ["localhost:5000", /looks like a registry/],
    ["reg.example.com:5000", /looks like a registry/],
    ["host:99999/app", /port/],
    ["host:abc/app", /port|tag/],
    ["-bad.example.com/app", /host/],
    ["[::1/app", /IPv6|\[/],
    ["app--", /component/],
    ["a@" + D + "@" + D, /@/],
    ["reg.example.com/" + "a".repeat(250), /255/],
    ["app\n", /control|whitespace/],
  ];
  for (const [text, why] of cases) {
    assert.throws(() => parseReference(text), (error: unknown) => {
      assert.ok(error instanceof OciError, `${JSON.stringify(text)}: ${error}`);
      assert.equal(error.exitCode, 2);
      assert.match(error.message, /^invalid image reference /);
      assert.match(error.message, why, JSON.stringify(text));
      assert.ok(!error.message.includes("\n"), "one line");
      return true;
    });
  }
});

Deno.test("formatReference, manifestReference, registryApiHost, isLoopbackRegistry", () => {
  assert.equal(formatReference(parseReference("alpine")), "docker.io/library/alpine");
  assert.equal(
    formatReference(parseReference(`localhost:5000/app:v1@${D}`)),
    `localhost:5000/app:v1@${D}`,
  );
  assert.equal(manifestReference(parseReference("app")), "latest");
  assert.equal(manifestReference(parseReference("app:v2")), "v2");
  assert.equal(manifestReference(parseReference(`app:v2@${D}`)), D);
  assert.equal(registryApiHost("docker.io"), "registry-1.docker.io");
  assert.equal(registryApiHost("ghcr.io"), "ghcr.io");
  for (const r of ["localhost", "localhost:5000", "127.0.0.1:1", "127.9.8.7", "[::1]:5000"]) {
    assert.ok(isLoopbackRegistry(r), r);
  }
  for (const r of ["ghcr.io", "10.0.0.1:5000", "localhost.example.com", "128.0.0.1", "[::2]"]) {
    assert.ok(!isLoopbackRegistry(r), r);
  }
});

// Generators for the reference grammar (distribution reference spec).
const alnum = fc.stringMatching(/^[a-z0-9]{1,8}$/);
const component = fc.tuple(
  alnum,
  fc.array(fc.tuple(fc.constantFrom(".", "_", "__", "-", "--"), alnum), { maxLength: 2 }),
)
  .map(([first, rest]) => first + rest.map(([s, a]) => s + a).join(""));
const repository = fc.array(component, { minLength: 2, maxLength: 4 }).map((c) => c.join("/"));
const host = fc.oneof(
  fc.constant("localhost"),
  fc.array(fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?$/), { minLength: 2, maxLength: 3 })
    .map((l) => l.join(".")),
  fc.constant("[::1]"),
);
const registry = fc.tuple(host, fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }))
  .map(([h, p]) => (p === undefined ? h : `${h}:${p}`));
const tag = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}$/);
const digest = fc.stringMatching(/^[a-f0-9]{64}$/).map((h) => `sha256:${h}`);
const reference = fc.record({
  registry,
  repository,
  tag: fc.option(tag, { nil: undefined }),
  digest: fc.option(digest, { nil: undefined }),
}).map((r) => {
  const ref: ImageReference = { registry: r.registry, repository: r.repository };
  if (r.tag !== undefined) ref.tag = r.tag;
  if (r.digest !== undefined) ref.digest = r.digest;
  return ref;
});

Deno.test("parseReference: property: format → parse round-trips every valid reference", () => {
  fc.assert(
    fc.property(reference, (ref) => {
      assert.deepEqual(parseReference(formatReference(ref)), ref);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("parseReference: property: hostile input gives a reference or a one-line OciError", () => {
  const hostile = fc.oneof(
    fc.string({ maxLength: 300 }),
    fc.fullUnicodeString({ maxLength: 80 }),
    fc.stringOf(
      fc.constantFrom("a", "A", "0", ":", "/", "@", ".", "-", "_", "[", "]", " ", "%", "\u0000"),
      {
        maxLength: 60,
      },
    ),
    reference.chain((ref) =>
      fc.tuple(fc.nat(formatReference(ref).length), fc.string({ maxLength: 3 })).map(
        ([at, junk]) => {
          const text = formatReference(ref);
          return text.slice(0, at) + junk + text.slice(at);
        },
      )
    ),
  );
  fc.assert(
    fc.property(hostile, (text) => {
      let ref: ImageReference;
      try {
        ref = parseReference(text);
      } catch (error) {
        assert.ok(error instanceof OciError, `${JSON.stringify(text)} threw ${error}`);
        assert.ok(!error.message.includes("\n"));
        assert.ok(error.message.length < 400);
        return;
      }
      // Whatever parses is canonical: formatting and parsing again is stable.
      assert.deepEqual(parseReference(formatReference(ref)), ref);
      assert.ok(!/[\s@]/.test(ref.repository));
    }),
    { numRuns: 5000 },
  );
});
