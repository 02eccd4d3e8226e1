/**
 * Recovery records: one line per NBD device, in the erofs-utils 1.9 format, so either tool can
 * reattach the other's devices. Fields are space-separated; an empty field is written `""`.
 *
 * @example
 * formatRecoveryLine({ kind: "OCI_NATIVE_BLOB", reference: "r.io/app:1", platform: "linux/amd64",
 *   digest: "sha256:…" }) // → `OCI_NATIVE_BLOB r.io/app:1 linux/amd64 sha256:… ""`
 */
import { FormatError } from "../errors.ts";

export type RecoveryRecord =
  | { kind: "LOCAL"; path: string }
  | {
    kind: "OCI_LAYER";
    reference: string;
    platform: string;
    layerIndex: number;
    credentials?: Credentials;
  }
  | {
    kind: "OCI_NATIVE_BLOB";
    reference: string;
    platform: string;
    digest: string;
    credentials?: Credentials;
  }
  | {
    kind: "TARINDEX_OCI_BLOB";
    reference: string;
    platform: string;
    digest: string;
    credentials?: Credentials;
    tarIndexPath: string;
    zinfoPath: string;
  };

export interface Credentials {
  username: string;
  password: string;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;

function field(value: string): string {
  if (/\s/.test(value)) {
    throw new FormatError(`cannot record '${value}': fields of a recovery line have no spaces`);
  }
  return value === "" ? '""' : value;
}

function encodeCredentials(credentials?: Credentials): string {
  if (!credentials) return '""';
  return new TextEncoder().encode(`${credentials.username}:${credentials.password}`).toBase64();
}

function decodeCredentials(text: string): Credentials | undefined {
  if (text === "") return undefined;
  let plain: string;
  try {
    plain = new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.fromBase64(text));
  } catch {
    throw new FormatError("recovery line: credentials are not valid base64");
  }
  const colon = plain.indexOf(":");
  if (colon < 0) throw new FormatError("recovery line: credentials lack 'user:password'");
  return { username: plain.slice(0, colon), password: plain.slice(colon + 1) };
}

/** The line (without newline) erofs-utils writes for this record. */
export function formatRecoveryLine(record: RecoveryRecord): string {
  switch (record.kind) {
    case "LOCAL":
      return `LOCAL ${field(record.path)}`;
    case "OCI_LAYER":
      return [
        "OCI_LAYER",
        field(record.reference),
        field(record.platform),
        String(record.layerIndex),
        encodeCredentials(record.credentials),
      ].join(" ");
    case "OCI_NATIVE_BLOB":
      return [
        "OCI_NATIVE_BLOB",
        field(record.reference),
        field(record.platform),
        field(record.digest),
        encodeCredentials(record.credentials),
      ].join(" ");
    case "TARINDEX_OCI_BLOB":
      return [
        "TARINDEX_OCI_BLOB",
        field(record.reference),
        field(record.platform),
        field(record.digest),
        encodeCredentials(record.credentials),
        field(record.tarIndexPath),
        field(record.zinfoPath),
      ].join(" ");
  }
}

/** Parses a recovery file's content; every malformed case is a one-line FormatError. */
export function parseRecoveryLine(text: string): RecoveryRecord {
  const line = text.split("\n")[0].trim();
  const parts = line.split(/ +/).map((p) => (p === '""' ? "" : p));
  const [kind, ...fields] = parts;
  const expect = (count: number) => {
    if (fields.length !== count) {
      throw new FormatError(
        `recovery line: ${kind} needs ${count} fields, found ${fields.length}`,
      );
    }
  };
  const digest = (value: string) => {
    if (!DIGEST.test(value)) throw new FormatError(`recovery line: bad digest '${value}'`);
    return value;
  };
  const reference = (value: string) => {
    if (!value) throw new FormatError("recovery line: empty image reference");
    return value;
  };
  switch (kind) {
    case "LOCAL":
      expect(1);
      if (!fields[0].startsWith("/")) {
        throw new FormatError("recovery line: LOCAL needs an absolute path");
      }
      return { kind, path: fields[0] };
    case "OCI_LAYER": {
      expect(4);
      const layerIndex = Number(fields[2]);
      if (!Number.isInteger(layerIndex) || layerIndex < 0 || !/^\d+$/.test(fields[2])) {
        throw new FormatError(`recovery line: bad layer index '${fields[2]}'`);
      }
      return {
        kind,
        reference: reference(fields[0]),
        platform: fields[1],
        layerIndex,
        credentials: decodeCredentials(fields[3]),
      };
    }
    case "OCI_NATIVE_BLOB":
      expect(4);
      return {
        kind,
        reference: reference(fields[0]),
        platform: fields[1],
        digest: digest(fields[2]),
        credentials: decodeCredentials(fields[3]),
      };
    case "TARINDEX_OCI_BLOB":
      expect(6);
      return {
        kind,
        reference: reference(fields[0]),
        platform: fields[1],
        digest: digest(fields[2]),
        credentials: decodeCredentials(fields[3]),
        tarIndexPath: fields[4],
        zinfoPath: fields[5],
      };
    default:
      throw new FormatError(
        `recovery line: unknown source type '${kind ?? ""}'`,
        "expected LOCAL, OCI_LAYER, OCI_NATIVE_BLOB or TARINDEX_OCI_BLOB",
      );
  }
}
