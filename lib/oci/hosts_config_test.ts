import assert from "node:assert/strict";
import { FormatError } from "../errors.ts";
import { loadRegistryHostsConfig, parseHostsToml } from "./hosts_config.ts";
import { parseTomlSubset } from "./toml_subset.ts";
import { parseRetryAfter } from "./host_pacing.ts";

Deno.test("hosts.toml: containerd's documented shapes", () => {
  const config = parseHostsToml(
    `# mirror first
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve", "push"]

[host."https://mirror.example:5000"]
  capabilities = ["pull"]
  ca = "mirror-ca.pem"
  client = [["/etc/c.cert", "/etc/c.key"]]
  [host."https://mirror.example:5000".header]
    x-custom = ["a", "b"]

[host."http://10.0.0.1:8080/proxy"]
  capabilities = ['pull', 'resolve']
  override_path = true
  skip_verify = false
`,
    "/d/docker.io/hosts.toml",
    "/d/docker.io",
  );
  assert.equal(config.server?.apiRoot, "https://registry-1.docker.io/v2");
  assert.equal(config.mirrors.length, 2);
  const [a, b] = config.mirrors;
  assert.equal(a.origin, "https://mirror.example:5000");
  assert.equal(a.apiRoot, "https://mirror.example:5000/v2");
  assert.deepEqual([...a.capabilities], ["pull"]);
  assert.deepEqual(a.caCertPaths, ["/d/docker.io/mirror-ca.pem"]);
  assert.deepEqual(a.clientCerts, [{ certPath: "/etc/c.cert", keyPath: "/etc/c.key" }]);
  assert.deepEqual(a.headers, { "x-custom": "a, b" });
  assert.equal(b.apiRoot, "http://10.0.0.1:8080/proxy");
  assert.deepEqual([...b.capabilities], ["pull", "resolve"]);
  const plain = parseHostsToml(`[host."m:1"]\n`, "f", "/d");
  assert.equal(plain.mirrors[0].apiRoot, "https://m:1/v2");
  assert.deepEqual([...plain.mirrors[0].capabilities], ["pull", "resolve", "push"]);
  assert.equal(plain.server, undefined);
});

Deno.test("hosts.toml: malformed input is a FormatError naming the line", () => {
  for (
    const text of [
      `server = """x"""`,
      `[[host]]`,
      `a = 1\na = 2`,
      `a = "unterminated`,
      `a = 1.5`,
      `a = ${"[".repeat(100)}`,
      `[host."x"]\ncapabilities = ["fly"]`,
      `[host."ftp://x"]`,
      `[host."x".header]\nbad = "a\\nb"`,
    ]
  ) {
    assert.throws(() => parseHostsToml(text, "h.toml", "/d"), FormatError, text);
  }
  const proto = parseTomlSubset(`__proto__ = "x"\n[constructor]\na = true`, "p");
  assert.equal(({} as Record<string, unknown>).a, undefined);
  assert.equal(proto["__proto__"], "x");
});

Deno.test("hosts.toml: HOST:PORT directory, else _default, else nothing", () => {
  const dir = Deno.makeTempDirSync();
  try {
    assert.equal(loadRegistryHostsConfig("localhost:5000", dir), undefined);
    Deno.mkdirSync(`${dir}/_default`);
    Deno.writeTextFileSync(`${dir}/_default/hosts.toml`, `[host."http://d:1"]\n`);
    assert.equal(loadRegistryHostsConfig("localhost:5000", dir)?.mirrors[0].origin, "http://d:1");
    Deno.mkdirSync(`${dir}/localhost:5000`);
    Deno.writeTextFileSync(`${dir}/localhost:5000/hosts.toml`, `[host."http://own:1"]\n`);
    assert.equal(loadRegistryHostsConfig("localhost:5000", dir)?.mirrors[0].origin, "http://own:1");
    Deno.writeTextFileSync(`${dir}/localhost:5000/hosts.toml`, "x".repeat(300_000));
    assert.throws(() => loadRegistryHostsConfig("localhost:5000", dir), FormatError);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("Retry-After: seconds or an HTTP-date, bounded", () => {
  assert.equal(parseRetryAfter("3"), 3000);
  assert.equal(parseRetryAfter(" 0 "), 0);
  assert.equal(parseRetryAfter("999999"), 600_000);
  const now = Date.parse("Tue, 01 Dec 2026 05:00:00 GMT");
  assert.equal(parseRetryAfter("Tue, 01 Dec 2026 05:00:07 GMT", now), 7000);
  assert.equal(parseRetryAfter("Tue, 01 Dec 2026 04:00:00 GMT", now), 0);
  assert.equal(parseRetryAfter("soon"), undefined);
  assert.equal(parseRetryAfter("-1"), undefined);
  assert.equal(parseRetryAfter(null), undefined);
});
