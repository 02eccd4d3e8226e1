import { deepStrictEqual as assertEquals, throws } from "node:assert/strict";
import fc from "fast-check";
import { FormatError } from "../errors.ts";
import { formatRecoveryLine, parseRecoveryLine, type RecoveryRecord } from "./record.ts";

const DIGEST = `sha256:${"ab".repeat(32)}`;

Deno.test("recovery lines are written in the erofs-utils layout", () => {
  assertEquals(formatRecoveryLine({ kind: "LOCAL", path: "/img/a.erofs" }), "LOCAL /img/a.erofs");
  assertEquals(
    formatRecoveryLine({
      kind: "OCI_NATIVE_BLOB",
      reference: "127.0.0.1:5000/app:v1",
      platform: "linux/amd64",
      digest: DIGEST,
    }),
    `OCI_NATIVE_BLOB 127.0.0.1:5000/app:v1 linux/amd64 ${DIGEST} ""`,
  );
  assertEquals(
    formatRecoveryLine({
      kind: "OCI_LAYER",
      reference: "r/app",
      platform: "",
      layerIndex: 2,
      credentials: { username: "u", password: "p:w" },
    }),
    `OCI_LAYER r/app "" 2 ${btoa("u:p:w")}`,
  );
});

Deno.test("recovery lines round-trip through parse", () => {
  const arbitraryField = fc.stringMatching(/^[!-~]{1,40}$/).filter((s) => s !== '""');
  const credentials = fc.option(
    fc.record({ username: fc.stringMatching(/^[^:\s]{0,10}$/), password: fc.string() }),
    { nil: undefined },
  );
  fc.assert(
    fc.property(arbitraryField, arbitraryField, credentials, (reference, platform, creds) => {
      const record: RecoveryRecord = {
        kind: "OCI_NATIVE_BLOB",
        reference,
        platform,
        digest: DIGEST,
        credentials: creds,
      };
      assertEquals(parseRecoveryLine(formatRecoveryLine(record) + "\n"), record);
    }),
  );
});

Deno.test("hostile recovery lines are refused with a FormatError", () => {
  for (
    const bad of [
      "",
      "GARBAGE x y",
      "LOCAL relative/path",
      "LOCAL",
      `OCI_NATIVE_BLOB r/app linux/amd64 sha256:zz ""`,
      `OCI_NATIVE_BLOB "" linux/amd64 ${DIGEST} ""`,
      `OCI_LAYER r/app linux/amd64 -1 ""`,
      `OCI_LAYER r/app linux/amd64 1e3 ""`,
      `OCI_NATIVE_BLOB r/app linux/amd64 ${DIGEST} !!notbase64!!`,
      `OCI_NATIVE_BLOB r/app linux/amd64 ${DIGEST} ${btoa("nocolon")}`,
      `TARINDEX_OCI_BLOB r/app linux/amd64 ${DIGEST} ""`,
    ]
  ) {
    throws(() => parseRecoveryLine(bad), FormatError, `accepted: ${bad}`);
  }
  fc.assert(fc.property(fc.string(), (text) => {
    try {
      parseRecoveryLine(text);
    } catch (error) {
      if (!(error instanceof FormatError)) throw error;
    }
  }));
});
