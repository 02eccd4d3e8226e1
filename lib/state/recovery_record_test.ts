import { deepStrictEqual as assertEquals, throws } from "node:assert/strict";
import fc from "fast-check";
import { FormatError } from "../errors.ts";
import { formatRecoveryLine, parseRecoveryLine, type RecoveryRecord } from "./recovery_record.ts";

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
    `OCI_NATIVE_BLOB 127.0.0.1:5000/app:v1 linux/amd64 ${DIGEST} `,
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

// Lines as mount.erofs 1.9.3 wrote them (tests/vm/interop_test.ts, od -c of its files), and
// lines in the layout its fprintf() calls give for the other source types.
const PEER_DIGEST = "sha256:67e9ead5c9489ca207f9b2980c8685a24c07e158d8063d531ef76e5de6d190b1";
const PEER_LINES: [string, string, RecoveryRecord][] = [
  [
    "-o oci.layer=0,oci.insecure: no credentials leave a trailing space",
    "OCI_LAYER 127.0.0.1:5000/interop/basic:v1 linux/amd64 0 \n",
    {
      kind: "OCI_LAYER",
      reference: "127.0.0.1:5000/interop/basic:v1",
      platform: "linux/amd64",
      layerIndex: 0,
      credentials: undefined,
    },
  ],
  [
    "-o oci.blob=…,oci.username=u,oci.password=p:w: base64 of user:password",
    `OCI_NATIVE_BLOB 127.0.0.1:5000/interop/basic:v1 linux/amd64 ${PEER_DIGEST} dTpwOnc=\n`,
    {
      kind: "OCI_NATIVE_BLOB",
      reference: "127.0.0.1:5000/interop/basic:v1",
      platform: "linux/amd64",
      digest: PEER_DIGEST,
      credentials: { username: "u", password: "p:w" },
    },
  ],
  [
    "tar index without credentials: two spaces before the index path",
    `TARINDEX_OCI_BLOB r/app:1 linux/amd64 ${PEER_DIGEST}  /var/idx.meta /var/idx.zinfo\n`,
    {
      kind: "TARINDEX_OCI_BLOB",
      reference: "r/app:1",
      platform: "linux/amd64",
      digest: PEER_DIGEST,
      credentials: undefined,
      tarIndexPath: "/var/idx.meta",
      zinfoPath: "/var/idx.zinfo",
    },
  ],
  [
    "tar index of a plain tar: empty zinfo path at the end",
    `TARINDEX_OCI_BLOB r/app:1 linux/amd64 ${PEER_DIGEST} dTpw /var/idx.meta \n`,
    {
      kind: "TARINDEX_OCI_BLOB",
      reference: "r/app:1",
      platform: "linux/amd64",
      digest: PEER_DIGEST,
      credentials: { username: "u", password: "p" },
      tarIndexPath: "/var/idx.meta",
      zinfoPath: "",
    },
  ],
  [
    "LOCAL takes the rest of the line (realpath, spaces included)",
    "LOCAL /srv/my images/a.erofs\n",
    { kind: "LOCAL", path: "/srv/my images/a.erofs" },
  ],
];

Deno.test("recovery lines of mount.erofs 1.9.3 parse, and ours are byte-identical", () => {
  for (const [what, line, record] of PEER_LINES) {
    assertEquals(parseRecoveryLine(line), record, what);
    assertEquals(formatRecoveryLine(record) + "\n", line, what);
  }
});

Deno.test('recovery lines of older erofs-oci ("" for no credentials) still parse', () => {
  assertEquals(parseRecoveryLine(`OCI_NATIVE_BLOB r/app:1 linux/amd64 ${DIGEST} ""\n`), {
    kind: "OCI_NATIVE_BLOB",
    reference: "r/app:1",
    platform: "linux/amd64",
    digest: DIGEST,
    credentials: undefined,
  });
  // Runs of spaces separate OCI_LAYER fields, as in mount.erofs; no credentials field at all.
  assertEquals(parseRecoveryLine("OCI_LAYER r/app  linux/arm64   3"), {
    kind: "OCI_LAYER",
    reference: "r/app",
    platform: "linux/arm64",
    layerIndex: 3,
    credentials: undefined,
  });
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
      `OCI_NATIVE_BLOB r/app linux/amd64`,
      `OCI_NATIVE_BLOB r/app linux/amd64 ${DIGEST} dTpw extra`,
      `OCI_LAYER r/app linux/amd64 0 "`,
      "LOCAL  /leading/space",
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
