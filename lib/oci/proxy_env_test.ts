import assert from "node:assert/strict";
import { bypassProxyForLoopback, proxyFor, useProxyEnvironment } from "./proxy_env.ts";

/**
 * Runs `fn` with exactly `env` as the environment proxy_env.ts reads and writes (not the
 * process's: that is every test file's under --parallel), then the process's again.
 */
function withEnv(env: Record<string, string>, fn: (variables: Map<string, string>) => void): void {
  const variables = new Map(Object.entries(env));
  useProxyEnvironment({
    get: (name) => variables.get(name),
    set: (name, value) => variables.set(name, value),
  });
  try {
    fn(variables);
  } finally {
    useProxyEnvironment(undefined);
  }
}

Deno.test("proxyFor: Deno's order, NO_PROXY's IPs, networks and domains, no credentials", () => {
  withEnv({ HTTP_PROXY: "http://u:p@proxy:3128", HTTPS_PROXY: "secure:8080" }, () => {
    assert.deepEqual(proxyFor("http://r.example/v2/"), {
      proxy: "http://proxy:3128",
      variable: "HTTP_PROXY",
    });
    assert.deepEqual(proxyFor("https://r.example/"), {
      proxy: "secure:8080",
      variable: "HTTPS_PROXY",
    });
  });
  // Credentials end at the last `@`: all of them left out, as a URL parser reads them.
  for (
    const [value, shown] of [
      ["http://alice:top@secret@proxy:3128", "http://proxy:3128"],
      ["alice:top@secret@proxy:3128", "proxy:3128"],
      ["http://alice:a/b@secret@proxy:3128", "http://proxy:3128"],
    ]
  ) {
    withEnv({ HTTPS_PROXY: value }, () => {
      assert.equal(proxyFor("https://r.example/")?.proxy, shown, value);
    });
  }
  withEnv({ ALL_PROXY: "socks5://s:1080", http_proxy: "http://p:1" }, () => {
    assert.equal(proxyFor("http://r.example/")?.variable, "ALL_PROXY");
  });
  withEnv({ HTTP_PROXY: "ftp://x", http_proxy: "http://p:1" }, () => {
    assert.equal(proxyFor("http://r.example/")?.variable, "http_proxy", "ftp: is not usable");
  });
  withEnv({ HTTP_PROXY: "http://p:1", REQUEST_METHOD: "GET" }, () => {
    assert.equal(proxyFor("http://r.example/"), undefined, "ignored under CGI");
  });
  withEnv(
    { HTTP_PROXY: "http://p:1", no_proxy: "example.com, 10.0.0.0/8,fd00::/8, 192.168.1.7" },
    () => {
      for (const url of ["http://example.com/", "http://a.example.com:5000/", "http://10.2.3.4/"]) {
        assert.equal(proxyFor(url), undefined, url);
      }
      assert.equal(proxyFor("http://[fd00::1]:5000/"), undefined);
      assert.equal(proxyFor("http://192.168.1.7/"), undefined);
      assert.ok(proxyFor("http://notexample.com/"));
      assert.ok(proxyFor("http://192.168.1.8/"));
      assert.ok(proxyFor("http://[fe80::1]/"));
    },
  );
  withEnv({ HTTP_PROXY: "http://p:1", NO_PROXY: "*" }, () => {
    assert.equal(proxyFor("http://r.example/"), undefined);
  });
});

Deno.test("bypassProxyForLoopback: loopback joins NO_PROXY (else no_proxy's list)", () => {
  withEnv({ http_proxy: "http://p:1", no_proxy: "corp.example" }, (variables) => {
    assert.ok(proxyFor("http://127.0.0.1:5000/"), "proxied before");
    bypassProxyForLoopback();
    assert.equal(
      variables.get("NO_PROXY"),
      "corp.example,localhost,127.0.0.0/8,::1,::ffff:127.0.0.0/104",
    );
    for (
      const url of [
        "http://127.0.0.1:5000/",
        "http://127.9.0.1/",
        "http://localhost:5000/",
        "http://[::1]:5000/",
        "http://[::ffff:127.0.0.1]/",
        "http://corp.example/",
      ]
    ) {
      assert.equal(proxyFor(url), undefined, url);
    }
    assert.ok(proxyFor("http://128.0.0.1/"));
  });
});
