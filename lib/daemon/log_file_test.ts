import assert from "node:assert/strict";

/** Runs `body` in a child Deno whose console goes to a log file; returns the file's lines. */
async function logged(body: string): Promise<string[]> {
  const dir = await Deno.makeTempDir({ prefix: "log-file-" });
  try {
    const here = new URL(".", import.meta.url).href;
    const script = `
      import { redirectConsoleToFile } from "${here}log_file.ts";
      import { warn, info } from "${here}../log.ts";
      redirectConsoleToFile(Deno.args[0]);
      ${body}`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script, `${dir}/server.log`],
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    return Deno.readTextFileSync(`${dir}/server.log`).trimEnd().split("\n")
      .map((line) => line.replace(/^\S+ /, "")); // the time
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("server log: warnings at level warn without the terminal prefix; errors without stacks", async () => {
  const lines = await logged(`
    warn("FUSE read of 4096 bytes at 0 failed");
    info("ready");
    console.log("server 1 starting");
    console.error(new Error("boom"));
    console.error("erofs-oci: the registry went away");`);
  assert.deepEqual(lines, [
    "warn FUSE read of 4096 bytes at 0 failed",
    "info ready",
    "info server 1 starting",
    "error boom",
    "error the registry went away",
  ]);
  assert.doesNotMatch(lines.join("\n"), /\bat .*\.ts:\d+/, "no stack trace");
});

Deno.test("server log: turns over at its bound into server.log.1, so it never grows past twice that", async () => {
  const dir = await Deno.makeTempDir({ prefix: "log-file-" });
  try {
    const here = new URL(".", import.meta.url).href;
    // 5,000 failed reads logged against a 64 KiB bound (the default is 4 MiB).
    const script = `
      import { redirectConsoleToFile } from "${here}log_file.ts";
      import { warn } from "${here}../log.ts";
      redirectConsoleToFile(Deno.args[0], 65536);
      for (let i = 0; i < 5000; i++) warn("FUSE read of 4096 bytes at " + i + " failed");`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", script, `${dir}/server.log`],
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const current = Deno.readTextFileSync(`${dir}/server.log`);
    const previous = Deno.readTextFileSync(`${dir}/server.log.1`);
    assert(
      current.length <= 65536 && previous.length <= 65536,
      `${current.length}, ${previous.length}`,
    );
    assert.match(
      current.trimEnd().split("\n").at(-1)!,
      /at 4999 failed$/,
      "the newest line is kept",
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "server.log",
      "server.log.1",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
