import { deepStrictEqual as assertEquals, throws } from "node:assert/strict";
import { FormatError } from "../errors.ts";
import { UntrustedDirError } from "../../ffi/trusted_path.ts";
import { formatRecoveryLine } from "./recovery_record.ts";
import {
  parseRecoveryExtra,
  readRecoveryFile,
  removeRecoveryFile,
  rewriteRecoveryFile,
} from "./recovery_store.ts";
import { requires, root } from "../../tests/_support/requires.ts";

/** A recovery line for a layout blob and, unless undefined, the companion text next to it. */
function writeDevice(dir: string, companion?: string): string {
  const path = `${dir}/mountnbd_test`;
  Deno.writeTextFileSync(path, formatRecoveryLine({ kind: "LOCAL", path: "/srv/blob" }) + "\n");
  if (companion !== undefined) Deno.writeTextFileSync(`${path}.erofs-oci.json`, companion);
  return path;
}

Deno.test("recovery companion: absent gives defaults, a whole one is read as written", () => {
  const dir = Deno.makeTempDirSync({ prefix: "recovery-store-" });
  try {
    assertEquals(readRecoveryFile(writeDevice(dir)).extra, {});
    const extra = {
      plainHttp: true,
      mountId: "m1",
      layerIndex: 2,
      sizeBytes: 4096,
      digest: "sha256:" + "a".repeat(64),
      chunkTable: { digest: "sha256:" + "b".repeat(64), path: "/t", bound: true },
      tarIndex: { meta: "/m", layout: "4k" },
      later: "fields of a newer version are kept",
    };
    const path = writeDevice(dir, JSON.stringify(extra));
    assertEquals(readRecoveryFile(path).extra, extra);
    Deno.writeTextFileSync(`${path}.erofs-oci.json.tmp`, "{");
    removeRecoveryFile(path);
    assertEquals([...Deno.readDirSync(dir)], [], "line, companion and a left-over tmp removed");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("recovery companion: a damaged one is refused with what is wrong, not read as defaults", () => {
  const damaged: [string, RegExp][] = [
    ["null", /not a JSON object/],
    ["[1]", /not a JSON object/],
    ['"text"', /not a JSON object/],
    ['{"plainHttp":', /not JSON/],
    ["", /not JSON/],
    ['{"mountId":7}', /bad "mountId"/],
    ['{"layerIndex":"x"}', /bad "layerIndex"/],
    ['{"layerIndex":-1}', /bad "layerIndex"/],
    ['{"sizeBytes":1.5}', /bad "sizeBytes"/],
    ['{"plainHttp":"yes"}', /bad "plainHttp"/],
    ['{"digest":null}', /bad "digest"/],
    ['{"chunkTable":{"digest":"d","path":"/t"}}', /bad "chunkTable"/],
    ['{"tarIndex":[]}', /bad "tarIndex"/],
  ];
  const dir = Deno.makeTempDirSync({ prefix: "recovery-store-" });
  try {
    for (const [text, why] of damaged) {
      const path = writeDevice(dir, text);
      throws(() => readRecoveryFile(path), (error: unknown) => {
        if (!(error instanceof FormatError)) return false;
        return /companion file .* is damaged/.test(error.message) && why.test(error.message);
      }, text);
    }
    throws(() => parseRecoveryExtra('{"registryConfigDir":{}}', "x"), /bad "registryConfigDir"/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("recovery companion: one that cannot be read (not absent) is refused, not read as defaults", () => {
  const dir = Deno.makeTempDirSync({ prefix: "recovery-store-" });
  try {
    const path = writeDevice(dir);
    // A link to itself: open fails with ELOOP, which says nothing of the facts being absent.
    Deno.symlinkSync(`${path}.erofs-oci.json`, `${path}.erofs-oci.json`);
    throws(
      () => readRecoveryFile(path),
      (error: Error) =>
        error instanceof FormatError &&
        /recovery companion file .* cannot be read: .*symbolic links/i.test(error.message),
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("recovery file rewritten with new credentials: same path, companion kept, mode 0600", () => {
  const dir = Deno.makeTempDirSync({ prefix: "recovery-store-" });
  try {
    const path = writeDevice(dir, JSON.stringify({ mountId: "m1" }));
    const record = {
      kind: "OCI_NATIVE_BLOB" as const,
      reference: "r.test/app:v1",
      platform: "linux/amd64",
      digest: "sha256:" + "c".repeat(64),
      credentials: { username: "u", password: "rotated pw" },
    };
    rewriteRecoveryFile(path, record);
    assertEquals(readRecoveryFile(path), { record, extra: { mountId: "m1" } });
    assertEquals(Deno.statSync(path).mode! & 0o777, 0o600);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "mountnbd_test",
      "mountnbd_test.erofs-oci.json",
    ]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("recovery files larger than any of ours are refused, not read whole", () => {
  const dir = Deno.makeTempDirSync({ prefix: "recovery-store-" });
  try {
    const path = writeDevice(dir, JSON.stringify({ mountId: "m1", pad: "x".repeat(2 << 20) }));
    throws(() => readRecoveryFile(path), (error: unknown) =>
      error instanceof FormatError &&
      /recovery companion file .* is larger than \d+ bytes/.test(error.message));
    Deno.writeTextFileSync(path, "LOCAL /srv/blob" + " ".repeat(2 << 20) + "\n");
    throws(() => readRecoveryFile(path), /recovery file .* cannot be read: .* is larger than/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test({
  name: "a recovery file in a directory another user can change is not read (as root)",
  ignore: requires(root()),
  fn() {
    const dir = Deno.makeTempDirSync({ prefix: "recovery-store-" });
    try {
      const path = writeDevice(dir, JSON.stringify({ mountId: "m1" }));
      Deno.chownSync(dir, 65534, 65534);
      throws(() => readRecoveryFile(path), (error: unknown) =>
        error instanceof UntrustedDirError &&
        /recovery directory .* is not root's alone: .* is owned by uid 65534/.test(error.message) &&
        /EROFS_OCI_RECOVERY_DIR/.test(error.hint ?? ""));
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
