/**
 * Credentials from Docker's config.json (`auths`, `credHelpers`, `credsStore` with a real helper
 * program on PATH) against a real registry with Basic and token auth, and the precedence of
 * command-line credentials over the file.
 */
import assert from "node:assert/strict";
import { command, REPO_ROOT, requires } from "./_support/requires.ts";
import { startRegistry, type TestRegistry } from "./_support/registry.ts";
import {
  assertCliError,
  assertSuccess,
  describe,
  runCli,
  startCli,
  stopCli,
} from "./_support/cli.ts";
import { pushImage } from "./_support/oci_raw.ts";
import { EROFS_MEDIA_TYPE, loadFixture } from "./_support/oci_fixtures.ts";
import { sleep } from "../lib/timers.ts";

const ignore = requires(command("docker-registry"), command("htpasswd"), command("openssl"));
const HELPER_NAME = "erofsocitest";

async function registryWithImage(auth: "basic" | "token"): Promise<TestRegistry> {
  const registry = await startRegistry({ auth });
  try {
    const fixture = await loadFixture("layer2.erofs");
    await pushImage(registry, "creds/app", "v1", [
      { bytes: fixture.bytes, mediaType: EROFS_MEDIA_TYPE },
    ]);
    return registry;
  } catch (error) {
    await registry.stop();
    throw error;
  }
}

/** A DOCKER_CONFIG directory with `config`, and a bin dir holding a credential helper. */
async function dockerConfig(config: unknown, helperSecret?: { username: string; secret: string }) {
  const dir = await Deno.makeTempDir({ prefix: "erofs-oci-docker-config-" });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
  const bin = `${dir}/bin`;
  await Deno.mkdir(bin);
  if (helperSecret) {
    // Records the server name it was asked about, answers like docker-credential-* helpers.
    await Deno.writeTextFile(
      `${bin}/docker-credential-${HELPER_NAME}`,
      `#!/bin/sh
[ "$1" = get ] || exit 1
read -r server
printf '%s\\n' "$server" >> "${dir}/helper-asked"
printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}\\n' "$server" '${helperSecret.username}' '${helperSecret.secret}'
`,
      { mode: 0o755 },
    );
  }
  return {
    env: { DOCKER_CONFIG: dir, PATH: `${bin}:${Deno.env.get("PATH") ?? ""}` },
    helperAsked: async () => {
      try {
        return (await Deno.readTextFile(`${dir}/helper-asked`)).trim().split("\n");
      } catch {
        return [];
      }
    },
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

const base64 = (text: string) => btoa(text);

for (const auth of ["basic", "token"] as const) {
  Deno.test({
    name: `oci credentials: config.json auths, credHelpers and credsStore work (${auth})`,
    ignore,
    fn: async () => {
      await using registry = await registryWithImage(auth);
      const image = `${registry.host}/creds/app:v1`;
      const secret = { username: registry.username, secret: registry.password };

      {
        await using config = await dockerConfig({
          auths: { [registry.host]: { auth: base64(`${registry.username}:${registry.password}`) } },
        });
        assertSuccess(await runCli(["inspect", image, "--plain-http"], { env: config.env }));
      }
      {
        await using config = await dockerConfig({
          auths: { [`http://${registry.host}/v2/`]: { auth: base64(`${registry.username}:x`) } },
          credHelpers: { [registry.host]: HELPER_NAME },
        }, secret);
        const result = await runCli(["inspect", image, "--plain-http"], { env: config.env });
        assertSuccess(result);
        assert.deepEqual(await config.helperAsked(), [registry.host], describe(result));
      }
      {
        await using config = await dockerConfig({ credsStore: HELPER_NAME }, secret);
        const result = await runCli(["inspect", image, "--plain-http"], { env: config.env });
        assertSuccess(result);
        assert.ok((await config.helperAsked()).includes(registry.host), describe(result));
      }
    },
  });
}

Deno.test({
  name: "oci credentials: command-line credentials win over config.json; bad ones fail once",
  ignore,
  fn: async () => {
    await using registry = await registryWithImage("basic");
    const image = `${registry.host}/creds/app:v1`;
    await using config = await dockerConfig({
      auths: { [registry.host]: { auth: base64(`${registry.username}:stale-password`) } },
    });
    assertCliError(await runCli(["inspect", image, "--plain-http"], { env: config.env }), 1);
    const explicit = await runCli(
      ["inspect", image, "--plain-http", "--username", registry.username, "--password-stdin"],
      { env: config.env, stdin: registry.password },
    );
    assertSuccess(explicit);
  },
});

/** Whether `pid` still runs (not gone, not a zombie) after up to 2 s. */
async function stillRuns(pid: number): Promise<boolean> {
  for (let i = 0; i < 40; i++) {
    try {
      if (/^\d+ \(.*\) Z/.test(await Deno.readTextFile(`/proc/${pid}/stat`))) return false;
    } catch {
      return false;
    }
    await sleep(50);
  }
  return true;
}

/** The pid a helper script writes to `file`, once it has (15 s at most). */
async function pidWrittenTo(file: string): Promise<number> {
  for (let waited = 0; waited < 15_000; waited += 50) {
    if ((await Deno.readTextFile(file).catch(() => "")).trim()) break;
    await sleep(50);
  }
  return Number(await Deno.readTextFile(file));
}

/**
 * A registry holding the image (Basic auth) and a docker config whose credential helper for it,
 * `docker-credential-NAME`, runs `script(dir, registry)` (dir: the config's directory); both gone
 * at the end.
 */
async function registryWithHelper(
  name: string,
  script: (dir: string, registry: TestRegistry) => string,
) {
  const registry = await registryWithImage("basic");
  let config: Awaited<ReturnType<typeof dockerConfig>> | undefined;
  try {
    config = await dockerConfig({ credHelpers: { [registry.host]: name } });
    const dir = config.env.DOCKER_CONFIG;
    await addHelper(dir, name, script(dir, registry));
    const made = config;
    return {
      registry,
      config: made,
      dir,
      async [Symbol.asyncDispose]() {
        await made[Symbol.asyncDispose]();
        await registry.stop();
      },
    };
  } catch (error) {
    await config?.[Symbol.asyncDispose]();
    await registry.stop();
    throw error;
  }
}

/** Adds `docker-credential-NAME` running `script` to the config's bin dir. */
async function addHelper(dir: string, name: string, script: string): Promise<void> {
  await Deno.writeTextFile(`${dir}/bin/docker-credential-${name}`, `#!/bin/sh\n${script}\n`, {
    mode: 0o755,
  });
}

Deno.test({
  name: "oci credentials: identity tokens, huge helper output, a FIFO config.json: one clear line",
  ignore,
  fn: async () => {
    await using registry = await registryWithImage("token");
    const image = `${registry.host}/creds/app:v1`;
    {
      await using config = await dockerConfig({
        auths: {
          [registry.host]: {
            auth: base64("00000000-0000-0000-0000-000000000000:"),
            identitytoken: "abc",
          },
        },
      });
      assertCliError(
        await runCli(["inspect", image, "--plain-http"], { env: config.env }),
        1,
        /auths\[".*"\] holds an identity token \(OAuth refresh token from docker login\), which erofs-oci does not support$/,
      );
    }
    {
      await using config = await dockerConfig({ credHelpers: { [registry.host]: "huge" } });
      await addHelper(config.env.DOCKER_CONFIG, "huge", "head -c 300000000 /dev/zero");
      assertCliError(
        await runCli(["inspect", image, "--plain-http"], { env: config.env }),
        1,
        /credential helper 'docker-credential-huge' printed more than 1\.0 MiB \(killed\)$/,
      );
    }
    {
      await using config = await dockerConfig({});
      const path = `${config.env.DOCKER_CONFIG}/config.json`;
      await Deno.remove(path);
      assert.ok((await new Deno.Command("mkfifo", { args: [path] }).output()).success);
      assertCliError(
        await runCli(["inspect", image, "--plain-http"], { env: config.env, timeoutMs: 30_000 }),
        1,
        /config\.json is not a regular file$/,
      );
    }
  },
});

Deno.test({
  name: "oci credentials: a helper that hangs with a child is killed with it at 20 s",
  ignore,
  fn: async () => {
    // Its child holds stdout open: waiting for the pipe's end would wait 100 s.
    await using scene = await registryWithHelper(
      "hang",
      (dir) => `sleep 100 & echo $! > "${dir}/child.pid"; wait`,
    );
    const { registry, config, dir } = scene;
    const started = performance.now();
    const result = await runCli(["inspect", `${registry.host}/creds/app:v1`, "--plain-http"], {
      env: config.env,
      timeoutMs: 60_000,
    });
    const seconds = (performance.now() - started) / 1000;
    const child = Number(await Deno.readTextFile(`${dir}/child.pid`));
    const childRan = await stillRuns(child);
    if (childRan) Deno.kill(child, "SIGKILL");
    assertCliError(
      result,
      1,
      /credential helper 'docker-credential-hang' did not answer within 20 s \(killed\)$/,
    );
    assert.ok(seconds < 30, `took ${seconds} s`);
    assert.ok(!childRan, "the helper's child was killed with it");
  },
});

Deno.test({
  name: "oci credentials: Ctrl-C while a helper hangs stops the helper and its child too",
  ignore,
  fn: async () => {
    await using scene = await registryWithHelper(
      "hang",
      (dir) => `sleep 100 & echo $! > "${dir}/child.pid"; wait`,
    );
    const { registry, config, dir } = scene;
    const started = startCli(["inspect", `${registry.host}/creds/app:v1`, "--plain-http"], {
      ...config.env,
    });
    try {
      const child = await pidWrittenTo(`${dir}/child.pid`);
      const interruptedAt = performance.now();
      started.child.kill("SIGINT");
      const result = await started.result;
      const seconds = (performance.now() - interruptedAt) / 1000;
      const childRan = await stillRuns(child);
      if (childRan) Deno.kill(child, "SIGKILL");
      assertCliError(
        result,
        130,
        /interrupted \(SIGINT\) while credential helper 'docker-credential-hang' ran/,
      );
      assert.ok(seconds < 5, `took ${seconds} s after the SIGINT`);
      assert.ok(!childRan, "the helper's child was stopped with the command");
    } finally {
      await stopCli(started);
    }
  },
});

Deno.test({
  name: "oci credentials: index ended by SIGTERM while a helper hangs stops the helper too",
  ignore,
  fn: async () => {
    await using scene = await registryWithHelper(
      "hang",
      (dir) => `echo $$ > "${dir}/helper.pid"; sleep 100 & wait`,
    );
    const { registry, config, dir } = scene;
    // index exits from its own signal handler (it removes what it wrote, then Deno.exit), and a
    // signal sent to the command alone does not reach the helper in its process group.
    const started = startCli(
      ["index", `${registry.host}/creds/app:v1`, "--plain-http", "-o", `${dir}/out`],
      { ...config.env },
    );
    try {
      const helper = await pidWrittenTo(`${dir}/helper.pid`);
      started.child.kill("SIGTERM");
      const result = await started.result;
      const helperRan = await stillRuns(helper);
      if (helperRan) Deno.kill(helper, "SIGKILL");
      assertCliError(result, 130, /index interrupted: the files it had written were removed/);
      assert.ok(!helperRan, "the credential helper outlived the interrupted index");
    } finally {
      await stopCli(started);
    }
  },
});

Deno.test({
  name: "oci credentials: a helper that prompts on the terminal gets its answer",
  ignore: ignore || requires(command("script")),
  fn: async () => {
    // Asks on /dev/tty, as helpers asking for a passphrase or a one-time code do.
    await using scene = await registryWithHelper(
      "prompt",
      (_, registry) =>
        `echo "password for ${registry.host}:" >/dev/tty; read answer </dev/tty\n` +
        `printf '{"Username":"%s","Secret":"%s"}' ${registry.username} "$answer"`,
    );
    const { registry, config } = scene;
    const cli = `${REPO_ROOT}/scripts/erofs-oci-dev`;
    const line = [cli, "inspect", `${registry.host}/creds/app:v1`, "--plain-http"]
      .map((arg) => `'${arg}'`).join(" ");
    // script(1) gives the command a terminal; its stdin is what is typed there.
    const child = new Deno.Command("script", {
      args: ["-qec", line, "/dev/null"],
      env: config.env,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(`${registry.password}\n`));
    const timer = AbortSignal.timeout(30_000);
    timer.addEventListener("abort", () => child.kill("SIGKILL"));
    const out = await child.output();
    await writer.close().catch(() => {});
    const text = new TextDecoder().decode(out.stdout);
    assert.ok(!timer.aborted, `timed out:\n${text}`);
    assert.equal(out.code, 0, text);
    assert.match(text, /password for /);
    assert.match(text, /sha256:[0-9a-f]{64}/, text);
  },
});
