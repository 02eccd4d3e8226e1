/**
 * build's progress while it reads a tar: on a terminal, bytes against the file's size, or for
 * standard input (no size known) bytes and their rate; nothing on a stderr that is no terminal.
 * Before, both showed only a count of entries. The terminal is a pty from util-linux `script`.
 */
import assert from "node:assert/strict";
import { command, REPO_ROOT, requires } from "./_support/requires.ts";
import { withTempDir } from "./_support/temp_dir.ts";

const ignore = requires(command("script"), command("tar"));

const quoted = (text: string) => `'${text.replaceAll("'", `'\\''`)}'`;

/** Runs `shellCommand` with stdin, stdout and stderr on a pty; returns what the pty showed. */
async function onTerminal(work: string, shellCommand: string): Promise<string> {
  const runner = `${work}/run.sh`;
  Deno.writeTextFileSync(runner, `#!/bin/sh\n${shellCommand}\n`, { mode: 0o755 });
  const result = await new Deno.Command("script", {
    args: ["-qec", runner, "/dev/null"],
    env: isolated(work),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const shown = new TextDecoder().decode(result.stdout);
  assert.equal(result.code, 0, shown + new TextDecoder().decode(result.stderr));
  return shown;
}

function isolated(work: string): Record<string, string> {
  return {
    EROFS_OCI_CACHE_DIR: `${work}/cache`,
    EROFS_OCI_STATE_DIR: `${work}/state`,
    EROFS_OCI_RUNTIME_DIR: `${work}/run`,
  };
}

async function makeTar(work: string): Promise<string> {
  Deno.mkdirSync(`${work}/src`);
  for (let i = 0; i < 4; i++) {
    Deno.writeFileSync(`${work}/src/f${i}`, crypto.getRandomValues(new Uint8Array(65536)));
  }
  const tar = `${work}/src.tar`;
  const made = await new Deno.Command("tar", { args: ["-cf", tar, "-C", `${work}/src`, "."] })
    .output();
  assert.ok(made.success);
  return tar;
}

const CLI = quoted(`${REPO_ROOT}/scripts/erofs-oci-dev`);
const UNIT = String.raw`[\d.]+ (?:B|KiB|MiB|GiB)`;

Deno.test({
  name: "build from standard input on a terminal shows bytes read and their rate",
  ignore,
  async fn() {
    await withTempDir("erofs-oci-build-progress-", async (work) => {
      const tar = await makeTar(work);
      const shown = await onTerminal(
        work,
        `${CLI} build - -o ${quoted(`${work}/stdin.erofs`)} < ${quoted(tar)}`,
      );
      assert.match(
        shown,
        new RegExp(String.raw`reading standard input ${UNIT} \(${UNIT}/s\), \d+ entries`),
      );
      const fromFile = await onTerminal(
        work,
        `${CLI} build ${quoted(tar)} -o ${quoted(`${work}/file.erofs`)}`,
      );
      const size = Deno.statSync(tar).size;
      assert.match(
        fromFile,
        new RegExp(
          String.raw`reading \S*src\.tar ${UNIT} / ${
            (size / 1024).toFixed(1)
          } KiB \(\d+%\), \d+ entries`,
        ),
      );
    });
  },
});

Deno.test({
  name: "build from standard input with stderr not a terminal prints no progress",
  ignore: requires(command("tar")),
  async fn() {
    await withTempDir("erofs-oci-build-progress-", async (work) => {
      const tar = await makeTar(work);
      const result = await new Deno.Command("sh", {
        args: ["-c", `${CLI} build - -o ${quoted(`${work}/x.erofs`)} < ${quoted(tar)}`],
        env: isolated(work),
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(result.stderr);
      assert.equal(result.code, 0, stderr);
      assert.doesNotMatch(stderr, /reading|\r/);
    });
  },
});
