/**
 * Recovery records: one line per NBD device, in the erofs-utils 1.9 format, so either tool can
 * reattach the other's devices. The layout is what `mount.erofs` 1.9.3 writes with
 * `fprintf("%s %s …")` (seen in its real files, tests/vm/interop_test.ts):
 * - fields are separated by one space; an absent value is an empty string, so a line without
 *   credentials ends in a space: `OCI_LAYER 127.0.0.1:5000/app:v1 linux/amd64 0 `;
 * - credentials are base64 (with padding) of `user:password`: `… sha256:… dTpwOnc=`;
 * - erofs-utils never leaves the reference, platform (it writes its host's, e.g.
 *   `linux/amd64`) or digest empty; erofs-oci writes `""` there if it ever must, and reads
 *   `""` anywhere as empty (older erofs-oci wrote `""` for absent credentials, which
 *   `mount.erofs --reattach` refuses as bad base64);
 * - `LOCAL` is followed by the rest of the line: a path may hold spaces.
 * - `TARINDEX_LOCAL <blob path>` is erofs-oci's own (an OCI layout's tar layer served through
 *   its index; the index paths are in the companion file): erofs-utils has no such source and
 *   refuses the line rather than serve the raw blob under a mounted file system.
 *
 * @example
 * formatRecoveryLine({ kind: "OCI_NATIVE_BLOB", reference: "r.io/app:1", platform: "linux/amd64",
 *   digest: "sha256:…" }) // → `OCI_NATIVE_BLOB r.io/app:1 linux/amd64 sha256:… ` (trailing space)
 */
import { FormatError } from "../errors.ts";
import type { Credentials } from "../oci/docker_config.ts";

export type RecoveryRecord =
  | { kind: "LOCAL"; path: string }
  | { kind: "TARINDEX_LOCAL"; path: string }
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

const DIGEST = /^sha256:[0-9a-f]{64}$/;

function checkNoSpace(value: string): string {
  if (/\s/.test(value)) {
    throw new FormatError(`cannot record '${value}': fields of a recovery line have no spaces`);
  }
  return value;
}

/** A field erofs-utils always fills (reference, platform, digest): `""` stands for empty. */
function field(value: string): string {
  return value === "" ? '""' : checkNoSpace(value);
}

/** Credentials, or nothing: erofs-utils writes an empty string (`%s` of ""), not `""`. */
function encodeCredentials(credentials?: Credentials): string {
  if (!credentials) return "";
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
    case "TARINDEX_LOCAL":
      if (/[\n\r]/.test(record.path) || record.path === "") {
        throw new FormatError(`cannot record the path '${record.path}' in a recovery line`);
      }
      return `${record.kind} ${record.path}`;
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
      // Positional like erofs-utils: no credentials leave two spaces before the index path.
      return [
        "TARINDEX_OCI_BLOB",
        field(record.reference),
        field(record.platform),
        field(record.digest),
        encodeCredentials(record.credentials),
        checkNoSpace(record.tarIndexPath),
        checkNoSpace(record.zinfoPath),
      ].join(" ");
  }
}

/** `""` (erofs-oci's old spelling of an empty field) reads as empty. */
function unquote(value: string): string {
  return value === '""' ? "" : value;
}

/**
 * Parses a recovery file's content the way `mount.erofs --reattach` does; every malformed case
 * is a one-line FormatError. OCI_LAYER / OCI_NATIVE_BLOB fields are separated by runs of
 * spaces and the credentials may be missing (a trailing space ends the line); the fields of
 * TARINDEX_OCI_BLOB are positional, one space apart, and may be empty.
 */
export function parseRecoveryLine(text: string): RecoveryRecord {
  const line = text.split("\n")[0].replace(/\r$/, "");
  const space = line.indexOf(" ");
  const kind = space < 0 ? line : line.slice(0, space);
  const rest = space < 0 ? "" : line.slice(space + 1);
  const digest = (value: string) => {
    if (!DIGEST.test(value)) throw new FormatError(`recovery line: bad digest '${value}'`);
    return value;
  };
  const reference = (value: string) => {
    if (!value) throw new FormatError("recovery line: empty image reference");
    return value;
  };
  /** Space-separated tokens, runs of spaces collapsed: between `min` and `max` of them. */
  const tokens = (min: number, max: number) => {
    const found = rest.split(" ").filter((t) => t !== "").map(unquote);
    if (found.length < min || found.length > max) {
      const count = min === max ? `${min}` : `${min}-${max}`;
      throw new FormatError(`recovery line: ${kind} needs ${count} fields, found ${found.length}`);
    }
    return found;
  };
  switch (kind) {
    case "LOCAL":
    case "TARINDEX_LOCAL":
      if (!rest.startsWith("/")) {
        throw new FormatError(`recovery line: ${kind} needs an absolute path`);
      }
      return { kind, path: rest };
    case "OCI_LAYER": {
      const fields = tokens(3, 4);
      const layerIndex = Number(fields[2]);
      if (!Number.isInteger(layerIndex) || layerIndex < 0 || !/^\d+$/.test(fields[2])) {
        throw new FormatError(`recovery line: bad layer index '${fields[2]}'`);
      }
      return {
        kind,
        reference: reference(fields[0]),
        platform: fields[1],
        layerIndex,
        credentials: decodeCredentials(fields[3] ?? ""),
      };
    }
    case "OCI_NATIVE_BLOB": {
      const fields = tokens(3, 4);
      return {
        kind,
        reference: reference(fields[0]),
        platform: fields[1],
        digest: digest(fields[2]),
        credentials: decodeCredentials(fields[3] ?? ""),
      };
    }
    case "TARINDEX_OCI_BLOB": {
      // erofs-utils needs the index path; the zinfo path may be missing (a plain tar).
      const fields = rest.split(" ").map(unquote);
      if (fields.length < 5 || fields.length > 6) {
        throw new FormatError(
          `recovery line: TARINDEX_OCI_BLOB needs 6 fields, found ${fields.length}`,
        );
      }
      return {
        kind,
        reference: reference(fields[0]),
        platform: fields[1],
        digest: digest(fields[2]),
        credentials: decodeCredentials(fields[3]),
        tarIndexPath: fields[4],
        zinfoPath: fields[5] ?? "",
      };
    }
    default:
      throw new FormatError(
        `recovery line: unknown source type '${kind}'`,
        "expected LOCAL, OCI_LAYER, OCI_NATIVE_BLOB, TARINDEX_OCI_BLOB or TARINDEX_LOCAL",
      );
  }
}
