/**
 * scripts/bench/readme_table.ts: the README's speed table from recorded benchmark runs written
 * into a temp dir (host JSON, VM results.tsv + host.txt, VM trace-python.tsv, gzip-mount JSON).
 * Checks the regenerated rows (ratios from the seconds, GET counts, dates, machine), that rows
 * without a record stay, that text outside the markers is byte-identical, that `deno fmt`
 * leaves the block as generated, and the exit codes of --check.
 */
import assert from "node:assert/strict";
import { BEGIN, END, rebuildReadme } from "../scripts/bench/readme_table.ts";
import { readSources } from "../scripts/bench/readme_sources.ts";
import { REPO_ROOT } from "./_support/requires.ts";

const SCRIPT = `${REPO_ROOT}/scripts/bench/readme_table.ts`;

const BEFORE = `# Project

Some prose before the table, with a | pipe and trailing spaces   
kept exactly.

${BEGIN}

| script (date, machine) | mount | cold find | cold python | cold full read | layer GETs (mount / find / python / read) | fetched / image | server peak RSS |
| --- | --- | --- | --- | --- | --- | --- | --- |
| \`scripts/bench-host.sh\`, FUSE, empty disk cache (old) | 9.99 s | 9.9× | 9.9× | 9.9× | 9 / 9 / 9 / 9 | 9.99 | 999 MB |
| same, remount on the filled disk cache | 9.99 s | 9.9× | 9.9× | 9.9× | 0 / 0 / 0 / 0 | 0.00 | 999 MB |
| \`scripts/bench-trace.sh\`, FUSE, recorded prefetch (2026-12-01, same host) | 4.29 s | — | 1.00× (no trace: 1.50×) | — | — | — | — |
| \`deno task bench\` (\`scripts/bench.sh\`), old VM row | — | 1.7× | — | 1.9× | 360 in all | 1.34 (read) | 178 MB |
| \`scripts/bench-gzip-mount.sh\`, old; × of \`curl \\| gunzip \\| tar x\` | 0.3 s | — | — | 1.1× | 0 / — / — / 36 | 1.02 | 158 MB |
| a hand-made row no script knows | 1 s | — | — | — | — | — | — |

${END}

Prose after the table.
`;

const seconds = (find: number, python: number, fullRead: number, mount: number) => ({
  find,
  python,
  fullRead,
  mount,
});

async function writeFixture(dir: string): Promise<void> {
  await Deno.writeTextFile(
    `${dir}/host-latest.json`,
    JSON.stringify({
      date: "2026-12-01T15:50:07.000Z",
      cpu: "Test CPU",
      cores: 2,
      kernel: "6.18.44",
      load: [1.24, 1.81],
      commit: "abc1234",
      cli: "source",
      imageBytes: 100_000_000,
      runs: [
        { name: "local file-backed mount", seconds: seconds(0.05, 0.2, 0.5, 0.02) },
        {
          name: "erofs-oci, empty disk cache",
          seconds: seconds(0.1, 0.3, 0.8, 0.55),
          gets: { mount: 4, find: 0, python: 40, fullRead: 6 },
          registryBytes: 106_000_000,
          serverPeakRssMb: 104.6,
        },
        {
          name: "erofs-oci remount (disk cache)",
          seconds: seconds(0.05, 0.22, 0.45, 0.4),
          gets: { mount: 0, find: 0, python: 0, fullRead: 0 },
          registryBytes: 0,
          serverPeakRssMb: 85.2,
        },
        {
          name: "erofs-oci --no-disk-cache",
          seconds: seconds(0.15, 0.6, 2.0, 0.6),
          gets: { mount: 3, find: 0, python: 59, fullRead: 42 },
          registryBytes: 277_000_000,
          serverPeakRssMb: 223,
        },
      ],
    }),
  );
  // Two VM runs: the newer one must win; the trace rounds are only in the older one. A third,
  // newest, measured chosen variants (BENCH_VARIANTS in its main.sh): an experiment, skipped.
  const older = `${dir}/runs/20261201T090000Z`;
  const newer = `${dir}/runs/20261201T154104Z`;
  const chosen = `${dir}/runs/20261201T170000Z`;
  await Deno.mkdir(older, { recursive: true });
  await Deno.mkdir(newer, { recursive: true });
  await Deno.mkdir(chosen, { recursive: true });
  const row = (cells: (string | number)[]) => cells.join("\t");
  // variant mount find entries tar tarBytes bounded gM bM gF bF gT bT dM dF dT rss hwm lf lr fb rssMount
  /** results.tsv of a run of the loop device and one NBD variant, its cells `mount` and `n`. */
  const loopAndNbd = (mount: number, n: number) => {
    const unused = [0, 0, 0, 0, 0, "-", "-", 0, 0]; // dM … rssMount
    return [
      row([...["local-loop", 1, 1, 8762, 1, 1, 0, 0, 0, 0, 0, 0, 0], ...unused]),
      row([...["erofs-oci-nbd", mount, n, 8762, n, 1, 0, n, n, n, n, n, n], ...unused]),
    ].join("\n") + "\n";
  };
  await Deno.writeTextFile(
    `${chosen}/main.sh`,
    "# written by scripts/vm/run.sh\nexport BENCH_VARIANTS=local-loop\\ erofs-oci-nbd\n",
  );
  await Deno.writeTextFile(`${chosen}/results.tsv`, loopAndNbd(7, 7));
  await Deno.writeTextFile(
    `${chosen}/trace-python.tsv`,
    "local\t1\t0.1\t1.00\ntraced\t1\t9\t9.00\n",
  );
  await Deno.writeTextFile(`${older}/results.tsv`, loopAndNbd(99, 9));
  await Deno.writeTextFile(
    `${older}/trace-python.tsv`,
    [
      "local\t1\t0.28\t4.00",
      "untraced\t1\t20.00\t8.00",
      "traced\t1\t22.00\t4.00",
      "local\t2\t0.59\t10.00",
      "untraced\t2\t28.00\t30.00",
      "traced\t2\t29.00\t5.00",
      "local\t3\t0.13\t2.00",
      "untraced\t3\t13.00\t3.00",
      "traced\t3\t35.00\t3.00",
    ].join("\n") + "\n",
  );
  await Deno.writeTextFile(
    `${older}/host.txt`,
    "date: 2026-12-01 09:00 UTC\nhost: Test CPU, 2 cores, kernel 6.18.44\n",
  );
  await Deno.writeTextFile(
    `${newer}/results.tsv`,
    [
      row([
        ...["local-loop", 0.19, 0.72, 8762, 11.2, 141690880, 0, 0, 0, 0, 0, 0, 0],
        ...[4096, 2256896, 135815168, 0, 0, "-", "-", 0, 0],
      ]),
      row([
        ...["erofs-oci-nbd", 15.85, 2.46, 8762, 27.16, 141680640, 0, 32, 122953449, 0, 0, 6],
        ...[20971520, 12288, 2256896, 135815168, 66604, 82516, 135815168, 138086656, 0, 58072],
      ]),
      row([
        ...["peer-mount.erofs", 1.75, 26.18, 8762, 60.17, 13998080, 1, 25, 16384, 551, 2256896],
        ...[1262, 13692928, 16384, 2256896, 13692928, 6552, 6552, "-", "-", 0, 4964],
      ]),
    ].join("\n") + "\n",
  );
  await Deno.writeTextFile(
    `${newer}/host.txt`,
    [
      "date: 2026-12-01 15:41 UTC",
      "host: Test CPU, 2 cores, kernel 6.18.44",
      "load before: 5.57 5.97 8.13",
      "code: HEAD ec031bb (0 files under lib/ffi uncommitted)",
      "load after: 1.66 3.24 6.28",
      "tcg: translation buffer 256 MiB",
    ].join("\n") + "\n",
  );
  await Deno.writeTextFile(
    `${newer}/meta.txt`,
    "# image_bytes=135815168 layer=sha256:00 kernel=6.1.0-57-amd64 cpus=2 deno_floor_s=0.87\n",
  );
  const step = (run: number, name: string, sec: number, gets: number, bytes: number) => ({
    run,
    step: name,
    seconds: sec,
    gets,
    fetchedBytes: bytes,
  });
  await Deno.writeTextFile(
    `${dir}/gzip-mount-latest.json`,
    JSON.stringify({
      date: "2026-12-01T10:11:00.000Z",
      cpu: "Test CPU",
      cores: 2,
      kernel: "6.18.44",
      load: [3.1, 3.9],
      commit: "def5678+",
      layerBytes: 32_000_000,
      diskCache: false,
      delayMs: 0,
      steps: [
        { ...step(1, "first", 0.1, 1, 960_000), mountSeconds: 0.3, serverPeakRssMb: 90 },
        {
          ...step(1, "full", 2.4, 36, 32_640_000),
          cpuSeconds: 0.2,
          serverCpuSeconds: 1.0,
          mountSeconds: 1.0,
          serverPeakRssMb: 161,
        },
        { ...step(1, "curl", 2.0, 1, 32_000_000), cpuSeconds: 1.0 },
      ],
    }),
  );
}

async function withFixture(
  fn: (dir: string, readme: string) => Promise<void> | void,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "bench-readme-table-" });
  try {
    await writeFixture(dir);
    const readme = `${dir}/README.md`;
    await Deno.writeTextFile(readme, BEFORE);
    await fn(dir, readme);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function tableRows(readme: string): string[][] {
  const block = readme.slice(readme.indexOf(BEGIN), readme.indexOf(END));
  return block.split("\n").filter((l) => l.startsWith("|")).slice(2).map((l) =>
    l.slice(1, -1).split(/(?<!\\)\|/).map((c) => c.trim())
  );
}

async function runScript(args: string[]): Promise<{ code: number; stdout: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", SCRIPT, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

Deno.test("readme table: rows regenerated from recorded runs, others kept", async () => {
  await withFixture((dir) => {
    const { readme, notes } = rebuildReadme(BEFORE, readSources(dir));
    const rows = tableRows(readme);
    const byStart = (start: string) => rows.find((r) => r[0].startsWith(start));

    const host = byStart("`scripts/bench-host.sh`")!;
    assert.equal(
      host[0],
      "`scripts/bench-host.sh`, FUSE, empty disk cache (2026-12-01 15:50 UTC, Test CPU, 2 cores, " +
        "kernel 6.18.44, real CPU, load 1.2→1.8, abc1234)",
    );
    assert.deepEqual(host.slice(1), [
      "0.55 s",
      "2.0× (0.10 s)",
      "1.5× (0.30 s)",
      "1.6× (0.80 s)",
      "4 / 0 / 40 / 6",
      "1.06",
      "105 MB",
    ]);
    const remount = rows[rows.indexOf(host) + 1];
    assert.equal(remount[0], "same, remount on the filled disk cache");
    assert.deepEqual(remount.slice(1, 5), [
      "0.40 s",
      "1.0× (0.05 s)",
      "1.1× (0.22 s)",
      "0.9× (0.45 s)",
    ]);
    const noCache = rows[rows.indexOf(host) + 2];
    assert.equal(noCache[0], "same, `--no-disk-cache`");
    assert.equal(noCache[4], "4.0× (2.00 s)");
    assert.equal(noCache[6], "2.77");

    // No trace-latest.json: the README's row stays as it was.
    assert.deepEqual(byStart("`scripts/bench-trace.sh`"), [
      "`scripts/bench-trace.sh`, FUSE, recorded prefetch (2026-12-01, same host)",
      "4.29 s",
      "—",
      "1.00× (no trace: 1.50×)",
      "—",
      "—",
      "—",
      "—",
    ]);
    assert.ok(notes.some((n) => n.startsWith("`scripts/bench-trace.sh`: kept as it was")));

    // The newer VM run (15:41), not the 09:00 one; mount.erofs from the peer row, the Deno
    // start-up floor from meta.txt, the emulator's translation buffer from host.txt (the older
    // run's host.txt says none: its label has none).
    const vm = byStart("`deno task bench`")!;
    assert.equal(
      vm[0],
      "`deno task bench` (`scripts/bench.sh`), kernel NBD in the QEMU VM (2026-12-01 15:41 UTC, " +
        "Test CPU, 2 cores, kernel 6.18.44, TCG guest 6.1.0-57-amd64, translation buffer 256 MiB, " +
        "load 5.6→1.7, ec031bb)",
    );
    assert.deepEqual(vm.slice(1), [
      "15.8 s (mount.erofs 1.8 s; a one-line Deno program starts in 0.9 s)",
      "3.4× (2.5 s)",
      "—",
      "2.4× (27.2 s)",
      "32 / 0 / — / 6",
      "1.06",
      "81 MB",
    ]);
    assert.equal(rows.filter((r) => r[0].includes("QEMU VM")).length, 1 + 1); // + trace row

    // trace-python.tsv only in the older run: median of per-round ratios (1.0, 0.5, 1.5 → 1.0;
    // untraced 2.0, 3.0, 1.5 → 2.0), median traced mount 29 s.
    const vmTrace = byStart("`scripts/bench.sh` trace-python-20ms")!;
    assert.match(
      vmTrace[0],
      /\(2026-12-01 09:00 UTC, Test CPU, 2 cores, kernel 6\.18\.44, TCG guest\)$/,
    );
    assert.equal(vmTrace[1], "29.0 s");
    assert.equal(vmTrace[3], "1.00× (no trace: 2.00×)");

    const gzip = byStart("`scripts/bench-gzip-mount.sh`")!;
    assert.match(gzip[0], /32 MB tar\.gz layer, FUSE, no disk cache; × of `curl \\\| gunzip/);
    assert.match(gzip[0], /load 3\.1→3\.9, def5678 \+ uncommitted changes\)$/);
    assert.deepEqual(gzip.slice(1), [
      "0.3–1.0 s",
      "—",
      "—",
      "1.2× (2.40 s), CPU 1.20×",
      "— / — / — / 36 (first file 1)",
      "1.02 (read); first file 0.03",
      "161 MB",
    ]);

    // A row no script generates stays, in place (after the gzip row, as before); a script's
    // group the README did not have (the VM trace) comes last.
    assert.deepEqual(rows[rows.indexOf(gzip) + 1], [
      "a hand-made row no script knows",
      "1 s",
      ...Array(6).fill("—"),
    ]);
    assert.equal(rows.at(-1), vmTrace);
    // Outside the markers: byte-identical.
    assert.equal(readme.slice(0, readme.indexOf(BEGIN)), BEFORE.slice(0, BEFORE.indexOf(BEGIN)));
    assert.equal(readme.slice(readme.indexOf(END)), BEFORE.slice(BEFORE.indexOf(END)));
  });
});

Deno.test("readme table: --check fails on a stale block, passes after the rewrite; fmt-stable", async () => {
  await withFixture(async (dir, readme) => {
    const args = ["--readme", readme, "--cache", dir];
    const stale = await runScript(["--check", ...args]);
    assert.notEqual(stale.code, 0, stale.stdout);
    assert.equal(await Deno.readTextFile(readme), BEFORE, "--check must not write");

    const written = await runScript(args);
    assert.equal(written.code, 0, written.stdout);
    const after = await Deno.readTextFile(readme);
    assert.notEqual(after, BEFORE);
    assert.match(written.stdout, /`scripts\/bench-build\.sh`|bench-trace\.sh`: kept as it was/);

    const fresh = await runScript(["--check", ...args]);
    assert.equal(fresh.code, 0, fresh.stdout);

    // deno fmt must leave the generated block alone (checked alone: the prose here is odd).
    const block = `${dir}/block.md`;
    await Deno.writeTextFile(
      block,
      after.slice(after.indexOf(BEGIN), after.indexOf(END) + END.length) + "\n",
    );
    const fmt = await new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--check", "--line-width", "100", block],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(fmt.code, 0, new TextDecoder().decode(fmt.stderr));

    // A changed record makes the block stale again.
    const host = JSON.parse(await Deno.readTextFile(`${dir}/host-latest.json`));
    host.runs[1].seconds.find = 0.2;
    await Deno.writeTextFile(`${dir}/host-latest.json`, JSON.stringify(host));
    const changed = await runScript(["--check", ...args]);
    assert.notEqual(changed.code, 0, changed.stdout);
  });
});
