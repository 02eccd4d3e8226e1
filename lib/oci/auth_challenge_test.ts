import assert from "node:assert/strict";
import fc from "fast-check";
import { type AuthChallenge, findBearerChallenge, parseAuthChallenges } from "./auth_challenge.ts";

Deno.test("parseAuthChallenges: registry-style challenges", () => {
  const cases: [string, AuthChallenge[]][] = [
    [
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
      [{
        scheme: "bearer",
        params: {
          realm: "https://auth.docker.io/token",
          service: "registry.docker.io",
          scope: "repository:library/alpine:pull",
        },
      }],
    ],
    ['Basic realm="Registry Realm"', [{ scheme: "basic", params: { realm: "Registry Realm" } }]],
    ["basic realm=plain", [{ scheme: "basic", params: { realm: "plain" } }]],
    [
      'BEARER  Realm = "https://a/t" , SERVICE=svc',
      [{ scheme: "bearer", params: { realm: "https://a/t", service: "svc" } }],
    ],
    [
      'Basic realm="a", Bearer realm="https://b/token", scope="x:y:pull,push"',
      [
        { scheme: "basic", params: { realm: "a" } },
        { scheme: "bearer", params: { realm: "https://b/token", scope: "x:y:pull,push" } },
      ],
    ],
    ['Bearer realm="with \\"quote\\" and \\\\ slash"', [{
      scheme: "bearer",
      params: { realm: 'with "quote" and \\ slash' },
    }]],
    ["Negotiate abc123==, Basic realm=x", [
      { scheme: "negotiate", params: {}, token68: "abc123==" },
      { scheme: "basic", params: { realm: "x" } },
    ]],
    ["Bearer", [{ scheme: "bearer", params: {} }]],
    ["", []],
    [",,, ,", []],
    ['Bearer realm="unterminated', [{ scheme: "bearer", params: {} }]],
    ['Bearer realm="a", realm="b"', [{ scheme: "bearer", params: { realm: "a" } }]],
    ['Bearer __proto__="x",realm="r"', [{
      scheme: "bearer",
      params: { ["__proto__"]: "x", realm: "r" },
    }]],
  ];
  for (const [header, expected] of cases) {
    const got = parseAuthChallenges(header).map((c) => ({ ...c, params: { ...c.params } }));
    assert.deepEqual(got, expected.map((c) => ({ ...c, params: { ...c.params } })), header);
  }
});

Deno.test("findBearerChallenge: needs an absolute http(s) realm", () => {
  assert.deepEqual(
    findBearerChallenge(parseAuthChallenges('Bearer realm="https://a/token",service="s"')),
    { realm: "https://a/token", service: "s" },
  );
  for (
    const header of ['Bearer realm="/relative"', 'Bearer realm="file:///etc/passwd"', "Bearer"]
  ) {
    assert.equal(findBearerChallenge(parseAuthChallenges(header)), undefined, header);
  }
  assert.equal(
    findBearerChallenge(parseAuthChallenges('Basic realm="x", Bearer realm="http://t/x"'))?.realm,
    "http://t/x",
  );
});

const token = fc.stringMatching(/^[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,10}$/);
const value = fc.string({ maxLength: 40 });
const challenge = fc.record({
  scheme: token,
  params: fc.uniqueArray(fc.tuple(token, value), {
    maxLength: 4,
    selector: ([name]) => name.toLowerCase(),
  }),
});

function quote(text: string): string {
  return `"${text.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
}

Deno.test("parseAuthChallenges: property: formatted challenges parse back", () => {
  fc.assert(
    fc.property(fc.array(challenge, { minLength: 1, maxLength: 3 }), (challenges) => {
      const header = challenges.map((c) =>
        c.params.length === 0
          ? c.scheme
          : `${c.scheme} ${c.params.map(([n, v]) => `${n}=${quote(v)}`).join(", ")}`
      ).join(", ");
      const parsed = parseAuthChallenges(header);
      assert.deepEqual(
        parsed.map((c) => ({ scheme: c.scheme, params: { ...c.params } })),
        challenges.map((c) => ({
          scheme: c.scheme.toLowerCase(),
          params: Object.fromEntries(c.params.map(([n, v]) => [n.toLowerCase(), v])),
        })),
        header,
      );
    }),
    { numRuns: 2000 },
  );
});

Deno.test("parseAuthChallenges: property: hostile headers never throw", () => {
  const hostile = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.fullUnicodeString({ maxLength: 100 }),
    fc.stringOf(fc.constantFrom("Bearer", "Basic", " ", ",", "=", '"', "\\", "realm", "a", "=="), {
      maxLength: 40,
    }),
    fc.constant("Bearer realm=" + "x".repeat(100_000)),
  );
  fc.assert(
    fc.property(hostile, (header) => {
      const parsed = parseAuthChallenges(header);
      assert.ok(Array.isArray(parsed));
      for (const c of parsed) {
        assert.equal(typeof c.scheme, "string");
        for (const v of Object.values(c.params)) assert.equal(typeof v, "string");
      }
      findBearerChallenge(parsed);
    }),
    { numRuns: 5000 },
  );
});
