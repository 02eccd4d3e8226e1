/**
 * A path argument that is not UTF-8 (`out\xff.erofs`): Deno hands the program each such byte as
 * U+FFFD, so the command acted on another path — `build -o` wrote `out\u{FFFD}.erofs`, `mount`
 * mounted another image onto another directory. Refused in one line instead (exit 2).
 */
import assert from "node:assert/strict";
import { REPO_ROOT } from "./_support/requires.ts";
import { refuseNonUtf8Arguments } from "../lib/cli/command_line.ts";
import { UsageError } from "../lib/errors.ts";

Deno.test("an argument that is not UTF-8 is refused, nothing written under its lossy name", async () => {
  const work = await Deno.makeTempDir({ prefix: "erofs-oci-non-utf8-" });
  try {
    await Deno.mkdir(`${work}/src`);
    await Deno.writeTextFile(`${work}/src/a.txt`, "a\n");
    const run = await new Deno.Command("sh", {
      args: [
        "-c",
        'exec "$0" build "$1/src" -o "$(printf "%s/out\\377.erofs" "$1")"',
        `${REPO_ROOT}/scripts/erofs-oci-dev`,
        work,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 2, stderr);
    assert.match(stderr, /^erofs-oci: argument 4 is not valid UTF-8: .*out\uFFFD\.erofs/);
    assert.deepEqual([...Deno.readDirSync(work)].map((e) => e.name), ["src"]);
    // A real U+FFFD in a name is UTF-8: taken as given.
    const fine = await new Deno.Command(`${REPO_ROOT}/scripts/erofs-oci-dev`, {
      args: ["build", `${work}/src`, "-o", `${work}/out\uFFFD.erofs`],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(fine.code, 0, new TextDecoder().decode(fine.stderr));
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});

Deno.test("refuseNonUtf8Arguments: only the program's own arguments, read only when one holds U+FFFD", () => {
  const line = (...parts: (string | number[])[]) =>
    new Uint8Array(parts.flatMap((p) => [
      ...(typeof p === "string" ? new TextEncoder().encode(p) : p),
      0,
    ]));
  let read = 0;
  const raw = (bytes: Uint8Array) => () => (read++, bytes);
  refuseNonUtf8Arguments(["list"], raw(line("deno", "run", "main.ts", "list")));
  assert.equal(read, 0, "no U+FFFD: the command line is not read");
  // The runtime's own arguments before them do not count.
  refuseNonUtf8Arguments(
    ["x\uFFFD"],
    raw(line([0x64, 0xff], "main.ts", [0x78, 0xef, 0xbf, 0xbd])),
  );
  assert.throws(
    () => refuseNonUtf8Arguments(["a", "x\uFFFD"], raw(line("deno", "a", [0x78, 0xff]))),
    (e: unknown) => e instanceof UsageError && /^argument 2 is not valid UTF-8/.test(e.message),
  );
});

Deno.test("an EROFS_OCI_* variable that is not UTF-8: one line naming it (was an internal error)", async () => {
  const run = await new Deno.Command("sh", {
    args: [
      "-c",
      'EROFS_OCI_RUNTIME_DIR="$(printf "/tmp/erofs-oci-run\\377")" exec "$0" list',
      `${REPO_ROOT}/scripts/erofs-oci-dev`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(run.stderr);
  assert.equal(run.code, 1, stderr);
  assert.match(
    stderr,
    /^erofs-oci: environment variable EROFS_OCI_RUNTIME_DIR is not valid UTF-8\n/,
  );
  assert.doesNotMatch(stderr, /internal error/);
});
