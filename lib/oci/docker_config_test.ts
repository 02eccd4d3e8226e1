import assert from "node:assert/strict";
import { OciError } from "../errors.ts";
import { dockerConfigCredentials, dockerConfigPath } from "./docker_config.ts";
import { sleep } from "../timers.ts";

const b64 = (text: string) => btoa(text);

/** A temp dir with config.json and docker-credential-* scripts, PATH extended for the test. */
async function withConfig(
  config: unknown,
  helpers: Record<string, string>,
  fn: (path: string, dir: string) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-docker-config-" });
  const oldPath = Deno.env.get("PATH") ?? "";
  try {
    const path = `${dir}/config.json`;
    await Deno.writeTextFile(path, typeof config === "string" ? config : JSON.stringify(config));
    for (const [name, script] of Object.entries(helpers)) {
      await Deno.writeTextFile(`${dir}/docker-credential-${name}`, `#!/bin/sh\n${script}\n`, {
        mode: 0o755,
      });
    }
    Deno.env.set("PATH", `${dir}:${oldPath}`);
    await fn(path, dir);
  } finally {
    Deno.env.set("PATH", oldPath);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("dockerConfigPath: DOCKER_CONFIG, else ~/.docker", () => {
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  assert.equal(dockerConfigPath(env({ DOCKER_CONFIG: "/c", HOME: "/h" })), "/c/config.json");
  assert.equal(dockerConfigPath(env({ HOME: "/h" })), "/h/.docker/config.json");
});

Deno.test("dockerConfigCredentials: auths entries (base64 auth, user/password, URL keys)", async () => {
  await withConfig(
    {
      auths: {
        "localhost:5000": { auth: b64("alice:s3cr:et") },
        "https://reg.example.com/v1/": { auth: b64("bob:pw") },
        "other.example": { username: "carol", password: "pw2" },
        "https://index.docker.io/v1/": { auth: b64("hub:token") },
        "empty.example": {},
      },
    },
    {},
    async (path) => {
      assert.deepEqual(await dockerConfigCredentials("localhost:5000", path), {
        username: "alice",
        password: "s3cr:et",
      });
      assert.deepEqual(await dockerConfigCredentials("reg.example.com", path), {
        username: "bob",
        password: "pw",
      });
      assert.deepEqual(await dockerConfigCredentials("other.example", path), {
        username: "carol",
        password: "pw2",
      });
      assert.deepEqual(await dockerConfigCredentials("docker.io", path), {
        username: "hub",
        password: "token",
      });
      assert.equal(await dockerConfigCredentials("empty.example", path), undefined);
      assert.equal(await dockerConfigCredentials("unknown.example", path), undefined);
      assert.equal(await dockerConfigCredentials("localhost:5001", path), undefined);
    },
  );
});

Deno.test("dockerConfigCredentials: credHelpers and credsStore get the server name on stdin", async () => {
  const echoServer =
    `read server; printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s"}' "$server" "$server"`;
  await withConfig({
    credHelpers: { "helped.example": "echo" },
    credsStore: "store",
    auths: { "fallback.example": { auth: b64("f:g") } },
  }, {
    echo: echoServer,
    store:
      `read server; if [ "$server" = stored.example ]; then ${
        echoServer.replace("read server; ", "")
      }; ` +
      `else echo "credentials not found in native keychain"; exit 1; fi`,
  }, async (path) => {
    assert.deepEqual(await dockerConfigCredentials("helped.example", path), {
      username: "u-helped.example",
      password: "s",
    });
    assert.deepEqual(await dockerConfigCredentials("stored.example", path), {
      username: "u-stored.example",
      password: "s",
    });
    // The store knows nothing: fall back to auths.
    assert.deepEqual(await dockerConfigCredentials("fallback.example", path), {
      username: "f",
      password: "g",
    });
    assert.equal(await dockerConfigCredentials("nothing.example", path), undefined);
  });
});

Deno.test("dockerConfigCredentials: Docker Hub helpers are asked for index.docker.io/v1/", async () => {
  await withConfig({ credsStore: "hub" }, {
    hub: `read server; printf '{"Username":"x","Secret":"%s"}' "$server"`,
  }, async (path) => {
    assert.deepEqual(await dockerConfigCredentials("docker.io", path), {
      username: "x",
      password: "https://index.docker.io/v1/",
    });
  });
});

Deno.test("dockerConfigCredentials: broken configs and helpers are one-line OciErrors", async () => {
  const cases: [unknown, Record<string, string>, string, RegExp][] = [
    ["{not json", {}, "r.example", /not a JSON object/],
    [{ auths: { "r.example": { auth: "%%%" } } }, {}, "r.example", /base64/],
    [{ auths: { "r.example": { auth: b64("nocolon") } } }, {}, "r.example", /user:password/],
    [{ credsStore: "missing-helper-xyz" }, {}, "r.example", /not found/],
    [{ credsStore: "../evil" }, {}, "r.example", /invalid credential helper/],
    [{ credsStore: "bad" }, { bad: "echo oops" }, "r.example", /not JSON/],
    [{ credsStore: "fails" }, { fails: "echo 'boom' >&2; exit 3" }, "r.example", /failed: boom/],
    [
      { credsStore: "partial" },
      { partial: `echo '{"Username":"u"}'` },
      "r.example",
      /Username\/Secret/,
    ],
  ];
  for (const [config, helpers, registry, why] of cases) {
    await withConfig(config, helpers, async (path) => {
      await assert.rejects(dockerConfigCredentials(registry, path), (e: unknown) => {
        assert.ok(e instanceof OciError, String(e));
        assert.match(e.message, why);
        assert.ok(!e.message.includes("\n"));
        return true;
      });
    });
  }
  assert.equal(await dockerConfigCredentials("r.example", "/nonexistent/config.json"), undefined);
});

/** Whether `pid` has ended (gone, or a zombie nobody reaped yet), waited for up to 2 s. */
async function ended(pid: number): Promise<boolean> {
  for (let i = 0; i < 40; i++) {
    try {
      const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
      if (/^\d+ \(.*\) Z/.test(stat)) return true;
    } catch {
      return true;
    }
    await sleep(50);
  }
  return false;
}

/** Kills `pid` if it still runs (a process a test's helper started and left behind). */
function killLeftOver(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* gone */ }
}

const LIMITS = { timeoutMs: 1000, outputBytes: 64 * 1024 };

Deno.test("dockerConfigCredentials: a helper past the time limit is killed with its children", async () => {
  // Its child keeps stdout open: the kill must not wait for that pipe's end.
  await withConfig({ credsStore: "hang" }, {
    hang: `sleep 100 & echo $! > "$(dirname "$0")/child.pid"; wait`,
  }, async (path, dir) => {
    const started = performance.now();
    await assert.rejects(dockerConfigCredentials("r.example", path, LIMITS), (e: unknown) => {
      assert.ok(e instanceof OciError, String(e));
      assert.match(e.message, /'docker-credential-hang' did not answer within 1 s \(killed\)$/);
      assert.match(e.hint ?? "", /docker-credential-hang get/);
      return true;
    });
    assert.ok(performance.now() - started < 5000, `took ${performance.now() - started} ms`);
    const child = Number(await Deno.readTextFile(`${dir}/child.pid`));
    const childEnded = await ended(child);
    killLeftOver(child);
    assert.ok(childEnded, "the helper's child was killed with it");
  });
  await withConfig({ credsStore: "hang" }, { hang: "exec sleep 100" }, async (path) => {
    await assert.rejects(dockerConfigCredentials("r.example", path, LIMITS), /within 1 s/);
  });
});

Deno.test("dockerConfigCredentials: neither a helper's escaped child nor its leftovers are waited for", async () => {
  // A child in a session of its own (setsid) holding the pipes: not waited for past the limit.
  await withConfig({ credsStore: "escape" }, {
    escape: `setsid sleep 100 & echo $! > "$(dirname "$0")/child.pid"; sleep 100`,
  }, async (path, dir) => {
    const started = performance.now();
    await assert.rejects(dockerConfigCredentials("r.example", path, LIMITS), /within 1 s/);
    killLeftOver(Number(await Deno.readTextFile(`${dir}/child.pid`)));
    assert.ok(performance.now() - started < 5000, `took ${performance.now() - started} ms`);
  });
  // Answered and exited, a child still holding stdout: the answer is taken at once.
  await withConfig({ credsStore: "daemon" }, {
    daemon: `sleep 100 & echo $! > "$(dirname "$0")/child.pid"\n` +
      `echo '{"Username":"u","Secret":"s"}'`,
  }, async (path, dir) => {
    const started = performance.now();
    const found = await dockerConfigCredentials("r.example", path, LIMITS);
    killLeftOver(Number(await Deno.readTextFile(`${dir}/child.pid`)));
    assert.deepEqual(found, { username: "u", password: "s" });
    assert.ok(performance.now() - started < 900, `took ${performance.now() - started} ms`);
  });
});

Deno.test("dockerConfigCredentials: helper output and config.json are bounded", async () => {
  await withConfig(
    { credsStore: "huge" },
    { huge: "head -c 300000000 /dev/zero" },
    async (path) => {
      await assert.rejects(
        dockerConfigCredentials("r.example", path, LIMITS),
        /'docker-credential-huge' printed more than 64\.0 KiB \(killed\)$/,
      );
    },
  );
  await withConfig({ credsStore: "loud" }, {
    loud: "head -c 300000000 /dev/zero >&2; exit 1",
  }, async (path) => {
    await assert.rejects(dockerConfigCredentials("r.example", path, LIMITS), /more than 64\.0 KiB/);
  });
  await withConfig({ credsStore: "killed" }, { killed: "kill -9 $$" }, async (path) => {
    await assert.rejects(
      dockerConfigCredentials("r.example", path, LIMITS),
      /'docker-credential-killed' failed: killed by signal 9$/,
    );
  });
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-docker-config-" });
  try {
    const fifo = `${dir}/config.json`;
    const mkfifo = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(mkfifo.success);
    await assert.rejects(dockerConfigCredentials("r.example", fifo), (e: unknown) => {
      assert.ok(e instanceof OciError, String(e));
      assert.match(e.message, /config\.json is not a regular file$/);
      return true;
    });
    await Deno.remove(fifo);
    await Deno.writeTextFile(fifo, `{"auths":{}, "pad":"${"x".repeat(5 * 1024 * 1024)}"}`);
    await assert.rejects(dockerConfigCredentials("r.example", fifo), /larger than/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dockerConfigCredentials: identity tokens (OAuth refresh tokens) are refused, saying so", async () => {
  await withConfig({
    auths: {
      "acr.example": { auth: b64("00000000-0000-0000-0000-000000000000:"), identitytoken: "abc" },
    },
    credHelpers: { "helped.example": "oauth" },
  }, {
    oauth: `echo '{"Username":"<token>","Secret":"refresh"}'`,
  }, async (path) => {
    for (const registry of ["acr.example", "helped.example"]) {
      await assert.rejects(dockerConfigCredentials(registry, path), (e: unknown) => {
        assert.ok(e instanceof OciError, String(e));
        assert.match(e.message, /identity token \(OAuth refresh token .*not support/);
        assert.match(e.hint ?? "", /--password-stdin/);
        return true;
      });
    }
  });
});
